// A lane's state as the CLI reports it, merged from three places (pure):
//   - the plan (what relays enforce): Suspended by hand, Paused or Blocked by reputation, with until;
//   - the shaper's rule records in KV (relay/shaper/state.ts): a response rule in force now
//     (Suspended, Throttled) with the rule's name and until;
//   - IPPool status.lanes (the operator's merge, also the warm-up fields).
// A manual override written to the annotation but not yet in the plan shows as pending.
import type { IPPool, LaneOverride, LaneStatus } from "../../api/v1alpha1/index.ts";
import { LANE_OVERRIDES_ANNOTATION, laneKey } from "../../api/v1alpha1/index.ts";
import type { LanePlan, PoolPlan } from "../../api/plan.ts";
import type { LaneRuleState } from "../../relay/shaper/state.ts";

export interface LaneView {
  address: string;
  provider: string;
  state: string;
  /** Where the state comes from: plan, manual, shaper, status, or none (Healthy everywhere). */
  source: "plan" | "manual" | "shaper" | "status" | "none";
  rule?: string;
  action?: string;
  until?: string;
  reason?: string;
  /** Rate multiplier in force (shaper), 1 when untouched. */
  factor?: number;
  /** An override in the annotation that the plan does not show yet. */
  pending?: string;
  override?: LaneOverride;
  stage?: number | null;
  dailyQuota?: number | null;
  hourlyQuota?: number | null;
}

export function parseOverrides(pool: IPPool): { overrides: Record<string, LaneOverride>; error?: string } {
  const raw = pool.metadata.annotations?.[LANE_OVERRIDES_ANNOTATION];
  if (!raw) return { overrides: {} };
  try {
    const v = JSON.parse(raw) as unknown;
    if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("not a JSON object");
    return { overrides: v as Record<string, LaneOverride> };
  } catch (e) {
    return { overrides: {}, error: `annotation ${LANE_OVERRIDES_ANNOTATION} on ${pool.metadata.namespace}/${pool.metadata.name} is not valid JSON: ${(e as Error).message}` };
  }
}

function active(until: string | undefined, now: number): boolean {
  return until === undefined || !Number.isFinite(Date.parse(until)) || Date.parse(until) > now;
}

export function laneViews(o: { pool: IPPool; plan?: PoolPlan; rules: LaneRuleState[]; now: number }): LaneView[] {
  const { pool, plan, rules, now } = o;
  const { overrides } = parseOverrides(pool);
  const status = new Map((pool.status?.lanes ?? []).map((l) => [laneKey(l.address, l.provider), l] as const));
  const planned = new Map((plan?.lanes ?? []).map((l) => [laneKey(l.address, l.provider), l] as const));
  const shaper = new Map(rules.map((r) => [laneKey(r.address, r.provider), r] as const));
  const keys = new Set<string>([...planned.keys(), ...status.keys()]);
  // Overrides on lanes neither list knows yet (a pool the plan does not have) still show.
  for (const k of Object.keys(overrides)) if (k.includes("/")) keys.add(k);
  const out: LaneView[] = [];
  for (const key of keys) {
    const [address, provider] = splitKey(key);
    out.push(view(address, provider, planned.get(key), shaper.get(key), status.get(key), overrides[key], now));
  }
  return out.sort((a, b) => a.address.localeCompare(b.address, "en", { numeric: true }) || a.provider.localeCompare(b.provider));
}

function splitKey(key: string): [string, string] {
  const i = key.lastIndexOf("/");
  return [key.slice(0, i), key.slice(i + 1)];
}

function view(address: string, provider: string, p: LanePlan | undefined, r: LaneRuleState | undefined, s: LaneStatus | undefined, ov: LaneOverride | undefined, now: number): LaneView {
  const v: LaneView = { address, provider, state: "Healthy", source: "none" };
  if (p) {
    v.stage = p.stage;
    v.dailyQuota = p.dailyQuota;
    v.hourlyQuota = p.hourlyQuota;
  }
  if (ov && Object.keys(ov).length) v.override = ov;
  if (p && p.state !== "Healthy") {
    Object.assign(v, { state: p.state, source: p.manual ? "manual" : "plan" });
    if (p.until) v.until = p.until;
    if (p.reason) v.reason = p.reason;
  } else if (r && r.state !== "Healthy") {
    Object.assign(v, { state: r.state, source: "shaper", factor: r.factor });
    if (r.rule) v.rule = r.rule;
    if (r.action) v.action = r.action;
    if (r.until) v.until = r.until;
  } else if (s && s.state !== "Healthy" && active(s.until, now)) {
    Object.assign(v, { state: s.state, source: "status" });
    if (s.rule) v.rule = s.rule;
    if (s.until) v.until = s.until;
    if (s.reason) v.reason = s.reason;
  }
  if (r && r.state !== "Healthy" && v.source !== "shaper") {
    // A rule holds the lane too; say so without hiding the stronger state.
    v.rule ??= r.rule;
  }
  const wantSuspended = ov?.state === "Suspended" && active(ov.until, now);
  const planSuspended = !!p?.manual && p.state === "Suspended";
  if (wantSuspended && !planSuspended) v.pending = "suspension not in the plan yet";
  else if (!wantSuspended && planSuspended) v.pending = "resume not in the plan yet";
  return v;
}

/** Counts of lanes per state, e.g. {Healthy: 16, Suspended: 1}. */
export function countStates(lanes: { state: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of lanes) out[l.state] = (out[l.state] ?? 0) + 1;
  return out;
}

export function statesText(counts: Record<string, number>): string {
  const order = ["Healthy", "Throttled", "Suspended", "Paused", "Blocked"];
  const keys = Object.keys(counts).sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
  return keys.map((k) => `${counts[k]} ${k}`).join(", ") || "no lanes";
}

/**
 * The annotation after a change to one lane's override: merged fields, `null` fields removed,
 * lanes left with nothing removed (pure; the caller writes it).
 */
export function editOverrides(current: Record<string, LaneOverride>, key: string, change: { [K in keyof LaneOverride]?: LaneOverride[K] | null }): Record<string, LaneOverride> {
  const next: Record<string, LaneOverride> = { ...current };
  const merged: Record<string, unknown> = { ...(next[key] ?? {}) };
  for (const [k, v] of Object.entries(change)) {
    if (v === null || v === undefined) delete merged[k];
    else merged[k] = v;
  }
  // `by` and `reason` describe a state or hold; alone they mean nothing.
  const meaningful = ["state", "hold", "stage", "until"].some((k) => merged[k] !== undefined);
  if (meaningful) next[key] = merged as LaneOverride;
  else delete next[key];
  return next;
}
