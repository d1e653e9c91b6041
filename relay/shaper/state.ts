// The shaper's view of lanes for the operator (IPPool status.lanes: which rule holds a lane, on
// which lane, until when) and the CLI. Reads the rule records from KV and evaluates them at a
// given instant with the same pure functions the relays use, so status says what relays enforce.
//
//   import { readLaneStates } from "../relay/shaper/state.ts";
//   const kv = await new Kvm(js).open("mf-shaper");
//   const lanes = await readLaneStates(kv, { plan, now: Date.now() });
//
// Records are per lane (SlowDown, SuspendLane, CapConnections) and per pool x provider
// (SuspendProvider, reported on every lane of the pool for that provider). Manual states come from
// the plan (the IPPool annotation), not from here: the operator merges, and manual wins.
import type { KV } from "@nats-io/kv";
import type { Plan } from "../../api/plan.ts";
import { decodeRule, type RuleRecord } from "./rulestate.ts";
import { effective, recoveryOf, type Adjustment } from "./rules.ts";
import { shaperKeys } from "./keys.ts";
import { decodeKey } from "./keystate.ts";

export interface LaneRuleState {
  pool: string;
  address: string;
  provider: string;
  /** Suspended (by a rule, now), Throttled (slowed or capped, or recovering), Healthy (nothing left). */
  state: "Suspended" | "Throttled" | "Healthy";
  /** The rule in force (the suspension's, else the slow-down's, else the cap's). */
  rule?: string;
  action?: "SlowDown" | "SuspendLane" | "SuspendProvider" | "CapConnections";
  /** When the rule's action ends, RFC 3339 (recovery is gradual after it). */
  until?: string;
  /** Rate multiplier and connection cap in force now. */
  factor: number;
  maxConnections: number;
  /** When the rule last changed, and which relay reported it. */
  since?: string;
  by?: string;
}

export interface ReadOptions {
  /** The plan in force: recovery settings, lane caps, and which lanes a provider rule covers. */
  plan: Plan;
  now?: number;
  /** Only this pool (namespace/name). */
  pool?: string;
}

/** Every rule record in the bucket (lane and provider scope). */
export async function readRuleRecords(kv: KV, pool?: string): Promise<RuleRecord[]> {
  const filters = pool ? shaperKeys.ruleFilters(pool) : shaperKeys.allRules;
  const out: RuleRecord[] = [];
  const keys: string[] = [];
  for (const f of filters) for await (const k of await kv.keys(f)) keys.push(k);
  for (const k of keys) {
    const e = await kv.get(k);
    const r = e?.operation === "PUT" ? decodeRule(e.value) : null;
    if (r) out.push(r);
  }
  return out;
}

/** The rule state per lane, for lanes some rule touched (lanes absent from the result are Healthy). */
export function laneStatesFrom(records: RuleRecord[], o: ReadOptions): LaneRuleState[] {
  const now = o.now ?? Date.now();
  const byLane = new Map<string, { pool: string; address: string; provider: string; lane?: RuleRecord; prov?: RuleRecord }>();
  for (const r of records) {
    if (o.pool && r.pool !== o.pool) continue;
    if (r.scope === "lane") {
      const id = `${r.pool}|${r.address}|${r.provider}`;
      const e = byLane.get(id) ?? { pool: r.pool, address: r.address!, provider: r.provider };
      e.lane = r;
      byLane.set(id, e);
    } else {
      const pool = o.plan.pools.find((p) => p.id === r.pool);
      for (const l of pool?.lanes.filter((x) => x.provider === r.provider) ?? []) {
        const id = `${r.pool}|${l.address}|${r.provider}`;
        const e = byLane.get(id) ?? { pool: r.pool, address: l.address, provider: r.provider };
        e.prov = r;
        byLane.set(id, e);
      }
    }
  }
  const out: LaneRuleState[] = [];
  for (const e of byLane.values()) {
    const provider = o.plan.providers.find((p) => p.name === e.provider);
    const lanePlan = o.plan.pools.find((p) => p.id === e.pool)?.lanes.find((l) => l.address === e.address && l.provider === e.provider);
    const max = lanePlan?.shape.maxConnections ?? provider?.lane.maxConnections ?? 1;
    const rec = recoveryOf(provider);
    const a = effective(e.lane?.adj, max, rec, now);
    const b = effective(e.prov?.adj, max, rec, now);
    const factor = Math.min(a.factor, b.factor);
    const maxConnections = Math.min(a.maxConnections, b.maxConnections);
    const pick = pickRule(e.lane?.adj, e.prov?.adj, now);
    const suspended = (a.suspendedUntil ?? 0) > now || (b.suspendedUntil ?? 0) > now;
    const state = suspended ? "Suspended" : factor < 1 || maxConnections < max ? "Throttled" : "Healthy";
    const src = pick?.fromProvider ? e.prov : e.lane;
    out.push({
      pool: e.pool, address: e.address, provider: e.provider, state,
      ...(pick && state !== "Healthy" ? { rule: pick.rule, action: pick.action, until: new Date(pick.until).toISOString() } : {}),
      factor: suspended ? 0 : factor,
      maxConnections: suspended ? 0 : maxConnections,
      ...(src ? { since: new Date(src.at).toISOString(), by: src.by } : {}),
    });
  }
  return out.sort((x, y) => `${x.pool}|${x.address}|${x.provider}`.localeCompare(`${y.pool}|${y.address}|${y.provider}`));
}

function pickRule(lane: Adjustment | undefined, prov: Adjustment | undefined, now: number):
  { rule: string; action: LaneRuleState["action"]; until: number; fromProvider: boolean } | undefined {
  if (prov?.suspend && prov.suspend.until > now) return { rule: prov.suspend.rule, action: "SuspendProvider", until: prov.suspend.until, fromProvider: true };
  if (lane?.suspend) return { rule: lane.suspend.rule, action: "SuspendLane", until: lane.suspend.until, fromProvider: false };
  if (lane?.slow) return { rule: lane.slow.rule, action: "SlowDown", until: lane.slow.until, fromProvider: false };
  if (lane?.cap) return { rule: lane.cap.rule, action: "CapConnections", until: lane.cap.until, fromProvider: false };
  if (prov?.suspend) return { rule: prov.suspend.rule, action: "SuspendProvider", until: prov.suspend.until, fromProvider: true };
  return undefined;
}

/** Reads the rule records from KV and evaluates them (see laneStatesFrom). */
export async function readLaneStates(kv: KV, o: ReadOptions): Promise<LaneRuleState[]> {
  return laneStatesFrom(await readRuleRecords(kv, o.pool), o);
}

/** A lane key's quota windows and who shares it, as stored (for the CLI and diagnostics). */
export async function readLaneKey(kv: KV, lane: { pool: string; address: string; provider: string }) {
  const e = await kv.get(shaperKeys.lane(lane));
  return e?.operation === "PUT" ? decodeKey(e.value) : null;
}
