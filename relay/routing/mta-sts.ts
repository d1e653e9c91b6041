// MTA-STS (RFC 8461): a recipient domain that publishes `_mta-sts.<domain>` TXT "v=STSv1; id=..."
// and a policy at https://mta-sts.<domain>/.well-known/mta-sts.txt with mode enforce gets mail only
// over STARTTLS with a certificate valid for an MX host its policy lists.
//
// Policies are cached for their max_age; the TXT record is looked at again at most every few
// minutes and a new id triggers a new fetch. A domain that drops its TXT keeps its cached policy
// until max_age (RFC 8461 §5.1). A failed fetch never blocks mail that has no cached policy: the
// domain is treated as having none (§5, "no policy"), as the RFC asks.
import { request } from "node:https";
import { rootCertificates } from "node:tls";
import type { LookupFunction } from "node:net";
import { txtStrings, type DnsClient, DnsTemporaryError } from "./dns.ts";
import type { MxResolver } from "./resolver.ts";

export interface StsPolicy {
  id: string;
  mode: "enforce" | "testing" | "none";
  mx: string[];
  maxAgeS: number;
}

export interface MtaStsOptions {
  client: DnsClient;
  resolver: MxResolver;
  /** Extra trust anchors for the policy host's certificate (tests). */
  ca?: string[];
  /** HTTPS port of policy hosts (443; tests may move it). */
  port?: number;
  fetchTimeoutMs?: number;
  /** How often the TXT record is looked at again. Default 5 min. */
  recheckMs?: number;
  now?: () => number;
}

interface Entry {
  policy: StsPolicy | null;
  /** When the policy (if any) expires (fetch time + max_age). */
  expiresAt: number;
  /** When to look at the TXT record again. */
  recheckAt: number;
}

/** Parses a policy file; throws on anything RFC 8461 §3.2 calls invalid. */
export function parsePolicy(text: string, id: string): StsPolicy {
  const fields = new Map<string, string[]>();
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*([A-Za-z0-9_]+)\s*:\s*(.*?)\s*$/.exec(line);
    if (!m) continue;
    const k = m[1]!.toLowerCase();
    fields.set(k, [...(fields.get(k) ?? []), m[2]!]);
  }
  if (fields.get("version")?.[0] !== "STSv1") throw new Error("MTA-STS policy: version must be STSv1");
  const mode = fields.get("mode")?.[0];
  if (mode !== "enforce" && mode !== "testing" && mode !== "none") throw new Error(`MTA-STS policy: bad mode ${JSON.stringify(mode)}`);
  const maxAge = Number(fields.get("max_age")?.[0]);
  if (!Number.isInteger(maxAge) || maxAge < 0 || maxAge > 31_557_600) throw new Error("MTA-STS policy: bad max_age");
  const mx = (fields.get("mx") ?? []).map((s) => s.toLowerCase().replace(/\.$/, ""));
  if (mode !== "none" && !mx.length) throw new Error("MTA-STS policy: no mx");
  return { id, mode, mx, maxAgeS: maxAge };
}

/** RFC 8461 §4.1: "*.example.com" matches exactly one extra left-most label. */
export function mxMatches(host: string, patterns: string[]): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return patterns.some((p) => {
    if (p.startsWith("*.")) {
      const rest = p.slice(2);
      const dot = h.indexOf(".");
      return dot > 0 && h.slice(dot + 1) === rest;
    }
    return h === p;
  });
}

export function parseStsTxt(records: string[]): string | null {
  const sts = records.filter((r) => /^v=STSv1\s*(;|$)/.test(r));
  if (sts.length !== 1) return null;
  const id = /(?:^|;)\s*id=([A-Za-z0-9]{1,32})\s*(;|$)/.exec(sts[0]!)?.[1];
  return id ?? null;
}

export class MtaSts {
  readonly #o: MtaStsOptions;
  readonly #cache = new Map<string, Entry>();
  readonly #now: () => number;

  constructor(o: MtaStsOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /** The policy in force for a recipient domain, or null. Never throws. */
  async policy(domain: string): Promise<StsPolicy | null> {
    const d = domain.toLowerCase();
    const now = this.#now();
    const cached = this.#cache.get(d);
    const live = cached?.policy && cached.expiresAt > now ? cached.policy : null;
    if (cached && cached.recheckAt > now) return live;
    const recheckAt = now + (this.#o.recheckMs ?? 300_000);
    let id: string | null;
    try {
      const txt = await this.#o.client.query(`_mta-sts.${d}`, "TXT");
      id = txt.rcode === "NOERROR" ? parseStsTxt(txtStrings(txt.answers)) : null;
    } catch (err) {
      if (!(err instanceof DnsTemporaryError)) throw err;
      return live; // DNS trouble: keep what we had, ask again next time
    }
    if (!id) {
      this.#cache.set(d, { policy: live, expiresAt: cached?.expiresAt ?? 0, recheckAt });
      return live;
    }
    if (live && live.id === id) {
      this.#cache.set(d, { ...cached!, recheckAt });
      return live;
    }
    try {
      const text = await this.#fetch(d);
      const policy = parsePolicy(text, id);
      this.#cache.set(d, { policy, expiresAt: now + policy.maxAgeS * 1000, recheckAt });
      return policy;
    } catch {
      // Fetch failed: a cached policy stays in force; without one the domain has none for now.
      this.#cache.set(d, { policy: live, expiresAt: cached?.expiresAt ?? 0, recheckAt: now + 60_000 });
      return live;
    }
  }

  #fetch(domain: string): Promise<string> {
    const host = `mta-sts.${domain}`;
    // Resolve the policy host through the relay's resolver, like everything else it sends to.
    const lookup: LookupFunction = (hostname, options, cb) => {
      this.#o.resolver.addresses(hostname).then(
        (addrs) => {
          if (!addrs.length) return cb(Object.assign(new Error(`no address for ${hostname}`), { code: "ENOTFOUND" }), "", 4);
          if ((options as { all?: boolean }).all) (cb as unknown as (e: null, a: { address: string; family: number }[]) => void)(null, addrs.map((a) => ({ address: a, family: 4 })));
          else cb(null, addrs[0]!, 4);
        },
        (err: Error) => cb(Object.assign(err, { code: "ENOTFOUND" }), "", 4),
      );
    };
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host,
          port: this.#o.port ?? 443,
          path: "/.well-known/mta-sts.txt",
          method: "GET",
          lookup,
          servername: host,
          timeout: this.#o.fetchTimeoutMs ?? 10_000,
          ...(this.#o.ca?.length ? { ca: [...rootCertificates, ...this.#o.ca] } : {}),
          agent: false,
        },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            return reject(new Error(`MTA-STS policy fetch for ${domain}: HTTP ${res.statusCode}`));
          }
          if (!/^text\/plain/i.test(res.headers["content-type"] ?? "")) {
            res.resume();
            return reject(new Error(`MTA-STS policy fetch for ${domain}: content type ${res.headers["content-type"]}`));
          }
          let size = 0;
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => {
            size += c.length;
            if (size > 64 * 1024) req.destroy(new Error("MTA-STS policy too large"));
            else chunks.push(c);
          });
          res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`MTA-STS policy fetch for ${domain}: timeout`)));
      req.on("error", reject);
      req.end();
    });
  }
}
