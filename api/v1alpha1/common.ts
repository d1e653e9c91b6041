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

/** Attach CEL rules (and other OpenAPI extensions) to a schema for the CRD generator. */
export function k8s<T extends z.ZodType>(schema: T, ext: { cel?: CelRule[]; [key: string]: unknown }): T {
  const { cel, ...rest } = ext;
  return schema.meta({ ...(cel ? { "x-kubernetes-validations": cel } : {}), ...rest }) as T;
}

// No look-ahead: the API server checks patterns with Go's RE2. Length is bounded by max(253).
export const DNS_NAME_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$/;

/** A DNS domain or host name, lower case, no trailing dot. */
export const dnsName = (what: string) =>
  z
    .string()
    .max(253)
    .regex(DNS_NAME_RE, `must be a lower-case DNS name (${what}), e.g. mail.example.com`)
    .describe(what);

/** A Kubernetes object name (RFC 1123 subdomain). */
export const objectName = z
  .string()
  .min(1)
  .max(253)
  .regex(DNS_NAME_RE, "must be a lower-case RFC 1123 name");

export const localRef = z.object({ name: objectName.describe("Name of the object in the same namespace.") });

export const secretKeyRef = z.object({
  name: objectName.describe("Secret name, in the resource's namespace."),
  key: z.string().min(1).max(253).regex(/^[-._a-zA-Z0-9]+$/, "must be a Secret data key").describe("Key in the Secret's data."),
});

function ipMessage(v: string): boolean {
  return isIP(v) !== 0;
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
  if (!/^[0-9]{1,3}$/.test(bitsText)) return false;
  const family = isIP(ip);
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

/** A Kubernetes resource quantity (int-or-string), kept as given. */
export const quantity = k8s(z.union([z.string().max(32), z.number()]), { "x-kubernetes-int-or-string": true });

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

export const conditions = k8s(z.array(condition).max(16), {
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
