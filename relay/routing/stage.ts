// The route stage: a durable consumer on `mf.q.<pool>.route`, shared by the pool's relays. Each
// accepted envelope (part 0) is split into parts per recipient domain, the parts are published to
// `mf.q.<pool>.ready.<provider>` with Nats-Msg-Id `<qid>:<part>` (a repeat after a crash is
// dropped as a duplicate), then the envelope is acked. Domains that take no mail bounce here;
// domains whose DNS failed go back (only they) through a message schedule, with backoff.
import type { JsMsg, Consumer } from "@nats-io/jetstream";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { decodeEnvelope, encodeEnvelope, type Envelope } from "../queue/envelope.ts";
import { consumers, STREAM_QUEUE, subjects } from "../queue/topology.ts";
import { ensureQueueConsumer } from "../delivery/consumers.ts";
import { Outcomes, type Suppressor } from "../delivery/outcomes.ts";
import { BodyStore } from "../delivery/body.ts";
import { deliveryMetrics, type DeliveryMetrics } from "../delivery/metrics.ts";
import { suppressorFor } from "../delivery/suppress.ts";
import { domainSigner } from "../accept/dkim.ts";
import { routerFor, type Router } from "./router.ts";
import { hostname } from "node:os";

/** How long the route stage retries creating its consumer when the relay starts. */
const START_RETRY_MS = 60_000;

export interface RouteStageOptions {
  suppressor?: Suppressor | ((ctx: RelayContext) => Suppressor | undefined);
  /** Envelopes handled at once. Default 32. */
  concurrency?: number;
  router?: Router;
}

export class RouteStage implements Component {
  readonly name = "route";
  #ctx!: RelayContext;
  #log!: Logger;
  #router!: Router;
  #outcomes!: Outcomes;
  #metrics!: DeliveryMetrics;
  #consumer?: Consumer;
  #stopped = false;
  #loop?: Promise<void>;
  #fetch?: { stop(): void };
  readonly #inflight = new Set<Promise<void>>();
  readonly #o: RouteStageOptions;

  constructor(o: RouteStageOptions = {}) {
    this.#o = o;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("route");
    this.#router = this.#o.router ?? routerFor(ctx);
    this.#metrics = deliveryMetrics(ctx.registry);
    const pool = ctx.config.MAILFLEET_POOL;
    const suppressor = typeof this.#o.suppressor === "function" ? this.#o.suppressor(ctx) : (this.#o.suppressor ?? suppressorFor(ctx));
    this.#outcomes = new Outcomes({
      js: ctx.js,
      bodies: new BodyStore(ctx.jsm, ctx.large),
      pool,
      plan: () => ctx.plan(),
      ...(suppressor ? { suppressor } : {}),
      metrics: this.#metrics,
      log: this.#log,
      now: () => ctx.clock.now(),
      reportingMta: hostname(),
      sign: domainSigner(ctx.keyring, () => ctx.clock.now()),
    });
    // A JetStream API request can time out while a fresh cluster elects the consumer's leader
    // (3 relays starting at once on 3 new servers): retry for a while before the relay gives up.
    for (const deadline = Date.now() + START_RETRY_MS; ;) {
      try {
        await ensureQueueConsumer(ctx.jsm, consumers.route(pool), subjects.route(pool));
        this.#consumer = await ctx.js.consumers.get(STREAM_QUEUE, consumers.route(pool));
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        this.#log.warn("route consumer not ready; retrying", { error: e as Error });
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    const max = this.#o.concurrency ?? 32;
    while (!this.#stopped) {
      const free = max - this.#inflight.size;
      if (free <= 0 || !this.#ctx.plan()) {
        await Promise.race([...this.#inflight, sleep(500)]);
        continue;
      }
      try {
        const iter = await this.#consumer!.fetch({ max_messages: free, expires: 2000 });
        this.#fetch = iter;
        for await (const m of iter) {
          if (this.#stopped) {
            m.nak();
            continue;
          }
          const p = this.#handle(m).finally(() => this.#inflight.delete(p));
          this.#inflight.add(p);
        }
      } catch (err) {
        if (this.#stopped) break;
        this.#log.warn("route fetch failed", { error: err as Error });
        await sleep(1000);
      }
    }
  }

  async #handle(m: JsMsg): Promise<void> {
    let env: Envelope;
    try {
      env = decodeEnvelope(m.data);
    } catch (err) {
      // Not an envelope: nothing can ever deliver it. Keep it out of the queue, loudly.
      this.#log.error("route: undecodable envelope terminated", { seq: m.seq, error: err as Error });
      m.term();
      return;
    }
    const plan = this.#ctx.plan();
    if (!plan) {
      m.nak(5000);
      return;
    }
    try {
      const r = await this.#router.split(env, plan);
      const js = this.#ctx.js;
      await Promise.all(r.parts.map((p) => js.publish(subjects.ready(p.pool, p.provider!), encodeEnvelope(p), { msgID: `${p.id}:${p.part}` })));
      if (r.parts.length) this.#metrics.routed.inc({ pool: env.pool, result: "deliver" }, new Set(r.parts.map((p) => p.rcptDomain)).size);
      if (r.bounces.length) {
        this.#metrics.routed.inc({ pool: env.pool, result: "bounce" }, r.bounces.length);
        await this.#outcomes.routeBounces(env, r.bounces);
      }
      if (r.retry.length) {
        this.#metrics.routed.inc({ pool: env.pool, result: "retry" }, r.retry.length);
        const routed = [...(env.routed ?? []), ...new Set([...r.parts.map((p) => p.rcptDomain!), ...r.bounces.map((b) => b.domain)])];
        await this.#outcomes.routeRetry(env, r.retry, routed);
      }
      if (!r.parts.length && !r.retry.length && !env.routed?.length) {
        // Every recipient bounced here: the body is done with.
        await new BodyStore(this.#ctx.jsm, this.#ctx.large).delete(env.body).catch(() => {});
      }
      m.ack();
      this.#log.debug("routed", { qid: env.id, parts: r.parts.length, bounced: r.bounces.length, retry: r.retry.length });
    } catch (err) {
      this.#log.warn("route failed; will retry", { qid: env.id, error: err as Error });
      m.nak(2000);
    }
  }

  quiesce(): void {
    this.#stopped = true;
    this.#fetch?.stop();
  }

  async stop(): Promise<void> {
    this.quiesce();
    await this.#loop;
    await Promise.allSettled([...this.#inflight]);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
