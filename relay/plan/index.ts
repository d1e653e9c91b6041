// Indexes over the fleet plan, built once per applied plan so the per-message path does map
// lookups only. Pure: plan in, index out.
import ipaddr from "ipaddr.js";
import type { DomainPlan, Plan, PoolPlan, ProviderPlan } from "../../api/plan.ts";

export interface CredentialIndex {
  username: string;
  hash: string;
  domains: Set<string>;
}

export interface NetworkIndex {
  cidr: string;
  range: [ipaddr.IPv4 | ipaddr.IPv6, number];
  domains: Set<string>;
}

export interface PlanIndex {
  plan: Plan;
  revision: string;
  /** Lower-cased sending domain -> its plan. */
  domains: Map<string, DomainPlan>;
  pools: Map<string, PoolPlan>;
  providers: Map<string, ProviderPlan>;
  /** This relay's pool (undefined when the plan does not list it yet). */
  pool: PoolPlan | undefined;
  /** Providers that some lane of this relay's pool has a warm-up quota for (quotaProvidersOf). */
  quotaProviders: ReadonlySet<string>;
  credentials: Map<string, CredentialIndex>;
  networks: NetworkIndex[];
}

export function buildIndex(plan: Plan, poolId: string): PlanIndex {
  const domains = new Map(plan.domains.map((d) => [d.domain.toLowerCase(), d] as const));
  const pools = new Map(plan.pools.map((p) => [p.id, p] as const));
  const providers = new Map(plan.providers.map((p) => [p.name, p] as const));
  const credentials = new Map<string, CredentialIndex>();
  for (const c of plan.submitters.credentials) {
    credentials.set(c.username, { username: c.username, hash: c.hash, domains: new Set(c.domains.map((d) => d.toLowerCase())) });
  }
  const networks: NetworkIndex[] = [];
  for (const n of plan.submitters.networks) {
    try {
      networks.push({ cidr: n.cidr, range: ipaddr.parseCIDR(n.cidr), domains: new Set(n.domains.map((d) => d.toLowerCase())) });
    } catch {
      // The operator validates CIDRs; a bad one is skipped rather than failing the whole plan.
    }
  }
  const pool = pools.get(poolId);
  return { plan, revision: plan.revision, domains, pools, providers, pool, quotaProviders: quotaProvidersOf(pool), credentials, networks };
}

/** The providers some lane of the pool has a daily or hourly warm-up quota for. */
export function quotaProvidersOf(pool: PoolPlan | undefined): Set<string> {
  return new Set((pool?.lanes ?? []).filter((l) => l.dailyQuota !== null || l.hourlyQuota !== null).map((l) => l.provider));
}

/** Parses a socket address, unwrapping IPv4-mapped IPv6 (::ffff:a.b.c.d). */
export function parseAddress(address: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  try {
    return ipaddr.process(address);
  } catch {
    return undefined;
  }
}

/** The trusted networks containing this client address (most specific first). */
export function networksFor(index: PlanIndex, address: string): NetworkIndex[] {
  const addr = parseAddress(address);
  if (!addr) return [];
  const out: NetworkIndex[] = [];
  for (const n of index.networks) {
    const [range, bits] = n.range;
    if (range.kind() === addr.kind() && addr.match(range as never, bits)) out.push(n);
  }
  return out.sort((a, b) => b.range[1] - a.range[1]);
}

/** Domains a set of networks may send as. */
export function networkDomains(nets: NetworkIndex[]): Set<string> {
  const s = new Set<string>();
  for (const n of nets) for (const d of n.domains) s.add(d);
  return s;
}
