// Whether the records a SendingDomain needs are in DNS. The lookups are injected (a resolver
// pointed at --dns-servers in the operator, a fake in unit tests); everything else is a comparison.
//
// SPF coverage is judged by mailauth's SPF evaluator (the library receivers' software uses),
// over the same injected lookups: a record verifies when every sending address gets `pass`, so
// includes, redirects and CIDR ranges count as a receiver would count them.
import { spf } from "mailauth/lib/spf/index.js";
import type { DnsRecordStatus } from "../../api/v1alpha1/index.ts";
import type { DesiredRecord } from "./records.ts";

export type RRType = "TXT" | "MX" | "A" | "AAAA";

/** dns.promises.resolve semantics: TXT gives string[][], MX {exchange, priority}[], A/AAAA string[]. */
export type Resolve = (name: string, type: RRType) => Promise<unknown>;

export type Lookup = {
  resolve: Resolve;
  /** PTR names of an address (dns.promises.Resolver#reverse). */
  reverse(address: string): Promise<string[]>;
};

const NOT_FOUND = new Set(["ENOTFOUND", "ENODATA", "NXDOMAIN", "ENONAME"]);

export function isNotFound(err: unknown): boolean {
  return NOT_FOUND.has((err as { code?: string })?.code ?? "");
}

/** One query per (name, type) for a whole check, like a receiver's cache. */
export function memoize(resolve: Resolve): Resolve {
  const cache = new Map<string, Promise<unknown>>();
  return (name, type) => {
    const k = `${type} ${name.toLowerCase()}`;
    let p = cache.get(k);
    if (!p) {
      p = resolve(name, type);
      cache.set(k, p);
    }
    return p;
  };
}

type Answer<T> = { ok: true; value: T } | { ok: false; notFound: boolean; error: string };

async function ask<T>(resolve: Resolve, name: string, type: RRType): Promise<Answer<T>> {
  try {
    return { ok: true, value: (await resolve(name, type)) as T };
  } catch (err) {
    const code = (err as { code?: string }).code ?? (err as Error).message;
    return { ok: false, notFound: isNotFound(err), error: code };
  }
}

/** TXT strings of one record joined, as RFC 6376 and RFC 7208 read them. */
export function joinTxt(record: string[] | string): string {
  return Array.isArray(record) ? record.join("") : record;
}

/** Tag=value pairs of a DKIM or DMARC record (keys lower-cased, values trimmed). */
export function tags(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of text.split(";")) {
    const eq = part.indexOf("=");
    if (eq < 0) continue;
    out.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  return out;
}

type Verdict = { verified: boolean; message?: string };

function lookupFailed(a: { error: string }, what: string): Verdict {
  return { verified: false, message: `DNS lookup of ${what} failed (${a.error}); will retry` };
}

export function checkDkim(r: DesiredRecord, txt: string[][]): Verdict {
  const want = tags(r.value);
  const records = txt.map(joinTxt).filter((t) => /^\s*v\s*=\s*DKIM1/i.test(t) || /(^|;)\s*p\s*=/.test(t));
  if (records.length === 0) return { verified: false, message: `no DKIM record at ${r.name}: publish TXT ${r.name} "${r.value}"` };
  const strip = (s: string | undefined) => (s ?? "").replace(/\s+/g, "");
  for (const t of records) {
    const have = tags(t);
    if (strip(have.get("p")) === strip(want.get("p")) && (have.get("k") ?? "rsa").toLowerCase() === want.get("k")) return { verified: true };
  }
  return { verified: false, message: `the DKIM record at ${r.name} holds a different key: publish TXT ${r.name} "${r.value}"` };
}

export function checkDmarc(r: DesiredRecord, txt: string[][]): Verdict {
  const records = txt.map(joinTxt).filter((t) => /^\s*v\s*=\s*DMARC1\s*(;|$)/i.test(t));
  if (records.length === 0) return { verified: false, message: `no DMARC record at ${r.name}: publish TXT ${r.name} "${r.value}"` };
  if (records.length > 1) return { verified: false, message: `${records.length} DMARC records at ${r.name}; receivers ignore them all: keep one, "${r.value}"` };
  const want = tags(r.value);
  const have = tags(records[0]!);
  for (const key of ["p", "adkim", "aspf"]) {
    const w = (want.get(key) ?? "r").toLowerCase();
    const h = (have.get(key) ?? (key === "p" ? "" : "r")).toLowerCase();
    if (w !== h) return { verified: false, message: `the DMARC record at ${r.name} has ${key}=${h || "(none)"}, expected ${key}=${w}` };
  }
  const rua = new Set((have.get("rua") ?? "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean));
  for (const addr of (want.get("rua") ?? "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean)) {
    if (!rua.has(addr)) return { verified: false, message: `the DMARC record at ${r.name} does not send reports to ${addr}` };
  }
  return { verified: true };
}

export function checkMx(r: DesiredRecord, mx: { exchange: string; priority: number }[]): Verdict {
  const hosts = new Set(mx.map((m) => m.exchange.toLowerCase().replace(/\.$/, "")));
  if (hosts.has(r.value.toLowerCase())) return { verified: true };
  return { verified: false, message: `${r.name} has no MX ${r.value}: publish MX ${r.name} ${r.priority ?? 10} ${r.value}` };
}

/**
 * Addresses to test against a published SPF record: each ip6: address and, for each ip4: block,
 * its first and last address (a record that passes both ends of a range covers all of it unless it
 * is built to trick us, which a published SPF record of one's own domain is not).
 */
export function spfProbes(value: string): string[] {
  const out: string[] = [];
  for (const m of value.split(/\s+/)) {
    if (m.startsWith("ip6:")) out.push(m.slice(4));
    if (!m.startsWith("ip4:")) continue;
    const [addr, bitsText] = m.slice(4).split("/") as [string, string | undefined];
    out.push(addr);
    const bits = bitsText === undefined ? 32 : Number(bitsText);
    if (bits < 32) {
      const n = addr.split(".").reduce((a, o) => a * 256 + Number(o), 0) + 2 ** (32 - bits) - 1;
      out.push([24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join("."));
    }
  }
  return out;
}

async function checkSpf(r: DesiredRecord, txt: string[][], resolve: Resolve): Promise<Verdict> {
  const records = txt.map(joinTxt).filter((t) => /^v=spf1(\s|$)/i.test(t.trim()));
  if (records.length === 0) return { verified: false, message: `no SPF record at ${r.name}: publish TXT ${r.name} "${r.value}"` };
  if (records.length > 1) return { verified: false, message: `${records.length} SPF records at ${r.name} (a permerror for receivers): merge them into "${r.value}"` };
  // The common case, the record published as listed, needs no evaluation.
  if (records[0]!.trim().split(/\s+/).join(" ").toLowerCase() === r.value.toLowerCase()) return { verified: true };
  const missing: string[] = [];
  for (const ip of spfProbes(r.value)) {
    const res = await spf({ ip, sender: `postmaster@${r.name}`, helo: r.name, mta: "mailfleet-operator", resolver: resolve as never, maxElapsedTime: 10_000 });
    if (res.status.result !== "pass") missing.push(`${ip} (${res.status.result})`);
  }
  if (missing.length === 0) return { verified: true };
  const shown = missing.slice(0, 5).join(", ") + (missing.length > 5 ? `, and ${missing.length - 5} more` : "");
  return { verified: false, message: `the SPF record at ${r.name} does not authorise ${shown}: publish "${r.value}"` };
}

/** Each desired record with whether DNS has it, and what to do when it does not. */
export async function verifyRecords(records: DesiredRecord[], lookup: Lookup): Promise<DnsRecordStatus[]> {
  const resolve = memoize(lookup.resolve);
  return Promise.all(records.map(async (r): Promise<DnsRecordStatus> => {
    let verdict: Verdict;
    if (r.type === "MX") {
      const a = await ask<{ exchange: string; priority: number }[]>(resolve, r.name, "MX");
      verdict = a.ok ? checkMx(r, a.value) : a.notFound ? checkMx(r, []) : lookupFailed(a, `MX ${r.name}`);
    } else {
      const a = await ask<string[][]>(resolve, r.name, "TXT");
      const txt = a.ok ? a.value : [];
      if (!a.ok && !a.notFound) verdict = lookupFailed(a, `TXT ${r.name}`);
      else if (r.purpose === "dkim") verdict = checkDkim(r, txt);
      else if (r.purpose === "dmarc") verdict = checkDmarc(r, txt);
      else verdict = await checkSpf(r, txt, resolve);
    }
    return { ...r, verified: verdict.verified, ...(verdict.message ? { message: verdict.message.slice(0, 1024) } : {}) };
  }));
}
