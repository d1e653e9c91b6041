// Response rules: which plan rule a reply triggers, and what that does to a lane over time. Pure
// functions over plain data; the limiter keeps the state and the clock.
//
// Actions on a lane (or, for SuspendProvider, on every lane of the provider):
//   SlowDown f, d       rate x f for d, then +step of the full rate per interval (additive increase).
//                       A rule firing again while its slow-down holds compounds (x f again) only
//                       once per recovery interval: replies to mail already in flight when it
//                       fired must not collapse the rate to nothing.
//   SuspendLane d       nothing for d; then, as Google asks after 421 4.7.28, one connection more
//   SuspendProvider d   and +step of the rate per interval, from one connection and step x rate.
//   CapConnections n, d at most n connections for d, then one more per interval.
//   Bounce / Classify   act on the message only (RuleEffect), not on the lane.
import type { PlanRule, ProviderPlan } from "../../api/plan.ts";
import type { ReplyClass } from "../classify/index.ts";
import type { Observation, RuleEffect } from "./types.ts";

/** The slowest a rule can make a lane: 1% of its rate (compounding stops there). */
export const MIN_FACTOR = 0.01;

export interface Hold {
  until: number;
  rule: string;
}

/** The rule-driven state of one lane (or of one provider, for SuspendProvider). */
export interface Adjustment {
  suspend?: Hold;
  slow?: Hold & { factor: number; at: number };
  cap?: Hold & { connections: number };
}

export interface Recovery {
  step: number;
  intervalMs: number;
}

export interface Effective {
  /** Set while suspended: sending resumes then. */
  suspendedUntil?: number;
  suspendedBy?: string;
  factor: number;
  maxConnections: number;
}

const regexCache = new Map<string, RegExp | null>();

function textRegex(src: string): RegExp | null {
  let re = regexCache.get(src);
  if (re === undefined) {
    try {
      re = new RegExp(src, "i");
    } catch {
      re = null; // the operator validates patterns; a bad one never matches rather than throwing per reply
    }
    if (regexCache.size > 1000) regexCache.clear();
    regexCache.set(src, re);
  }
  return re;
}

/** Whether a rule's match criteria (all that it sets) hold for a reply. A rule with none never matches. */
export function ruleMatches(rule: PlanRule, obs: Observation): boolean {
  if (rule.code === undefined && rule.enhancedCode === undefined && rule.text === undefined && rule.class === undefined) return false;
  if (rule.code !== undefined && rule.code !== obs.code) return false;
  if (rule.enhancedCode !== undefined && rule.enhancedCode !== (obs.enhanced ?? "")) return false;
  if (rule.class !== undefined && rule.class !== obs.class) return false;
  if (rule.text !== undefined) {
    const re = textRegex(rule.text);
    if (!re || !re.test(obs.reply)) return false;
  }
  return true;
}

/** The first rule of the provider that matches (rules are evaluated in order; the first wins). */
export function matchRule(rules: readonly PlanRule[], obs: Observation): PlanRule | undefined {
  if (obs.class === "delivered") return undefined;
  return rules.find((r) => ruleMatches(r, obs));
}

/** What a matched rule means for the message itself. */
export function messageEffect(rule: PlanRule | undefined): RuleEffect {
  if (!rule) return {};
  const eff: RuleEffect = { rule: rule.name, action: rule.action };
  if (rule.action === "Bounce") eff.bounce = true;
  if ((rule.action === "Bounce" || rule.action === "Classify") && rule.classifyAs) eff.classifyAs = rule.classifyAs as ReplyClass;
  return eff;
}

function steps(now: number, since: number, rec: Recovery): number {
  return rec.intervalMs > 0 ? Math.floor((now - since) / rec.intervalMs) : Number.POSITIVE_INFINITY;
}

function stepOf(rec: Recovery): number {
  return rec.step > 0 ? rec.step : 1;
}

/** The state in force at `now`: suspension, rate factor and connection cap, with recovery ramps. */
export function effective(adj: Adjustment | undefined, maxConnections: number, rec: Recovery, now: number): Effective {
  const out: Effective = { factor: 1, maxConnections };
  if (!adj) return out;
  const step = stepOf(rec);
  if (adj.suspend) {
    if (now < adj.suspend.until) {
      out.suspendedUntil = adj.suspend.until;
      out.suspendedBy = adj.suspend.rule;
      out.factor = 0;
      out.maxConnections = 0;
      return out;
    }
    const k = steps(now, adj.suspend.until, rec);
    out.factor = Math.min(out.factor, step * (1 + k));
    out.maxConnections = Math.min(out.maxConnections, 1 + k);
  }
  if (adj.slow) {
    const f = now < adj.slow.until ? adj.slow.factor : adj.slow.factor + step * steps(now, adj.slow.until, rec);
    out.factor = Math.min(out.factor, f);
  }
  if (adj.cap) {
    const c = now < adj.cap.until ? adj.cap.connections : adj.cap.connections + steps(now, adj.cap.until, rec);
    out.maxConnections = Math.min(out.maxConnections, c);
  }
  out.factor = Math.min(1, Math.max(out.factor, MIN_FACTOR));
  out.maxConnections = Math.max(1, Math.min(maxConnections, out.maxConnections));
  return out;
}

/** Applies a lane action (SlowDown, SuspendLane/Provider, CapConnections); others leave it as is. */
export function applyRule(adj: Adjustment | undefined, rule: PlanRule, maxConnections: number, rec: Recovery, now: number): Adjustment {
  const next: Adjustment = { ...(adj ?? {}) };
  const duration = rule.durationMs ?? 0;
  switch (rule.action) {
    case "SlowDown": {
      const factor = rule.factor && rule.factor > 0 && rule.factor < 1 ? rule.factor : 0.5;
      const prev = next.slow;
      const current = effective(adj, maxConnections, rec, now).factor;
      if (prev && prev.rule === rule.name && now < prev.until && now - prev.at < rec.intervalMs) {
        next.slow = { ...prev, until: Math.max(prev.until, now + duration) };
      } else {
        next.slow = { rule: rule.name, factor: Math.max(MIN_FACTOR, current * factor), until: now + duration, at: now };
      }
      break;
    }
    case "SuspendLane":
    case "SuspendProvider":
      next.suspend = { rule: rule.name, until: Math.max(next.suspend?.until ?? 0, now + duration) };
      break;
    case "CapConnections": {
      const n = Math.max(1, rule.connections ?? 1);
      const cur = effective(adj, maxConnections, rec, now).maxConnections;
      next.cap = { rule: rule.name, connections: Math.min(n, cur), until: now + duration };
      break;
    }
    default:
      break;
  }
  return next;
}

/** Drops what has fully recovered; undefined when nothing is left. */
export function settle(adj: Adjustment | undefined, maxConnections: number, rec: Recovery, now: number): Adjustment | undefined {
  if (!adj) return undefined;
  const next: Adjustment = { ...adj };
  const step = stepOf(rec);
  if (next.suspend && now >= next.suspend.until) {
    const k = steps(now, next.suspend.until, rec);
    if (step * (1 + k) >= 1 && 1 + k >= maxConnections) delete next.suspend;
  }
  if (next.slow && now >= next.slow.until && next.slow.factor + step * steps(now, next.slow.until, rec) >= 1) delete next.slow;
  if (next.cap && now >= next.cap.until && next.cap.connections + steps(now, next.cap.until, rec) >= maxConnections) delete next.cap;
  return next.suspend || next.slow || next.cap ? next : undefined;
}

export function recoveryOf(p: ProviderPlan | undefined): Recovery {
  return { step: p?.recovery.step ?? 0.1, intervalMs: p?.recovery.intervalMs ?? 60_000 };
}
