// Compare before applying. A server-side apply that changes nothing is still a write (it costs an
// etcd read, admission and an audit record), so the operator applies only when the cached live
// object differs from what it would send:
//
//  - every value the desired object sets must already be in the live object (the API server may
//    add defaults and other managers' fields; those do not matter), and
//  - the live object must carry the hash of the desired object that this operator last applied.
//    The hash catches what a value comparison cannot: a field the operator used to send and no
//    longer does, which an apply would remove.
import { type Hash, createHash } from "node:crypto";

export const APPLIED_HASH_ANNOTATION = "mailfleet.io/applied-hash";

type Json = unknown;

/** Stable JSON (sorted keys) of a value. */
export function canonical(v: Json): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v) ?? "null";
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  const o = v as Record<string, Json>;
  return `{${Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`).join(",")}}`;
}

/** Feeds canonical(v) to a hash piece by piece (the same digest, without building the string). */
function feed(h: Hash, v: Json): void {
  if (v === null || typeof v !== "object") {
    h.update(JSON.stringify(v) ?? "null");
    return;
  }
  if (Array.isArray(v)) {
    h.update("[");
    v.forEach((x, i) => {
      if (i) h.update(",");
      feed(h, x);
    });
    h.update("]");
    return;
  }
  const o = v as Record<string, Json>;
  h.update("{");
  let first = true;
  for (const k of Object.keys(o).filter((k) => o[k] !== undefined).sort()) {
    if (!first) h.update(",");
    first = false;
    h.update(JSON.stringify(k));
    h.update(":");
    feed(h, o[k]);
  }
  h.update("}");
}

/** Hash of a desired object, excluding the hash annotation itself. */
export function desiredHash(obj: Record<string, Json>): string {
  const meta = { ...(obj.metadata as Record<string, Json>) };
  const ann = { ...((meta.annotations as Record<string, string>) ?? {}) };
  delete ann[APPLIED_HASH_ANNOTATION];
  meta.annotations = ann;
  const h = createHash("sha256");
  feed(h, { ...obj, metadata: meta });
  return h.digest("hex").slice(0, 20);
}

/** The desired object with its hash annotation set (what is sent). */
export function withHash<T extends Record<string, Json>>(obj: T): T {
  const meta = obj.metadata as Record<string, Json>;
  const hash = desiredHash(obj);
  return { ...obj, metadata: { ...meta, annotations: { ...((meta.annotations as Record<string, string>) ?? {}), [APPLIED_HASH_ANNOTATION]: hash } } };
}

const QUANTITY_RE = /^([+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;
const SUFFIX: Record<string, number> = {
  "": 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
};

/** Value of a Kubernetes quantity, or undefined if it is not one. */
export function quantityValue(v: Json): number | undefined {
  if (typeof v === "number") return v;
  if (typeof v !== "string") return undefined;
  const m = QUANTITY_RE.exec(v);
  return m ? Number(m[1]) * SUFFIX[m[2] ?? ""]! : undefined;
}

function isEmpty(v: Json): boolean {
  if (v === undefined || v === null) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === "object") return Object.keys(v as object).length === 0;
  return false;
}

/**
 * Whether every value set in `desired` is present and equal in `live`. Empty lists and maps match
 * absent ones (the API server drops them); quantities compare by value ("0.5" equals "500m").
 * Returns the path of the first difference, or undefined when there is none.
 */
export function firstDifference(desired: Json, live: Json, path = ""): string | undefined {
  if (desired === undefined) return undefined;
  if (isEmpty(desired) && isEmpty(live)) return undefined;
  if (desired === null || typeof desired !== "object") {
    if (desired === live) return undefined;
    if (typeof desired === "string" || typeof live === "string") {
      const a = quantityValue(desired);
      const b = quantityValue(live);
      if (a !== undefined && b !== undefined && Math.abs(a - b) <= Math.abs(a) * 1e-12) return undefined;
    }
    return path || ".";
  }
  if (Array.isArray(desired)) {
    if (!Array.isArray(live) || live.length !== desired.length) return path || ".";
    for (let i = 0; i < desired.length; i++) {
      const d = firstDifference(desired[i], live[i], `${path}[${i}]`);
      if (d) return d;
    }
    return undefined;
  }
  if (live === null || typeof live !== "object" || Array.isArray(live)) return path || ".";
  for (const [k, v] of Object.entries(desired as Record<string, Json>)) {
    const d = firstDifference(v, (live as Record<string, Json>)[k], `${path}.${k}`);
    if (d) return d;
  }
  return undefined;
}

/**
 * Why an apply is needed, or undefined when the live object already is what `desired` (with its
 * hash annotation, see withHash) would make it.
 */
export function applyReason(desired: Record<string, Json>, live: Record<string, Json> | undefined): string | undefined {
  if (!live) return "absent";
  const want = ((desired.metadata as Record<string, Json>)?.annotations as Record<string, string> | undefined)?.[APPLIED_HASH_ANNOTATION];
  const have = ((live.metadata as Record<string, Json>)?.annotations as Record<string, string> | undefined)?.[APPLIED_HASH_ANNOTATION];
  if (want !== undefined && want !== have) return "changed";
  const { apiVersion: _a, kind: _k, ...rest } = desired;
  const diff = firstDifference(rest, live);
  return diff ? `drift at ${diff}` : undefined;
}
