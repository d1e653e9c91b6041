// What MF_QUEUE holds, per pool and provider: counts from the stream's per-subject state, waiting
// and in-flight figures from the relays' durable consumers (num_pending, num_ack_pending), and the
// oldest message's age from the first message on each subject (a WorkQueue stream keeps a message
// until it is acked, so the first one is the one that has waited longest).
import type { ConsumerInfo } from "@nats-io/jetstream";
import { consumers as consumerNames, STREAM_QUEUE, subjects, untoken } from "../../relay/queue/topology.ts";
import type { NatsHandle } from "./fleet.ts";
import { nextMessage } from "./stream.ts";

export type QueueKind = "route" | "ready" | "sched" | "held";

export interface QueueSubject {
  pool: string;
  kind: QueueKind;
  provider?: string;
  qid?: string;
  part?: number;
}

/** mf.q.<pool>.route | .ready.<provider> | .sched.<qid>.<part> | .held → its parts (null: not a queue subject). */
export function parseQueueSubject(subject: string): QueueSubject | null {
  const t = subject.split(".");
  if (t[0] !== "mf" || t[1] !== "q" || !t[2]) return null;
  const pool = untoken(t[2]);
  if (t[3] === "route" && t.length === 4) return { pool, kind: "route" };
  if (t[3] === "held" && t.length === 4) return { pool, kind: "held" };
  if (t[3] === "ready" && t.length === 5) return { pool, kind: "ready", provider: untoken(t[4]!) };
  if (t[3] === "sched" && t.length === 6) return { pool, kind: "sched", qid: t[4]!, part: Number(t[5]) };
  return null;
}

export interface SubjectQueue {
  subject: string;
  /** Messages in the stream on the subject (waiting + in flight). */
  messages: number;
  /** From the durable consumer: not yet delivered to a relay. */
  waiting?: number;
  /** From the durable consumer: delivered, not yet acked (being attempted). */
  inFlight?: number;
  /** The consumer is paused (a `queue hold` in progress, or by hand). */
  paused?: boolean;
  /** Stored time of the oldest message (ms since epoch). */
  oldestAt?: number;
}

export interface PoolQueue {
  pool: string;
  route: SubjectQueue;
  providers: (SubjectQueue & { provider: string })[];
  /** Deferred parts waiting for their retry time. */
  scheduled: number;
  held: SubjectQueue;
}

export class NoQueueStream extends Error {}

export async function streamSubjects(h: NatsHandle, filter: string): Promise<Record<string, number>> {
  try {
    const info = await h.jsm.streams.info(STREAM_QUEUE, { subjects_filter: filter });
    return info.state.subjects ?? {};
  } catch (e) {
    if (/stream not found/i.test((e as Error).message)) throw new NoQueueStream(`NATS has no ${STREAM_QUEUE} stream: no relay has started on this NATS yet`);
    throw e;
  }
}

export async function queueConsumers(h: NatsHandle): Promise<Map<string, ConsumerInfo>> {
  const out = new Map<string, ConsumerInfo>();
  try {
    for await (const c of h.jsm.consumers.list(STREAM_QUEUE)) out.set(c.name, c);
  } catch (e) {
    if (/stream not found/i.test((e as Error).message)) return out;
    throw e;
  }
  return out;
}

/**
 * Queue depth per pool: every pool of `pools` (from the plan or the cluster) appears, queues or
 * not, and so does any pool the stream has mail for.
 */
export async function queueDepths(h: NatsHandle, pools: string[], o: { providers?: string[]; oldest?: boolean } = {}): Promise<PoolQueue[]> {
  const counts = await streamSubjects(h, "mf.q.*.>");
  const cons = await queueConsumers(h);
  const byPool = new Map<string, PoolQueue>();
  const pool = (id: string): PoolQueue => {
    let p = byPool.get(id);
    if (!p) {
      p = { pool: id, route: { subject: `route`, messages: 0 }, providers: [], scheduled: 0, held: { subject: "held", messages: 0 } };
      byPool.set(id, p);
    }
    return p;
  };
  for (const id of pools) pool(id);
  for (const [subject, count] of Object.entries(counts)) {
    const s = parseQueueSubject(subject);
    if (!s) continue;
    const p = pool(s.pool);
    if (s.kind === "route") p.route = { subject, messages: count };
    else if (s.kind === "held") p.held = { subject, messages: count };
    else if (s.kind === "sched") p.scheduled += count;
    else p.providers.push({ subject, provider: s.provider!, messages: count });
  }
  // Ready queues with a consumer but nothing stored (all sent, or all held) still show, with the
  // consumer's figures (in flight, paused).
  for (const c of cons.values()) {
    const s = parseQueueSubject(c.config.filter_subject ?? "");
    const p = s?.kind === "ready" ? byPool.get(s.pool) : undefined;
    if (p && !p.providers.some((x) => x.provider === s!.provider)) p.providers.push({ subject: c.config.filter_subject!, provider: s!.provider!, messages: 0 });
  }
  for (const p of byPool.values()) {
    // Providers the plan knows but nothing was ever routed to show as empty rows only when asked.
    for (const name of o.providers ?? []) {
      if (!p.providers.some((x) => x.provider === name)) p.providers.push({ subject: subjects.ready(p.pool, name), provider: name, messages: 0 });
    }
    p.providers.sort((a, b) => a.provider.localeCompare(b.provider));
    const route = cons.get(consumerNames.route(p.pool));
    if (route) Object.assign(p.route, consumerFigures(route));
    for (const q of p.providers) {
      const c = cons.get(consumerNames.ready(p.pool, q.provider));
      if (c) Object.assign(q, consumerFigures(c));
    }
  }
  if (o.oldest !== false) {
    const jobs: Promise<void>[] = [];
    for (const p of byPool.values()) {
      for (const q of [p.route, p.held, ...p.providers]) {
        if (q.messages > 0 && q.subject.startsWith("mf.q.")) {
          jobs.push(nextMessage(h.nc, STREAM_QUEUE, 0, q.subject).then((m) => { if (m) q.oldestAt = m.time; }));
        }
      }
    }
    await Promise.all(jobs);
  }
  return [...byPool.values()].sort((a, b) => a.pool.localeCompare(b.pool));
}

function consumerFigures(c: ConsumerInfo): Pick<SubjectQueue, "waiting" | "inFlight" | "paused"> {
  return { waiting: c.num_pending, inFlight: c.num_ack_pending, ...(c.paused ? { paused: true } : {}) };
}
