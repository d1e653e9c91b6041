// Runtime validation of mailfleet objects with the same zod schemas the CRDs come from. Errors
// name the field (spec.addresses[1].address: must be an IPv4 or IPv6 address).
import { parseAllDocuments } from "yaml";
import { z } from "zod";
import { API_VERSION, KINDS, type KindName, type MailfleetObject, objectSchema } from "./v1alpha1/index.ts";

export class ValidationError extends Error {
  readonly issues: { path: string; message: string }[];
  constructor(what: string, issues: { path: string; message: string }[]) {
    super(`${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join("; ")}`);
    this.name = "ValidationError";
    this.issues = issues;
  }
}

export function issuePath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, p) => (typeof p === "number" ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)), "");
}

function rootRules(kind: KindName, obj: MailfleetObject): { path: string; message: string }[] {
  // Mirrors the CRD's root CEL rules (they read metadata.name, which zod's spec schema cannot see).
  if (kind === "MailboxProvider" && obj.metadata.name !== "default") {
    const m = (obj.spec as { match: { domains: string[]; mxSuffixes: string[] } }).match;
    if (m.domains.length + m.mxSuffixes.length === 0) {
      return [{ path: "spec.match", message: "needs at least one domain or MX suffix (only the provider named default matches everything else)" }];
    }
  }
  return [];
}

/**
 * A copy without the object fields whose value is null, as the API server prunes them from a
 * structural schema's non-nullable fields before defaulting (a YAML key with no value, such as
 * `shaping:`, is such a null): zod would refuse what the API server takes. Null list items stay
 * (the API server refuses those too).
 */
export function withoutNullFields(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutNullFields);
  if (value === null || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = withoutNullFields(v);
  return out;
}

/** Validate one object of a mailfleet kind, applying defaults. Throws ValidationError. */
export function validateObject(input: unknown): MailfleetObject {
  const value = withoutNullFields(input);
  const v = value as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown } };
  if (v?.apiVersion !== API_VERSION) throw new ValidationError("object", [{ path: "apiVersion", message: `must be ${API_VERSION}` }]);
  if (typeof v.kind !== "string" || !(v.kind in KINDS)) {
    throw new ValidationError("object", [{ path: "kind", message: `must be one of ${Object.keys(KINDS).join(", ")}` }]);
  }
  const kind = v.kind as KindName;
  const what = `${kind} ${String(v.metadata?.name ?? "(no name)")}`;
  const result = objectSchema(kind).safeParse(value);
  if (!result.success) {
    throw new ValidationError(what, result.error.issues.map((i: z.core.$ZodIssue) => ({ path: issuePath(i.path), message: i.message })));
  }
  const obj = result.data as unknown as MailfleetObject;
  const extra = rootRules(kind, obj);
  if (extra.length) throw new ValidationError(what, extra);
  return obj;
}

/** Parse a multi-document YAML file; mailfleet kinds are validated, other kinds returned as is. */
export function parseManifests(text: string): { mailfleet: MailfleetObject[]; other: Record<string, unknown>[] } {
  const mailfleet: MailfleetObject[] = [];
  const other: Record<string, unknown>[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`YAML: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as Record<string, unknown> | null;
    if (!value) continue;
    if (value.apiVersion === API_VERSION) mailfleet.push(validateObject(value));
    else other.push(value);
  }
  return { mailfleet, other };
}
