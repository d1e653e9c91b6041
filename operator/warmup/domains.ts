// Domain pauses, as pure functions: a SendingDomain's bounce and complaint rates over its pool's
// reputation window (the events of every pool it sent through, its overflow pool's too), judged
// with the lanes' SES-like thresholds. A paused domain's mail is still accepted and waits in the
// queue (relays hold its parts, api/plan.ts DomainPlan.paused) until the pause ends after
// resumeAfter. The engine (engine.ts) reads the counters and writes status and Events.
import type { DomainReputationStatus } from "../../api/v1alpha1/index.ts";
import type { DesiredCondition } from "../runtime/conditions.ts";
import { type PeriodDoc, countersOf, periodOf } from "./counters.ts";
import { addAcrossLanes, type LaneCounters, type ReputationPolicy, ZERO, judgeReputation, rates } from "./decide.ts";
import type { Notice } from "./lanes.ts";

/** The condition type the engine writes on SendingDomain status. */
export const DOMAIN_PAUSED_CONDITION = "SendingPaused";

/** A pool's counters as a domain's window reads them. */
export type CounterSource = { pool?: string; periodMs: number; counts: (period: number) => PeriodDoc | null };

/**
 * A domain's counters over the window: bounces over every provider; complaints (and delivered, their
 * denominator) only over providers that send complaint reports; null when none of them does.
 */
export function domainWindow(
  domain: string, providers: { name: string; feedbackLoop: boolean }[], sources: CounterSource[], now: number, windowMs: number,
): LaneCounters {
  const agg: LaneCounters = { ...ZERO, complaints: null };
  const d = domain.toLowerCase();
  for (const src of sources) {
    const cur = periodOf(now, src.periodMs);
    for (let p = periodOf(now - windowMs, src.periodMs); p <= cur; p++) {
      const doc = src.counts(p);
      if (!doc?.domains) continue;
      for (const pr of providers) {
        addAcrossLanes(agg, countersOf(doc.domains[`${d}/${pr.name}`], pr.feedbackLoop));
      }
    }
  }
  return agg;
}

export type DomainStep = { reputation: DomainReputationStatus; condition: DesiredCondition; notice?: Notice };

const round = (x: number) => Math.round(x * 10_000) / 10_000;

/** One judgement of a domain: its next reputation status, the SendingPaused condition, and an Event when it paused or resumed. */
export function stepDomain(
  policy: ReputationPolicy, window: LaneCounters, current: DomainReputationStatus | undefined, now: number,
): DomainStep {
  const before = current?.state === "Paused"
    ? { state: "Paused" as const, ...(current.until ? { until: current.until } : {}), ...(current.reason ? { reason: current.reason } : {}) }
    : { state: "Healthy" as const };
  // No blocklist for a domain: listings are of addresses (their lanes block).
  const r = judgeReputation(policy, window, [], before, now);
  const state = r.state === "Paused" ? "Paused" : "Healthy";
  const rt = rates(window);
  const reputation: DomainReputationStatus = {
    state,
    ...(state === "Paused" && r.until ? { until: r.until } : {}),
    ...(state === "Paused" && r.reason ? { reason: r.reason } : {}),
    ...(state === "Healthy" && r.warning ? { warning: r.warning } : {}),
    attempted: window.attempted,
    ...(window.attempted > 0 ? { bounceRate: round(Math.min(rt.bounceRate, 1)) } : {}),
    ...(rt.complaintRate === null ? { complaintRate: null } : window.delivered > 0 ? { complaintRate: round(Math.min(rt.complaintRate, 1)) } : {}),
  };
  let notice: Notice | undefined;
  if (state === "Paused" && before.state !== "Paused") {
    notice = { type: "Warning", reason: "Paused", note: `${r.reason}: the domain's mail is held in the queue (still accepted) until ${r.until}` };
  } else if (state === "Healthy" && before.state === "Paused") {
    notice = { type: "Normal", reason: "Resumed", note: `pause ended (${before.reason ?? "rates"}): the domain's held mail is sent again` };
  }
  const condition: DesiredCondition = state === "Paused"
    ? {
      type: DOMAIN_PAUSED_CONDITION, status: "True", reason: /complaint/.test(r.reason ?? "") ? "ComplaintRate" : "BounceRate",
      message: `${r.reason}; mail is accepted and held until ${r.until}`,
    }
    : {
      type: DOMAIN_PAUSED_CONDITION, status: "False", reason: r.warning ? "RatesWarning" : "RatesBelowThresholds",
      message: r.warning ?? "bounce and complaint rates over the window are below the pause thresholds",
    };
  return { reputation, condition, ...(notice ? { notice } : {}) };
}
