// Route decisions for recipient domains: MX lookup (resolver.ts), provider (provider.ts), and the
// provider's recipients per transaction. Also the acceptance side's fast path: routeFromCache()
// splits an envelope into ready parts without any lookup when every recipient domain is in the
// MX cache, so a message to a domain seen recently skips the route stage (one queue hop less).
//
//   const router = routerFor(ctx);               // one per relay process
//   const parts = router.routeFromCache(env, plan);
//   if (parts) publish each to subjects.ready(pool, p.provider!) with msgID `${p.id}:${p.part}`
//   else publish env to subjects.route(pool) (as today)
import type { ProviderPlan } from "../../api/plan.ts";
import type { PlanIndex } from "../plan/index.ts";
import type { Envelope } from "../queue/envelope.ts";
import type { RelayContext } from "../runtime/context.ts";
import { DnsClient, DnsTemporaryError } from "./dns.ts";
import { DEFAULT_PROVIDER, providerFor } from "./provider.ts";
import { MxResolver, type RouteResult } from "./resolver.ts";
import { dnsRetryReply, noMailReply, nullMxReply, nxdomainReply, splitEnvelope, type RouteDecision, type SplitResult } from "./split.ts";
import { MtaSts } from "./mta-sts.ts";

export class Router {
  readonly resolver: MxResolver;
  readonly client: DnsClient;
  readonly mtaSts: MtaSts;

  constructor(opts: { servers: string[]; ca?: string[]; minTtlMs?: number; mtaStsPort?: number }) {
    this.client = new DnsClient({ servers: opts.servers });
    this.resolver = new MxResolver({ client: this.client, ...(opts.minTtlMs !== undefined ? { minTtlMs: opts.minTtlMs } : {}) });
    this.mtaSts = new MtaSts({ client: this.client, resolver: this.resolver, ...(opts.ca ? { ca: opts.ca } : {}), ...(opts.mtaStsPort ? { port: opts.mtaStsPort } : {}) });
  }

  /** `quotaProviders`: providers the relay's pool has warm-up quotas for (PlanIndex.quotaProviders). */
  static decision(domain: string, r: RouteResult, providers: readonly ProviderPlan[], quotaProviders: ReadonlySet<string> = new Set()): RouteDecision {
    switch (r.kind) {
      case "nullmx":
        return { kind: "bounce", reply: nullMxReply(domain) };
      case "nxdomain":
        return { kind: "bounce", reply: nxdomainReply(domain) };
      case "nomail":
        return { kind: "bounce", reply: noMailReply(domain) };
      default: {
        const provider = providerFor(providers, domain, r.hosts);
        const p = providers.find((x) => x.name === provider) ?? providers.find((x) => x.name === DEFAULT_PROVIDER);
        return { kind: "deliver", provider, mx: r.hosts.map((h) => h.host), recipientsPerMessage: recipientsPerTransaction(p, quotaProviders) };
      }
    }
  }

  async decide(domain: string, plan: PlanIndex): Promise<RouteDecision> {
    try {
      return Router.decision(domain, await this.resolver.route(domain), plan.plan.providers, plan.quotaProviders);
    } catch (err) {
      if (err instanceof DnsTemporaryError) return { kind: "retry", reply: dnsRetryReply(domain, err.message) };
      throw err;
    }
  }

  /** Splits a part-0 envelope, looking up what the cache does not know. */
  async split(env: Envelope, plan: PlanIndex): Promise<SplitResult> {
    const domains = [...new Set(env.rcpts.map((r) => r.slice(r.lastIndexOf("@") + 1).toLowerCase().replace(/\.$/, "")))];
    const decisions = new Map(await Promise.all(domains.map(async (d) => [d, await this.decide(d, plan)] as const)));
    return withParts(splitEnvelope(env, (d) => decisions.get(d)!), env);
  }

  /**
   * The fast path for acceptance: ready parts for `env` (part 0) when every recipient domain has a
   * cached route to a provider, or null (then publish to the route queue). Never does I/O; bounces
   * (null MX, NXDOMAIN) are left to the route stage, which owns events, suppression and DSNs.
   */
  routeFromCache(env: Envelope, plan: PlanIndex): Envelope[] | null {
    let miss = false;
    const r = splitEnvelope(env, (d) => {
      const c = this.resolver.cached(d);
      if (!c) {
        miss = true;
        return { kind: "retry", reply: "" };
      }
      return Router.decision(d, c, plan.plan.providers, plan.quotaProviders);
    });
    if (miss || r.bounces.length || r.retry.length || !r.parts.length) return null;
    return withParts(r, env).parts;
  }

  /** Looks a domain up in the background so the next message to it takes the fast path. */
  warm(domain: string): void {
    this.resolver.route(domain).catch(() => {});
  }
}

/**
 * Recipients per transaction to a provider from a pool: the provider's recipientsPerMessage, but
 * one while any of the pool's lanes to it has a warm-up quota (quotaProviders, computed once per
 * plan: this runs per recipient domain of every message). The shaper grants one send slot per
 * transaction and warm-up quotas count recipients, so a transaction with several recipients would
 * spend one slot of quota for many (a 50-recipient message on a day-1 quota of 50, fifty times).
 * Warming volumes are small, so the extra transactions cost little.
 */
export function recipientsPerTransaction(provider: ProviderPlan | undefined, quotaProviders: ReadonlySet<string>): number {
  if (provider && quotaProviders.has(provider.name)) return 1;
  return provider?.lane.recipientsPerMessage ?? 1;
}

/** Marks the parts with their total when this one split made all of them (body deletion). */
function withParts(r: SplitResult, env: Envelope): SplitResult {
  if (!env.routed?.length && !r.retry.length && !r.bounces.length) {
    const n = r.parts.length;
    r.parts = r.parts.map((p) => ({ ...p, parts: n }));
  }
  return r;
}

const routers = new WeakMap<object, Router>();

/** Makes `router` the relay's router (tests that need their own trust anchors or TTLs). */
export function useRouter(ctx: Pick<RelayContext, "config">, router: Router): void {
  routers.set(ctx.config, router);
}

/** The relay's router (one per context: the cache is shared by acceptance and the route stage). */
export function routerFor(ctx: Pick<RelayContext, "config">, opts: { ca?: string[]; minTtlMs?: number; mtaStsPort?: number } = {}): Router {
  let r = routers.get(ctx.config);
  if (!r) {
    r = new Router({ servers: ctx.config.MAILFLEET_DNS_SERVERS, ...opts });
    routers.set(ctx.config, r);
  }
  return r;
}
