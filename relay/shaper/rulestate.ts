// Response-rule state shared by the fleet: records stored in KV (late joiners, restarts, the
// operator's IPPool status) and broadcast on a core subject (every relay within milliseconds).
//
// Several relays may fire rules on one lane at once and messages may arrive in any order, twice,
// or not at all (core NATS is at most once; the KV copy repairs that). So states combine with a
// merge that is commutative, associative and idempotent: each part keeps its most restrictive
// envelope (the later suspension end, the lower factor held until the later end, the lower cap).
// Every relay that has seen the same set of updates has the same state, whatever the order, and
// recovery is a function of that state and the clock (rules.ts), so relays recover in step without
// exchanging anything.
import type { Adjustment } from "./rules.ts";

export type RuleScope = "lane" | "provider";

/** One rule state record: in KV under the lane's or provider's rule key, and on the rule subject. */
export interface RuleRecord {
  scope: RuleScope;
  pool: string;
  /** Lane scope only. */
  address?: string;
  provider: string;
  adj: Adjustment;
  /** When the last change was made, and by which relay (for status and logs). */
  at: number;
  by: string;
}

function later<T extends { until: number; rule: string }>(a: T | undefined, b: T | undefined): T | undefined {
  if (!a) return b;
  if (!b) return a;
  return b.until > a.until || (b.until === a.until && b.rule > a.rule) ? b : a;
}

/** The most restrictive envelope of two rule states. */
export function mergeAdjustments(a: Adjustment | undefined, b: Adjustment | undefined): Adjustment | undefined {
  if (!a) return b;
  if (!b) return a;
  const out: Adjustment = {};
  const suspend = later(a.suspend, b.suspend);
  if (suspend) out.suspend = { ...suspend };
  if (a.slow || b.slow) {
    const x = a.slow ?? b.slow!;
    const y = b.slow ?? a.slow!;
    const low = y.factor < x.factor || (y.factor === x.factor && y.rule > x.rule) ? y : x;
    out.slow = { rule: low.rule, factor: Math.min(x.factor, y.factor), until: Math.max(x.until, y.until), at: Math.max(x.at, y.at) };
  }
  if (a.cap || b.cap) {
    const x = a.cap ?? b.cap!;
    const y = b.cap ?? a.cap!;
    const low = y.connections < x.connections || (y.connections === x.connections && y.rule > x.rule) ? y : x;
    out.cap = { rule: low.rule, connections: Math.min(x.connections, y.connections), until: Math.max(x.until, y.until) };
  }
  return out;
}

/** True when `next` restricts more than `prev` in a way other relays must hear about. */
export function materiallyStronger(prev: Adjustment | undefined, next: Adjustment | undefined, minExtendMs = 1000): boolean {
  if (!next) return false;
  if (!prev) return Boolean(next.suspend || next.slow || next.cap);
  if (next.suspend && (!prev.suspend || next.suspend.until > prev.suspend.until + minExtendMs)) return true;
  if (next.slow && (!prev.slow || next.slow.factor < prev.slow.factor - 1e-9 || next.slow.until > prev.slow.until + minExtendMs)) return true;
  if (next.cap && (!prev.cap || next.cap.connections < prev.cap.connections || next.cap.until > prev.cap.until + minExtendMs)) return true;
  return false;
}

export function sameAdjustment(a: Adjustment | undefined, b: Adjustment | undefined): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

export function encodeRule(r: RuleRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(r));
}

export function decodeRule(data: Uint8Array | undefined | null): RuleRecord | null {
  if (!data || data.length === 0) return null;
  try {
    const r = JSON.parse(new TextDecoder().decode(data)) as RuleRecord;
    if (!r || (r.scope !== "lane" && r.scope !== "provider") || typeof r.pool !== "string" || typeof r.provider !== "string") return null;
    return r;
  } catch {
    return null;
  }
}

/** Identity of a rule record's subject: which lane or provider it is about. */
export function ruleTarget(r: Pick<RuleRecord, "scope" | "pool" | "address" | "provider">): string {
  return r.scope === "lane" ? `${r.pool}|${r.address}|${r.provider}` : `${r.pool}|*|${r.provider}`;
}
