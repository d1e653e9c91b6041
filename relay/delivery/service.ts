// The lane scheduler: delivery from the ready queues of this relay's pool.
//
// One loop per provider. A loop fetches from the provider's ready queue (`mf.q.<pool>.ready.<p>`,
// a durable consumer shared by the pool's relays) only as many envelopes as this relay's lanes for
// that provider can send right now: each fetched envelope is matched beforehand with a send slot
// from the lane limiter and a free connection of a lane. So mail held for a provider (quota spent,
// suspended, rate reached) stays in the stream, is never delivered to a relay that would only
// hand it back, and never blocks another provider's loop. The source address is picked when
// sending, among the lanes this relay owns, so mail never waits for one particular address.
//
// Drain (SIGTERM): loops stop fetching; transactions in flight finish and record their outcome;
// envelopes fetched but not yet started go back to the stream at once (nak); sessions close.
import { networkInterfaces, hostname } from "node:os";
import type { Consumer, JsMsg } from "@nats-io/jetstream";
import type { PoolPlan } from "../../api/plan.ts";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import type { PlanIndex } from "../plan/index.ts";
import { decodeEnvelope, type Envelope } from "../queue/envelope.ts";
import { consumers, STREAM_QUEUE, subjects } from "../queue/topology.ts";
import { routerFor, type Router } from "../routing/router.ts";
import { LocalLaneLimiter } from "../shaper/local.ts";
import { laneId, type LaneLimiter, type LaneRef } from "../shaper/types.ts";
import { ACK_WAIT_MS, ensureQueueConsumer } from "./consumers.ts";
import { attemptPart, SlotLost, type RcptResult } from "./attempt.ts";
import { BodyNotFound, BodyStore } from "./body.ts";
import { deliveryMetrics, type DeliveryMetrics } from "./metrics.ts";
import { Outcomes, type Suppressor } from "./outcomes.ts";
import { NoConnectionSlot, SessionPool } from "./smtp.ts";
import { suppressorFor } from "./suppress.ts";
import { moveToOverflow } from "./overflow.ts";
import { holdPart, holdUntil, pauseOf } from "./paused.ts";
import { confirmAck, retrying } from "./settle.ts";
import { domainSigner } from "../accept/dkim.ts";

export interface DeliveryOptions {
  /** The lane limiter (default: per relay, relay/shaper/local.ts). */
  limiter?: LaneLimiter | ((ctx: RelayContext) => LaneLimiter);
  suppressor?: Suppressor | ((ctx: RelayContext) => Suppressor | undefined);
  router?: Router;
  /** Extra trust anchors for verified TLS (MTA-STS) in tests. */
  ca?: string[];
  /** Envelopes asked for per fetch and lane at most. Default 16. */
  batch?: number;
  idleMs?: number;
  ackWaitMs?: number;
  connectTimeoutMs?: number;
}

/** The pool addresses this relay sends from (section 5 of the architecture). */
export function ownedAddresses(
  pool: PoolPlan, configured: string[], nodeName: string, isLocal: (address: string) => boolean = isLocalAddress,
): Set<string> {
  if (configured.length) return new Set(configured);
  // An address pinned to a node belongs to that node only; an unpinned one to any node carrying it.
  return new Set(pool.addresses.filter((a) => (a.nodeName ? a.nodeName === nodeName : isLocal(a.address))).map((a) => a.address));
}

/**
 * Whether this host can send from `address`: an interface carries it, or it lies in a loopback
 * interface's network (Linux routes all of 127.0.0.0/8 locally, so any 127.x can be bound).
 */
export function isLocalAddress(address: string): boolean {
  for (const list of Object.values(networkInterfaces())) {
    for (const i of list ?? []) {
      if (i.address === address) return true;
      if (i.internal && i.family === "IPv4" && i.cidr && isIPv4InCidr(address, i.cidr)) return true;
    }
  }
  return false;
}

function isIPv4InCidr(address: string, cidr: string): boolean {
  const [net, bits] = cidr.split("/") as [string, string];
  const toInt = (ip: string) => ip.split(".").reduce((acc, o) => (acc << 8) + Number(o), 0) >>> 0;
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(address)) return false;
  const mask = Number(bits) === 0 ? 0 : (~0 << (32 - Number(bits))) >>> 0;
  return (toInt(address) & mask) === (toInt(net) & mask);
}

/** After moving parts to the overflow pool, how long a relay waits before it reads the backlog again. */
const OVERFLOW_SETTLE_MS = 1000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)).unref());

class Signal {
  #waiters: (() => void)[] = [];
  wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, Math.max(0, ms));
      t.unref();
      const self = this;
      function done() {
        clearTimeout(t);
        const i = self.#waiters.indexOf(done);
        if (i >= 0) self.#waiters.splice(i, 1);
        resolve();
      }
      this.#waiters.push(done);
    });
  }
  fire(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}

interface ProviderLoop {
  provider: string;
  stopped: boolean;
  wake: Signal;
  done: Promise<void>;
  fetch?: { stop(): void };
}

export class Delivery implements Component {
  readonly name = "delivery";
  readonly #o: DeliveryOptions;
  #ctx!: RelayContext;
  #log!: Logger;
  #metrics!: DeliveryMetrics;
  #limiter!: LaneLimiter;
  #router!: Router;
  #sessions!: SessionPool;
  #bodies!: BodyStore;
  #outcomes!: Outcomes;
  #loops = new Map<string, ProviderLoop>();
  /** Since when every lane of the pool has been quota-held, per provider (overflow waits for it to settle). */
  readonly #quotaHeldSince = new Map<string, number>();
  #busy = new Map<string, number>();
  #inflight = new Set<Promise<void>>();
  #owned = new Set<string>();
  #helo = new Map<string, string>();
  #stopping = false;
  #onPlan = (p: PlanIndex) => this.#apply(p);

  constructor(o: DeliveryOptions = {}) {
    this.#o = o;
  }

  get limiter(): LaneLimiter {
    return this.#limiter;
  }

  /** The ready queues' AckWait: the option, else MAILFLEET_DELIVERY_ACK_WAIT (hand-made test configs may lack it), else a minute. */
  #ackWaitMs(): number {
    return this.#o.ackWaitMs ?? this.#ctx.config.MAILFLEET_DELIVERY_ACK_WAIT ?? ACK_WAIT_MS;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("delivery");
    this.#metrics = deliveryMetrics(ctx.registry);
    const pool = ctx.config.MAILFLEET_POOL;
    this.#limiter =
      typeof this.#o.limiter === "function"
        ? this.#o.limiter(ctx)
        : (this.#o.limiter ??
          new LocalLaneLimiter({
            onRule: (a) => {
              this.#metrics.ruleActivations.inc({ pool: a.lane.pool, source_ip: a.lane.address, provider: a.lane.provider, rule: a.rule.name, action: a.rule.action });
              this.#log.info("response rule fired", { lane: laneId(a.lane), rule: a.rule.name, action: a.rule.action, reply: a.reply.slice(0, 200) });
              for (const l of this.#loops.values()) l.wake.fire();
            },
          }));
    this.#router = this.#o.router ?? routerFor(ctx, this.#o.ca ? { ca: this.#o.ca } : {});
    this.#sessions = new SessionPool({
      limiter: this.#limiter,
      idleMs: this.#o.idleMs ?? 5000,
      onOpen: (lane, open) => this.#metrics.connections.set({ pool: lane.pool, source_ip: lane.address, provider: lane.provider }, open),
    });
    this.#bodies = new BodyStore(ctx.jsm, ctx.large);
    const suppressor = typeof this.#o.suppressor === "function" ? this.#o.suppressor(ctx) : (this.#o.suppressor ?? suppressorFor(ctx));
    this.#outcomes = new Outcomes({
      js: ctx.js,
      bodies: this.#bodies,
      pool,
      plan: () => ctx.plan(),
      ...(suppressor ? { suppressor } : {}),
      metrics: this.#metrics,
      log: this.#log,
      now: () => ctx.clock.now(),
      reportingMta: hostname(),
      sign: domainSigner(ctx.keyring, () => ctx.clock.now()),
    });
    if (!ctx.features.msgSchedules) {
      this.#log.error("nats-server has no message schedules (needs 2.12 or newer): deferred mail cannot be rescheduled", { version: ctx.features.version });
    }
    ctx.planHolder.on("change", this.#onPlan);
    const current = ctx.plan();
    if (current) this.#apply(current);
  }

  /** A new plan: lanes, owned addresses, one loop per provider. */
  #apply(p: PlanIndex): void {
    if (this.#stopping) return;
    this.#limiter.setPlan(p.plan);
    const pool = p.pool;
    const cfg = this.#ctx.config;
    this.#owned = pool ? ownedAddresses(pool, cfg.MAILFLEET_ADDRESSES, cfg.MAILFLEET_NODE_NAME) : new Set();
    this.#helo = new Map((pool?.addresses ?? []).map((a) => [a.address, a.hostname]));
    for (const a of cfg.MAILFLEET_ADDRESSES) if (pool && !this.#helo.has(a)) this.#log.warn("configured address is not in the pool", { address: a });
    const providers = new Set(p.plan.providers.map((x) => x.name));
    for (const name of providers) if (!this.#loops.has(name)) this.#startLoop(name);
    for (const [name, loop] of this.#loops) {
      if (!providers.has(name)) {
        // Mail already in its ready queue waits there (it is kept, not lost) until the provider returns.
        loop.stopped = true;
        loop.fetch?.stop();
        loop.wake.fire();
        this.#loops.delete(name);
      } else loop.wake.fire();
    }
  }

  #lanes(provider: string): LaneRef[] {
    const pool = this.#ctx.plan()?.pool;
    if (!pool) return [];
    return pool.lanes.filter((l) => l.provider === provider && this.#owned.has(l.address)).map((l) => ({ pool: pool.id, address: l.address, provider }));
  }

  #startLoop(provider: string): void {
    const loop: ProviderLoop = { provider, stopped: false, wake: new Signal(), done: Promise.resolve() };
    loop.done = this.#run(loop).catch((err) => this.#log.error("delivery loop ended", { provider, error: err as Error }));
    this.#loops.set(provider, loop);
  }

  async #run(loop: ProviderLoop): Promise<void> {
    const pool = this.#ctx.config.MAILFLEET_POOL;
    const durable = consumers.ready(pool, loop.provider);
    let consumer: Consumer | undefined;
    let rotate = 0;
    while (!loop.stopped && !this.#stopping) {
      if (!consumer) {
        try {
          await ensureQueueConsumer(this.#ctx.jsm, durable, subjects.ready(pool, loop.provider), this.#ackWaitMs());
          consumer = await this.#ctx.js.consumers.get(STREAM_QUEUE, durable);
        } catch (err) {
          this.#log.warn("ready consumer unavailable", { provider: loop.provider, error: err as Error });
          await loop.wake.wait(2000);
          continue;
        }
      }
      // What this relay can send now: per lane, free connections x granted send slots.
      const lanes = this.#lanes(loop.provider);
      const now = this.#ctx.clock.now();
      let wait = 5000;
      const grants: { lane: LaneRef; slots: number[]; grace: number }[] = [];
      const order = lanes.map((_, i) => lanes[(i + rotate) % lanes.length]!);
      rotate++;
      for (const lane of order) {
        const v = this.#limiter.view(lane);
        if (!v.sendable) {
          if (v.until) wait = Math.min(wait, v.until - now);
          continue;
        }
        const free = v.maxConnections - (this.#busy.get(laneId(lane)) ?? 0);
        if (free <= 0) continue;
        const g = await this.#limiter.acquire(lane, Math.min(free, this.#o.batch ?? 16));
        if (g.slots.length) grants.push({ lane, slots: g.slots, grace: g.graceMs ?? 250 });
        else wait = Math.min(wait, g.retryAt - now);
      }
      const total = grants.reduce((n, g) => n + g.slots.length, 0);
      if (!total) {
        // Quota spent on every lane of the pool for this provider: the overflow pool takes the backlog.
        if (await this.#overflow(loop.provider, lanes, consumer)) continue;
        await loop.wake.wait(Math.min(5000, Math.max(20, wait)));
        continue;
      }
      // Earliest slots first, whichever lane they belong to.
      const queue = grants.flatMap((g) => g.slots.map((slot) => ({ lane: g.lane, slot, grace: g.grace }))).sort((a, b) => a.slot - b.slot);
      let used = 0;
      const passed: typeof queue = [];
      try {
        const iter = await consumer.fetch({ max_messages: total, expires: 2000 });
        loop.fetch = iter;
        for await (const m of iter) {
          if (loop.stopped || this.#stopping) {
            m.nak();
            continue;
          }
          // Slots that passed while the fetch waited are not saved up (that would be a burst):
          // they go back, and a message that finds none left takes a fresh one when it starts.
          const now = this.#ctx.clock.now();
          let stale: (typeof queue)[number] | undefined;
          while (queue[used] && queue[used]!.slot + queue[used]!.grace < now) {
            stale = queue[used++];
            passed.push(stale);
          }
          const next = queue[used];
          if (next) used++;
          this.#dispatch(m, (next ?? stale ?? queue[queue.length - 1]!).lane, next ? next.slot : null);
        }
      } catch (err) {
        if (!loop.stopped && !this.#stopping) {
          this.#log.warn("ready fetch failed", { provider: loop.provider, error: err as Error });
          consumer = undefined;
          await loop.wake.wait(1000);
        }
      } finally {
        loop.fetch = undefined;
        // Slots nobody used go back to the limiter (quota and, when they were last, the rate).
        const unused = new Map<string, { lane: LaneRef; slots: number[] }>();
        for (const q of [...passed, ...queue.slice(used)]) {
          const u = unused.get(laneId(q.lane)) ?? { lane: q.lane, slots: [] };
          u.slots.push(q.slot);
          unused.set(laneId(q.lane), u);
        }
        for (const u of unused.values()) this.#limiter.release(u.lane, u.slots);
      }
    }
  }

  /** Moves a batch to the overflow pool when the shaper says every lane of the pool is quota-held. */
  async #overflow(provider: string, lanes: LaneRef[], consumer: Consumer): Promise<boolean> {
    const plan = this.#ctx.plan();
    const pool = plan?.pool;
    const to = pool?.overflowPool;
    if (!pool || !to || !plan.pools.has(to) || !lanes.length || !this.#limiter.quotaHeldEverywhere) return false;
    const settled = () => {
      // Unused slots go back to the quota windows within a second or two (the shaper's next write);
      // until then the day's quota left reads low and the excess high.
      const now = this.#ctx.clock.now();
      const since = this.#quotaHeldSince.get(provider) ?? now;
      this.#quotaHeldSince.set(provider, since);
      return now - since >= 3000;
    };
    if (!lanes.every((l) => this.#limiter.view(l).reason === "quota")) {
      this.#quotaHeldSince.delete(provider);
      return false;
    }
    try {
      if (!(await this.#limiter.quotaHeldEverywhere(pool.id, provider))) {
        this.#quotaHeldSince.delete(provider);
        return false;
      }
      if (!settled()) return false;
      // Only the backlog the lanes cannot send today moves; the rest waits for their hourly quotas
      // (spread over the day), so warming lanes keep the volume their days need to count.
      const left = this.#limiter.dailyQuotaLeft?.(pool.id, provider) ?? 0;
      const subject = subjects.ready(pool.id, provider);
      const backlog = left === 0 ? Infinity
        : ((await this.#ctx.jsm.streams.info(STREAM_QUEUE, { subjects_filter: subject })).state.subjects as Record<string, number> | undefined)?.[subject] ?? 0;
      const excess = backlog - left;
      if (excess <= 0) return false;
      // Every relay of the pool runs this at once: each moves a quarter of the excess and looks
      // again, so together they converge on it instead of each moving all of it.
      const moved = await moveToOverflow({ js: this.#ctx.js, consumer, from: pool.id, to, provider, max: Math.min(100, Math.ceil(excess / 4)), registry: this.#ctx.registry, log: this.#log });
      // The backlog counts parts other relays are moving at this moment: let their moves land
      // before looking again (looking at once moved 14 for an excess of 10 with 3 relays).
      if (moved > 0) await sleep(OVERFLOW_SETTLE_MS);
      return moved > 0;
    } catch (err) {
      this.#log.warn("overflow failed", { provider, error: err as Error });
      return false;
    }
  }

  #dispatch(m: JsMsg, lane: LaneRef, slot: number | null): void {
    const id = laneId(lane);
    this.#busy.set(id, (this.#busy.get(id) ?? 0) + 1);
    let freed = false;
    // The lane's connection is busy from dispatch until the SMTP transaction ends; recording the
    // outcome and acking happen after, while the connection already carries the next message.
    const free = () => {
      if (freed) return;
      freed = true;
      this.#busy.set(id, (this.#busy.get(id) ?? 1) - 1);
      this.#loops.get(lane.provider)?.wake.fire();
    };
    const p = this.#deliver(m, lane, slot, free)
      .catch((err) => this.#log.error("delivery failed unexpectedly", { error: err as Error }))
      .finally(() => {
        free();
        this.#inflight.delete(p);
      });
    this.#inflight.add(p);
  }

  /** Waits for a fresh send slot; null when the lane closed meanwhile (or the relay drains). */
  async #slot(lane: LaneRef): Promise<number | null> {
    for (;;) {
      if (this.#stopping) return null;
      if (!this.#limiter.view(lane).sendable) return null;
      const g = await this.#limiter.acquire(lane, 1);
      if (g.slots.length) return g.slots[0]!;
      await sleep(Math.min(5000, Math.max(20, g.retryAt - this.#ctx.clock.now())));
    }
  }

  async #deliver(m: JsMsg, lane: LaneRef, given: number | null, free: () => void): Promise<void> {
    const ackWait = this.#ackWaitMs();
    const keepalive = setInterval(() => m.working(), Math.max(1000, ackWait / 3));
    // The send slot this part holds, once it has one (given back if no connection can be had).
    let held: number | null = null;
    try {
      let env: Envelope;
      try {
        env = decodeEnvelope(m.data);
      } catch (err) {
        this.#log.error("ready: undecodable envelope terminated", { seq: m.seq, error: err as Error });
        m.term();
        return;
      }
      const pause = pauseOf(this.#ctx.plan()?.domains.get(env.domain.toLowerCase()), this.#ctx.clock.now());
      if (pause) {
        // The sending domain is paused on its rates: the part waits in the queue until the pause ends.
        if (given !== null) this.#limiter.release(lane, [given]);
        try {
          await holdPart(this.#ctx.js, env, holdUntil(pause.until, this.#ctx.clock.now()));
          m.ack();
        } catch (err) {
          this.#log.warn("cannot hold a paused domain's part; it is redelivered", { qid: env.id, domain: env.domain, error: err as Error });
          m.nak(5000);
        }
        return;
      }
      const view = this.#limiter.view(lane);
      if (!view.sendable && view.reason !== "quota") {
        // Suspended, paused or blocked since the fetch was asked for (a fetch waits up to 2 s for
        // mail): back to the stream unsent. Not at once, or this relay's still-open fetch would
        // take it straight back. (A spent quota does not count: the slot given was part of it.)
        if (given !== null) this.#limiter.release(lane, [given]);
        m.nak(1000);
        return;
      }
      // The body is read while the send slot is awaited.
      const bodyP = this.#bodies.get(env.body);
      bodyP.catch(() => {});
      const slot = given ?? (await this.#slot(lane));
      held = slot;
      if (slot === null) {
        // The lane closed before this one could start: back to the stream for whoever can send.
        m.nak(this.#stopping ? 0 : 1000);
        return;
      }
      const wait = slot - this.#ctx.clock.now();
      if (wait > 0) await sleep(wait);
      if (this.#stopping) {
        // Not started: back to the stream now, for another relay or after restart.
        m.nak();
        return;
      }
      const plan = this.#ctx.plan();
      const provider = plan?.providers.get(lane.provider);
      const laneInfo = { source: lane.address, provider: lane.provider, ...(slot !== null ? { slot } : {}) };
      const policy = plan?.plan.delivery;
      if (policy && this.#ctx.clock.now() >= env.acceptedAt + policy.expiryMs) {
        // Held past its expiry (lanes closed for a long time): bounce without another try.
        const c = env.lastClass ?? "transient";
        const reply = env.lastReply ?? "451 4.4.7 Message expired in the queue";
        const rcpts: RcptResult[] = env.rcpts.map((r) => ({ rcpt: r, reply, code: reply.slice(0, 3), class: c as RcptResult["class"], permanent: false }));
        await this.#settle(m, env, () => this.#outcomes.record({ ...env, attempts: Math.max(0, env.attempts - 1) }, rcpts, laneInfo));
        return;
      }
      let body: Buffer;
      try {
        body = await bodyP;
      } catch (err) {
        if (!(err instanceof BodyNotFound)) throw err;
        const reply = "554 5.3.0 The message body is no longer stored";
        const rcpts: RcptResult[] = env.rcpts.map((r) => ({ rcpt: r, reply, code: "554", enhanced: "5.3.0", class: "other", permanent: true }));
        this.#log.error("body missing; bouncing", { qid: env.id, part: env.part });
        await this.#settle(m, env, () => this.#outcomes.record(env, rcpts, laneInfo));
        return;
      }
      const result = await attemptPart(
        { env, lane, helo: this.#helo.get(lane.address) ?? hostname(), provider, body },
        {
          resolver: this.#router.resolver,
          mtaSts: this.#router.mtaSts,
          pool: this.#sessions,
          limiter: this.#limiter,
          port: this.#ctx.config.MAILFLEET_DELIVERY_PORT,
          ...(this.#o.ca ? { ca: this.#o.ca } : {}),
          ...(this.#o.connectTimeoutMs ? { connectTimeoutMs: this.#o.connectTimeoutMs } : {}),
          // The shaper's last word on the slot (suspended meanwhile, grace passed).
          gate: () => this.#limiter.spend?.(lane, slot) ?? true,
        },
      );
      free();
      const d = await this.#settle(m, env, () =>
        this.#outcomes.record(env, result.rcpts, { ...laneInfo, ...(result.mx ? { mx: result.mx } : {}), ...(result.tls !== undefined ? { tls: result.tls } : {}) }),
      );
      this.#log.debug("attempt", { qid: env.id, part: env.part, lane: laneId(lane), mx: result.mx, delivered: d.delivered.length, deferred: d.deferred.length, bounced: d.bounced.length + d.expired.length });
    } catch (err) {
      if (err instanceof NoConnectionSlot) {
        // No connection in time: the send slot was not spent; it goes back (its quota too).
        if (held !== null) this.#limiter.release(lane, [held]);
        m.nak(1000);
        return;
      }
      if (err instanceof SlotLost) {
        // Nothing was sent: back to the stream at once, for a lane (or relay) that can send.
        m.nak();
        return;
      }
      this.#log.warn("attempt not recorded; the envelope goes back to the queue", { error: err as Error });
      m.nak(5000);
    } finally {
      clearInterval(keepalive);
    }
  }

  /**
   * Stores an attempt's outcome, then acks its part and waits for the ack to be confirmed; each is
   * asked again while NATS cannot take it (relay/delivery/settle.ts says why). An outcome still not
   * stored after AckWait throws: the part goes back to the queue and is tried again.
   */
  async #settle<T>(m: JsMsg, env: Envelope, record: () => Promise<T>): Promise<T> {
    const forMs = this.#ackWaitMs();
    const out = await retrying(record, {
      forMs,
      onRetry: (err, n) => {
        if (n === 1) this.#log.warn("outcome not stored yet; trying again", { qid: env.id, part: env.part, error: err as Error });
      },
    });
    if (!(await confirmAck(this.#ctx.nc, m, { forMs }))) {
      this.#log.warn("ack not confirmed; the part may be tried again", { qid: env.id, part: env.part });
    }
    return out;
  }

  quiesce(): void {
    this.#stopping = true;
    this.#ctx?.planHolder.off("change", this.#onPlan);
    for (const l of this.#loops.values()) {
      l.stopped = true;
      l.fetch?.stop();
      l.wake.fire();
    }
  }

  async stop(): Promise<void> {
    this.quiesce();
    await Promise.allSettled([...this.#loops.values()].map((l) => l.done));
    await Promise.allSettled([...this.#inflight]);
    this.#sessions?.closeAll();
    await this.#limiter?.close();
  }
}
