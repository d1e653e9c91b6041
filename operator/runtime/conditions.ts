// metav1.Condition bookkeeping: lastTransitionTime changes only when a condition's status does,
// conditions other controllers own are kept, and the transitions are returned so the caller can
// record one Event per state change (and none in steady state).
import { isDeepStrictEqual } from "node:util";
import type { Condition } from "../../api/v1alpha1/index.ts";

export type ConditionStatus = "True" | "False" | "Unknown";

/** A condition as a reconcile computes it (the time and generation are filled in here). */
export type DesiredCondition = { type: string; status: ConditionStatus; reason: string; message: string };

export type Transition = {
  type: string;
  from: ConditionStatus | undefined;
  to: ConditionStatus;
  reason: string;
  message: string;
};

/**
 * The conditions to write: `desired` in the given order (each keeping its lastTransitionTime when
 * its status did not change), then the live conditions of types this controller does not manage.
 * `managed` lists every type this controller may write; managed types absent from `desired`
 * are removed (e.g. ReconciliationPaused once the pause ends).
 */
export function mergeConditions(
  live: Condition[] | undefined, desired: DesiredCondition[], o: { now: Date; generation: number | undefined; managed: readonly string[] },
): { conditions: Condition[]; transitions: Transition[] } {
  const before = new Map((live ?? []).map((c) => [c.type, c]));
  const transitions: Transition[] = [];
  const conditions: Condition[] = [];
  for (const d of desired) {
    const old = before.get(d.type);
    const changed = !old || old.status !== d.status;
    const c: Condition = {
      type: d.type,
      status: d.status,
      ...(o.generation !== undefined ? { observedGeneration: o.generation } : {}),
      lastTransitionTime: changed ? rfc3339(o.now) : old.lastTransitionTime,
      reason: d.reason,
      message: truncate(d.message, 32768),
    };
    if (changed || old.reason !== d.reason) {
      transitions.push({ type: d.type, from: old?.status, to: d.status, reason: d.reason, message: c.message });
    }
    conditions.push(c);
  }
  const desiredTypes = new Set(desired.map((d) => d.type));
  for (const c of live ?? []) {
    if (desiredTypes.has(c.type)) continue;
    if (o.managed.includes(c.type)) continue; // ours, no longer set: removed
    conditions.push(c);
  }
  return { conditions, transitions };
}

/** Seconds precision, as metav1.Time serialises (the API server truncates anyway). */
export function rfc3339(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 3)}...`;
}

export function findCondition(list: Condition[] | undefined, type: string): Condition | undefined {
  return list?.find((c) => c.type === type);
}

/**
 * Whether `patch` (a status fragment) would change `live`: every key of patch is compared;
 * undefined in patch means "remove", which changes live only when live has the key.
 */
export function statusDiffers(live: Record<string, unknown> | undefined, patch: Record<string, unknown>): boolean {
  for (const [k, v] of Object.entries(patch)) {
    const cur = live?.[k];
    if (v === undefined || v === null) {
      if (cur !== undefined && cur !== null) return true;
      continue;
    }
    if (!isDeepStrictEqual(normalize(cur), normalize(v))) return true;
  }
  return false;
}

/** JSON round trip: drops undefined members so a computed object compares equal to a served one. */
export function normalize(v: unknown): unknown {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

/** Ready is True only when every condition it depends on is True; else it carries the first failure. */
export function readyFrom(parts: DesiredCondition[], okMessage: string): DesiredCondition {
  const bad = parts.find((p) => p.status !== "True");
  if (!bad) return { type: "Ready", status: "True", reason: "Ready", message: okMessage };
  return { type: "Ready", status: bad.status === "Unknown" ? "Unknown" : "False", reason: bad.reason, message: bad.message };
}
