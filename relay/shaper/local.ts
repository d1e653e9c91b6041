// The per-relay lane limiter: every limit of the plan enforced in this process's memory (lane,
// provider-wide and address-wide). Exact for a lane whose address only this relay sends from
// (HostNetwork egress: an address belongs to one node); MAILFLEET_SHAPER=local. It uses
// the shaper's slot arithmetic (relay/shaper/slots.ts: GCRA send slots and warm-up quota windows),
// so both count the same way.
import type { LanePlan, Plan, PoolPlan, ProviderPlan } from "../../api/plan.ts";
import { applyRule, effective, matchRule, messageEffect, recoveryOf, settle, type Adjustment, type Effective } from "./rules.ts";
import { graceFor, intervalMs, release as releaseSlots, reserve, windowStart, type SlotLimit, type SlotState } from "./slots.ts";
import { laneId, type ConnectionLease, type Grant, type LaneLimiter, type LaneRef, type LaneView, type Observation, type RuleEffect } from "./types.ts";
import type { PlanRule } from "../../api/plan.ts";

const SENDING_STATES = new Set(["Healthy", "Throttled"]);
const DAY_MS = 86_400_000;

export interface RuleActivation {
  lane: LaneRef;
  rule: PlanRule;
  /** The reply that fired it. */
  reply: string;
}

export interface LocalLimiterOptions {
  now?: () => number;
  /** How far ahead send slots are handed out. Default 1 s. */
  horizonMs?: number;
  /** Called when a response rule fires (metrics, logs). */
  onRule?: (a: RuleActivation) => void;
}

interface LaneState {
  slots: SlotState;
  connSlots: SlotState;
  open: number;
  adj?: Adjustment;
}

interface ProviderState {
  slots: SlotState;
  open: number;
  adj?: Adjustment;
}

/** A source address's own limits (IPPool spec.addresses[].limits), over every lane on it. */
interface AddressState {
  slots: SlotState;
  open: number;
}

/** A limit over several lanes (a provider's, an address's): its state and its rate, when it has one. */
interface GroupLimit {
  state: { slots: SlotState };
  limit: SlotLimit;
}

export class LocalLaneLimiter implements LaneLimiter {
  #now: () => number;
  #horizon: number;
  #onRule?: (a: RuleActivation) => void;
  #pools = new Map<string, PoolPlan>();
  #lanes = new Map<string, LanePlan>();
  #providers = new Map<string, ProviderPlan>();
  #laneState = new Map<string, LaneState>();
  #providerState = new Map<string, ProviderState>();
  #addressState = new Map<string, AddressState>();

  constructor(opts: LocalLimiterOptions = {}) {
    this.#now = opts.now ?? Date.now;
    this.#horizon = opts.horizonMs ?? 1000;
    this.#onRule = opts.onRule;
  }

  setPlan(plan: Plan): void {
    this.#pools = new Map(plan.pools.map((p) => [p.id, p]));
    this.#providers = new Map(plan.providers.map((p) => [p.name, p]));
    this.#lanes = new Map();
    for (const pool of plan.pools) {
      for (const l of pool.lanes) this.#lanes.set(laneId({ pool: pool.id, address: l.address, provider: l.provider }), l);
    }
  }

  #lane(lane: LaneRef): LaneState {
    const id = laneId(lane);
    let s = this.#laneState.get(id);
    if (!s) {
      s = { slots: { tat: 0 }, connSlots: { tat: 0 }, open: 0 };
      this.#laneState.set(id, s);
    }
    return s;
  }

  #prov(lane: LaneRef): ProviderState {
    const id = `${lane.pool}|${lane.provider}`;
    let s = this.#providerState.get(id);
    if (!s) {
      s = { slots: { tat: 0 }, open: 0 };
      this.#providerState.set(id, s);
    }
    return s;
  }

  #addr(lane: LaneRef): AddressState {
    let s = this.#addressState.get(lane.address);
    if (!s) {
      s = { slots: { tat: 0 }, open: 0 };
      this.#addressState.set(lane.address, s);
    }
    return s;
  }

  #addressLimits(lane: LaneRef) {
    return this.#pools.get(lane.pool)?.addresses.find((a) => a.address === lane.address)?.limits;
  }

  /** The provider-wide and address-wide rates that apply to the lane (a rule's factor slows them too). */
  #groups(lane: LaneRef, factor: number): GroupLimit[] {
    const out: GroupLimit[] = [];
    const provider = this.#providers.get(lane.provider);
    if (provider?.limits.messageRate) out.push({ state: this.#prov(lane), limit: this.#groupLimit(provider.limits.messageRate, factor) });
    const a = this.#addressLimits(lane);
    if (a?.messageRate) out.push({ state: this.#addr(lane), limit: this.#groupLimit(a.messageRate, factor) });
    return out;
  }

  #limit(lane: LaneRef, plan: LanePlan, factor: number): SlotLimit {
    const warm = this.#pools.get(lane.pool)?.warmup;
    return {
      rate: plan.shape.messageRate,
      factor,
      daily: plan.dailyQuota,
      hourly: plan.hourlyQuota,
      dayMs: warm?.periodMs ?? DAY_MS,
      dayZero: warm?.dayZero ?? 0,
      ...(warm?.quotaUntil !== undefined ? { quotaUntil: warm.quotaUntil } : {}),
    };
  }

  #groupLimit(rate: SlotLimit["rate"], factor: number): SlotLimit {
    return { rate, factor, daily: null, hourly: null, dayMs: DAY_MS, dayZero: 0 };
  }

  /** Rule state of the lane and of its provider, combined. */
  #effective(lane: LaneRef, plan: LanePlan, now: number): Effective {
    const provider = this.#providers.get(lane.provider);
    const rec = recoveryOf(provider);
    const ls = this.#lane(lane);
    const ps = this.#prov(lane);
    ls.adj = settle(ls.adj, plan.shape.maxConnections, rec, now);
    ps.adj = settle(ps.adj, plan.shape.maxConnections, rec, now);
    const a = effective(ls.adj, plan.shape.maxConnections, rec, now);
    const b = effective(ps.adj, plan.shape.maxConnections, rec, now);
    const until = Math.max(a.suspendedUntil ?? 0, b.suspendedUntil ?? 0);
    return {
      ...(until ? { suspendedUntil: until, suspendedBy: a.suspendedBy ?? b.suspendedBy } : {}),
      factor: Math.min(a.factor, b.factor),
      maxConnections: Math.min(a.maxConnections, b.maxConnections),
    };
  }

  /** When the lane's quota windows are spent: the start of the next window; 0 when not spent. */
  #quotaUntil(lane: LaneRef, plan: LanePlan, now: number): number {
    const limit = this.#limit(lane, plan, 1);
    const s = this.#lane(lane).slots;
    let until = 0;
    if (plan.dailyQuota !== null) {
      const start = windowStart(now, limit.dayMs, limit.dayZero);
      if ((s.day?.start === start ? s.day.used : 0) >= plan.dailyQuota) until = start + limit.dayMs;
    }
    if (plan.hourlyQuota !== null) {
      const hourMs = limit.dayMs / 24;
      const start = windowStart(now, hourMs, limit.dayZero);
      if ((s.hour?.start === start ? s.hour.used : 0) >= plan.hourlyQuota) until = Math.max(until, start + hourMs);
    }
    return until;
  }

  view(lane: LaneRef): LaneView {
    const now = this.#now();
    const plan = this.#lanes.get(laneId(lane));
    const ls = this.#lane(lane);
    if (!plan) return { sendable: false, reason: "unknown-lane", maxConnections: 0, open: ls.open, factor: 0 };
    const eff = this.#effective(lane, plan, now);
    const base = { maxConnections: eff.maxConnections, open: ls.open, factor: eff.factor };
    if (!SENDING_STATES.has(plan.state)) {
      const until = plan.until ? Date.parse(plan.until) : undefined;
      return { ...base, sendable: false, reason: "plan-state", ...(until ? { until } : {}) };
    }
    if (eff.suspendedUntil) {
      const provSuspended = (this.#prov(lane).adj?.suspend?.until ?? 0) > now;
      return { ...base, sendable: false, reason: provSuspended ? "provider-suspended" : "suspended", until: eff.suspendedUntil };
    }
    const q = this.#quotaUntil(lane, plan, now);
    if (q) return { ...base, sendable: false, reason: "quota", until: q };
    return { ...base, sendable: true };
  }

  async acquire(lane: LaneRef, n: number): Promise<Grant> {
    const now = this.#now();
    const v = this.view(lane);
    if (!v.sendable || n <= 0) return { slots: [], retryAt: v.until ?? now + 5000 };
    const plan = this.#lanes.get(laneId(lane))!;
    const ls = this.#lane(lane);
    // The wider limits first (provider, address), then the lane's own: each grants at most what the
    // one before did, and a message's slot is the latest of its slots in each.
    const groups = this.#groups(lane, v.factor);
    const reserved: number[][] = [];
    let want = n;
    let retryAt = now + this.#horizon;
    for (const g of groups) {
      const r = reserve(g.state.slots, g.limit, want, now, this.#horizon);
      g.state.slots = r.next;
      reserved.push(r.slots);
      want = r.slots.length;
      retryAt = Math.max(retryAt, r.retryAt);
      if (!want) break;
    }
    const limit = this.#limit(lane, plan, v.factor);
    let slots: number[] = [];
    let laneRetry = retryAt;
    if (want) {
      const r = reserve(ls.slots, limit, want, now, this.#horizon);
      ls.slots = r.next;
      slots = r.slots.map((t, i) => Math.max(t, ...reserved.map((g) => g[i]!)));
      laneRetry = r.retryAt;
    }
    // What a wider limit granted beyond the final count goes back to it.
    reserved.forEach((g, i) => {
      if (g.length > slots.length) groups[i]!.state.slots = this.#rewind(groups[i]!.state.slots, groups[i]!.limit, g.slice(slots.length));
    });
    return { slots, retryAt: slots.length ? Math.max(now, laneRetry) : Math.max(laneRetry, retryAt), graceMs: Math.max(50, graceFor(limit)) };
  }

  /** Returns unused slots to the quota windows and, when they are the chain's tail, to the rate. */
  #rewind(state: SlotState, limit: SlotLimit, slots: number[]): SlotState {
    if (!slots.length) return state;
    const next = releaseSlots(state, limit, slots);
    const interval = intervalMs(limit);
    if (interval <= 0) return next;
    // Only the released slots that end the chain (contiguous up to tat) can be handed out again;
    // slots released from the middle (spent ones lie after them) are simply lost capacity.
    const sorted = [...slots].sort((a, b) => a - b);
    let start = state.tat;
    for (let i = sorted.length - 1; i >= 0 && Math.abs(sorted[i]! + interval - start) < 1; i--) start = sorted[i]!;
    if (start < state.tat) next.tat = Math.max(this.#now(), start);
    return next;
  }

  release(lane: LaneRef, slots: number[]): void {
    const plan = this.#lanes.get(laneId(lane));
    if (!plan || !slots.length) return;
    const ls = this.#lane(lane);
    ls.slots = this.#rewind(ls.slots, this.#limit(lane, plan, this.view(lane).factor || 1), slots);
  }

  async connect(lane: LaneRef): Promise<ConnectionLease | { retryAt: number }> {
    const now = this.#now();
    const v = this.view(lane);
    if (!v.sendable) return { retryAt: v.until ?? now + 5000 };
    const plan = this.#lanes.get(laneId(lane))!;
    const ls = this.#lane(lane);
    const ps = this.#prov(lane);
    const provider = this.#providers.get(lane.provider);
    if (ls.open >= v.maxConnections) return { retryAt: now + 250 };
    const pMax = provider?.limits.maxConnections ?? null;
    if (pMax !== null && ps.open >= pMax) return { retryAt: now + 250 };
    const as = this.#addr(lane);
    const aMax = this.#addressLimits(lane)?.maxConnections ?? null;
    if (aMax !== null && as.open >= aMax) return { retryAt: now + 250 };
    if (plan.shape.connectionRate) {
      const limit: SlotLimit = { rate: plan.shape.connectionRate, factor: 1, daily: null, hourly: null, dayMs: DAY_MS, dayZero: 0 };
      const r = reserve(ls.connSlots, limit, 1, now, 1);
      if (!r.slots.length) return { retryAt: r.retryAt };
      ls.connSlots = r.next;
    }
    ls.open++;
    ps.open++;
    as.open++;
    let released = false;
    return {
      lane,
      release: () => {
        if (released) return;
        released = true;
        ls.open--;
        ps.open--;
        as.open--;
      },
    };
  }

  async observe(lane: LaneRef, obs: Observation): Promise<RuleEffect> {
    const provider = this.#providers.get(lane.provider);
    if (!provider) return {};
    const rule = matchRule(provider.rules, obs);
    if (!rule) return {};
    const now = this.#now();
    const max = this.#lanes.get(laneId(lane))?.shape.maxConnections ?? provider.lane.maxConnections;
    const rec = recoveryOf(provider);
    if (rule.action === "SuspendProvider") {
      const ps = this.#prov(lane);
      ps.adj = applyRule(ps.adj, rule, max, rec, now);
    } else if (rule.action === "SlowDown" || rule.action === "SuspendLane" || rule.action === "CapConnections") {
      const ls = this.#lane(lane);
      ls.adj = applyRule(ls.adj, rule, max, rec, now);
    }
    this.#onRule?.({ lane, rule, reply: obs.reply });
    return messageEffect(rule);
  }

  async close(): Promise<void> {}
}
