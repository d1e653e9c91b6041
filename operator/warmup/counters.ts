// Warm-up counters: the leader follows MF_EVENTS with a durable consumer and keeps, per lane
// (pool, source address, provider) and warm-up period, the recipients the lane attempted at the
// provider (delivered, deferred or bounced in the SMTP dialogue: the provider saw them) and the
// complaints that came back. Counts live in NATS KV (one key per pool and period, so a period's
// lanes are read at once), so the warm-up engine and status can be rebuilt after a restart.
//
// Exactly once: a message is acked only after the counts it adds are stored, and each stored key
// remembers the highest stream sequence it includes, so a batch redelivered after a crash between
// store and ack is not counted twice.
//
// The period an event counts in is the one its `time` falls in (not when it is read), so a
// consumer that catches up after a restart puts every event in its own day.
import { AckPolicy, DeliverPolicy, type JetStreamClient, type JsMsg, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { StorageType } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { nanos } from "@nats-io/transport-node";
import type { MailEvent } from "../../relay/delivery/events.ts";
import { STREAM_EVENTS, token } from "../../relay/queue/topology.ts";
import type { Logger } from "../runtime/log.ts";
import { type LaneCounters, ZERO, addCounters } from "./decide.ts";

export const WARMUP_BUCKET = "mailfleet-warmup";
export const COUNTER_CONSUMER = "mailfleet-warmup";
/** Counters are kept a week (as MF_EVENTS): longer than any reputation window in use. */
const KEEP_MS = 8 * 86_400_000;

/** Raw counts of one lane in one period (complaints always a number here; blindness is applied when read). */
export type RawCounts = { attempted: number; delivered: number; deferred: number; bounced: number; complaints: number };

/**
 * One stored key: every lane of a pool in one period, and the same counts per sending domain and
 * provider (`domain/provider`: the provider says whether complaints are known), for domain pauses.
 */
export type PeriodDoc = { seq: number; lanes: Record<string, RawCounts>; domains?: Record<string, RawCounts> };

export function periodOf(timeMs: number, periodMs: number, dayZero = 0): number {
  return Math.floor((timeMs - dayZero) / periodMs);
}

/** KV key of a pool's counters in one period. The period length is part of it, so a schedule whose period changes starts new keys. */
export function counterKey(pool: string, periodMs: number, period: number): string {
  // token() makes "." "~", which KV keys do not allow; "=" is allowed and in no Kubernetes name.
  return `c.${token(pool).replaceAll("~", "=")}.${periodMs}.${period}`;
}

/**
 * What one event adds to its lane, or null when it adds nothing: only outcomes of the SMTP
 * dialogue (the provider saw the recipients) and complaints, and only with a known lane.
 */
export function laneDelta(e: MailEvent): { pool: string; lane: string; domain?: string; time: number; delta: RawCounts } | null {
  if (!e.source || !e.provider || !e.pool) return null;
  const n = Math.max(e.rcpts?.length ?? 0, 1);
  const d: RawCounts = { attempted: 0, delivered: 0, deferred: 0, bounced: 0, complaints: 0 };
  switch (e.type) {
    case "delivered":
      d.attempted = n;
      d.delivered = n;
      break;
    case "deferred":
      d.attempted = n;
      d.deferred = n;
      break;
    case "bounced":
      // An asynchronous bounce (a DSN after 250) was attempted (and counted) as delivered: it
      // counts as a bounce of the lane, not as another attempt.
      if (!e.async) d.attempted = n;
      d.bounced = n;
      break;
    case "complained":
      d.complaints = n;
      break;
    default:
      return null;
  }
  // The day of the send slot the attempt spent (the shaper's quota window), else of the event.
  const time = Date.parse(e.slotAt ?? e.time);
  if (!Number.isFinite(time)) return null;
  return { pool: e.pool, lane: `${e.source}/${e.provider}`, ...(e.domain ? { domain: `${e.domain.toLowerCase()}/${e.provider}` } : {}), time, delta: d };
}

export function addRaw(a: RawCounts | undefined, b: RawCounts): RawCounts {
  if (!a) return { ...b };
  return {
    attempted: a.attempted + b.attempted, delivered: a.delivered + b.delivered, deferred: a.deferred + b.deferred,
    bounced: a.bounced + b.bounced, complaints: a.complaints + b.complaints,
  };
}

/** Adds messages (seq, delta) to a stored doc; those at or below its seq are already in it. */
export function applyToDoc(doc: PeriodDoc | null, items: { seq: number; lane: string; domain?: string; delta: RawCounts }[]): PeriodDoc {
  const out: PeriodDoc = { seq: doc?.seq ?? 0, lanes: { ...(doc?.lanes ?? {}) } };
  if (doc?.domains || items.some((it) => it.domain)) out.domains = { ...(doc?.domains ?? {}) };
  for (const it of items) {
    if (it.seq <= (doc?.seq ?? 0)) continue;
    out.lanes[it.lane] = addRaw(out.lanes[it.lane], it.delta);
    if (it.domain) out.domains![it.domain] = addRaw(out.domains![it.domain], it.delta);
    out.seq = Math.max(out.seq, it.seq);
  }
  return out;
}

/** A lane's counters as the decisions take them: complaints null (unknown) when the provider sends no reports. */
export function countersOf(raw: RawCounts | undefined, feedbackLoop: boolean): LaneCounters {
  const c = raw ?? ZERO;
  return {
    attempted: c.attempted, delivered: c.delivered, deferred: c.deferred, bounced: c.bounced,
    complaints: feedbackLoop ? (c.complaints ?? 0) : null,
  };
}

export function sumCounters(list: LaneCounters[], feedbackLoop: boolean): LaneCounters {
  return list.reduce((a, b) => addCounters(a, b), countersOf(undefined, feedbackLoop));
}

export type CounterStoreOptions = {
  connection: () => Promise<NatsConnection>;
  replicas: number;
  /** The warm-up period of a pool (namespace/name): its schedule's, else a day. */
  periodMsOf: (pool: string) => number;
  log: Logger;
  batch?: number;
};

export class CounterStore {
  private readonly o: CounterStoreOptions;
  private kv: KV | undefined;
  private js: JetStreamClient | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;
  private wake: (() => void) | undefined;
  /** When a fetch last found nothing left to read: every event published before it is counted. */
  caughtUpAt = 0;
  /** Events counted since start (diagnostics). */
  counted = 0;

  constructor(o: CounterStoreOptions) {
    this.o = o;
  }

  async bucket(): Promise<KV> {
    if (this.kv) return this.kv;
    const nc = await this.o.connection();
    this.js ??= jetstream(nc, { timeout: 10_000 });
    this.kv = await new Kvm(this.js).create(WARMUP_BUCKET, {
      history: 1, storage: StorageType.File, replicas: this.o.replicas, ttl: KEEP_MS,
    });
    return this.kv;
  }

  /** A pool's counters in one period (null: nothing counted). */
  async read(pool: string, periodMs: number, period: number): Promise<PeriodDoc | null> {
    const kv = await this.bucket();
    const e = await kv.get(counterKey(pool, periodMs, period));
    if (!e || e.operation !== "PUT" || !e.value.length) return null;
    return e.json<PeriodDoc>();
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.running;
    this.running = undefined;
  }

  private async pause(ms: number): Promise<void> {
    await new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      t.unref();
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
    this.wake = undefined;
  }

  private async loop(): Promise<void> {
    let warned = "";
    while (!this.stopped) {
      try {
        await this.bucket();
        const nc = await this.o.connection();
        const jsm = await jetstreamManager(nc, { timeout: 10_000 });
        try {
          await jsm.consumers.info(STREAM_EVENTS, COUNTER_CONSUMER);
        } catch (err) {
          const m = (err as Error).message;
          if (/stream not found/i.test(m)) {
            // No relay has made the stream yet: nothing was sent, so nothing is missing.
            this.caughtUpAt = Date.now();
            await this.pause(1000);
            continue;
          }
          if (!/consumer not found/i.test(m)) throw err;
          await jsm.consumers.add(STREAM_EVENTS, {
            durable_name: COUNTER_CONSUMER,
            ack_policy: AckPolicy.Explicit,
            deliver_policy: DeliverPolicy.All,
            filter_subjects: ["delivered", "deferred", "bounced", "complained"].map((t) => `mf.ev.*.${t}`),
            ack_wait: nanos(60_000),
            max_ack_pending: 5000,
          });
          this.o.log.info("warm-up counters: durable consumer created", { consumer: COUNTER_CONSUMER });
        }
        const c = await this.js!.consumers.get(STREAM_EVENTS, COUNTER_CONSUMER);
        warned = "";
        while (!this.stopped) {
          const started = Date.now();
          const msgs: JsMsg[] = [];
          // The shortest idle wait the client allows (1 s): a period closes only once a fetch found
          // nothing left, and the plan with the next day's quotas waits for that.
          const it = await c.fetch({ max_messages: this.o.batch ?? 1000, expires: 1000 });
          for await (const m of it) msgs.push(m);
          if (msgs.length) await this.store(msgs);
          if (!msgs.length || msgs[msgs.length - 1]!.info.pending === 0) this.caughtUpAt = started;
        }
      } catch (err) {
        const m = (err as Error).message;
        if (m !== warned) this.o.log.warn("warm-up counters: cannot read MF_EVENTS; retrying", { error: m });
        warned = m;
        await this.pause(2000);
      }
    }
  }

  /** Stores a batch's counts (compare-and-set per key), then acks it; on failure the batch is redelivered. */
  private async store(msgs: JsMsg[]): Promise<void> {
    const kv = await this.bucket();
    const byKey = new Map<string, { seq: number; lane: string; domain?: string; delta: RawCounts }[]>();
    for (const m of msgs) {
      let d: ReturnType<typeof laneDelta> = null;
      try {
        d = laneDelta(m.json<MailEvent>());
      } catch {
        d = null; // not JSON: nothing to count
      }
      if (!d) continue;
      const periodMs = this.o.periodMsOf(d.pool);
      const key = counterKey(d.pool, periodMs, periodOf(d.time, periodMs));
      const list = byKey.get(key) ?? [];
      list.push({ seq: m.seq, lane: d.lane, ...(d.domain ? { domain: d.domain } : {}), delta: d.delta });
      byKey.set(key, list);
    }
    try {
      for (const [key, items] of byKey) {
        for (let attempt = 0; ; attempt++) {
          const e = await kv.get(key);
          const cur = e && e.operation === "PUT" && e.value.length ? e.json<PeriodDoc>() : null;
          const next = applyToDoc(cur, items);
          if (cur && next.seq === cur.seq) break;
          try {
            if (e && e.operation === "PUT") await kv.update(key, JSON.stringify(next), e.revision);
            else await kv.create(key, JSON.stringify(next));
            break;
          } catch (err) {
            if (attempt >= 5) throw err;
          }
        }
      }
    } catch (err) {
      for (const m of msgs) m.nak();
      throw err;
    }
    for (const m of msgs) m.ack();
    this.counted += msgs.length;
  }
}
