// Where mail lives in NATS: stream, subject and consumer names. One module so the acceptance side,
// the delivery side, the operator (queue metrics, KEDA) and the CLI agree.
//
// Accepted mail (the model is KumoMTA's scheduled queue -> ready queue per site):
//   MF_BODY   mf.body.<qid>                       the signed message, stored once (Limits, max age)
//   MF_QUEUE  mf.q.<pool>.route                   envelopes whose recipients still need MX routing
//             mf.q.<pool>.ready.<provider>        envelopes ready for one provider (any lane of the pool)
//             mf.q.<pool>.sched.<qid>.<part>      deferred envelopes; a message schedule republishes
//                                                 them to route/ready when due
//             mf.q.<pool>.held                    envelopes held by hand (`mailfleet queue hold`): no
//                                                 consumer reads it, so they wait until `queue release`
//                                                 puts them back where they came from (the header
//                                                 Mailfleet-Held-From names that subject)
//   MF_EVENTS mf.ev.<pool>.<type>                 outcomes: accepted, delivered, deferred, bounced, ...
//
// MF_QUEUE has WorkQueue retention: every envelope is consumed once and deleted on ack. Ready
// queues are per (pool, provider), and the source address is chosen when sending: a relay fetches
// from a provider's queue only while one of its lanes for that provider can send, so mail held
// for a lane (quota spent, provider suspended) waits in the stream without redeliveries and
// without blocking other providers; and mail never waits for one particular address that may be
// gone.

export const STREAM_BODY = "MF_BODY";
export const STREAM_QUEUE = "MF_QUEUE";
export const STREAM_EVENTS = "MF_EVENTS";
export const OBJECT_BUCKET_LARGE = "mf-large";
export const KV_SUPPRESSION = "mf-suppress";

/**
 * A subject token for a Kubernetes name or namespace/name. Names are RFC 1123 (lower case,
 * digits, '-' and '.'), so '.' becomes '~' and '/' becomes '_', neither of which a name holds:
 * the mapping is reversible.
 */
export function token(name: string): string {
  return name.replaceAll(".", "~").replaceAll("/", "_");
}
export function untoken(tok: string): string {
  return tok.replaceAll("_", "/").replaceAll("~", ".");
}

export const subjects = {
  body: (qid: string) => `mf.body.${qid}`,
  route: (pool: string) => `mf.q.${token(pool)}.route`,
  ready: (pool: string, provider: string) => `mf.q.${token(pool)}.ready.${token(provider)}`,
  readyAll: (pool: string) => `mf.q.${token(pool)}.ready.*`,
  sched: (pool: string, qid: string, part: number) => `mf.q.${token(pool)}.sched.${qid}.${part}`,
  held: (pool: string) => `mf.q.${token(pool)}.held`,
  event: (pool: string, type: EventType) => `mf.ev.${token(pool)}.${type}`,
  events: "mf.ev.>",
};

export const consumers = {
  route: (pool: string) => `route-${token(pool)}`,
  ready: (pool: string, provider: string) => `ready-${token(pool)}-${token(provider)}`,
};

export const EVENT_TYPES = [
  "accepted", "delivered", "deferred", "bounced", "expired", "complained", "unsubscribed", "suppressed", "dropped",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];
