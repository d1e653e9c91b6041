// One warm-up step for one pool, as a pure function: from the engine's stored state, the pool (its
// lane overrides and blocklist listings), the schedule, the counters and the clock, to the next
// state, the pool's status.lanes and the Events to record. The engine (engine.ts) does the I/O.
//
// - Each closed period goes through endOfDay exactly once: the state remembers the open period,
//   and the engine stores the state with compare-and-set before acting on it.
// - A hand hold freezes the stage; a stage set by hand pins it (and holds) while it is set.
// - Reputation is judged every step over a rolling window, per lane and per address (the sum of
//   the address's lanes: a provider complaining about an IP pauses every lane of the IP); a pause
//   ends after resumeAfter and the lane resumes one step back (unless held by hand).
// - A pool without a schedule (warm addresses) is judged the same way, over counters kept per
//   DEFAULT_PERIOD_MS; its lanes have no stage or quota, and a pause ends at the same volume.
import type { LaneStatus, IPPool, Stage, WarmupScheduleSpec } from "../../api/v1alpha1/index.ts";
import { laneKey } from "../../api/v1alpha1/index.ts";
import { parseDuration } from "../../api/units.ts";
import type { LaneRuleState } from "../../relay/shaper/state.ts";
import { hourlyOf, laneOverrides } from "../plan/compile.ts";
import { type PeriodDoc, countersOf, periodOf } from "./counters.ts";
import {
  type LaneCounters, type LaneWarmup, addAcrossLanes, type ReputationPolicy, type ReputationState, ZERO, addCounters, endOfDay, judgeReputation, newLane, rates,
} from "./decide.ts";

/** w: the lane's warm-up (absent when the pool does not warm up). */
export type LaneRecord = { w?: LaneWarmup; rep: ReputationState; decision?: string; reason?: string };

export type EngineState = {
  v: 1;
  /** The pool's uid: a pool deleted and made again starts afresh. */
  uid: string;
  periodMs: number;
  /** The period not yet closed (every earlier one went through endOfDay). */
  open: number;
  lanes: Record<string, LaneRecord>;
  addresses: Record<string, ReputationState>;
};

export type Notice = { type: "Normal" | "Warning"; reason: "Advanced" | "Held" | "SteppedBack" | "Paused" | "Resumed" | "Blocked" | "Manual"; note: string };

/** warmupDay: absent when the pool does not warm up. */
export type PoolStatusLanes = { lanes: LaneStatus[]; warmupDay?: string; lanesHealthy: number; lanesTotal: number };

/** The counters' period of a pool without a schedule: rates are judged over windows of such periods. */
export const DEFAULT_PERIOD_MS = 86_400_000;
/** Rates are judged over at least this many attempts when no schedule says (a schedule's default too). */
export const DEFAULT_MIN_SAMPLE = 20;

export type StepInput = {
  pool: IPPool;
  /** null: the pool does not warm up (reputation only). */
  schedule: WarmupScheduleSpec | null;
  /** Providers of the plan (lanes are addresses x providers), with whether they send complaint reports. */
  providers: { name: string; feedbackLoop: boolean }[];
  state: EngineState | null;
  now: number;
  /** Counters of a period (the engine reads those periodsNeeded() names). */
  counts: (period: number) => PeriodDoc | null;
  /** Whether every event of the period is counted (the counter consumer caught up past its end). */
  canClose: (period: number) => boolean;
  /** Response rules in force on the pool's lanes (the shaper's view). */
  rules: LaneRuleState[];
};

export type StepOutput = { state: EngineState; status: PoolStatusLanes; notices: Notice[] };

/** Periods closed at most in one step after a long outage; older ones are skipped (their counters are gone). */
export const MAX_CATCHUP = 60;

export function stagesOf(schedule: WarmupScheduleSpec, provider: string): Stage[] {
  return schedule.providers.find((p) => p.provider === provider)?.stages ?? schedule.stages;
}

export function policyOf(pool: IPPool, schedule: WarmupScheduleSpec | null): ReputationPolicy {
  const r = pool.spec.reputation;
  return {
    windowMs: parseDuration(r.window),
    warnBounceRate: r.warnBounceRate,
    pauseBounceRate: r.pauseBounceRate,
    warnComplaintRate: r.warnComplaintRate,
    pauseComplaintRate: r.pauseComplaintRate,
    resumeAfterMs: parseDuration(r.resumeAfter),
    minSample: schedule?.advance.minSample ?? DEFAULT_MIN_SAMPLE,
  };
}

/** The periods a step reads: those it may close and those in the reputation window (ascending). */
export function periodsNeeded(state: EngineState | null, now: number, periodMs: number, windowMs: number): number[] {
  const cur = periodOf(now, periodMs);
  const open = state && state.periodMs === periodMs ? Math.max(state.open, cur - MAX_CATCHUP) : cur;
  const first = Math.min(open, periodOf(now - windowMs, periodMs));
  const out: number[] = [];
  for (let p = first; p <= cur; p++) out.push(p);
  return out;
}

const round = (x: number) => Math.round(x * 10_000) / 10_000;

function clampStage(stages: Stage[], s: number): number {
  return Math.min(Math.max(Math.trunc(s), 0), stages.length - 1);
}

/** A state from what status says, when the stored state is gone (so status can rebuild it); stagesFor null: no warm-up. */
export function stateFromStatus(pool: IPPool, periodMs: number, now: number, stagesFor: ((provider: string) => Stage[]) | null): EngineState {
  const st = pool.status;
  const open = st?.warmupDay ? periodOf(Date.parse(st.warmupDay), periodMs) : periodOf(now, periodMs);
  const lanes: Record<string, LaneRecord> = {};
  for (const l of st?.lanes ?? []) {
    const rep: ReputationState = l.state === "Paused" || l.state === "Blocked"
      ? { state: l.state, ...(l.until ? { until: l.until } : {}), ...(l.reason ? { reason: l.reason } : {}) }
      : { state: "Healthy" };
    if (!stagesFor) {
      lanes[laneKey(l.address, l.provider)] = { rep, ...(l.decision ? { decision: l.decision } : {}), ...(l.reason ? { reason: l.reason } : {}) };
      continue;
    }
    if (l.stage === undefined) continue;
    const stages = stagesFor(l.provider);
    const w = newLane(stages, clampStage(stages, l.stage));
    lanes[laneKey(l.address, l.provider)] = {
      w: { ...w, day: l.day ?? w.day, stageStartedDay: l.stageStartedDay ?? w.stageStartedDay, failedDays: l.failedDays ?? 0, held: l.held ?? false },
      rep,
      ...(l.decision ? { decision: l.decision } : {}),
      ...(l.reason ? { reason: l.reason } : {}),
    };
  }
  return { v: 1, uid: pool.metadata.uid ?? "", periodMs, open: Number.isFinite(open) ? open : periodOf(now, periodMs), lanes, addresses: {} };
}

export function stepPool(inp: StepInput): StepOutput {
  const { pool, schedule, now } = inp;
  const periodMs = schedule ? parseDuration(schedule.period) : DEFAULT_PERIOD_MS;
  const cur = periodOf(now, periodMs);
  const uid = pool.metadata.uid ?? "";
  // Only called where schedule is set (warming lanes).
  const stagesFor = (provider: string) => stagesOf(schedule!, provider);
  let st: EngineState = inp.state && inp.state.uid === uid
    ? structuredClone(inp.state)
    : stateFromStatus(pool, periodMs, now, schedule ? stagesFor : null);
  if (st.periodMs !== periodMs) st = { ...st, periodMs, open: cur };
  if (st.open > cur) st.open = cur;
  const notices: Notice[] = [];
  const { overrides } = laneOverrides(pool);
  const fbl = new Map(inp.providers.map((p) => [p.name, p.feedbackLoop]));
  const addresses = [...pool.spec.addresses].map((a) => a.address).sort();
  const keys: { key: string; address: string; provider: string }[] = [];
  for (const address of addresses) for (const p of inp.providers) keys.push({ key: laneKey(address, p.name), address, provider: p.name });

  // Lanes: made at the first stage, overrides applied, gone ones dropped.
  const lanes: Record<string, LaneRecord> = {};
  for (const { key, provider } of keys) {
    const rec: LaneRecord = st.lanes[key] ?? { rep: { state: "Healthy" } };
    lanes[key] = rec;
    if (!schedule) {
      delete rec.w;
      continue;
    }
    const stages = stagesFor(provider);
    rec.w = rec.w ? { ...rec.w, stage: clampStage(stages, rec.w.stage) } : newLane(stages);
    const ov = overrides[key];
    if (ov?.stage !== undefined && Number.isFinite(ov.stage) && clampStage(stages, ov.stage) !== rec.w.stage) {
      const s = clampStage(stages, ov.stage);
      rec.w = { ...newLane(stages, s), held: true };
      rec.decision = "Manual";
      rec.reason = `stage set by hand to ${s} (${stages[s]!.daily}/day)${ov.by ? ` by ${ov.by}` : ""}`;
      notices.push({ type: "Normal", reason: "Manual", note: `${key}: ${rec.reason}` });
    }
    const held = Boolean(ov?.hold) || ov?.stage !== undefined;
    if (held !== rec.w.held) {
      rec.w = { ...rec.w, held };
      rec.decision = "Manual";
      rec.reason = held ? `held by hand${ov?.by ? ` by ${ov.by}` : ""}: no automatic change` : "released by hand: the warm-up continues";
      notices.push({ type: "Normal", reason: "Manual", note: `${key}: ${rec.reason}` });
    }
  }
  st.lanes = lanes;

  // Close every period that ended and is fully counted, oldest first, each once.
  if (cur - st.open > MAX_CATCHUP) st.open = cur - MAX_CATCHUP;
  if (!schedule) st.open = cur; // no warm-up days to close
  while (schedule && st.open < cur && inp.canClose(st.open)) {
    const doc = inp.counts(st.open);
    for (const { key, provider } of keys) {
      const rec = st.lanes[key]!;
      const stages = stagesFor(provider);
      const today = countersOf(doc?.lanes[key], fbl.get(provider) ?? false);
      const w = rec.w!;
      if (rec.rep.state !== "Healthy") {
        // A paused or blocked lane's day does not count (its rates still go into the stage).
        rec.w = { ...w, stageTotals: addCounters(w.stageTotals, today) };
        continue;
      }
      const out = endOfDay(schedule, stages, w, today);
      rec.w = out.next;
      rec.decision = out.decision;
      rec.reason = out.reason;
      if (out.decision === "Advanced") notices.push({ type: "Normal", reason: "Advanced", note: `${key}: ${out.reason}` });
      else if (out.decision === "Held") notices.push({ type: "Warning", reason: "Held", note: `${key}: ${out.reason}` });
      else if (out.decision === "SteppedBack") notices.push({ type: "Warning", reason: "SteppedBack", note: `${key}: ${out.reason}` });
    }
    st.open++;
  }

  // Reputation over the rolling window: per address first, then per lane.
  const policy = policyOf(pool, schedule);
  const first = periodOf(now - policy.windowMs, periodMs);
  const windowOf = (key: string, provider: string): LaneCounters => {
    let c: LaneCounters = countersOf(undefined, fbl.get(provider) ?? false);
    for (let p = first; p <= cur; p++) c = addCounters(c, countersOf(inp.counts(p)?.lanes[key], fbl.get(provider) ?? false));
    return c;
  };
  const windows = new Map(keys.map((k) => [k.key, windowOf(k.key, k.provider)]));
  const listedOf = new Map((pool.status?.addresses ?? []).map((a) => [a.address, a.listed ?? []]));
  const addrStates: Record<string, ReputationState> = {};
  const newlyPaused = new Map<string, ReputationState>();
  for (const address of addresses) {
    // Bounces over every lane of the address; complaints over the lanes whose provider reports
    // them (delivered counts only there, as the complaint rate's denominator).
    const agg = { ...ZERO, complaints: null as number | null };
    for (const k of keys.filter((x) => x.address === address)) {
      addAcrossLanes(agg, windows.get(k.key)!);
    }
    const curState = st.addresses[address] ?? { state: "Healthy" };
    const r = judgeReputation(policy, agg, [], curState, now);
    addrStates[address] = { state: r.state, ...(r.until ? { until: r.until } : {}), ...(r.reason ? { reason: r.reason } : {}) };
    if (r.state === "Paused" && curState.state !== "Paused") {
      newlyPaused.set(address, r);
      notices.push({ type: "Warning", reason: "Paused", note: `address ${address}: ${r.reason}: every lane of the address pauses until ${r.until}` });
    }
  }
  st.addresses = addrStates;
  for (const { key, address, provider } of keys) {
    const rec = st.lanes[key]!;
    const before = rec.rep;
    let current = before;
    const ap = newlyPaused.get(address);
    if (ap && before.state === "Healthy") current = { state: "Paused", until: ap.until!, reason: `address ${address}: ${ap.reason}` };
    const r = judgeReputation(policy, windows.get(key)!, listedOf.get(address) ?? [], current, now);
    rec.rep = { state: r.state, ...(r.until ? { until: r.until } : {}), ...(r.reason ? { reason: r.reason } : {}), ...(r.warning ? { warning: r.warning } : {}) };
    if (r.state === "Paused" && before.state !== "Paused") {
      rec.decision = "Paused";
      rec.reason = `${r.reason}; resumes after ${r.until}`;
      if (!ap) notices.push({ type: "Warning", reason: "Paused", note: `${key}: ${rec.reason}` });
    } else if (r.state === "Blocked" && before.state !== "Blocked") {
      rec.decision = "Blocked";
      rec.reason = r.reason!;
      notices.push({ type: "Warning", reason: "Blocked", note: `${key}: ${r.reason}` });
    } else if (r.state === "Healthy" && before.state !== "Healthy") {
      if (before.state === "Paused" && schedule && rec.w && !rec.w.held) {
        const stages = stagesFor(provider);
        const s = Math.max(0, rec.w.stage - schedule.onFailure.stepBackBy);
        rec.w = { ...newLane(stages, s), held: false };
        rec.reason = `pause ended (${before.reason ?? "rates"}): resumed at stage ${s} (${stages[s]!.daily}/day)`;
      } else if (before.state === "Blocked") {
        rec.reason = "no longer listed on a blocklist: sending again";
      } else {
        rec.reason = rec.w ? "pause ended: resumed at the same stage (held by hand)" : `pause ended (${before.reason ?? "rates"}): sending again`;
      }
      rec.decision = "Resumed";
      notices.push({ type: "Normal", reason: "Resumed", note: `${key}: ${rec.reason}` });
    }
  }

  // Status.
  const rules = new Map(inp.rules.map((r) => [laneKey(r.address, r.provider), r]));
  const today = inp.counts(cur);
  const out: LaneStatus[] = [];
  for (const { key, address, provider } of keys) {
    const rec = st.lanes[key]!;
    const ov = overrides[key];
    const feedback = fbl.get(provider) ?? false;
    const live = countersOf(today?.lanes[key], feedback);
    // A warming lane's rates are the stage's (what its gates judge); a warm lane's the window's.
    const totals = rec.w ? addCounters(rec.w.stageTotals, live) : windows.get(key)!;
    const r = rates(totals);
    let warmup: Partial<LaneStatus> = {};
    if (rec.w) {
      const stages = stagesFor(provider);
      const stage = ov?.stage !== undefined && Number.isFinite(ov.stage) ? clampStage(stages, ov.stage) : rec.w.stage;
      warmup = { stage, day: rec.w.day, dailyQuota: stages[stage]!.daily, hourlyQuota: hourlyOf(stages[stage]!) };
    }
    const lane: LaneStatus = {
      address, provider, state: "Healthy",
      ...warmup, sentToday: live.attempted,
      ...(totals.attempted > 0 ? { bounceRate: round(r.bounceRate), deferralRate: round(r.deferralRate) } : {}),
      // null says the gate is blind (no feedback loop), which is not the same as no complaints.
      ...(r.complaintRate === null ? { complaintRate: null } : totals.delivered > 0 ? { complaintRate: round(r.complaintRate) } : {}),
      ...(rec.w ? { failedDays: rec.w.failedDays, stageStartedDay: rec.w.stageStartedDay, held: rec.w.held } : {}),
      ...(rec.decision ? { decision: rec.decision } : {}),
      ...(rec.reason ? { reason: rec.reason.slice(0, 1024) } : {}),
    };
    const rule = rules.get(key);
    if (ov?.state === "Suspended" && (!ov.until || Date.parse(ov.until) > now)) {
      lane.state = "Suspended";
      lane.manual = true;
      lane.reason = ov.reason ?? "suspended by hand";
      if (ov.until) lane.until = ov.until;
    } else if (rec.rep.state === "Blocked" || rec.rep.state === "Paused") {
      lane.state = rec.rep.state;
      if (rec.rep.reason) lane.reason = rec.rep.reason;
      if (rec.rep.until) lane.until = rec.rep.until;
    } else if (rule && rule.state !== "Healthy") {
      lane.state = rule.state;
      if (rule.rule) lane.rule = rule.rule;
      if (rule.until) lane.until = rule.until;
    } else if (rec.rep.warning) {
      lane.reason = `${lane.reason ? `${lane.reason}; ` : ""}warning: ${rec.rep.warning}`.slice(0, 1024);
    }
    if (rec.w?.held || ov?.hold) lane.manual = true;
    out.push(lane);
  }
  return {
    state: st,
    status: {
      lanes: out,
      ...(schedule ? { warmupDay: new Date(st.open * periodMs).toISOString() } : {}),
      lanesHealthy: out.filter((l) => l.state === "Healthy").length,
      lanesTotal: out.length,
    },
    notices,
  };
}

