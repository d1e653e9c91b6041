// Field schemas shared by every mailfleet.io/v1alpha1 kind.
//
// Each rule is written twice on purpose: as a zod check (runtime validation in the operator,
// relays and CLI) and, where the API server must enforce it, as a structural-schema keyword or a
// CEL rule beside it. Strings and lists are bounded so CEL cost estimates stay low.
import { isIP } from "node:net";
import { z } from "zod";

export const GROUP = "mailfleet.io";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;

/** A CEL rule for `x-kubernetes-validations`. */
export type CelRule = { rule: string; message: string; fieldPath?: string; reason?: string };

/**
 * A CEL rule and its zod twin: `holds(self)` says the same in TypeScript, so runtime validation
 * (api/validate.ts) refuses what the API server refuses, with the same message at the same field.
 * Transition rules (they read oldSelf) have none: zod sees one object, not a change.
 */
export type CheckedCelRule = CelRule & { holds?: (self: any) => boolean };

/** Attach CEL rules (and their zod twins) and other OpenAPI extensions to a schema for the CRD generator. */
export function k8s<T extends z.ZodType>(schema: T, ext: { cel?: CheckedCelRule[]; [key: string]: unknown }): T {
  const { cel, ...rest } = ext;
  const checks = (cel ?? []).filter((r) => r.holds);
  const checked = checks.length === 0 ? schema : (schema.superRefine((self, ctx) => {
    for (const r of checks) {
      if (!r.holds!(self)) ctx.addIssue({ code: "custom", path: r.fieldPath ? r.fieldPath.replace(/^\./, "").split(".") : [], message: r.message });
    }
  }) as unknown as T);
  const rules = cel?.map(({ holds: _, ...r }) => r);
  return checked.meta({ ...(rules ? { "x-kubernetes-validations": rules } : {}), ...rest }) as T;
}

// Patterns are written where JavaScript and Go's RE2 (the API server's) agree: no look-around,
// and no \s, \w or \d (JavaScript's \s also matches Unicode spaces such as U+00A0, RE2's does
// not): spell classes out in ASCII ([!-~] is every printable character). Found by
// test/integration/fuzz-crd.test.ts. Length is bounded by max(253).
export const DNS_NAME_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;

/** A DNS domain or host name, lower case, no trailing dot. */
export const dnsName = (what: string) =>
  z
    .string()
    .max(253)
    .regex(DNS_NAME_RE, `must be a lower-case DNS name (${what}), e.g. mail.example.com`)
    .describe(what);

// A domain name that is no host name may carry underscores in its labels (RFC 2181 section 11):
// SPF includes such as _spf.google.com, service and DKIM records.
export const DNS_DOMAIN_RE = /^[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?(\.[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?)*$/;

/** A DNS domain name (not necessarily a host name: labels may have underscores), lower case. */
export const dnsDomain = (what: string) =>
  z
    .string()
    .max(253)
    .regex(DNS_DOMAIN_RE, `must be a lower-case DNS domain name (${what}), e.g. _spf.example.com`)
    .describe(what);

// Kubernetes' own RFC 1123 subdomain check for object names: unlike a DNS name, a label may be
// longer than 63 characters (only the whole name is bounded, by 253), so a reference must take
// every name the API server takes.
export const OBJECT_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** A Kubernetes object name (RFC 1123 subdomain), as the API server checks metadata.name. */
export const objectName = z
  .string()
  .min(1)
  .max(253)
  .regex(OBJECT_NAME_RE, "must be a lower-case RFC 1123 name");

export const localRef = z.object({ name: objectName.describe("Name of the object in the same namespace.") });

export const secretKeyRef = z.object({
  name: objectName.describe("Secret name, in the resource's namespace."),
  key: z.string().min(1).max(253).regex(/^[-._a-zA-Z0-9]+$/, "must be a Secret data key").describe("Key in the Secret's data."),
});

// What Kubernetes' CEL isIP() and isCIDR() take, which node:net's isIP does not tell alone: no
// IPv6 zone ("fe80::1%eth0": meaningless outside one host), no IPv4-mapped IPv6 address
// ("::ffff:1.2.3.4": Kubernetes refuses it, the IPv4 form is the address), and a prefix length
// without leading zeros ("/08"). Found by test/integration/fuzz-crd.test.ts against the API server.
function isApiIP(v: string): boolean {
  if (v.includes("%") || isIP(v) === 0) return false;
  // The WHATWG URL serialiser gives the canonical IPv6 form (ipaddr.js takes the IPv4-compatible
  // "::1.2.3.4" for a mapped address, which the API server accepts).
  return isIP(v) === 4 || !/^\[::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}\]$/.test(new URL(`http://[${v}]/`).hostname);
}

function ipMessage(v: string): boolean {
  return isApiIP(v);
}

export const ipAddress = k8s(
  z.string().max(45).refine(ipMessage, "must be an IPv4 or IPv6 address").describe("An IPv4 or IPv6 address."),
  { cel: [{ rule: "isIP(self)", message: "must be an IPv4 or IPv6 address" }] },
);

function isCidr(v: string): boolean {
  const slash = v.indexOf("/");
  if (slash < 0) return false;
  const ip = v.slice(0, slash);
  const bitsText = v.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(bitsText)) return false;
  const family = isApiIP(ip) ? isIP(ip) : 0;
  const bits = Number(bitsText);
  return (family === 4 && bits <= 32) || (family === 6 && bits <= 128);
}

export const cidr = k8s(
  z.string().max(49).refine(isCidr, "must be a CIDR such as 10.0.0.0/8").describe("A network in CIDR notation."),
  { cel: [{ rule: "isCIDR(self)", message: "must be a CIDR such as 10.0.0.0/8" }] },
);

export const DURATION_RE = /^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$/;
/** A duration such as 90s, 10m, 2h, 7d or 1h30m. */
export const duration = z
  .string()
  .max(32)
  .regex(DURATION_RE, "must be a duration such as 90s, 10m, 2h or 7d");

export const RATE_RE = /^[1-9][0-9]{0,9}\/(s|sec|second|m|min|minute|h|hour|d|day)$/;
/** A rate such as 600/min, 20/s, 5000/h or 100000/day (the notation KumoMTA and PowerMTA use). */
export const rate = z
  .string()
  .max(24)
  .regex(RATE_RE, "must be a rate such as 600/min, 20/s, 5000/h or 100000/day");

/** A fraction between 0 and 1, e.g. a bounce rate threshold. */
export const fraction = z.number().min(0).max(1);

/**
 * A size quantity as api/units.ts parseQuantity reads it: 25Mi, 1.5Gi, 10M. No backslash: the
 * pattern also goes into a CEL string literal as it is.
 */
export const QUANTITY_RE = /^([0-9]+(?:[.][0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/;
const QUANTITY_MESSAGE = "must be a positive whole number of bytes or a quantity such as 25Mi or 10M";
/**
 * A size as a Kubernetes resource quantity (int-or-string), kept as given. The int-or-string node
 * keeps no per-branch keyword in the CRD, so the API server checks both forms with CEL, and zod with
 * its twin (found by test/integration/fuzz-crd.test.ts: 1.5 and "abc" were let through, and the
 * relay then refused to start).
 */
export const quantity = k8s(
  z.union([z.string().max(32), z.number()]),
  {
    "x-kubernetes-int-or-string": true,
    maxLength: 32,
    cel: [{
      rule: `type(self) == int ? (self >= 1 && self <= ${Number.MAX_SAFE_INTEGER}) : self.matches('${QUANTITY_RE.source}')`,
      message: QUANTITY_MESSAGE,
      holds: (v: unknown) => (typeof v === "number" ? Number.isSafeInteger(v) && v >= 1 : typeof v === "string" && QUANTITY_RE.test(v)),
    }],
  },
);

/** metav1.Condition, as every Kubernetes API uses it. */
export const condition = z.object({
  type: z.string().max(316).regex(/^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$/),
  status: z.enum(["True", "False", "Unknown"]),
  observedGeneration: z.number().int().min(0).optional(),
  lastTransitionTime: z.string().describe("RFC 3339 time of the last status change."),
  reason: z.string().min(1).max(1024).regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/),
  message: z.string().max(32768),
});
export type Condition = z.infer<typeof condition>;

/**
 * A list the CRD declares x-kubernetes-list-type map (keyed by `key`) or set holds no two items with
 * the same key (or value): the API server refuses them ("Duplicate value"), so zod does too.
 */
export function unique(key?: string) {
  return (items: readonly unknown[], ctx: z.RefinementCtx): void => {
    const seen = new Map<string, number>();
    items.forEach((item, i) => {
      const v = JSON.stringify(key === undefined ? item : (item as Record<string, unknown>)[key]);
      const first = seen.get(v);
      if (first === undefined) seen.set(v, i);
      else ctx.addIssue({ code: "custom", path: key === undefined ? [i] : [i, key], message: `duplicate value ${v} (item ${first} has it too)` });
    });
  };
}

export const conditions = k8s(z.array(condition).max(16).superRefine(unique("type")), {
  "x-kubernetes-list-type": "map",
  "x-kubernetes-list-map-keys": ["type"],
});

/** Status fields every kind carries. */
export const commonStatus = {
  observedGeneration: z.number().int().min(0).optional().describe("The spec generation this status describes."),
  conditions: conditions.optional(),
};

/** Free-form object kept as given (resources, tolerations, affinity): the API server validates it
 * where it lands, in the workload. */
export const freeform = k8s(z.record(z.string(), z.unknown()), { "x-kubernetes-preserve-unknown-fields": true, type: "object" });
