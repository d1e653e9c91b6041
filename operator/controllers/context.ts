// What controllers share, and the write helpers every controller uses: compare-before-apply for
// owned objects, status writes that only happen when the status differs (retried on 409 against a
// fresh read), and Events for condition transitions.
import type { Condition } from "../../api/v1alpha1/index.ts";
import { PAUSED_ANNOTATION } from "../../api/v1alpha1/index.ts";
import type { KeyFactory } from "../dkim/keys.ts";
import type { Lookup } from "../dns/verify.ts";
import type { RenderConfig } from "../render/pool.ts";
import { APPLIED_HASH_ANNOTATION, applyReason, withHash } from "../runtime/compare.ts";
import { type DesiredCondition, type Transition, mergeConditions, statusDiffers } from "../runtime/conditions.ts";
import type { EventSink } from "../runtime/events.ts";
import type { Cache as Informer } from "../runtime/informer.ts";
import { ApiError, type KubeClient, resourceForKind } from "../runtime/kube.ts";
import type { Logger } from "../runtime/log.ts";
import type { Metrics } from "../runtime/metrics.ts";
import type { KubeObject } from "../runtime/types.ts";
import type { World } from "./world.ts";

export type ControllerConfig = {
  /** Namespace of the operator (Lease, webhook Secret). */
  operatorNamespace: string;
  render: Omit<RenderConfig, "keda">;
  /** DNS re-check periods. */
  dnsRecheckMs: number;
  dnsRecheckUnverifiedMs: number;
};

export type Context = {
  client: KubeClient;
  world: World;
  inf: World["inf"];
  events: EventSink;
  log: Logger;
  metrics: Metrics;
  lookup: Lookup;
  keys: KeyFactory;
  config: ControllerConfig;
  keda(): boolean;
  now(): number;
  /** Deletes a pool's JetStream consumers; returns how many (absent: no NATS, no finalizer). */
  cleanupPool?: (poolId: string) => Promise<number>;
  /** Enqueue a key on another controller. */
  enqueue(controller: ControllerName, key: string): void;
};

export type ControllerName = "domain" | "pool" | "schedule" | "provider" | "plan" | "webhook";

export function isPaused(o: KubeObject): boolean {
  return o.metadata.annotations?.[PAUSED_ANNOTATION] === "true";
}

export const PAUSED_CONDITION: DesiredCondition = {
  type: "ReconciliationPaused",
  status: "True",
  reason: "Paused",
  message: `annotation ${PAUSED_ANNOTATION}="true": the operator leaves this object and what it made as they are; remove the annotation to resume`,
};

/** Jitter so a thousand objects re-checked on the same period do not all fire at once. */
export function jitter(ms: number): number {
  return Math.round(ms * (0.9 + Math.random() * 0.2));
}

/**
 * Applies an owned object when (and only when) the cached live object differs from it. Returns the
 * object now in force; the informer cache is updated with what the server returned.
 */
export async function applyOwned(ctx: Context, desired: KubeObject, informer: Informer | undefined): Promise<{ applied: boolean; obj: KubeObject }> {
  const want = desired.metadata.annotations?.[APPLIED_HASH_ANNOTATION] ? desired : withHash(desired as Record<string, unknown>) as KubeObject;
  const live = informer?.get(desired.metadata.namespace, desired.metadata.name);
  const reason = applyReason(want as Record<string, unknown>, live as Record<string, unknown> | undefined);
  if (reason === undefined) return { applied: false, obj: live! };
  ctx.log.debug("applying", { kind: desired.kind, name: desired.metadata.name, namespace: desired.metadata.namespace, reason });
  const out = await ctx.client.apply(want);
  informer?.upsert(out);
  return { applied: true, obj: out };
}

export type StatusBuild = (live: KubeObject) => { status: Record<string, unknown>; transitions: Transition[] };

/**
 * Writes status fields (a JSON merge patch on the status subresource) if they differ from the live
 * status. The patch carries the resourceVersion it was computed from: on 409 the object is read
 * again and the status recomputed against it (conditions others wrote are kept), up to 3 times.
 * Returns the condition transitions of the write (empty when nothing was written).
 */
export async function writeStatus(ctx: Context, informer: Informer, raw: KubeObject, build: StatusBuild): Promise<Transition[]> {
  const r = resourceForKind(raw.kind);
  let live = raw;
  for (let attempt = 0; ; attempt++) {
    const { status, transitions } = build(live);
    if (!statusDiffers(live.status as Record<string, unknown> | undefined, status)) return [];
    try {
      const out = await ctx.client.mergePatch(r, live.metadata.namespace, live.metadata.name, {
        metadata: { resourceVersion: live.metadata.resourceVersion },
        status,
      }, "status");
      informer.upsert(out);
      return transitions;
    } catch (err) {
      if (!(err instanceof ApiError && err.code === 409) || attempt >= 2) throw err;
      const fresh = await ctx.client.get(r, live.metadata.namespace, live.metadata.name);
      if (!fresh) return [];
      // A new generation needs a new reconcile, not this status.
      if (fresh.metadata.generation !== raw.metadata.generation) throw err;
      informer.upsert(fresh);
      live = fresh;
    }
  }
}

/** Conditions for a status patch, keeping conditions other writers own. */
export function conditionsFor(live: KubeObject, desired: DesiredCondition[], managed: readonly string[], now: number) {
  const cur = (live.status as { conditions?: Condition[] } | undefined)?.conditions;
  return mergeConditions(cur, desired, { now: new Date(now), generation: live.metadata.generation, managed });
}

/** States on the way to a result, not results: no Warning for them on an object just created. */
const PROGRESS = new Set(["GeneratingKeys", "RelaysUnavailable"]);

/**
 * One Event per transition. Not for: Ready turning anything but True (its cause has its own
 * Event); a condition first seen True (nothing changed for anyone to act on); a new object passing
 * through a progress state (keys being made, relays starting).
 */
export function recordTransitions(ctx: Context, obj: KubeObject, transitions: Transition[]): void {
  for (const t of transitions) {
    if (t.type === "Ready" && t.to !== "True") continue;
    if (t.from === undefined && t.to === "True") continue;
    if (t.reason === "GeneratingKeys" || (t.from === undefined && PROGRESS.has(t.reason))) continue;
    if (t.type === "ReconciliationPaused") {
      ctx.events.event(obj, "Normal", t.reason, t.message, "Pause");
      continue;
    }
    ctx.events.event(obj, t.to === "True" ? "Normal" : "Warning", t.reason, t.message);
  }
}

/** Status for a paused object: only the ReconciliationPaused condition is added; nothing else moves. */
export async function writePaused(ctx: Context, informer: Informer, raw: KubeObject): Promise<void> {
  const transitions = await writeStatus(ctx, informer, raw, (live) => {
    const cur = (live.status as { conditions?: Condition[] } | undefined)?.conditions ?? [];
    const others = cur.filter((c) => c.type !== "ReconciliationPaused");
    const { conditions, transitions } = mergeConditions(cur.filter((c) => c.type === "ReconciliationPaused"), [PAUSED_CONDITION], {
      now: new Date(ctx.now()), generation: live.metadata.generation, managed: ["ReconciliationPaused"],
    });
    return { status: { conditions: [...others, ...conditions] }, transitions };
  });
  recordTransitions(ctx, raw, transitions);
}
