// Domain pauses on the delivery side: a SendingDomain the operator paused on its bounce or
// complaint rates (plan DomainPlan.paused) still has its mail accepted; delivery holds each of its
// parts in the queue, unsent and never dropped, until the pause ends. A part fetched from a ready
// queue while its domain is paused goes to its schedule subject, due when the pause ends (one move
// per part and pause: no redelivery loop), with no attempt counted and no event (the provider saw
// nothing, so warm-up counters and webhooks have nothing to record).
import type { JetStreamClient } from "@nats-io/jetstream";
import type { DomainPlan } from "../../api/plan.ts";
import { encodeEnvelope, type Envelope } from "../queue/envelope.ts";
import { subjects } from "../queue/topology.ts";

/** The pause in force on a part's sending domain at `now`, if any. */
export function pauseOf(domain: DomainPlan | undefined, now: number): { until: number; reason: string } | null {
  const p = domain?.paused;
  if (!p) return null;
  const until = Date.parse(p.until);
  return Number.isFinite(until) && until > now ? { until, reason: p.reason } : null;
}

/**
 * When a held part is due again: the pause's end, and never sooner than a second from now (a plan
 * that still shows a pause a relay's clock says has ended must not make a tight loop).
 */
export function holdUntil(until: number, now: number): number {
  return Math.max(until, now + 1000);
}

/** Parks a part of a paused domain on its schedule subject, to return to its queue at `at`. */
export async function holdPart(js: JetStreamClient, env: Envelope, at: number): Promise<void> {
  const target = env.part === 0 || !env.provider ? subjects.route(env.pool) : subjects.ready(env.pool, env.provider);
  // The time is in the id: a part held again for a later end is a new message, not a duplicate.
  await js.publish(subjects.sched(env.pool, env.id, env.part), encodeEnvelope(env), {
    msgID: `${env.id}:${env.part}:p${at}`,
    schedule: { specification: new Date(at), target },
  });
}
