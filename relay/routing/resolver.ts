// MX resolution for routing, with a bounded cache that honours TTLs.
//
//   domain -> MX hosts by preference (RFC 5321 §5.1)
//           | implicit MX: the domain itself when it has no MX but an address (A, else AAAA)
//           | null MX (RFC 7505: a single MX "." at any preference): the domain takes no mail
//           | NXDOMAIN / no MX and no address: the domain takes no mail
//   host   -> IPv4 addresses (A) or IPv6 addresses (AAAA): a lane asks for its source address's family
//
// Positive answers are cached for their smallest TTL, NXDOMAIN and NODATA for the SOA minimum of
// the authority section (RFC 2308), both clamped to [minTtlMs, maxTtlMs]. DNS failures are not
// cached; an expired answer is served (RFC 8767 serve-stale) when a refresh fails, for at most
// staleMs, so a resolver outage does not stop mail to domains we knew a moment ago. After a failed
// refresh the stale answer is served at once for recheckMs (RFC 8767's failure recheck timer):
// otherwise every lookup would wait for the next timeout first (measured: with the DNS server
// silent, delivery fell from ~10 to 0.7 messages a second).
import { DnsClient, DnsTemporaryError, type DnsAnswer } from "./dns.ts";

export interface MxHost {
  host: string;
  preference: number;
}

export type RouteResult =
  | { kind: "mx"; hosts: MxHost[] }
  /** No MX, but the domain has an address: it is its own MX (RFC 5321 §5.1). */
  | { kind: "implicit"; hosts: MxHost[] }
  | { kind: "nullmx" }
  | { kind: "nxdomain" }
  /** The domain exists but has neither MX nor address records. */
  | { kind: "nomail" };

export interface ResolverOptions {
  client: DnsClient;
  /** Entries kept (domains and hosts together). Default 20,000. */
  maxEntries?: number;
  minTtlMs?: number;
  maxTtlMs?: number;
  /** NXDOMAIN/NODATA TTL when the answer carries no SOA. Default 5 min. */
  negativeTtlMs?: number;
  staleMs?: number;
  /** After a failed refresh, serve the stale answer without asking DNS for this long. Default 30 s. */
  recheckMs?: number;
  now?: () => number;
}

interface Entry<T> {
  value: T;
  expiresAt: number;
  /** Set when a refresh failed: until then the stale value is served without a lookup. */
  recheckAt?: number;
}

/** Insertion-ordered Map used as an LRU: a hit moves the key to the end, the oldest goes first. */
class Lru<T> {
  readonly #map = new Map<string, Entry<T>>();
  readonly #max: number;
  constructor(max: number) {
    this.#max = max;
  }
  get(k: string): Entry<T> | undefined {
    const e = this.#map.get(k);
    if (e) {
      this.#map.delete(k);
      this.#map.set(k, e);
    }
    return e;
  }
  set(k: string, e: Entry<T>): void {
    this.#map.delete(k);
    this.#map.set(k, e);
    while (this.#map.size > this.#max) this.#map.delete(this.#map.keys().next().value!);
  }
  get size(): number {
    return this.#map.size;
  }
}

/** 4: A records, 6: AAAA records. */
export type AddressFamily = 4 | 6;

const recordType = (family: AddressFamily) => (family === 4 ? "A" : "AAAA");

/** Address cache key: IPv4 answers under the bare name, IPv6 ones apart. */
function addrKey(host: string, family: AddressFamily): string {
  return family === 4 ? host : `aaaa:${host}`;
}

function normal(name: string): string {
  return name.trim().toLowerCase().replace(/\.$/, "");
}

export class MxResolver {
  readonly client: DnsClient;
  readonly #routes: Lru<RouteResult>;
  readonly #addrs: Lru<string[]>;
  readonly #minTtl: number;
  readonly #maxTtl: number;
  readonly #negTtl: number;
  readonly #stale: number;
  readonly #recheck: number;
  readonly #now: () => number;
  /** Lookups in progress, so a burst of mail to one new domain asks once. */
  readonly #pending = new Map<string, Promise<unknown>>();

  constructor(opts: ResolverOptions) {
    this.client = opts.client;
    const max = opts.maxEntries ?? 20_000;
    this.#routes = new Lru(max);
    this.#addrs = new Lru(max);
    this.#minTtl = opts.minTtlMs ?? 10_000;
    this.#maxTtl = opts.maxTtlMs ?? 3_600_000;
    this.#negTtl = opts.negativeTtlMs ?? 300_000;
    this.#stale = opts.staleMs ?? 3_600_000;
    this.#recheck = opts.recheckMs ?? 30_000;
    this.#now = opts.now ?? Date.now;
  }

  /** The cached, unexpired route for a domain, without any lookup (for routing at acceptance). */
  cached(domain: string): RouteResult | undefined {
    const e = this.#routes.get(normal(domain));
    return e && e.expiresAt > this.#now() ? e.value : undefined;
  }

  cachedAddresses(host: string, family: AddressFamily = 4): string[] | undefined {
    const e = this.#addrs.get(addrKey(normal(host), family));
    return e && e.expiresAt > this.#now() ? e.value : undefined;
  }

  /** Route for a domain; throws DnsTemporaryError when DNS gives no usable answer. */
  route(domain: string): Promise<RouteResult> {
    const d = normal(domain);
    return this.#cachedOr(this.#routes, `r:${d}`, d, () => this.#lookupRoute(d));
  }

  /** A host's addresses of one family ([] when it has none); throws DnsTemporaryError on DNS failure. */
  addresses(host: string, family: AddressFamily = 4): Promise<string[]> {
    const h = normal(host);
    const key = addrKey(h, family);
    return this.#cachedOr(this.#addrs, `a:${key}`, key, () => this.#lookupAddresses(h, family));
  }

  async #cachedOr<T>(lru: Lru<T>, pendingKey: string, key: string, lookup: () => Promise<Entry<T>>): Promise<T> {
    const e = lru.get(key);
    const now = this.#now();
    if (e && e.expiresAt > now) return e.value;
    if (e?.recheckAt !== undefined && now < e.recheckAt && now - e.expiresAt < this.#stale) return e.value;
    let p = this.#pending.get(pendingKey) as Promise<Entry<T>> | undefined;
    if (!p) {
      p = lookup().finally(() => this.#pending.delete(pendingKey));
      this.#pending.set(pendingKey, p);
    }
    try {
      const fresh = await p;
      lru.set(key, fresh);
      return fresh.value;
    } catch (err) {
      if (err instanceof DnsTemporaryError && e && now - e.expiresAt < this.#stale) {
        e.recheckAt = this.#now() + this.#recheck;
        return e.value;
      }
      throw err;
    }
  }

  #ttl(ms: number): number {
    return Math.min(this.#maxTtl, Math.max(this.#minTtl, ms));
  }

  /** TTL of a negative answer: the SOA's minimum (and its own TTL, whichever is lower). */
  #negative(res: DnsAnswer): number {
    const soa = res.authorities.find((r) => r.type === "SOA");
    if (!soa) return this.#ttl(this.#negTtl);
    const min = (soa.data as { minimum?: number }).minimum ?? Infinity;
    return this.#ttl(Math.min(soa.ttl, min) * 1000);
  }

  async #lookupRoute(domain: string): Promise<Entry<RouteResult>> {
    const now = this.#now();
    const res = await this.client.query(domain, "MX");
    if (res.rcode === "NXDOMAIN") return { value: { kind: "nxdomain" }, expiresAt: now + this.#negative(res) };
    const mx = res.answers.filter((r) => r.type === "MX");
    if (mx.length) {
      const ttl = this.#ttl(Math.min(...mx.map((r) => r.ttl)) * 1000);
      const hosts = mx
        .map((r) => {
          const d = r.data as { preference?: number; exchange: string };
          return { host: normal(d.exchange), preference: d.preference ?? 0 };
        })
        .sort((a, b) => a.preference - b.preference || a.host.localeCompare(b.host));
      // RFC 7505: a null MX is a single MX whose exchange is the root; an empty exchange name
      // decodes as "" or ".".
      if (hosts.length === 1 && hosts[0]!.host === "") return { value: { kind: "nullmx" }, expiresAt: now + ttl };
      const real = hosts.filter((h) => h.host !== "");
      return { value: { kind: "mx", hosts: real }, expiresAt: now + ttl };
    }
    // NODATA for MX: fall back to the domain's own address, IPv4 or IPv6 (RFC 5321 §5.1).
    for (const family of [4, 6] as const) {
      const a = await this.client.query(domain, recordType(family));
      if (a.rcode === "NXDOMAIN") return { value: { kind: "nxdomain" }, expiresAt: now + this.#negative(a) };
      const addrs = this.#addressEntry(a, family, now);
      if (addrs.value.length) {
        // Cache the address too: delivery asks for it next.
        this.#addrs.set(addrKey(domain, family), addrs);
        return { value: { kind: "implicit", hosts: [{ host: domain, preference: 0 }] }, expiresAt: addrs.expiresAt };
      }
    }
    return { value: { kind: "nomail" }, expiresAt: now + this.#negative(res) };
  }

  async #lookupAddresses(host: string, family: AddressFamily): Promise<Entry<string[]>> {
    return this.#addressEntry(await this.client.query(host, recordType(family)), family, this.#now());
  }

  /** The addresses of one family in an answer, cached for their smallest TTL (none: the negative TTL). */
  #addressEntry(res: DnsAnswer, family: AddressFamily, now: number): Entry<string[]> {
    const type = recordType(family);
    const addrs = res.answers.filter((r) => r.type === type);
    if (!addrs.length) return { value: [], expiresAt: now + this.#negative(res) };
    return { value: addrs.map((r) => String(r.data)), expiresAt: now + this.#ttl(Math.min(...addrs.map((r) => r.ttl)) * 1000) };
  }
}
