// Warm-up and reputation decisions for one lane (source IP x provider), as pure functions. The
// warm-up engine feeds them counters and the clock and writes what they return to IPPool status.
import type { Stage, WarmupScheduleSpec } from "../../api/v1alpha1/index.ts";

/** Recipients the lane attempted at the provider, and what became of them. */
export type LaneCounters = {
  attempted: number;
  delivered: number;
  deferred: number;
  bounced: number;
  /** null: the provider sends no complaint reports, so complaints are unknown (not zero). */
  complaints: number | null;
};

export const ZERO: LaneCounters = { attempted: 0, delivered: 0, deferred: 0, bounced: 0, complaints: 0 };

export function addCounters(a: LaneCounters, b: LaneCounters): LaneCounters {
  return {
    attempted: a.attempted + b.attempted,
    delivered: a.delivered + b.delivered,
    deferred: a.deferred + b.deferred,
    bounced: a.bounced + b.bounced,
    complaints: a.complaints === null || b.complaints === null ? null : a.complaints + b.complaints,
  };
}

/**
 * Adds lanes' counters for a judgement across them (an address, a domain): every attempt counts,
 * but delivered and complaints only from lanes whose provider reports complaints, so the complaint
 * rate's denominator is the mail that could have drawn a complaint; null while none could.
 */
export function addAcrossLanes(into: LaneCounters, c: LaneCounters): void {
  into.attempted += c.attempted;
  into.deferred += c.deferred;
  into.bounced += c.bounced;
  if (c.complaints !== null) {
    into.delivered += c.delivered;
    into.complaints = (into.complaints ?? 0) + c.complaints;
  }
}

export type LaneWarmup = {
  /** Index into the lane's stages. */
  stage: number;
  /** Qualifying days completed. */
  day: number;
  /** `day` when the current stage began. */
  stageStartedDay: number;
  /** Consecutive qualifying days whose gates failed. */
  failedDays: number;
  /** Held by hand: no automatic change. */
  held: boolean;
  /** Counters since the stage began (the gates judge the stage, not one day). */
  stageTotals: LaneCounters;
};

export type WarmupDecision = "Advanced" | "Counted" | "NotCounted" | "Held" | "SteppedBack" | "HeldByHand";

export type DayOutcome = { next: LaneWarmup; decision: WarmupDecision; reason: string };

export type Rates = { bounceRate: number; deferralRate: number; complaintRate: number | null };

export function rates(c: LaneCounters): Rates {
  const a = Math.max(c.attempted, 1);
  return {
    bounceRate: c.bounced / a,
    deferralRate: c.deferred / a,
    complaintRate: c.complaints === null ? null : c.complaints / Math.max(c.delivered, 1),
  };
}

/** Index of the stage in force after `day` qualifying days: the last stage whose day <= day + 1. */
export function stageForDay(stages: Stage[], day: number): number {
  let idx = 0;
  stages.forEach((s, i) => {
    if (s.day <= day + 1) idx = i;
  });
  return idx;
}

export function newLane(stages: Stage[], startStage = 0): LaneWarmup {
  const stage = Math.min(Math.max(startStage, 0), stages.length - 1);
  const day = stages[stage]!.day - 1;
  return { stage, day, stageStartedDay: day, failedDays: 0, held: false, stageTotals: { ...ZERO } };
}

function pct(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

/** Which gate failed, or null when the stage's rates are within the schedule's thresholds. */
export function failedGate(spec: WarmupScheduleSpec, totals: LaneCounters): string | null {
  if (totals.attempted < spec.advance.minSample) return null;
  const r = rates(totals);
  if (r.bounceRate >= spec.advance.maxBounceRate) {
    return `bounce rate ${pct(r.bounceRate)} over the stage is at or above ${pct(spec.advance.maxBounceRate)}`;
  }
  if (r.deferralRate >= spec.advance.maxDeferralRate) {
    return `deferral rate ${pct(r.deferralRate)} over the stage is at or above ${pct(spec.advance.maxDeferralRate)}`;
  }
  if (r.complaintRate !== null && r.complaintRate >= spec.advance.maxComplaintRate) {
    return `complaint rate ${pct(r.complaintRate)} over the stage is at or above ${pct(spec.advance.maxComplaintRate)}`;
  }
  return null;
}

/**
 * End of one warm-up day for a lane: count the day if the lane used at least minUsage of its
 * quota, then advance, hold or step back on the stage's gates.
 */
export function endOfDay(spec: WarmupScheduleSpec, stages: Stage[], lane: LaneWarmup, today: LaneCounters): DayOutcome {
  const totals = addCounters(lane.stageTotals, today);
  if (lane.held) {
    return { next: { ...lane, stageTotals: totals }, decision: "HeldByHand", reason: "the lane's stage is held by hand" };
  }
  const quota = stages[lane.stage]!.daily;
  const usage = today.attempted / quota;
  // A day with attempts whose stage fails a gate is a failed day even when the lane could not use
  // half its quota (a provider that defers keeps a lane from using it): only steps forward need use.
  const gate = today.attempted > 0 ? failedGate(spec, totals) : null;
  if (usage < spec.advance.minUsage && !gate) {
    return {
      next: { ...lane, stageTotals: totals },
      decision: "NotCounted",
      reason: `used ${today.attempted} of ${quota} (${pct(usage)}), below ${pct(spec.advance.minUsage)}: the day does not count`,
    };
  }
  if (gate) {
    const failedDays = lane.failedDays + 1;
    if (spec.onFailure.action === "StepBack" && failedDays >= spec.onFailure.stepBackAfter) {
      const stage = Math.max(0, lane.stage - spec.onFailure.stepBackBy);
      const day = stages[stage]!.day - 1;
      return {
        next: { stage, day, stageStartedDay: day, failedDays: 0, held: false, stageTotals: { ...ZERO } },
        decision: "SteppedBack",
        reason: `${gate} for ${failedDays} days: stepped back to stage ${stage + 1} (${stages[stage]!.daily}/day)`,
      };
    }
    return {
      next: { ...lane, failedDays, stageTotals: totals },
      decision: "Held",
      reason: `${gate}: holding stage ${lane.stage + 1} (${failedDays} failed day${failedDays > 1 ? "s" : ""})`,
    };
  }
  const day = lane.day + 1;
  const stage = stageForDay(stages, day);
  if (stage !== lane.stage) {
    return {
      next: { stage, day, stageStartedDay: day, failedDays: 0, held: false, stageTotals: { ...ZERO } },
      decision: "Advanced",
      reason: `day ${day} done within the gates: stage ${stage + 1} (${stages[stage]!.daily}/day)`,
    };
  }
  return {
    next: { ...lane, day, failedDays: 0, stageTotals: totals },
    decision: "Counted",
    reason: stage === stages.length - 1 ? `day ${day} done: at full volume` : `day ${day} done within the gates`,
  };
}

/** Days until the lane reaches the last stage, if every day from now counts. */
export function daysToFull(stages: Stage[], lane: LaneWarmup): number {
  return Math.max(0, stages[stages.length - 1]!.day - 1 - lane.day);
}

// ---------------------------------------------------------------------------------------------
// Reputation: whether a lane may send, from its recent rates and blocklist listings.

export type ReputationPolicy = {
  windowMs: number;
  warnBounceRate: number;
  pauseBounceRate: number;
  warnComplaintRate: number;
  pauseComplaintRate: number;
  resumeAfterMs: number;
  minSample: number;
};

export type ReputationState = {
  state: "Healthy" | "Paused" | "Blocked";
  /** When a pause ends (RFC 3339). */
  until?: string;
  reason?: string;
  warning?: string;
};

export type ReputationOutcome = ReputationState & { changed: boolean; resumed: boolean };

/**
 * SES-like: pause at pauseBounceRate bounces or pauseComplaintRate complaints over the window
 * (warn earlier); Blocked while a DNS blocklist lists the address; a pause ends after
 * resumeAfter (the warm-up engine then steps the lane back a stage).
 */
export function judgeReputation(
  policy: ReputationPolicy, window: LaneCounters, listedOn: string[], current: ReputationState, now: number,
): ReputationOutcome {
  const out = (s: ReputationState, resumed = false): ReputationOutcome => ({
    ...s,
    changed: s.state !== current.state || s.reason !== current.reason,
    resumed,
  });
  if (listedOn.length) {
    return out({ state: "Blocked", reason: `address listed on ${listedOn.join(", ")}` });
  }
  if (current.state === "Paused" && current.until && Date.parse(current.until) > now) return out(current);
  const resumed = current.state !== "Healthy";
  const r = rates(window);
  const judged = window.attempted >= policy.minSample;
  if (judged && r.bounceRate >= policy.pauseBounceRate) {
    return out({
      state: "Paused",
      until: new Date(now + policy.resumeAfterMs).toISOString(),
      reason: `bounce rate ${pct(r.bounceRate)} reached the pause threshold ${pct(policy.pauseBounceRate)}`,
    });
  }
  if (judged && r.complaintRate !== null && r.complaintRate >= policy.pauseComplaintRate) {
    return out({
      state: "Paused",
      until: new Date(now + policy.resumeAfterMs).toISOString(),
      reason: `complaint rate ${pct(r.complaintRate)} reached the pause threshold ${pct(policy.pauseComplaintRate)}`,
    });
  }
  let warning: string | undefined;
  if (judged && r.bounceRate >= policy.warnBounceRate) warning = `bounce rate ${pct(r.bounceRate)} is above ${pct(policy.warnBounceRate)}`;
  if (judged && r.complaintRate !== null && r.complaintRate >= policy.warnComplaintRate) {
    warning = `complaint rate ${pct(r.complaintRate)} is above ${pct(policy.warnComplaintRate)}`;
  }
  return out({ state: "Healthy", ...(warning ? { warning } : {}) }, resumed);
}
