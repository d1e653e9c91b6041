// mailfleet status: pools (relays, lanes by state), lanes that are not Healthy (or all), and queue
// depth and oldest age per pool and provider.
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, parseWith } from "../lib/flags.ts";
import { withFleet, type Fleet } from "../lib/fleet.ts";
import { id, listPools } from "../lib/resources.ts";
import { countStates, laneViews, parseOverrides, statesText, type LaneView } from "../lib/lanes.ts";
import { NoQueueStream, queueDepths, type PoolQueue } from "../lib/queue.ts";
import { age, clip, print, printJson, table, warn, when } from "../lib/output.ts";
import { readLaneStates, type LaneRuleState } from "../../relay/shaper/state.ts";
import { SHAPER_BUCKET } from "../../relay/shaper/keys.ts";
import type { IPPool } from "../../api/v1alpha1/index.ts";
import type { Plan } from "../../api/plan.ts";

const usage = `usage: mailfleet status [POOL] [--all-lanes] [common options]

  Pools (relays ready/desired, lanes by state), the lanes that are not Healthy (--all-lanes: every
  lane) with the rule or reason and until when, and the queue per pool and provider: messages,
  waiting (not yet fetched by a relay), in flight (fetched and not yet acked, or handed back by a
  relay that could not send it and not yet fetched again), the oldest message's age, deferred parts
  waiting for their retry, and held mail.

  Lane states come from the plan the relays enforce (manual suspensions, reputation pauses), the
  shaper's response rules in force now, and IPPool status. SOURCE says which. Sending domains
  paused on their bounce or complaint rates are listed with until when: their mail is accepted and
  waits in the queue (as deferred parts) until then.

${COMMON_USAGE}`;

export interface PoolRow {
  pool: string;
  relays: { ready: number; desired: number | null; message?: string };
  lanes: Record<string, number>;
  queued: number;
  oldestAgeSeconds: number | null;
  deferred: number;
  held: number;
  paused?: boolean;
  warnings?: string[];
}

function desired(p: IPPool): number | null {
  const r = p.spec.relay;
  if (r.autoscaling) return p.status?.replicas ?? null;
  return p.spec.egress.mode === "PerAddress" ? r.replicas * p.spec.addresses.length : r.replicas;
}

export const command: Command = {
  summary: "pools, lanes and their state, queue depth and age per pool and provider",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, { "all-lanes": { type: "boolean", default: false } });
    if (positionals.length > 1) throw new UsageError(`unexpected argument "${positionals[1]}"`);
    const only = positionals[0];
    return withFleet(common, async (fleet) => {
      const r = await statusReport(fleet, { namespace: common.namespace, ...(only ? { pool: only } : {}) });
      if (common.output === "json") printJson(statusJson(fleet, r));
      else {
        print(render(r.rows, r.result, r.queues, values["all-lanes"] === true, r.now, r.domainsPaused));
        for (const w of r.warnings) warn(w);
      }
      return r.warnings.some((w) => w.startsWith("NATS")) ? 1 : 0;
    });
  },
};

/** A sending domain the plan pauses on its rates (its mail is held in the queue). */
export interface PausedDomain {
  domain: string;
  pool: string;
  until: string;
  reason: string;
}

export interface StatusReport {
  now: number;
  plan?: Plan;
  domainsPaused: PausedDomain[];
  rows: PoolRow[];
  result: { pool: IPPool; lanes: LaneView[]; queue?: PoolQueue }[];
  queues?: PoolQueue[];
  warnings: string[];
}

/** What `mailfleet status` shows, as data (the local fleet's live view calls this every few seconds). */
export async function statusReport(fleet: Fleet, o: { namespace?: string; pool?: string } = {}): Promise<StatusReport> {
  const now = Date.now();
  let pools = await listPools(fleet, o.namespace);
  if (o.pool) {
    const hit = pools.filter((p) => id(p) === o.pool || p.metadata.name === o.pool);
    if (!hit.length) throw new Error(`IPPool ${o.pool} not found${pools.length ? ` (pools: ${pools.map(id).join(", ")})` : " (there are no IPPools)"}`);
    pools = hit;
  }
  const warnings: string[] = [];
  const { plan, rules, queues } = await natsSide(fleet, pools, warnings, now);
  const result = pools.map((p) => {
    const lanes = laneViews({ pool: p, plan: plan?.pools.find((x) => x.id === id(p)), rules: rules.filter((r) => r.pool === id(p)), now });
    const q = queues?.find((x) => x.pool === id(p));
    return { pool: p, lanes, ...(q ? { queue: q } : {}) };
  });
  const rows: PoolRow[] = result.map(({ pool, lanes, queue }) => poolRow(pool, lanes, queue, now));
  const shownPools = new Set(pools.map(id));
  const domainsPaused = (plan?.domains ?? [])
    .filter((d) => d.paused && Date.parse(d.paused.until) > now && shownPools.has(d.pool))
    .map((d) => ({ domain: d.domain, pool: d.pool, until: d.paused!.until, reason: d.paused!.reason }));
  return { now, ...(plan ? { plan } : {}), domainsPaused, rows, result, ...(queues ? { queues } : {}), warnings };
}

/** The text of `mailfleet status` (without the warnings). */
export function statusText(r: StatusReport, o: { allLanes?: boolean } = {}): string {
  return render(r.rows, r.result, r.queues, o.allLanes === true, r.now, r.domainsPaused);
}

function statusJson(fleet: Fleet, r: StatusReport) {
  return {
    cluster: fleet.server(),
    planRevision: r.plan?.revision ?? null,
    pools: r.rows,
    lanes: r.result.flatMap(({ pool, lanes }) => lanes.map((l) => ({ pool: id(pool), ...l }))),
    domainsPaused: r.domainsPaused,
    queues: (r.queues ?? []).map(queueJson(r.now)),
    warnings: r.warnings,
  };
}

async function natsSide(fleet: Fleet, pools: IPPool[], warnings: string[], now: number): Promise<{ plan?: Plan; rules: LaneRuleState[]; queues?: PoolQueue[] }> {
  let plan: Plan | undefined;
  let rules: LaneRuleState[] = [];
  let queues: PoolQueue[] | undefined;
  try {
    const h = await fleet.nats();
    plan = await fleet.freshPlan();
    if (!plan) warnings.push("no fleet plan in NATS yet (KV mailfleet-plan): is the operator running?");
    const kv = plan ? await fleet.kv(SHAPER_BUCKET, { optional: true }) : undefined;
    if (kv && plan) rules = await readLaneStates(kv, { plan, now });
    try {
      queues = await queueDepths(h, pools.map(id));
    } catch (e) {
      if (!(e instanceof NoQueueStream)) throw e;
      warnings.push(e.message);
      queues = [];
    }
  } catch (e) {
    // The cluster half is still worth showing; the exit code says something failed.
    warnings.push(`NATS: ${(e as Error).message}; lanes and queues are shown from IPPool status only`);
  }
  return { ...(plan ? { plan } : {}), rules, ...(queues ? { queues } : {}) };
}

function poolRow(p: IPPool, lanes: LaneView[], q: PoolQueue | undefined, now: number): PoolRow {
  const workload = p.status?.conditions?.find((c) => c.type === "WorkloadAvailable");
  const queued = q ? q.route.messages + q.providers.reduce((n, x) => n + x.messages, 0) : 0;
  const oldest = q ? Math.min(...[q.route, ...q.providers].map((x) => x.oldestAt ?? Infinity)) : Infinity;
  const { error } = parseOverrides(p);
  const w: string[] = [];
  if (error) w.push(error);
  const paused = p.metadata.annotations?.["mailfleet.io/paused"] === "true";
  if (paused) w.push("reconciliation paused (annotation mailfleet.io/paused)");
  return {
    pool: id(p),
    relays: { ready: p.status?.readyReplicas ?? 0, desired: desired(p), ...(workload?.status === "False" && workload.message ? { message: workload.message } : {}) },
    lanes: countStates(lanes),
    queued,
    oldestAgeSeconds: Number.isFinite(oldest) ? Math.round((now - oldest) / 1000) : null,
    deferred: q?.scheduled ?? 0,
    held: q?.held.messages ?? 0,
    ...(paused ? { paused } : {}),
    ...(w.length ? { warnings: w } : {}),
  };
}

function queueJson(now: number) {
  return (q: PoolQueue) => ({
    pool: q.pool,
    route: sub(q.route, now),
    providers: q.providers.map((p) => ({ provider: p.provider, ...sub(p, now) })),
    deferred: q.scheduled,
    held: sub(q.held, now),
  });
}

function sub(s: { messages: number; waiting?: number; inFlight?: number; paused?: boolean; oldestAt?: number }, now: number) {
  return {
    messages: s.messages,
    waiting: s.waiting ?? null,
    inFlight: s.inFlight ?? null,
    oldestAgeSeconds: s.oldestAt ? Math.round((now - s.oldestAt) / 1000) : null,
    ...(s.paused ? { paused: true } : {}),
  };
}

function render(
  rows: PoolRow[], result: { pool: IPPool; lanes: LaneView[] }[], queues: PoolQueue[] | undefined, allLanes: boolean, now: number, paused: PausedDomain[] = [],
): string {
  if (!rows.length) return "no IPPools";
  const out: string[] = [];
  out.push(table(["pool", "relays", "lanes", "queued", "oldest", "deferred", "held"], rows.map((r) => [
    r.pool,
    `${r.relays.ready}/${r.relays.desired ?? "?"}`,
    statesText(r.lanes),
    r.queued,
    r.oldestAgeSeconds === null ? undefined : age(r.oldestAgeSeconds * 1000),
    r.deferred,
    r.held,
  ])));
  for (const r of rows) {
    if (r.relays.message) out.push(`  ${r.pool}: ${r.relays.message}`);
    for (const w of r.warnings ?? []) out.push(`  ${r.pool}: ${w}`);
  }
  const lanes = result.flatMap(({ pool, lanes }) => lanes.map((l) => ({ pool: id(pool), ...l })));
  const shown = allLanes ? lanes : lanes.filter((l) => l.state !== "Healthy" || l.pending);
  out.push("");
  if (!shown.length) {
    out.push(lanes.length ? `lanes: all ${lanes.length} Healthy (--all-lanes lists them)` : "lanes: none known yet (no plan and no IPPool status.lanes)");
  } else {
    out.push(allLanes ? "LANES" : `LANES not Healthy (${shown.length} of ${lanes.length}; --all-lanes lists every lane)`);
    out.push(table(["pool", "address", "provider", "state", "source", "rule", "until", "reason"], shown.map((l) => [
      l.pool, l.address, l.provider, l.state + (l.pending ? ` (${l.pending})` : ""), l.source === "none" ? undefined : l.source, l.rule, when(l.until, now), clip(l.reason, 60),
    ])));
  }
  if (paused.length) {
    out.push("");
    out.push("DOMAINS paused (mail accepted, held in the queue until then)");
    out.push(table(["domain", "pool", "until", "reason"], paused.map((d) => [d.domain, d.pool, when(d.until, now), clip(d.reason, 60)])));
  }
  if (queues) {
    const qrows = queues.flatMap((q) => [
      ...(q.route.messages ? [[q.pool, "route", q.route.messages, q.route.waiting, q.route.inFlight, q.route.oldestAt ? age(now - q.route.oldestAt) : undefined]] : []),
      ...q.providers.filter((p) => p.messages > 0 || (p.inFlight ?? 0) > 0).map((p) => [
        q.pool, `ready/${p.provider}${p.paused ? " (paused)" : ""}`, p.messages, p.waiting, p.inFlight, p.oldestAt ? age(now - p.oldestAt) : undefined,
      ]),
      ...(q.scheduled ? [[q.pool, "deferred", q.scheduled, undefined, undefined, undefined]] : []),
      ...(q.held.messages ? [[q.pool, "held", q.held.messages, undefined, undefined, q.held.oldestAt ? age(now - q.held.oldestAt) : undefined]] : []),
    ]);
    out.push("");
    out.push(qrows.length ? table(["pool", "queue", "messages", "waiting", "in flight", "oldest"], qrows) : "queues: empty");
  }
  return out.join("\n");
}
