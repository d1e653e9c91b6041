// The interface between delivery and whatever enforces lane limits. Delivery asks before it
// fetches mail (send slots and a connection), and reports every reply it gets; the limiter
// decides. Two implementations: relay/shaper/local.ts (limits per relay, in memory) and the
// fleet-wide shaper over NATS (issue 4), which replaces it without delivery noticing.
//
// Everything is async-capable so a limiter may ask NATS; everything that is only a snapshot
// (view) is synchronous so the scheduler can poll it cheaply.
import type { Plan, PlanRule } from "../../api/plan.ts";
import type { ReplyClass } from "../classify/index.ts";

/** One lane: a source address of a pool, sending to one provider. */
export interface LaneRef {
  pool: string;
  address: string;
  provider: string;
}

export function laneId(l: LaneRef): string {
  return `${l.pool}|${l.address}|${l.provider}`;
}

/**
 * Send slots granted for a lane: the times (ms since epoch, ascending) at which one message each
 * may be sent. A slot is spent at or after its time; the holder waits for it. `slots` may be
 * shorter than asked (empty: nothing now); `retryAt` says when asking again may succeed.
 */
export interface Grant {
  slots: number[];
  retryAt: number;
  /**
   * How late a slot may still be spent (default 250 ms). A slot missed by more is given back and
   * a new one taken: slots saved up and spent together would be a burst over the rate.
   */
  graceMs?: number;
}

/** A connection slot; held while the SMTP connection is open, released when it closes. */
export interface ConnectionLease {
  readonly lane: LaneRef;
  release(): void;
}

/** Why a lane may not send now. */
export type HoldReason = "plan-state" | "suspended" | "provider-suspended" | "quota" | "unknown-lane";

/** A snapshot of a lane for scheduling and metrics. */
export interface LaneView {
  /** False while the plan says Suspended/Paused/Blocked, a rule suspended it, or its quota is spent. */
  sendable: boolean;
  reason?: HoldReason;
  /** When it may send again (when known). */
  until?: number;
  /** Connections allowed now (plan cap, CapConnections, recovery ramp). */
  maxConnections: number;
  /** Connections open now (leases held). */
  open: number;
  /** Rate multiplier in force (SlowDown and its recovery), 1 = full rate. */
  factor: number;
}

/** A reply (or local delivery error) seen on a lane, classified by relay/classify. */
export interface Observation {
  /** The reply as received ("421 4.7.28 ..."), or the local error's equivalent. */
  reply: string;
  code: string;
  enhanced?: string;
  class: ReplyClass | "delivered";
  permanent: boolean;
}

/** What a response rule decided for the message the reply was about. */
export interface RuleEffect {
  /** The rule that fired, if any. */
  rule?: string;
  action?: PlanRule["action"];
  /** Bounce: fail the message now, whatever the code says. */
  bounce?: boolean;
  /** Classify/Bounce with classifyAs: the class to record instead of the classifier's. */
  classifyAs?: ReplyClass;
}

export interface LaneLimiter {
  /** Applies a new plan (lane states, shapes, quotas, rules). */
  setPlan(plan: Plan): void;
  /** Up to `n` send slots for the lane (message rate, hourly and daily quota, provider limits). */
  acquire(lane: LaneRef, n: number): Promise<Grant>;
  /** Returns slots that will not be used (fewer messages than slots, drain, hold). */
  release(lane: LaneRef, slots: number[]): void;
  /** A connection slot (lane and provider caps, connection rate), or when to ask again. */
  connect(lane: LaneRef): Promise<ConnectionLease | { retryAt: number }>;
  /** Feeds a reply; applies any response rule it triggers and says what it means for the message. */
  observe(lane: LaneRef, obs: Observation): Promise<RuleEffect>;
  view(lane: LaneRef): LaneView;
  /**
   * Called right before a transaction opens on a slot: false when the slot may no longer be spent
   * (its grace passed, or the lane was suspended since it was granted); the message then goes back
   * to the queue unsent. Optional: a limiter without it lets every granted slot be spent.
   */
  spend?(lane: LaneRef, slot: number): boolean;
  /**
   * Whether every lane of the pool for the provider is held by its warm-up quota, and none by
   * anything else (suspension, plan state): then the backlog may go to the pool's overflow pool.
   */
  quotaHeldEverywhere?(pool: string, provider: string): Promise<boolean>;
  /**
   * What the pool's sending lanes for a provider may still send in the current warm-up day (as last
   * read; Infinity when one has no daily quota). The backlog beyond it is what overflows: the rest
   * waits for the hourly quotas, so warming lanes still earn their day.
   */
  dailyQuotaLeft?(pool: string, provider: string): number;
  close(): Promise<void>;
}
