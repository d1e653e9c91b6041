// The fleet-wide lane limiter: every lane's limits hold across all relays, coordinated through
// the KV bucket `mf-shaper` (relay/shaper/README.md has the design, the bound, the costs and the
// failure behaviour).
//
// - Rate and quotas: a lane key holds the lane's send-slot chain and its warm-up quota windows
//   (slots.ts). A relay reserves a batch of slots with one compare-and-set, keeps them in a local
//   stock, hands them to delivery, and delivery spends each at its time (spend(): never after its
//   grace). Batches are sized so a key sees a couple of writes a second whatever its rate.
// - Provider and address limits: capacity in fixed cells (cells.ts), claimed at the lane's slot
//   times; a slot without room in every key is dropped, never sent late.
// - Connections: each relay holds an allowance on the lane key (and provider/address keys with a
//   cap) as an entry that expires unless refreshed, so a dead relay's connections free themselves.
//   A lane's connection rate is a second chain on the lane key: one slot per connection opened.
// - Response rules: applied locally at once, broadcast on a core subject (every relay within
//   milliseconds), persisted in KV (late joiners, restarts, IPPool status); suspensions also push
//   the lane's chain past their end. Merged as envelopes (rulestate.ts), recovered by the clock.
// - NATS unreachable: held slots stay valid; after `fallbackAfterMs` without a successful write,
//   each key is shaped locally on its share (limit / relays last seen on it), never unlimited;
//   back on NATS, the quota spent meanwhile is added to the fleet's count.
import type { Registry } from "prom-client";
import type { LanePlan, Plan, PlanRule, PoolPlan, ProviderPlan } from "../../api/plan.ts";
import type { Logger } from "../runtime/logger.ts";
import { deliveryMetrics } from "../delivery/metrics.ts";
import { claimCells, type CellRequest } from "./cells.ts";
import { localSubject, shaperKeys, ruleSubject, upSubject } from "./keys.ts";
import {
  addSpent, connectionLimit, decodeKey, emptyKey, encodeKey, leaveRelay, liveRelays, localConnections, localShare, othersConnections,
  takeConnection, touchRelay, type KeyState,
} from "./keystate.ts";
import { LANE_STATE_NAMES, shaperMetrics, type LaneStateName, type ShaperMetrics } from "./metrics.ts";
import { applyRule, effective, matchRule, messageEffect, recoveryOf, settle, type Adjustment, type Effective } from "./rules.ts";
import { decodeRule, encodeRule, materiallyStronger, mergeAdjustments, sameAdjustment, type RuleRecord } from "./rulestate.ts";
import { batchSize, graceFor, intervalMs, release as releaseSlots, reserve, windowStart, type SlotLimit, type SlotState } from "./slots.ts";
import { StoreConflict, StoreUnavailable, type ShaperStore } from "./store.ts";
import { laneId, type ConnectionLease, type Grant, type LaneLimiter, type LaneRef, type LaneView, type Observation, type RuleEffect } from "./types.ts";
import type { RuleActivation } from "./local.ts";

const SENDING_STATES = new Set(["Healthy", "Throttled"]);
const DAY_MS = 86_400_000;
/**
 * A relay that found every connection of a key held by live relays reads the key again for another
 * connection at most this often. Its reservations read the key anyway (every lead time), and other
 * relays free connections only when idle for 10 s or when their lease ends, so a quicker recheck
 * would cost a NATS request and reply a second per busy lane and relay for nothing.
 */
const FULL_RECHECK_MS = 3000;
/** A relay on its local share says so this often; heard of no more for 3 times as long, it counts as back. */
const LOCAL_ANNOUNCE_MS = 2000;

export interface FleetLimiterOptions {
  store: ShaperStore;
  /** Unique id of this relay (its Pod name). */
  relayId: string;
  /** The pool whose rule broadcasts this relay follows. */
  pool: string;
  now?: () => number;
  /** A reservation covers about this much of a key's capacity, split among its relays. Default 4 s (3 s cost 0.114 NATS messages per delivery in the shaping bench, 4 s 0.083). */
  leadMs?: number;
  /** At least this many slots per reservation (slow lanes), when wanted. Default 4. */
  minBatch?: number;
  /** Relay entries (presence, connection allowances) expire this long after their last write. Default 30 s. */
  leaseMs?: number;
  /** Without a successful write for this long, shape on the local share. Default 1.5 s. */
  fallbackAfterMs?: number;
  /** How long acquire() waits for a reservation in flight. Default 250 ms. */
  acquireWaitMs?: number;
  registry?: Registry;
  log?: Logger;
  onRule?: (a: RuleActivation) => void;
  /** Background timers (metrics, renewals, probes). Default true; unit tests drive tick() instead. */
  timers?: boolean;
}

interface Held {
  /** Send time. */
  at: number;
  /** Latest send time (lane grace, cell limit). */
  deadline: number;
  /** The lane slot it came from (quota accounting). */
  slot: number;
}

/** One limit key as this relay knows it. */
interface KeyLocal {
  key: string;
  ref: KeyState["ref"];
  known: KeyState | null;
  rev: number;
  /** The last state actually read or written (an empty read does not erase it), and how many relays
   * were live on it then: what the local share is computed from while NATS is unreachable. */
  lastGood: KeyState | null;
  relays: number;
  /** When this relay last wrote the key (its lease refresh), and last read or wrote it. */
  wroteAt: number;
  readAt: number;
  /** My connection allowance on the key, and connections open under it. */
  conns: number;
  open: number;
  /** Last time every allowed connection was in use (or more were wanted). */
  lastBusy: number;
  /** Local share state while NATS is unreachable. */
  local?: {
    s: SlotState;
    cells?: KeyState["cells"];
    /** The chain as last known when the episode began (its head and slot count), and where the local chain began. */
    base?: { tat: number; n: number };
    origin?: number;
    /** Local slots spent so far. */
    spent?: number;
  };
  /**
   * The lane's connection-rate chain on the local share (its share of the rate). Kept until a
   * connection is next taken on the fleet's chain, which then resumes no earlier than its head.
   */
  connLocal?: SlotState;
  /** Serialises writes of this relay on this key. */
  chain: Promise<unknown>;
}

interface LaneLocal {
  ref: LaneRef;
  id: string;
  key: KeyLocal;
  stock: Held[];
  /** Handed to delivery, not yet spent or given back: send time -> deadlines. */
  out: Map<number, number[]>;
  /** Latest send time received. */
  lastAt: number;
  nextTry: number;
  refill?: Promise<void>;
  /** Lane slot times to give back to the quota windows at the next write. */
  pendingRelease: number[];
  /**
   * Slots from this time on were reserved under the lane's current limits (Infinity: none yet since
   * they changed). Only those may go back to the quota windows: a slot reserved under other limits
   * (no quota, another quota) never counted against these, and giving it back would let the lane
   * exceed its quota. The chain only moves forward, so one time marks the change.
   */
  countedFrom: number;
  /** Slots this relay can use per reservation (demand): doubles while it uses all it gets, halves when slots pass unused. */
  want: number;
  missedSinceRefill: number;
  /** Slots the last reservation added, and the back-off while whole batches pass unused (no backlog). */
  lastBatch: number;
  idleMs: number;
  factor: number;
  touched: number;
}

/** A local/up announcement ({"relay": id, "keys": [...]}); undefined when absent or unreadable. */
function announcementOf(d: Uint8Array): { relay: string; keys?: string[] } | undefined {
  if (!d.length) return undefined;
  try {
    const v = JSON.parse(new TextDecoder().decode(d)) as { relay?: unknown; keys?: unknown };
    if (typeof v?.relay !== "string") return undefined;
    const keys = Array.isArray(v.keys) ? v.keys.filter((k): k is string => typeof k === "string") : undefined;
    return { relay: v.relay, ...(keys ? { keys } : {}) };
  } catch {
    return undefined;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)).unref());
}

export class FleetLaneLimiter implements LaneLimiter {
  readonly #store: ShaperStore;
  readonly #self: string;
  readonly #pool: string;
  readonly #now: () => number;
  readonly #lead: number;
  readonly #minBatch: number;
  readonly #lease: number;
  readonly #fallbackAfter: number;
  readonly #acquireWait: number;
  readonly #log?: Logger;
  readonly #metrics?: ShaperMetrics;
  readonly #registry?: Registry;
  readonly #onRule?: (a: RuleActivation) => void;

  #pools = new Map<string, PoolPlan>();
  #lanePlans = new Map<string, LanePlan>();
  #providers = new Map<string, ProviderPlan>();
  #lanes = new Map<string, LaneLocal>();
  #keys = new Map<string, KeyLocal>();
  #laneRules = new Map<string, Adjustment>();
  #provRules = new Map<string, Adjustment>();
  #failingSince: number | undefined;
  #closed = false;
  #stops: (() => void)[] = [];
  #timers: NodeJS.Timeout[] = [];
  #probing = false;
  #lastProbe = 0;
  /** Other relays heard shaping on their local share: relay id -> when last heard, and the keys it named (null: an announcement without them). */
  readonly #othersLocal = new Map<string, { heard: number; keys: Set<string> | null }>();
  #lastAnnounce = 0;
  #metricLabels = new Map<string, Set<string>>();

  constructor(o: FleetLimiterOptions) {
    this.#store = o.store;
    this.#self = o.relayId;
    this.#pool = o.pool;
    this.#now = o.now ?? Date.now;
    this.#lead = o.leadMs ?? 4000;
    this.#minBatch = o.minBatch ?? 4;
    this.#lease = o.leaseMs ?? 30_000;
    this.#fallbackAfter = o.fallbackAfterMs ?? 1500;
    this.#acquireWait = o.acquireWaitMs ?? 250;
    this.#log = o.log;
    this.#registry = o.registry;
    this.#metrics = o.registry ? shaperMetrics(o.registry) : undefined;
    this.#onRule = o.onRule;
    // Rule changes: the core subject is the fast path; the KV watch brings the state in force
    // when the relay starts and repairs anything the core subject lost.
    this.#stops.push(this.#store.subscribe(ruleSubject(this.#pool), (d) => this.#onRecord(decodeRule(d))));
    this.#stops.push(this.#store.subscribe(localSubject(this.#pool), (d) => {
      const a = announcementOf(d);
      if (a && a.relay !== this.#self) this.#othersLocal.set(a.relay, { heard: this.#now(), keys: a.keys ? new Set(a.keys) : null });
    }));
    this.#stops.push(this.#store.subscribe(upSubject(this.#pool), (d) => {
      const relay = announcementOf(d)?.relay;
      if (relay) this.#othersLocal.delete(relay);
      if (this.#failingSince === undefined) return;
      this.#lastProbe = 0;
      void this.tick();
    }));
    this.#stops.push(this.#store.watch(shaperKeys.ruleFilters(this.#pool), (_k, v) => this.#onRecord(decodeRule(v))));
    if (o.timers ?? true) {
      this.#timers.push(setInterval(() => void this.tick(), 1000));
      for (const t of this.#timers) t.unref();
    }
  }

  // ---- plan and views -------------------------------------------------------------------------

  setPlan(plan: Plan): void {
    const limitsOf = (id: string, l: LanePlan | undefined) => {
      const pool = this.#pools.get(id.split("|")[0]!);
      // quotaUntil moves every day by itself: a new day's plan with the same quotas changes nothing.
      const { quotaUntil: _, ...warmup } = pool?.warmup ?? {};
      return JSON.stringify([l?.shape.messageRate, l?.dailyQuota, l?.hourlyQuota, warmup]);
    };
    const oldLimits = new Map([...this.#lanePlans].map(([id, l]) => [id, limitsOf(id, l)]));
    this.#pools = new Map(plan.pools.map((p) => [p.id, p]));
    this.#providers = new Map(plan.providers.map((p) => [p.name, p]));
    this.#lanePlans = new Map();
    for (const pool of plan.pools) {
      for (const l of pool.lanes) this.#lanePlans.set(laneId({ pool: pool.id, address: l.address, provider: l.provider }), l);
    }
    // Lanes that may no longer send (manual suspension, pause, removal) give their slots back now;
    // so do lanes whose rate or quotas changed (slots reserved under the old ones would not count).
    for (const L of this.#lanes.values()) {
      const p = this.#lanePlans.get(L.id);
      if (!p || !SENDING_STATES.has(p.state)) this.#dropStock(L, "dropped");
      else if (oldLimits.has(L.id) && oldLimits.get(L.id) !== limitsOf(L.id, p)) {
        L.countedFrom = Infinity;
        L.pendingRelease = [];
        this.#dropStock(L, "dropped");
        L.nextTry = 0;
      }
    }
  }

  #lane(ref: LaneRef): LaneLocal {
    const id = laneId(ref);
    let L = this.#lanes.get(id);
    if (!L) {
      L = {
        ref: { pool: ref.pool, address: ref.address, provider: ref.provider }, id,
        key: this.#key(shaperKeys.lane(ref), { pool: ref.pool, address: ref.address, provider: ref.provider }),
        stock: [], out: new Map(), lastAt: 0, nextTry: 0, pendingRelease: [], countedFrom: 0, want: 16, missedSinceRefill: 0, lastBatch: 0, idleMs: 0, factor: 1, touched: this.#now(),
      };
      this.#lanes.set(id, L);
    }
    L.touched = this.#now();
    return L;
  }

  #key(key: string, ref: KeyState["ref"]): KeyLocal {
    let k = this.#keys.get(key);
    if (!k) {
      k = { key, ref, known: null, rev: 0, lastGood: null, relays: 1, wroteAt: 0, readAt: 0, conns: 0, open: 0, lastBusy: 0, chain: Promise.resolve() };
      this.#keys.set(key, k);
    }
    return k;
  }

  #laneLimit(ref: LaneRef, plan: LanePlan, factor: number): SlotLimit {
    const warm = this.#pools.get(ref.pool)?.warmup;
    return {
      rate: plan.shape.messageRate, factor, daily: plan.dailyQuota, hourly: plan.hourlyQuota, dayMs: warm?.periodMs ?? DAY_MS, dayZero: warm?.dayZero ?? 0,
      ...(warm?.quotaUntil !== undefined ? { quotaUntil: warm.quotaUntil } : {}),
    };
  }

  /** Provider-wide and address-wide keys that apply to a lane. */
  #secondaries(ref: LaneRef): { k: KeyLocal; limit: SlotLimit | null; maxConns: number | null }[] {
    const out: { k: KeyLocal; limit: SlotLimit | null; maxConns: number | null }[] = [];
    const p = this.#providers.get(ref.provider);
    if (p && (p.limits.messageRate || p.limits.maxConnections !== null)) {
      out.push({
        k: this.#key(shaperKeys.provider(ref.provider), { provider: ref.provider }),
        limit: p.limits.messageRate ? { rate: p.limits.messageRate, factor: 1, daily: null, hourly: null, dayMs: DAY_MS, dayZero: 0 } : null,
        maxConns: p.limits.maxConnections ?? null,
      });
    }
    const a = this.#pools.get(ref.pool)?.addresses.find((x) => x.address === ref.address);
    if (a?.limits && (a.limits.messageRate || a.limits.maxConnections != null)) {
      out.push({
        k: this.#key(shaperKeys.address(ref.address), { address: ref.address }),
        limit: a.limits.messageRate ? { rate: a.limits.messageRate, factor: 1, daily: null, hourly: null, dayMs: DAY_MS, dayZero: 0 } : null,
        maxConns: a.limits.maxConnections ?? null,
      });
    }
    return out;
  }

  #effective(ref: LaneRef, plan: LanePlan, now: number): Effective & { providerSuspended: boolean; rule?: string } {
    const provider = this.#providers.get(ref.provider);
    const rec = recoveryOf(provider);
    const max = plan.shape.maxConnections;
    const lid = laneId(ref);
    const pid = `${ref.pool}|${ref.provider}`;
    const la = settle(this.#laneRules.get(lid), max, rec, now);
    const pa = settle(this.#provRules.get(pid), max, rec, now);
    if (la) this.#laneRules.set(lid, la); else this.#laneRules.delete(lid);
    if (pa) this.#provRules.set(pid, pa); else this.#provRules.delete(pid);
    const a = effective(la, max, rec, now);
    const b = effective(pa, max, rec, now);
    const until = Math.max(a.suspendedUntil ?? 0, b.suspendedUntil ?? 0);
    const rule = la?.suspend?.rule ?? pa?.suspend?.rule ?? la?.slow?.rule ?? la?.cap?.rule;
    return {
      ...(until ? { suspendedUntil: until, suspendedBy: a.suspendedBy ?? b.suspendedBy } : {}),
      factor: Math.min(a.factor, b.factor),
      maxConnections: Math.min(a.maxConnections, b.maxConnections),
      providerSuspended: (b.suspendedUntil ?? 0) > now,
      ...(rule ? { rule } : {}),
    };
  }

  /** When the lane's quota windows are spent (as last known): the next window start; 0 when not. */
  #quotaUntil(L: LaneLocal, plan: LanePlan, now: number): number {
    if (plan.dailyQuota === null && plan.hourlyQuota === null) return 0;
    const limit = this.#laneLimit(L.ref, plan, 1);
    const local = this.#isLocal() && L.key.local;
    const s = local ? L.key.local!.s : L.key.known?.s;
    const quota = local ? localShare(limit, L.key.lastGood?.s, L.key.relays, now) : limit;
    // A window stored ahead of now means the chain was moved past a spent window (slots.ts).
    let until = 0;
    // The plan's quotas are for a day that has ended: held until the next day's plan arrives.
    if (limit.quotaUntil !== undefined && now >= limit.quotaUntil) return now + 250;
    if (quota.daily !== null) {
      const start = windowStart(now, limit.dayMs, limit.dayZero);
      if (s?.day && s.day.start > start) until = s.day.start;
      else if ((s?.day?.start === start ? s.day.used : 0) >= quota.daily) until = start + limit.dayMs;
    }
    if (quota.hourly !== null) {
      const hourMs = limit.dayMs / 24;
      const start = windowStart(now, hourMs, limit.dayZero);
      if (s?.hour && s.hour.start > start) until = Math.max(until, s.hour.start);
      else if ((s?.hour?.start === start ? s.hour.used : 0) >= quota.hourly) until = Math.max(until, start + hourMs);
    }
    return until;
  }

  view(ref: LaneRef): LaneView {
    const now = this.#now();
    const plan = this.#lanePlans.get(laneId(ref));
    const L = this.#lane(ref);
    if (!plan) return { sendable: false, reason: "unknown-lane", maxConnections: 0, open: L.key.open, factor: 0 };
    const eff = this.#effective(ref, plan, now);
    const base = { maxConnections: this.#potentialConnections(L, eff.maxConnections, now), open: L.key.open, factor: eff.factor };
    if (!SENDING_STATES.has(plan.state)) {
      // Plan states (a person's suspension among them) win over everything automation decides.
      const until = plan.until ? Date.parse(plan.until) : undefined;
      return { ...base, sendable: false, reason: "plan-state", ...(until ? { until } : {}) };
    }
    if (eff.suspendedUntil) {
      return { ...base, sendable: false, reason: eff.providerSuspended ? "provider-suspended" : "suspended", until: eff.suspendedUntil };
    }
    // Slots already reserved are this relay's to spend, whatever the quota's count says now; slots
    // this relay will give back may make room (the next reservation returns them first).
    const q = L.stock.length || L.pendingRelease.length ? 0 : this.#quotaUntil(L, plan, now);
    if (q) return { ...base, sendable: false, reason: "quota", until: q };
    return { ...base, sendable: true };
  }

  /** Held by the plan or a rule (not by quota: slots reserved were counted when reserved). */
  #held(ref: LaneRef): boolean {
    const v = this.view(ref);
    return !v.sendable && v.reason !== "quota";
  }

  /**
   * The lane's connection cap as delivery sees it: how many parts it may have in flight. The fleet
   * cap itself (connect() holds each relay to its allowance), so a relay can line up a whole batch
   * of slots while its few connections carry them; on the local share, the share. (Capping it at
   * what other relays do not hold, as last read, left a relay that joined a busy lane with 0 and it
   * never asked for a connection: the fleet e2e scale-up delivered nothing from the new relays.)
   */
  #potentialConnections(L: LaneLocal, max: number, _now: number): number {
    if (this.#isLocal()) return Math.min(max, localConnections(max, L.key.relays));
    return max;
  }

  // ---- send slots -----------------------------------------------------------------------------

  async acquire(ref: LaneRef, n: number): Promise<Grant> {
    const now = this.#now();
    const v = this.view(ref);
    if (!v.sendable || n <= 0) return { slots: [], retryAt: v.until ?? now + 5000 };
    const L = this.#lane(ref);
    this.#expire(L, now);
    if (this.#needsRefill(L, now) && !L.refill) this.#startRefill(L);
    if (!L.stock.length && L.refill) {
      await Promise.race([L.refill, sleep(this.#acquireWait)]);
    }
    const t = this.#now();
    this.#expire(L, t);
    const take = L.stock.splice(0, n);
    for (const h of take) {
      const list = L.out.get(h.at) ?? [];
      list.push(h.deadline);
      L.out.set(h.at, list);
    }
    if (this.#needsRefill(L, t) && !L.refill) this.#startRefill(L);
    // Delivery gives back slots that pass while its fetch waits; spend() has the exact deadline.
    if (take.length) return { slots: take.map((h) => h.at), retryAt: t, graceMs: Math.min(...take.map((h) => h.deadline - h.at)) };
    return { slots: [], retryAt: Math.max(t + 20, Math.min(L.nextTry, t + 1000)) };
  }

  /**
   * Called by delivery right before it opens a transaction on a slot: false when the slot may no
   * longer be spent (its grace passed, the lane was suspended meanwhile). The message then goes
   * back to the queue unsent.
   */
  spend(ref: LaneRef, slot: number): boolean {
    const L = this.#lanes.get(laneId(ref));
    if (!L) return false;
    const list = L.out.get(slot);
    const deadline = list?.shift();
    if (list && !list.length) L.out.delete(slot);
    if (deadline === undefined) return false;
    const now = this.#now();
    const labels = this.#labels(L.ref);
    if (this.#held(ref)) {
      this.#metrics?.slots.inc({ ...labels, outcome: "dropped" });
      this.#giveBack(L, [slot]);
      return false;
    }
    // Reserved under other limits (before the plan's quotas changed): it never counted against
    // these quotas, so it may not be spent under them.
    const plan = this.#lanePlans.get(L.id);
    if (plan && (plan.dailyQuota !== null || plan.hourlyQuota !== null) && slot < L.countedFrom) {
      this.#metrics?.slots.inc({ ...labels, outcome: "dropped" });
      return false;
    }
    if (now > deadline || now < slot - 2) {
      this.#metrics?.slots.inc({ ...labels, outcome: "late" });
      this.#giveBack(L, [slot]);
      return false;
    }
    this.#metrics?.slots.inc({ ...labels, outcome: "spent" });
    const local = L.key.local;
    if (local?.origin !== undefined && slot >= local.origin) local.spent = (local.spent ?? 0) + 1;
    return true;
  }

  release(ref: LaneRef, slots: number[]): void {
    const L = this.#lanes.get(laneId(ref));
    if (!L || !slots.length) return;
    this.#log?.debug("shaper: slots given back by delivery", { lane: L.id, slots: slots.length });
    const now = this.#now();
    const back: Held[] = [];
    for (const s of slots) {
      const list = L.out.get(s);
      const deadline = list?.shift();
      if (list && !list.length) L.out.delete(s);
      if (deadline === undefined) continue;
      if (deadline >= now && !this.#held(ref)) back.push({ at: s, deadline, slot: s });
      else this.#giveBack(L, [s]);
    }
    if (back.length) L.stock = [...back, ...L.stock].sort((a, b) => a.at - b.at);
  }

  /** Stock slots whose grace passed unused: gone (their quota goes back at the next write). */
  #expire(L: LaneLocal, now: number): void {
    let i = 0;
    while (i < L.stock.length && L.stock[i]!.deadline < now) i++;
    if (!i) return;
    const gone = L.stock.splice(0, i);
    this.#metrics?.slots.inc({ ...this.#labels(L.ref), outcome: "missed" }, gone.length);
    this.#giveBack(L, gone.map((h) => h.slot));
    L.missedSinceRefill += gone.length;
  }

  /** Slots that will not be sent go back to the lane's quota windows at its next write. */
  #giveBack(L: LaneLocal, slots: number[]): void {
    const plan = this.#lanePlans.get(L.id);
    if (!slots.length || !plan || (plan.dailyQuota === null && plan.hourlyQuota === null)) return;
    const counted = slots.filter((s) => s >= L.countedFrom);
    if (!counted.length) return;
    L.pendingRelease.push(...counted);
    if (L.pendingRelease.length > 10_000) L.pendingRelease.splice(0, L.pendingRelease.length - 10_000);
  }

  #dropStock(L: LaneLocal, outcome: "dropped" | "missed"): void {
    if (!L.stock.length) return;
    this.#metrics?.slots.inc({ ...this.#labels(L.ref), outcome }, L.stock.length);
    this.#giveBack(L, L.stock.map((h) => h.slot));
    L.stock = [];
  }

  /** How far ahead of now one round of a key's relays reaches, and the batch and horizon to use. */
  #sizing(L: LaneLocal, limit: SlotLimit, relays: number, now: number): { batch: number; span: number; horizon: number } {
    const wanted = L.want;
    const interval = intervalMs(limit);
    const batch = Math.max(batchSize(limit, relays, wanted, this.#lead), Math.min(this.#minBatch, wanted));
    const span = interval > 0 ? relays * batch * interval : 0;
    return { batch, span, horizon: Math.max(2 * this.#lead, 2 * span + this.#lead) };
  }

  #needsRefill(L: LaneLocal, now: number): boolean {
    if (now < L.nextTry) return false;
    if (!L.stock.length) return true;
    const plan = this.#lanePlans.get(L.id);
    if (!plan) return false;
    const limit = this.#laneLimit(L.ref, plan, L.factor);
    const relays = liveRelays(L.key.known, this.#self, now, this.#lease);
    const { span } = this.#sizing(L, limit, relays, now);
    return L.lastAt < now + Math.max(span, 200);
  }

  #startRefill(L: LaneLocal): void {
    // A whole batch passed unused: nothing to send here (delivery asks before it knows whether the
    // queue holds anything). Back off, so idle lanes cost few writes and leave the chain to relays
    // that have mail.
    if (L.lastBatch > 0 && L.missedSinceRefill >= L.lastBatch) {
      L.idleMs = Math.min(4000, Math.max(250, L.idleMs * 2));
      L.lastBatch = 0;
      L.missedSinceRefill = 0;
      L.want = 4;
      L.nextTry = this.#now() + L.idleMs;
      return;
    }
    if (L.missedSinceRefill === 0) L.idleMs = 0;
    // Demand: all used since the last reservation -> ask for more; some passed unused -> less.
    L.want = L.missedSinceRefill > 0 ? Math.max(4, Math.floor(L.want / 2)) : Math.min(L.want * 2, 100_000);
    L.missedSinceRefill = 0;
    L.refill = this.#refill(L)
      .catch((e) => {
        this.#log?.warn("shaper: reservation failed", { lane: L.id, error: e as Error });
        L.nextTry = this.#now() + 200;
      })
      .finally(() => { L.refill = undefined; });
  }

  async #refill(L: LaneLocal): Promise<void> {
    const now = this.#now();
    const plan = this.#lanePlans.get(L.id);
    if (!plan || !this.view(L.ref).sendable) return;
    const eff = this.#effective(L.ref, plan, now);
    const limit = this.#laneLimit(L.ref, plan, eff.factor);
    L.factor = eff.factor;
    const grace = graceFor(limit);
    const labels = this.#labels(L.ref);
    let slots: number[] = [];
    const unlimited = !limit.rate && limit.daily === null && limit.hourly === null;
    if (unlimited) {
      // Nothing to count on the lane key: slots now, as many as delivery can use.
      if (L.stock.length >= 32) return;
      slots = Array.from({ length: 32 - L.stock.length }, () => now);
    } else if (this.#isLocal()) {
      slots = await this.#reserveLocal(L, limit, now);
      this.#metrics?.reservations.inc({ ...labels, result: "local" });
    } else {
      try {
        slots = await this.#reserveFleet(L, limit, eff.maxConnections);
        this.#metrics?.reservations.inc({ ...labels, result: slots.length ? "ok" : "empty" });
      } catch (e) {
        if (!(e instanceof StoreUnavailable)) throw e;
        this.#metrics?.reservations.inc({ ...labels, result: "failed" });
        L.nextTry = this.#now() + 100;
        if (!this.#isLocal()) return;
        slots = await this.#reserveLocal(L, limit, this.#now());
        this.#metrics?.reservations.inc({ ...labels, result: "local" });
      }
    }
    if (this.#log?.enabled("debug")) this.#log.debug("shaper: reservation", { lane: L.id, slots: slots.length, first: slots[0], nextTry: L.nextTry, local: this.#isLocal() });
    if (!slots.length) return;
    if (L.countedFrom === Infinity && !unlimited) L.countedFrom = Math.min(...slots);
    this.#metrics?.slots.inc({ ...labels, outcome: "reserved" }, slots.length);
    let held: Held[] = slots.map((s) => ({ at: s, deadline: s + grace, slot: s }));
    // Provider-wide and address-wide rates: claim cells at these times; what finds no room is dropped.
    for (const sec of this.#secondaries(L.ref)) {
      if (!sec.limit || !held.length) continue;
      held = await this.#claim(sec.k, sec.limit, held, now);
    }
    const kept = new Set(held.map((h) => h.slot));
    const unmatched = slots.filter((s) => !kept.has(s));
    if (unmatched.length) {
      this.#metrics?.slots.inc({ ...labels, outcome: "dropped" }, unmatched.length);
      this.#giveBack(L, unmatched);
    }
    if (!held.length) return;
    // The lane may have been suspended while the reservation was in flight.
    if (this.#held(L.ref)) {
      this.#giveBack(L, held.map((h) => h.slot));
      return;
    }
    L.stock = [...L.stock, ...held].sort((a, b) => a.at - b.at);
    L.lastAt = Math.max(L.lastAt, held[held.length - 1]!.at);
    L.lastBatch = held.length;
    // A slow-down that arrived while the reservation was in flight applies to it too.
    const after = this.#effective(L.ref, plan, this.#now()).factor;
    if (after < eff.factor - 1e-9) this.#thin(L, plan, after);
  }

  /** One compare-and-set on the lane key: a batch of slots, quota given back, my entry refreshed. */
  async #reserveFleet(L: LaneLocal, limit: SlotLimit, maxConns: number): Promise<number[]> {
    const release = L.pendingRelease.splice(0);
    // What the last attempt decided: slots, and when to try again if there were none.
    let slots: number[] = [];
    let nextTry = 0;
    try {
      await this.#update(L.key, (cur, now) => {
        const relays = liveRelays(cur, this.#self, now, this.#lease);
        const chain = this.#leaveLocalShares(L.key.key, limit, cur, relays, now);
        const { batch, horizon } = this.#sizing(L, chain, relays, now);
        let s: SlotState = cur.s ?? { tat: 0 };
        if (release.length) s = releaseSlots(s, limit, release);
        // Back from the local share: its quota use counts, and the fleet's chain resumes after the
        // slots delivery still holds (made on the local share, spent after the rejoin; a chain
        // resumed at `now` would put fleet slots beside them, over the limit). The local stock
        // not handed out is dropped on the rejoin, so it does not push the chain.
        if (L.key.local) s = this.#rejoin(L, s, limit);
        const r = reserve(s, chain, batch, now, horizon);
        // Slots are useless without a connection: ask for one in the same write (only then: a
        // relay that gets no slots must not hold a connection another relay could use).
        const desired = this.#desiredConns(L.key, now);
        const t = touchRelay(cur, this.#self, now, this.#lease, r.slots.length ? Math.max(desired, 1) : desired, maxConns);
        let next: KeyState = { ...t.next, s };
        slots = [];
        if (r.slots.length && (t.conns > 0 || L.key.open > 0)) {
          next = { ...next, s: r.next };
          slots = r.slots;
        } else if (r.slots.length) {
          nextTry = now + 2000; // every connection is held by other relays
        } else {
          // None: quota spent (retryAt = next window) or the chain reaches the horizon (retryAt =
          // its head): come back when a slot can fall within the horizon again. (The windows are
          // kept as they are: reserve() would roll them forward.)
          nextTry = Math.max(now + 20, r.retryAt - horizon + 1);
        }
        const changed = slots.length > 0 || release.length > 0 || Boolean(L.key.local) || t.conns !== L.key.conns || now - L.key.wroteAt > this.#lease / 3;
        return changed ? next : null;
      }, (next) => {
        L.key.conns = next.r[this.#self]?.conns ?? L.key.conns;
        L.key.local = undefined;
      });
    } catch (e) {
      L.pendingRelease.push(...release);
      throw e;
    }
    this.#metrics?.relays.set(this.#labels(L.ref), liveRelays(L.key.known, this.#self, this.#now(), this.#lease));
    if (!slots.length) L.nextTry = nextTry;
    return slots;
  }

  /**
   * The lane's chain on the way back from the local share. Its quota use counts (addSpent), and the
   * chain resumes after the slots delivery still holds (made on the local share, spent after the
   * rejoin: a chain resumed at `now` would put fleet slots beside them). The local stock not handed
   * out was dropped on the rejoin, so it does not push the chain.
   *
   * And the local sends are charged as if they had been reserved on the chain: from the head known
   * when the episode began, the slots the others reserved meanwhile (the chain's count) plus this
   * relay's local ones at the lane's interval. When every relay was on its share, the others
   * reserved nothing and the head lies behind the slots still held; when the others went on
   * reserving at the full rate (they could reach NATS, this relay could not), the chain moves past
   * them by what this relay sent, so the minute that holds the episode is paid back at once.
   */
  #rejoin(L: LaneLocal, s: SlotState, limit: SlotLimit): SlotState {
    const local = L.key.local!;
    const interval = intervalMs(limit);
    let held = 0;
    let outLocal = 0;
    for (const [at, list] of L.out) {
      held = Math.max(held, at + interval);
      if (local.origin !== undefined && at >= local.origin) outLocal += list.length;
    }
    const sent = (local.spent ?? 0) + outLocal;
    const base = local.base;
    const others = base ? Math.max(0, (s.n ?? 0) - base.n) : 0;
    const resume = Math.max(s.tat, held);
    // At most every local send on top (the count is at today's interval: a rule that slowed the
    // lane meanwhile must not stretch the others' slots into a long pause).
    const charged = base && interval > 0 ? Math.min(base.tat + (others + sent) * interval, resume + sent * interval) : 0;
    return { ...addSpent(s, local.s), tat: Math.max(resume, charged), n: (s.n ?? 0) + sent };
  }

  /**
   * The local share of the lane while NATS is unreachable. Its chain starts after every slot the
   * fleet may still hold: the chain head as read now (reads may still work while writes wait for a
   * leader), or else the last head known plus one round of the relays' batches.
   */
  async #reserveLocal(L: LaneLocal, limit: SlotLimit, now: number): Promise<number[]> {
    if (!L.key.local) {
      const before = L.key.lastGood?.s?.tat ?? 0;
      let fresh = false;
      try {
        await this.#read(L.key);
        fresh = Boolean(L.key.known?.s);
      } catch {
        // unreachable: estimate below
      }
      now = this.#now();
      const relays = L.key.relays;
      const share0 = localShare(limit, L.key.lastGood?.s, relays, now);
      const head = fresh ? Math.max(before, L.key.known!.s!.tat) : before + this.#sizing(L, limit, relays, now).span;
      const known = fresh ? L.key.known!.s! : L.key.lastGood?.s;
      const origin = Math.max(now, head, L.lastAt + intervalMs(share0));
      L.key.local = { s: { tat: origin }, origin, spent: 0, ...(known ? { base: { tat: known.tat, n: known.n ?? 0 } } : {}) };
    }
    const share = localShare(limit, L.key.lastGood?.s, L.key.relays, now);
    const local = L.key.local;
    const { batch, span } = this.#sizing(L, share, 1, now);
    const r = reserve(local.s, share, batch, now, Math.max(2 * span, 1000));
    local.s = r.next;
    if (!r.slots.length) L.nextTry = Math.max(now + 20, Math.min(r.retryAt, now + 1000));
    this.#probe(L);
    return r.slots;
  }

  /**
   * The limit this relay reserves a key's capacity under: the whole limit, less the shares of the
   * relays that said they shape this key on their local share (they send that share beside the
   * chain, and the chain does not see it).
   */
  #leaveLocalShares(key: string, limit: SlotLimit, cur: KeyState | null, relays: number, now: number): SlotLimit {
    let local = 0;
    let expired = 0;
    for (const [relay, a] of this.#othersLocal) {
      if (now - a.heard > 3 * LOCAL_ANNOUNCE_MS) {
        this.#othersLocal.delete(relay);
        continue;
      }
      const entry = cur?.r[relay];
      const live = entry !== undefined && now - entry.seen < this.#lease;
      // Its announcement names the keys it shapes on its share: its entry there cannot be refreshed
      // while it is cut off and expires after the lease, but the relay still sends its share.
      if (a.keys ? a.keys.has(key) : live) {
        local++;
        if (!live) expired++;
      }
    }
    const n = relays + expired;
    if (!local || n <= local) return limit;
    return { ...limit, factor: (limit.factor * (n - local)) / n };
  }

  /** This relay, and the keys it shares: those it wrote within a lease before its failure began. */
  #announcement(): Uint8Array {
    const since = (this.#failingSince ?? this.#now()) - this.#lease;
    const keys = [...this.#keys.values()].filter((k) => k.wroteAt > since).map((k) => k.key);
    return new TextEncoder().encode(JSON.stringify({ relay: this.#self, keys }));
  }

  /**
   * While KV does not answer (and so on the local share after fallbackAfterMs): say so now and then,
   * so relays that still reach KV leave this relay its share.
   */
  #announceLocal(): void {
    if (this.#now() - this.#lastAnnounce < LOCAL_ANNOUNCE_MS) return;
    this.#lastAnnounce = this.#now();
    this.#store.publish(localSubject(this.#pool), this.#announcement());
  }

  /** While on the local share: a write now and then tells when NATS is back. */
  #probe(L: LaneLocal): void {
    if (this.#probing || this.#now() - this.#lastProbe < 250) return;
    this.#probing = true;
    this.#lastProbe = this.#now();
    void this.#update(L.key, (cur, t) => touchRelay(cur, this.#self, t, this.#lease, L.key.conns, null).next)
      .catch(() => {})
      .finally(() => { this.#probing = false; });
  }

  /** Claims cells of a provider/address key at the held slots' times (or locally, on its share). */
  async #claim(k: KeyLocal, limit: SlotLimit, held: Held[], now: number): Promise<Held[]> {
    const requests: CellRequest[] = held.map((h) => ({ at: h.at, deadline: h.deadline }));
    let grants: { at: number | null; deadline: number }[] = [];
    const local = () => {
      const share = { ...limit, factor: limit.factor / k.relays };
      const loc = (k.local ??= { s: { tat: 0 } });
      const r = claimCells(loc.cells, share, requests, now);
      loc.cells = r.next;
      grants = r.grants;
    };
    if (this.#isLocal()) local();
    else {
      try {
        await this.#update(k, (cur, t) => {
          const r = claimCells(cur.cells, this.#leaveLocalShares(k.key, limit, cur, liveRelays(cur, this.#self, t, this.#lease), t), requests, t);
          grants = r.grants;
          return { ...touchRelay(cur, this.#self, t, this.#lease, Math.max(k.conns, this.#desiredConns(k, t)), null).next, cells: r.next };
        });
      } catch (e) {
        if (!(e instanceof StoreUnavailable) || !this.#isLocal()) return [];
        local();
      }
    }
    const out: Held[] = [];
    held.forEach((h, i) => {
      const g = grants[i];
      if (g && g.at !== null) out.push({ at: g.at, deadline: g.deadline, slot: h.slot });
    });
    return out.sort((a, b) => a.at - b.at);
  }

  // ---- the store ------------------------------------------------------------------------------

  #isLocal(): boolean {
    return this.#failingSince !== undefined && this.#now() - this.#failingSince >= this.#fallbackAfter;
  }

  #ok(): void {
    if (this.#failingSince === undefined) return;
    const wasLocal = this.#isLocal();
    this.#failingSince = undefined;
    this.#metrics?.fallback.set(0);
    // The others may still be on their local shares: tell them to try now; and those that left this
    // relay its share may take the whole chain again.
    if (wasLocal || this.#lastAnnounce) this.#store.publish(upSubject(this.#pool), this.#announcement());
    this.#lastAnnounce = 0;
    if (wasLocal) {
      this.#log?.info("shaper: NATS reachable again; back on the fleet's limits");
      // Slots made on the local share stay with delivery until spent; the stock goes.
      for (const L of this.#lanes.values()) if (L.key.local) this.#dropStock(L, "dropped");
    }
  }

  #fail(e: unknown): void {
    if (this.#failingSince === undefined) {
      this.#failingSince = this.#now();
      // Said at once, not when the local share begins: the others' reservations reach a lead time
      // ahead, so they must leave this relay its share from now on for the slots it will send then.
      this.#announceLocal();
      this.#log?.warn("shaper: NATS not answering; holding the slots already reserved", { error: e as Error });
      setTimeout(() => {
        if (this.#isLocal()) {
          this.#metrics?.fallback.set(1);
          this.#log?.warn("shaper: shaping on the local share of each limit until NATS answers");
        }
      }, this.#fallbackAfter + 10).unref();
    }
  }

  /**
   * Read-modify-write of one key with compare-and-set, retried on conflicts. `fn` returns the new
   * state, or null when nothing needs writing. Reads first unless this relay wrote the key last and
   * no other relay is live on it (then its copy is current and one message pair does).
   */
  async #update(k: KeyLocal, fn: (cur: KeyState, now: number) => KeyState | null, onWritten?: (next: KeyState) => void): Promise<void> {
    const run = async () => {
      let fresh = k.rev > 0 && k.known !== null && liveRelays(k.known, this.#self, this.#now(), this.#lease) === 1;
      for (let attempt = 0; attempt < 12; attempt++) {
        if (!fresh) await this.#read(k);
        const now = this.#now();
        const next = fn(k.known ?? emptyKey(k.ref), now);
        if (!next) return;
        try {
          const rev = await this.#store.cas(k.key, encodeKey(next), k.rev);
          this.#metrics?.storeOps.inc({ op: "cas", result: "ok" });
          k.known = next;
          k.rev = rev;
          this.#good(k, next, now);
          k.wroteAt = now;
          k.readAt = now;
          this.#ok();
          onWritten?.(next);
          return;
        } catch (e) {
          if (e instanceof StoreConflict) {
            this.#metrics?.storeOps.inc({ op: "cas", result: "conflict" });
            fresh = false;
            if (attempt > 1) await sleep(Math.random() * 5 * attempt);
            continue;
          }
          this.#metrics?.storeOps.inc({ op: "cas", result: "unavailable" });
          this.#fail(e);
          throw e;
        }
      }
      throw new StoreUnavailable(`${k.key}: too many conflicting writers`);
    };
    // One write at a time per key from this relay: its own writes never conflict with each other.
    const p = k.chain.then(run, run);
    k.chain = p.catch(() => {});
    return p;
  }

  #good(k: KeyLocal, state: KeyState, now: number): void {
    k.lastGood = state;
    // While this relay's writes fail, others' may too: their entries then expire because nobody can
    // refresh them, not because their relays left. Count the relays live when the failure began (a
    // smaller local share, never a larger one; a relay read alone would take the whole limit).
    const at = this.#failingSince !== undefined ? Math.min(now, this.#failingSince) : now;
    k.relays = liveRelays(state, this.#self, at, this.#lease);
  }

  async #read(k: KeyLocal): Promise<void> {
    try {
      const got = await this.#store.get(k.key);
      this.#metrics?.storeOps.inc({ op: "get", result: "ok" });
      k.known = got ? decodeKey(got.value) : null;
      k.rev = got?.rev ?? 0;
      k.readAt = this.#now();
      if (k.known) this.#good(k, k.known, k.readAt);
    } catch (e) {
      this.#metrics?.storeOps.inc({ op: "get", result: "unavailable" });
      this.#fail(e);
      throw e;
    }
  }

  // ---- connections ----------------------------------------------------------------------------

  #desiredConns(k: KeyLocal, now: number): number {
    // Keep the allowance while it was recently all in use; otherwise shrink to what is open.
    return now - k.lastBusy < 10_000 ? k.conns : k.open;
  }

  async connect(ref: LaneRef): Promise<ConnectionLease | { retryAt: number }> {
    const now = this.#now();
    const v = this.view(ref);
    const L = this.#lane(ref);
    // Slots delivery holds were counted when reserved: a lane whose quota they spent still gets a
    // connection to send them on (refused, the lane's last quota slots were never sent this hour).
    if (!v.sendable && !(v.reason === "quota" && L.out.size > 0)) return { retryAt: v.until ?? now + 5000 };
    const plan = this.#lanePlans.get(L.id)!;
    const eff = this.#effective(ref, plan, now);
    if (L.key.open >= eff.maxConnections) return { retryAt: now + 250 };
    const rate = plan.shape.connectionRate ? connectionLimit(plan.shape.connectionRate) : null;
    // The chain only moves forward: a slot not due on the copy last read is not due in KV either.
    if (rate && !this.#isLocal()) {
      const due = takeConnection(L.key.known?.c, rate, now, graceFor(rate), L.key.connLocal?.tat);
      if ("retryAt" in due) return { retryAt: due.retryAt };
    }
    const keys: { k: KeyLocal; max: number | null }[] = [{ k: L.key, max: eff.maxConnections }];
    for (const s of this.#secondaries(ref)) if (s.maxConns !== null) keys.push({ k: s.k, max: s.maxConns });
    // The connection-rate slot is taken last, once every cap said yes (a slot taken for a connection
    // that a provider or address cap then refuses is lost to the lane): in the lane key's allowance
    // write when the lane key is the only one, else in a write of its own after the others.
    for (const { k, max } of keys) {
      const retryAt = await this.#admit(k, max, rate && keys.length === 1 ? rate : null, now);
      if (retryAt !== null) return { retryAt };
    }
    if (rate && keys.length > 1) {
      const retryAt = await this.#admit(L.key, null, rate, now);
      if (retryAt !== null) return { retryAt };
    }
    for (const { k } of keys) k.open++;
    let released = false;
    return {
      lane: ref,
      release: () => {
        if (released) return;
        released = true;
        for (const { k } of keys) k.open = Math.max(0, k.open - 1);
      },
    };
  }

  /**
   * One key's say on a new connection: room under its cap (the allowance, grown with one write when
   * used up) and, with `rate`, the next slot of the lane's connection-rate chain (in the same
   * write). Null: yes; else when to ask again.
   */
  async #admit(k: KeyLocal, max: number | null, rate: SlotLimit | null, now: number): Promise<number | null> {
    const need = k.open >= this.#allowance(k, max, now);
    if (!need && !rate) return null;
    if (need) {
      k.lastBusy = now;
      if (this.#isLocal() || max === null) return now + 250;
      // Every connection held by live relays as of a recent read: ask again later, without I/O.
      if (k.known && now - k.readAt < FULL_RECHECK_MS && k.conns + othersConnections(k.known, this.#self, now, this.#lease) >= max) return now + 250;
    }
    if (rate && this.#isLocal()) return this.#localConnection(k, rate, now);
    // What the last attempt decided (the function runs again on a conflict).
    let refused: number | null = null;
    let took = false;
    try {
      await this.#update(k, (cur, t) => {
        refused = null;
        took = false;
        let next: KeyState | null = null;
        let base = cur;
        if (need) {
          const r = touchRelay(cur, this.#self, t, this.#lease, k.open + 1, max);
          if (r.conns !== k.conns || t - k.wroteAt >= this.#lease / 3) next = r.next;
          // No room under the cap: no slot either (checked again below).
          if (!rate || r.conns <= k.open) return next;
          base = r.next;
        }
        const take = takeConnection(cur.c, this.#leaveLocalShares(k.key, rate!, cur, liveRelays(cur, this.#self, t, this.#lease), t), t, graceFor(rate!), k.connLocal?.tat);
        if ("retryAt" in take) {
          refused = take.retryAt;
          return next;
        }
        took = true;
        // A write refreshes this relay's entry (presence), its allowance as it is.
        if (!need) base = touchRelay(cur, this.#self, t, this.#lease, k.conns, null).next;
        return { ...base, c: take.next };
      }, (next) => {
        k.conns = next.r[this.#self]?.conns ?? k.conns;
        if (took) k.connLocal = undefined;
      });
    } catch (e) {
      // On the local share by now (NATS down long enough): the share of the rate, as for the slots.
      if (rate && !need && e instanceof StoreUnavailable && this.#isLocal()) return this.#localConnection(k, rate, this.#now());
      return this.#now() + 500;
    }
    if (refused !== null) return refused;
    if (k.open >= this.#allowance(k, max, this.#now())) return this.#now() + 250;
    return null;
  }

  /**
   * A connection slot on the local share: the rate over the relays last seen live on the key, never
   * unlimited. The chain starts after the fleet chain's head as last known. Null: taken.
   */
  #localConnection(k: KeyLocal, rate: SlotLimit, now: number): number | null {
    const share = localShare(rate, undefined, k.relays, now);
    const take = takeConnection(k.connLocal, share, now, graceFor(rate), k.lastGood?.c?.tat);
    if ("retryAt" in take) return take.retryAt;
    k.connLocal = take.next;
    return null;
  }

  #allowance(k: KeyLocal, max: number | null, now: number): number {
    if (max === null) return Number.POSITIVE_INFINITY;
    if (this.#isLocal()) return localConnections(max, k.relays);
    return Math.min(k.conns, max);
  }

  // ---- response rules -------------------------------------------------------------------------

  async observe(ref: LaneRef, obs: Observation): Promise<RuleEffect> {
    const provider = this.#providers.get(ref.provider);
    if (!provider) return {};
    const rule = matchRule(provider.rules, obs);
    if (!rule) return {};
    if (["SlowDown", "SuspendLane", "SuspendProvider", "CapConnections"].includes(rule.action)) this.#fire(ref, rule, provider);
    if (this.#registry) deliveryMetrics(this.#registry).ruleActivations.inc({ pool: ref.pool, source_ip: ref.address, provider: ref.provider, rule: rule.name, action: rule.action });
    this.#onRule?.({ lane: ref, rule, reply: obs.reply });
    return messageEffect(rule);
  }

  #fire(ref: LaneRef, rule: PlanRule, provider: ProviderPlan): void {
    const now = this.#now();
    const scope = rule.action === "SuspendProvider" ? "provider" : "lane";
    const map = scope === "lane" ? this.#laneRules : this.#provRules;
    const target = scope === "lane" ? laneId(ref) : `${ref.pool}|${ref.provider}`;
    const max = this.#lanePlans.get(laneId(ref))?.shape.maxConnections ?? provider.lane.maxConnections;
    const cur = map.get(target);
    const next = mergeAdjustments(cur, applyRule(cur, rule, max, recoveryOf(provider), now));
    if (!materiallyStronger(cur, next)) return;
    const record: RuleRecord = {
      scope, pool: ref.pool, ...(scope === "lane" ? { address: ref.address } : {}), provider: ref.provider, adj: next!, at: now, by: this.#self,
    };
    this.#log?.info("shaper: response rule fired", { lane: laneId(ref), rule: rule.name, action: rule.action, scope, until: next?.suspend?.until ?? next?.slow?.until ?? next?.cap?.until });
    this.#onRecord(record);
    // Every relay hears it now; KV keeps it for those that join later or missed it.
    this.#store.publish(ruleSubject(ref.pool), encodeRule(record));
    void this.#persistRule(record).catch((e) => this.#log?.warn("shaper: rule state not stored yet", { error: e as Error }));
  }

  async #persistRule(record: RuleRecord, attempts = 30): Promise<void> {
    const key = record.scope === "lane"
      ? shaperKeys.laneRule({ pool: record.pool, address: record.address!, provider: record.provider })
      : shaperKeys.providerRule(record.pool, record.provider);
    for (let i = 0; i < attempts && !this.#closed; i++) {
      try {
        let stored: RuleRecord | null = null;
        let rev = 0;
        const got = await this.#store.get(key);
        if (got) {
          stored = decodeRule(got.value);
          rev = got.rev;
        }
        const merged = mergeAdjustments(stored?.adj, record.adj);
        if (stored && sameAdjustment(stored.adj, merged)) break;
        await this.#store.cas(key, encodeRule({ ...record, adj: merged! }), rev);
        break;
      } catch (e) {
        if (!(e instanceof StoreConflict)) await sleep(500);
      }
    }
    // Suspensions: move the chains past the end, so no relay that has not heard can reserve before it.
    const until = record.adj.suspend?.until;
    if (!until) return;
    const addresses = record.scope === "lane"
      ? [record.address!]
      : (this.#pools.get(record.pool)?.lanes.filter((l) => l.provider === record.provider).map((l) => l.address) ?? []);
    await Promise.all(addresses.map(async (address) => {
      const k = this.#key(shaperKeys.lane({ pool: record.pool, address, provider: record.provider }), { pool: record.pool, address, provider: record.provider });
      for (let i = 0; i < attempts && !this.#closed; i++) {
        try {
          await this.#update(k, (cur) => (cur.s && cur.s.tat >= until ? null : { ...cur, s: { ...(cur.s ?? { tat: 0 }), tat: until } }));
          return;
        } catch {
          await sleep(500);
        }
      }
    }));
  }

  /** A rule record from this relay, the core subject or the KV watch: merge and apply. */
  #onRecord(r: RuleRecord | null): void {
    if (!r) return;
    const map = r.scope === "lane" ? this.#laneRules : this.#provRules;
    const target = r.scope === "lane" ? `${r.pool}|${r.address}|${r.provider}` : `${r.pool}|${r.provider}`;
    const cur = map.get(target);
    const next = mergeAdjustments(cur, r.adj);
    if (sameAdjustment(cur, next)) return;
    map.set(target, next!);
    const now = this.#now();
    for (const L of this.#lanes.values()) {
      if (L.ref.pool !== r.pool || L.ref.provider !== r.provider) continue;
      if (r.scope === "lane" && L.ref.address !== r.address) continue;
      const plan = this.#lanePlans.get(L.id);
      if (!plan) continue;
      const eff = this.#effective(L.ref, plan, now);
      if (eff.suspendedUntil) {
        // Slots already reserved are dropped; those handed to delivery fail spend().
        this.#dropStock(L, "dropped");
        L.nextTry = Math.max(L.nextTry, eff.suspendedUntil);
      } else if (eff.factor < L.factor - 1e-9) {
        this.#thin(L, plan, eff.factor);
      }
    }
  }

  /** Slower now: keep only slots at least the new interval apart; the rest are dropped. */
  #thin(L: LaneLocal, plan: LanePlan, factor: number): void {
    const interval = intervalMs(this.#laneLimit(L.ref, plan, factor));
    L.factor = factor;
    if (interval <= 0 || !L.stock.length) return;
    const keep: Held[] = [];
    let last = Number.NEGATIVE_INFINITY;
    for (const t of L.out.keys()) last = Math.max(last, t);
    for (const h of L.stock) {
      if (h.at >= last + interval) {
        keep.push(h);
        last = h.at;
      } else this.#giveBack(L, [h.slot]);
    }
    this.#metrics?.slots.inc({ ...this.#labels(L.ref), outcome: "dropped" }, L.stock.length - keep.length);
    L.stock = keep;
  }

  /** The rule state in force on a lane, for tests and status. */
  rules(ref: LaneRef): { lane?: Adjustment; provider?: Adjustment } {
    const la = this.#laneRules.get(laneId(ref));
    const pa = this.#provRules.get(`${ref.pool}|${ref.provider}`);
    return { ...(la ? { lane: la } : {}), ...(pa ? { provider: pa } : {}) };
  }

  /** True while shaping on the local share (NATS unreachable past the bound). */
  get local(): boolean {
    return this.#isLocal();
  }

  /**
   * Whether every sending-capable lane of the pool for the provider is held by its warm-up quota
   * (and none by anything else): the condition for sending its backlog through the overflow pool.
   */
  async quotaHeldEverywhere(pool: string, provider: string): Promise<boolean> {
    const p = this.#pools.get(pool);
    if (!p) return false;
    const lanes = p.lanes.filter((l) => l.provider === provider);
    if (!lanes.length) return false;
    for (const lp of lanes) {
      const ref = { pool, address: lp.address, provider };
      const L = this.#lane(ref);
      if (!this.#isLocal() && this.#now() - L.key.readAt > 5000) {
        try {
          await this.#read(L.key);
        } catch {
          return false;
        }
      }
      const v = this.view(ref);
      if (v.sendable || v.reason !== "quota") return false;
    }
    return true;
  }

  dailyQuotaLeft(pool: string, provider: string): number {
    const p = this.#pools.get(pool);
    if (!p) return 0;
    const now = this.#now();
    let left = 0;
    for (const lp of p.lanes) {
      if (lp.provider !== provider || !SENDING_STATES.has(lp.state)) continue;
      if (lp.dailyQuota === null) return Infinity;
      const ref = { pool, address: lp.address, provider };
      const limit = this.#laneLimit(ref, lp, 1);
      if (limit.quotaUntil !== undefined && now >= limit.quotaUntil) continue; // the day's plan is not here yet
      const day = this.#lane(ref).key.known?.s?.day;
      const start = windowStart(now, limit.dayMs, limit.dayZero);
      const used = !day ? 0 : day.start === start ? day.used : day.start > start ? lp.dailyQuota : 0;
      left += Math.max(0, lp.dailyQuota - used);
    }
    return left;
  }

  // ---- housekeeping ---------------------------------------------------------------------------

  /** Periodic work: lease renewals, the NATS probe while on the local share, metrics. */
  async tick(): Promise<void> {
    if (this.#closed) return;
    const now = this.#now();
    for (const L of this.#lanes.values()) {
      this.#expire(L, now);
      // Handed to delivery and never spent nor given back (the part went back to the queue before
      // its transaction, e.g. no connection in time): past their grace they are gone; quota back.
      for (const [t, list] of L.out) {
        const gone = list.filter((d) => d < now - 5000);
        if (!gone.length) continue;
        const keep = list.filter((d) => d >= now - 5000);
        if (keep.length) L.out.set(t, keep);
        else L.out.delete(t);
        this.#metrics?.slots.inc({ ...this.#labels(L.ref), outcome: "late" }, gone.length);
        this.#giveBack(L, gone.map(() => t));
      }
    }
    // Quota of slots that will not be sent goes back now (other relays may be waiting for it).
    if (!this.#isLocal()) {
      for (const L of this.#lanes.values()) {
        if (!L.pendingRelease.length || L.refill) continue;
        const plan = this.#lanePlans.get(L.id);
        if (!plan) continue;
        const give = L.pendingRelease.splice(0);
        this.#log?.debug("shaper: giving back quota", { lane: L.id, slots: give.length });
        const limit = this.#laneLimit(L.ref, plan, L.factor);
        void this.#update(L.key, (cur) => (cur.s ? { ...cur, s: releaseSlots(cur.s, limit, give) } : null))
          .then(() => { L.nextTry = 0; }, () => { L.pendingRelease.push(...give); });
      }
      // A lane held by its quota: other relays may give slots back; look again now and then.
      for (const L of this.#lanes.values()) {
        if (now - L.touched > 60_000 || now - L.key.readAt < 15_000 || this.view(L.ref).reason !== "quota") continue;
        void this.#read(L.key).then(() => {
          if (this.view(L.ref).sendable) L.nextTry = 0;
        }, () => {});
      }
    }
    // Connection allowances are leases: refresh them while held, shrink them when idle.
    if (!this.#isLocal()) {
      for (const k of this.#keys.values()) {
        if (k.conns <= 0 || now - k.wroteAt < this.#lease / 3) continue;
        const want = this.#desiredConns(k, now);
        void this.#update(k, (cur, t) => touchRelay(cur, this.#self, t, this.#lease, want, null).next, (next) => {
          k.conns = Math.max(k.open, next.r[this.#self]?.conns ?? k.conns);
        }).catch(() => {});
      }
    }
    // On the local share: a write now and then tells when NATS is back.
    if (this.#failingSince !== undefined) {
      const L = [...this.#lanes.values()].sort((a, b) => b.touched - a.touched)[0];
      if (L) this.#probe(L);
      this.#announceLocal();
    }
    this.#updateMetrics(now);
  }

  #labels(ref: LaneRef): { pool: string; source_ip: string; provider: string } {
    return { pool: ref.pool, source_ip: ref.address, provider: ref.provider };
  }

  #updateMetrics(now: number): void {
    const m = this.#metrics;
    if (!m) return;
    m.fallback.set(this.#isLocal() ? 1 : 0);
    for (const L of this.#lanes.values()) {
      if (now - L.touched > 10 * 60_000) continue;
      const labels = this.#labels(L.ref);
      const plan = this.#lanePlans.get(L.id);
      if (!plan) continue;
      const v = this.view(L.ref);
      L.touched = Math.min(L.touched, now);
      const state: LaneStateName = !SENDING_STATES.has(plan.state)
        ? (plan.state as LaneStateName)
        : v.reason === "suspended" || v.reason === "provider-suspended" ? "Suspended"
        : v.reason === "quota" ? "QuotaHeld"
        : v.factor < 1 || v.maxConnections < plan.shape.maxConnections || plan.state === "Throttled" ? "Throttled" : "Healthy";
      for (const s of LANE_STATE_NAMES) m.laneState.set({ ...labels, state: s }, s === state ? 1 : 0);
      m.factor.set(labels, v.factor);
      const active = new Set<string>();
      const rules = this.rules(L.ref);
      for (const adj of [rules.lane, rules.provider]) {
        for (const part of [adj?.suspend, adj?.slow, adj?.cap]) {
          if (!part) continue;
          active.add(part.rule);
          m.ruleActive.set({ ...labels, rule: part.rule }, 1);
          m.ruleUntil.set({ ...labels, rule: part.rule }, part.until / 1000);
        }
      }
      const before = this.#metricLabels.get(L.id) ?? new Set();
      for (const r of before) if (!active.has(r)) m.ruleActive.set({ ...labels, rule: r }, 0);
      this.#metricLabels.set(L.id, active);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    for (const s of this.#stops) s();
    if (this.#isLocal()) return;
    // Drain: give back held slots (quota, and the chain's tail when nobody reserved after us) and
    // the connection allowances, so the other relays can use them at once.
    const deadline = this.#now() + 3000;
    await Promise.all([...this.#keys.values()].map(async (k) => {
      if (k.rev === 0 && !k.known) return;
      const L = [...this.#lanes.values()].find((x) => x.key === k);
      const plan = L ? this.#lanePlans.get(L.id) : undefined;
      const give = L ? [...L.stock.map((h) => h.slot), ...L.pendingRelease] : [];
      try {
        await Promise.race([
          this.#update(k, (cur) => {
            let next = leaveRelay(cur, this.#self);
            if (L && plan && cur.s && give.length) {
              const limit = this.#laneLimit(L.ref, plan, L.factor);
              let s = releaseSlots(cur.s, limit, give);
              const interval = intervalMs(limit);
              const last = Math.max(...give);
              if (interval > 0 && Math.abs(last + interval - s.tat) < 1) s = { ...s, tat: Math.max(this.#now(), Math.min(...give)) };
              next = { ...next, s };
            }
            return next;
          }),
          sleep(Math.max(0, deadline - this.#now())),
        ]);
      } catch {
        // leases expire by themselves
      }
    }));
  }
}
