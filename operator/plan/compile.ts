// The plan compiler: a pure function from the custom resources (plus credential hashes, the last
// published plan and the clock) to the fleet plan relays apply. No I/O, so it is tested without a
// cluster.
import { createHash } from "node:crypto";
import {
  DEFAULT_DELIVERY, type DomainPlan, type LanePlan, type LaneShape, PLAN_SCHEMA, type Plan, type PoolPlan, type ProviderPlan,
  type SubmitterPlan,
} from "../../api/plan.ts";
import { parseDuration, parseRate } from "../../api/units.ts";
import {
  type IPPool, LANE_OVERRIDES_ANNOTATION, type LaneOverride, type MailboxProvider, PAUSED_ANNOTATION, type PoolAddress, type SendingDomain,
  type WarmupSchedule, laneKey, objectId,
} from "../../api/v1alpha1/index.ts";
import { type Problem, findProblems } from "./problems.ts";

export type Credential = { namespace: string; secretName: string; username: string; hash: string };

export type CompileInput = {
  providers: MailboxProvider[];
  schedules: WarmupSchedule[];
  pools: IPPool[];
  domains: SendingDomain[];
  credentials: Credential[];
  /** Secrets that exist (namespace/name); omit to skip reference checks on Secrets. */
  secrets?: Set<string>;
  /** The plan in force: objects that are now invalid or paused keep their entry from it. */
  previous: Plan | null;
  now: number;
  delivery?: Partial<Plan["delivery"]>;
};

export type CompileResult = { plan: Plan; problems: Problem[]; /** earliest future time the plan changes by itself */ nextChangeAt: number | null };

/** The conservative provider for recipients nothing else matches, when none is declared. */
export const FALLBACK_DEFAULT_PROVIDER: ProviderPlan = {
  name: "default",
  domains: [],
  mxSuffixes: [],
  lane: { maxConnections: 2, messagesPerConnection: 20, messageRate: { count: 60, periodMs: 60_000 }, connectionRate: null, recipientsPerMessage: 20, tlsRequired: false },
  limits: { messageRate: null, maxConnections: null },
  rules: [],
  feedbackLoop: false,
  recovery: { step: 0.1, intervalMs: 60_000 },
};

export function providerPlan(p: MailboxProvider): ProviderPlan {
  const s = p.spec;
  return {
    name: p.metadata.name,
    domains: [...s.match.domains].sort(),
    mxSuffixes: [...s.match.mxSuffixes].sort(),
    lane: {
      maxConnections: s.shaping.maxConnections,
      messagesPerConnection: s.shaping.messagesPerConnection,
      messageRate: s.shaping.messageRate ? parseRate(s.shaping.messageRate) : null,
      connectionRate: s.shaping.connectionRate ? parseRate(s.shaping.connectionRate) : null,
      recipientsPerMessage: s.shaping.recipientsPerMessage,
      tlsRequired: s.shaping.tls === "Required",
    },
    limits: {
      messageRate: s.limits?.messageRate ? parseRate(s.limits.messageRate) : null,
      maxConnections: s.limits?.maxConnections ?? null,
    },
    rules: s.responseRules.map((r) => ({
      name: r.name,
      ...(r.match.code ? { code: r.match.code } : {}),
      ...(r.match.enhancedCode ? { enhancedCode: r.match.enhancedCode } : {}),
      ...(r.match.text ? { text: r.match.text } : {}),
      ...(r.match.class ? { class: r.match.class } : {}),
      action: r.action,
      ...(r.factor !== undefined ? { factor: r.factor } : {}),
      ...(r.duration ? { durationMs: parseDuration(r.duration) } : {}),
      ...(r.connections !== undefined ? { connections: r.connections } : {}),
      ...(r.classifyAs ? { classifyAs: r.classifyAs } : {}),
    })),
    feedbackLoop: s.feedbackLoop === "ARF",
    recovery: { step: s.recovery.step, intervalMs: parseDuration(s.recovery.interval) },
  };
}

/**
 * An address's own limits, converted as a provider's are. Absent (or empty) in the spec: no limits
 * key, so pools without them publish the same plan (and revision) as before the field existed.
 */
function addressLimits(a: PoolAddress): { limits?: NonNullable<PoolPlan["addresses"][number]["limits"]> } {
  const l = a.limits;
  if (!l || (l.messageRate === undefined && l.maxConnections === undefined)) return {};
  return { limits: { messageRate: l.messageRate ? parseRate(l.messageRate) : null, maxConnections: l.maxConnections ?? null } };
}

/** Parse the lane-overrides annotation; a malformed annotation is reported, never fatal. */
export function laneOverrides(pool: IPPool): { overrides: Record<string, LaneOverride>; error?: string } {
  const raw = pool.metadata.annotations?.[LANE_OVERRIDES_ANNOTATION];
  if (!raw) return { overrides: {} };
  try {
    const value = JSON.parse(raw) as unknown;
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("not a JSON object");
    return { overrides: value as Record<string, LaneOverride> };
  } catch (err) {
    return { overrides: {}, error: `annotation ${LANE_OVERRIDES_ANNOTATION} is not valid JSON: ${(err as Error).message}` };
  }
}

/** The stages a lane of `provider` follows on `schedule`. */
export function stagesFor(schedule: WarmupSchedule, provider: string) {
  return schedule.spec.providers.find((p) => p.provider === provider)?.stages ?? schedule.spec.stages;
}

/** The pool's warm-up windows, and the end of the day whose quotas status.lanes holds (the engine's). */
function warmupWindows(pool: IPPool, periodMs: number): { periodMs: number; dayZero: number; quotaUntil?: number } {
  const open = pool.status?.warmupDay ? Date.parse(pool.status.warmupDay) : NaN;
  return { periodMs, dayZero: 0, ...(Number.isFinite(open) ? { quotaUntil: open + periodMs } : {}) };
}

export function hourlyOf(stage: { daily: number; hourly?: number | undefined }): number {
  return stage.hourly ?? Math.ceil(stage.daily / 12);
}

function isLater(iso: string | undefined, now: number): boolean {
  return iso === undefined || Date.parse(iso) > now;
}

function lanePlan(
  pool: IPPool, address: string, provider: ProviderPlan, schedule: WarmupSchedule | undefined,
  overrides: Record<string, LaneOverride>, now: number, changes: number[],
): LanePlan {
  const status = pool.status?.lanes?.find((l) => l.address === address && l.provider === provider.name);
  const override = overrides[laneKey(address, provider.name)];
  let dailyQuota: number | null = null;
  let hourlyQuota: number | null = null;
  let stage: number | null = null;
  if (schedule) {
    const stages = stagesFor(schedule, provider.name);
    stage = Math.min(Math.max(override?.stage ?? status?.stage ?? 0, 0), stages.length - 1);
    dailyQuota = stages[stage]!.daily;
    hourlyQuota = hourlyOf(stages[stage]!);
  }
  const lane: LanePlan = { address, provider: provider.name, state: "Healthy", shape: provider.lane, dailyQuota, hourlyQuota, stage };
  if (override?.state === "Suspended" && isLater(override.until, now)) {
    lane.state = "Suspended";
    lane.manual = true;
    lane.reason = override.reason ?? "suspended by hand";
    if (override.until) {
      lane.until = override.until;
      changes.push(Date.parse(override.until));
    }
  } else if (status && (status.state === "Paused" || status.state === "Blocked") && isLater(status.until, now)) {
    lane.state = status.state;
    if (status.reason) lane.reason = status.reason;
    if (status.until) {
      lane.until = status.until;
      changes.push(Date.parse(status.until));
    }
  }
  return lane;
}

function domainPlan(d: SendingDomain, now: number, changes: number[]): DomainPlan {
  const s = d.spec;
  // Paused by the warm-up engine on its rates; the plan changes by itself when the pause ends.
  const rep = d.status?.reputation;
  const paused = rep?.state === "Paused" && rep.until && Date.parse(rep.until) > now ? { until: rep.until, reason: rep.reason ?? "paused on its rates" } : undefined;
  if (paused) changes.push(Date.parse(paused.until));
  const ns = d.metadata.namespace ?? "";
  const active = (d.status?.dkim ?? []).filter((k) => k.state === "Active");
  return {
    id: objectId(d.metadata),
    domain: s.domain,
    pool: `${ns}/${s.poolRef.name}`,
    returnPathDomain: s.returnPath.domain ?? `bounces.${s.domain}`,
    verp: s.returnPath.verp,
    dkim: active
      .map((k) => ({
        selector: k.selector,
        algorithm: k.keyType === "Ed25519" ? ("ed25519-sha256" as const) : ("rsa-sha256" as const),
        keyName: dkimKeyName(s.domain, k.selector),
      }))
      .sort((a, b) => a.selector.localeCompare(b.selector)),
    listUnsubscribe: {
      mode: s.listUnsubscribe.mode,
      ...(s.listUnsubscribe.url ? { url: s.listUnsubscribe.url } : {}),
      ...(s.listUnsubscribe.mailto ? { mailto: s.listUnsubscribe.mailto } : {}),
    },
    feedbackIdSender: s.feedbackId?.senderId ?? null,
    notifySender: s.bounces.notifySender,
    suppression: {
      onSubmit: s.suppression.onSubmit,
      complaintTtlMs: parseDuration(s.suppression.complaintTTL),
      unsubscribeTtlMs: parseDuration(s.suppression.unsubscribeTTL),
      hardBounceTtlMs: parseDuration(s.suppression.hardBounceTTL),
    },
    submitRate: s.senders.rateLimit ? parseRate(s.senders.rateLimit) : null,
    webhooks: s.webhooks.map((w) => ({ name: w.name, url: w.url, events: [...w.events], keyName: webhookKeyName(s.domain, w.name) })),
    ...(paused ? { paused } : {}),
  };
}

/** File names in a pool's relay Secret (mounted into relays): DKIM keys and webhook secrets. */
export function dkimKeyName(domain: string, selector: string): string {
  return `dkim.${domain}.${selector}.pem`;
}
export function webhookKeyName(domain: string, webhook: string): string {
  return `webhook.${domain}.${webhook}`;
}

function isPaused(o: { metadata: { annotations?: Record<string, string> } }): boolean {
  return o.metadata.annotations?.[PAUSED_ANNOTATION] === "true";
}

export function planRevision(content: Omit<Plan, "revision" | "generatedAt">): string {
  return createHash("sha256").update(JSON.stringify(content)).digest("hex").slice(0, 16);
}

export function compilePlan(input: CompileInput): CompileResult {
  const { now, previous } = input;
  const live = <T extends { metadata: { deletionTimestamp?: string } }>(list: T[]) => list.filter((o) => !o.metadata.deletionTimestamp);
  const problems = findProblems({ pools: input.pools, domains: input.domains, schedules: input.schedules, secrets: input.secrets });
  const bad = new Set(problems.map((p) => `${p.kind}:${p.id}`));
  const changes: number[] = [];

  const providers = live(input.providers).map(providerPlan).sort((a, b) => a.name.localeCompare(b.name));
  if (!providers.some((p) => p.name === "default")) providers.push(FALLBACK_DEFAULT_PROVIDER);

  const schedules = new Map(live(input.schedules).map((s) => [objectId(s.metadata), s]));
  const pools: PoolPlan[] = [];
  for (const pool of live(input.pools)) {
    const id = objectId(pool.metadata);
    if (bad.has(`IPPool:${id}`) || isPaused(pool)) {
      const kept = previous?.pools.find((p) => p.id === id);
      if (kept) pools.push(kept);
      continue;
    }
    const ns = pool.metadata.namespace ?? "";
    const schedule = pool.spec.warmupScheduleRef ? schedules.get(`${ns}/${pool.spec.warmupScheduleRef.name}`) : undefined;
    const { overrides } = laneOverrides(pool);
    const addresses = [...pool.spec.addresses].sort((a, b) => a.address.localeCompare(b.address));
    pools.push({
      id,
      namespace: ns,
      name: pool.metadata.name,
      addresses: addresses.map((a) => ({
        address: a.address, hostname: a.hostname, ...(a.nodeName ? { nodeName: a.nodeName } : {}), ...addressLimits(a),
      })),
      egress: { mode: pool.spec.egress.mode, bindAddress: pool.spec.egress.bindAddress },
      overflowPool: pool.spec.overflowPoolRef ? `${ns}/${pool.spec.overflowPoolRef.name}` : null,
      warmup: schedule ? warmupWindows(pool, parseDuration(schedule.spec.period)) : null,
      lanes: addresses.flatMap((a) => providers.map((p) => lanePlan(pool, a.address, p, schedule, overrides, now, changes))),
    });
  }
  pools.sort((a, b) => a.id.localeCompare(b.id));

  const domains: DomainPlan[] = [];
  const admittedDomains: SendingDomain[] = [];
  for (const d of live(input.domains)) {
    const id = objectId(d.metadata);
    if (bad.has(`SendingDomain:${id}`) || isPaused(d)) {
      const kept = previous?.domains.find((p) => p.id === id);
      if (kept) domains.push(kept);
      continue;
    }
    admittedDomains.push(d);
    domains.push(domainPlan(d, now, changes));
  }
  domains.sort((a, b) => a.domain.localeCompare(b.domain));

  const content: Omit<Plan, "revision" | "generatedAt"> = {
    schema: PLAN_SCHEMA,
    providers,
    pools,
    domains,
    submitters: submitters(admittedDomains, input.credentials, previous, domains),
    delivery: { ...DEFAULT_DELIVERY, ...input.delivery },
  };
  const plan: Plan = { ...content, revision: planRevision(content), generatedAt: new Date(now).toISOString() } as Plan;
  const future = changes.filter((t) => t > now);
  return { plan, problems, nextChangeAt: future.length ? Math.min(...future) : null };
}

function submitters(domains: SendingDomain[], credentials: Credential[], previous: Plan | null, planned: DomainPlan[]): SubmitterPlan {
  const creds = new Map<string, { username: string; hash: string; domains: Set<string> }>();
  const nets = new Map<string, Set<string>>();
  for (const d of domains) {
    const ns = d.metadata.namespace ?? "";
    for (const c of d.spec.senders.credentials) {
      for (const cred of credentials.filter((x) => x.namespace === ns && x.secretName === c.secretRef.name)) {
        const key = `${cred.username}\0${cred.hash}`;
        const entry = creds.get(key) ?? { username: cred.username, hash: cred.hash, domains: new Set<string>() };
        entry.domains.add(d.spec.domain);
        creds.set(key, entry);
      }
    }
    for (const net of d.spec.senders.trustedNetworks) {
      const set = nets.get(net) ?? new Set<string>();
      set.add(d.spec.domain);
      nets.set(net, set);
    }
  }
  // Domains kept from the previous plan keep their submitters too.
  const admitted = new Set(domains.map((d) => d.spec.domain));
  const kept = new Set(planned.map((d) => d.domain).filter((d) => !admitted.has(d)));
  for (const c of previous?.submitters.credentials ?? []) {
    for (const dom of c.domains.filter((x) => kept.has(x))) {
      const key = `${c.username}\0${c.hash}`;
      const entry = creds.get(key) ?? { username: c.username, hash: c.hash, domains: new Set<string>() };
      entry.domains.add(dom);
      creds.set(key, entry);
    }
  }
  for (const n of previous?.submitters.networks ?? []) {
    for (const dom of n.domains.filter((x) => kept.has(x))) {
      const set = nets.get(n.cidr) ?? new Set<string>();
      set.add(dom);
      nets.set(n.cidr, set);
    }
  }
  return {
    credentials: [...creds.values()]
      .map((c) => ({ username: c.username, hash: c.hash, domains: [...c.domains].sort() }))
      .sort((a, b) => a.username.localeCompare(b.username) || a.hash.localeCompare(b.hash)),
    networks: [...nets.entries()].map(([cidr, ds]) => ({ cidr, domains: [...ds].sort() })).sort((a, b) => a.cidr.localeCompare(b.cidr)),
  };
}

export type { Problem };
