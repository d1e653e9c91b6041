// Webhooks: outcome events POSTed to the endpoints the plan's sending domains declare.
//
// One durable consumer on MF_EVENTS per endpoint (`wh-<hash of domain/name>`), filtered on the
// pool's event subjects of the types the endpoint wants, shared by the pool's relays (each event
// is POSTed by one of them). A new endpoint starts with events from its creation on. Failures are
// retried with exponential backoff and jitter (nak with delay, 5 s doubling to 1 h) for about a
// day (MAX_ATTEMPTS), then dropped with a log line and a metric. Order per endpoint is not kept
// (several POSTs are in flight at once); receivers deduplicate on Mailfleet-Event-Id.
//
// Signing (Stripe-style): the secret is the file MAILFLEET_SECRETS_DIR/<keyName> (the pool's
// mounted Secret). Each POST carries
//     Mailfleet-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
// The receiver recomputes the HMAC over its own t and the raw body, compares in constant time and
// rejects a t older than a few minutes (replays). The secret file is read again when it changes,
// so rotation needs no restart.
import { createHmac } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { AckPolicy, DeliverPolicy, type ConsumerConfig, type JsMsg } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import type { DomainPlan } from "../../api/plan.ts";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import type { PlanIndex } from "../plan/index.ts";
import { EVENT_TYPES, STREAM_EVENTS, subjects, token, type EventType } from "../queue/topology.ts";
import { digest, type MailEvent } from "../delivery/events.ts";
import { deliveryMetrics, type DeliveryMetrics } from "../delivery/metrics.ts";

export const SIGNATURE_HEADER = "Mailfleet-Signature";
export const MAX_ATTEMPTS = 30;

export function sign(secret: string | Buffer, body: string, t: number): string {
  const mac = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  return `t=${t},v1=${mac}`;
}

/** Exponential backoff with jitter for the n-th failed POST (1-based). */
export function webhookDelayMs(n: number, baseMs = 5000, maxMs = 3_600_000, random = Math.random): number {
  const d = Math.min(maxMs, baseMs * 2 ** Math.min(n - 1, 30));
  return Math.round(d / 2 + (random() * d) / 2);
}

export function consumerName(domain: string, name: string): string {
  return `wh-${digest(domain.toLowerCase(), name).replace(/[^A-Za-z0-9]/g, "").slice(0, 20)}`;
}

interface Endpoint {
  domain: DomainPlan;
  name: string;
  url: string;
  keyName: string;
  types: EventType[];
  durable: string;
  stopped: boolean;
  loop?: Promise<void>;
  iter?: { stop(): void };
}

export interface WebhookOptions {
  /** First retry delay (tests shorten it). Default 5 s. */
  retryBaseMs?: number;
  timeoutMs?: number;
  concurrency?: number;
}

export class WebhookDispatcher implements Component {
  readonly name = "webhooks";
  readonly #o: WebhookOptions;
  #ctx!: RelayContext;
  #log!: Logger;
  #metrics!: DeliveryMetrics;
  #endpoints = new Map<string, Endpoint>();
  #secrets = new Map<string, { mtime: number; value: Buffer }>();
  #inflight = new Set<Promise<void>>();
  #stopping = false;
  #onPlan = (p: PlanIndex) => this.#apply(p).catch((err) => this.#log.warn("webhook endpoints not applied", { error: err as Error }));

  constructor(o: WebhookOptions = {}) {
    this.#o = o;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("webhooks");
    this.#metrics = deliveryMetrics(ctx.registry);
    ctx.planHolder.on("change", this.#onPlan);
    const p = ctx.plan();
    if (p) await this.#apply(p);
  }

  async #apply(p: PlanIndex): Promise<void> {
    if (this.#stopping) return;
    const pool = this.#ctx.config.MAILFLEET_POOL;
    const want = new Map<string, Endpoint>();
    for (const d of p.plan.domains.filter((x) => x.pool === pool)) {
      for (const w of d.webhooks) {
        const types = (w.events.length ? w.events : EVENT_TYPES).filter((t): t is EventType => (EVENT_TYPES as readonly string[]).includes(t));
        const durable = consumerName(d.domain, w.name);
        want.set(durable, { domain: d, name: w.name, url: w.url, keyName: w.keyName, types, durable, stopped: false });
      }
    }
    for (const [durable, ep] of this.#endpoints) {
      const next = want.get(durable);
      if (next && next.url === ep.url && next.keyName === ep.keyName && next.types.join() === ep.types.join()) {
        ep.domain = next.domain;
        want.delete(durable);
        continue;
      }
      ep.stopped = true;
      ep.iter?.stop();
      this.#endpoints.delete(durable);
      if (!next) {
        // Gone from the plan: its consumer goes too (any relay may do it; the others find it gone).
        await this.#ctx.jsm.consumers.delete(STREAM_EVENTS, durable).catch(() => {});
        this.#log.info("webhook endpoint removed", { domain: ep.domain.domain, webhook: ep.name });
      }
    }
    for (const ep of want.values()) {
      await this.#ensureConsumer(ep);
      this.#endpoints.set(ep.durable, ep);
      ep.loop = this.#run(ep);
      this.#log.info("webhook endpoint active", { domain: ep.domain.domain, webhook: ep.name, events: ep.types });
    }
  }

  async #ensureConsumer(ep: Endpoint): Promise<void> {
    const pool = this.#ctx.config.MAILFLEET_POOL;
    const filters = ep.types.map((t) => subjects.event(pool, t));
    const cfg: Partial<ConsumerConfig> = {
      durable_name: ep.durable,
      filter_subjects: filters,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: nanos(Math.max(30_000, (this.#o.timeoutMs ?? 10_000) * 3)),
      max_ack_pending: 1000,
      max_deliver: -1,
      description: `webhook ${ep.name} of ${ep.domain.domain} (pool ${token(pool)})`,
    };
    try {
      const info = await this.#ctx.jsm.consumers.info(STREAM_EVENTS, ep.durable);
      if ((info.config.filter_subjects ?? []).join() !== filters.join()) {
        await this.#ctx.jsm.consumers.update(STREAM_EVENTS, ep.durable, { filter_subjects: filters });
      }
    } catch (e) {
      if (!/consumer not found/i.test((e as Error).message)) throw e;
      await this.#ctx.jsm.consumers.add(STREAM_EVENTS, cfg).catch((err: Error) => {
        if (!/already (exists|in use)/i.test(err.message)) throw err;
      });
    }
  }

  async #run(ep: Endpoint): Promise<void> {
    const limit = this.#o.concurrency ?? 8;
    const busy = new Set<Promise<void>>();
    while (!ep.stopped && !this.#stopping) {
      try {
        const c = await this.#ctx.js.consumers.get(STREAM_EVENTS, ep.durable);
        const iter = await c.consume({ max_messages: limit });
        ep.iter = iter;
        for await (const m of iter) {
          if (ep.stopped || this.#stopping) {
            m.nak();
            continue;
          }
          const p = this.#post(ep, m).finally(() => {
            busy.delete(p);
            this.#inflight.delete(p);
          });
          busy.add(p);
          this.#inflight.add(p);
          if (busy.size >= limit) await Promise.race(busy);
        }
      } catch (err) {
        if (ep.stopped || this.#stopping) break;
        this.#log.warn("webhook consumer failed; retrying", { webhook: ep.name, error: err as Error });
        await new Promise((r) => setTimeout(r, 2000).unref());
      }
    }
  }

  async #secret(keyName: string): Promise<Buffer> {
    const file = join(this.#ctx.config.MAILFLEET_SECRETS_DIR, keyName);
    const st = await stat(file);
    const c = this.#secrets.get(file);
    if (c && c.mtime === st.mtimeMs) return c.value;
    const value = Buffer.from((await readFile(file, "utf8")).trim());
    this.#secrets.set(file, { mtime: st.mtimeMs, value });
    return value;
  }

  async #post(ep: Endpoint, m: JsMsg): Promise<void> {
    const pool = this.#ctx.config.MAILFLEET_POOL;
    let event: MailEvent;
    try {
      event = m.json<MailEvent>();
    } catch {
      m.term();
      return;
    }
    if (event.domain?.toLowerCase() !== ep.domain.domain.toLowerCase()) {
      m.ack(); // another domain of the pool
      return;
    }
    const attempt = m.info.deliveryCount;
    try {
      const secret = await this.#secret(ep.keyName);
      const body = JSON.stringify(event);
      const t = Math.floor(this.#ctx.clock.now() / 1000);
      const res = await fetch(ep.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "mailfleet-relay",
          [SIGNATURE_HEADER]: sign(secret, body, t),
          "Mailfleet-Event-Id": `${STREAM_EVENTS}:${m.info.streamSequence}`,
          "Mailfleet-Event-Type": event.type,
          "Mailfleet-Attempt": String(attempt),
        },
        body,
        signal: AbortSignal.timeout(this.#o.timeoutMs ?? 10_000),
        redirect: "error",
      });
      await res.arrayBuffer().catch(() => {});
      if (res.status < 200 || res.status >= 300) throw new Error(`HTTP ${res.status}`);
      m.ack();
      this.#metrics.webhooks.inc({ pool, result: "ok" });
    } catch (err) {
      if (attempt >= MAX_ATTEMPTS) {
        m.term();
        this.#metrics.webhooks.inc({ pool, result: "failed" });
        this.#log.error("webhook event dropped after retries", { webhook: ep.name, domain: ep.domain.domain, type: event.type, qid: event.qid, attempts: attempt, error: err as Error });
        return;
      }
      const delay = webhookDelayMs(attempt, this.#o.retryBaseMs ?? 5000);
      m.nak(delay);
      this.#metrics.webhooks.inc({ pool, result: "retry" });
      this.#log.warn("webhook POST failed; will retry", { webhook: ep.name, attempt, retryInMs: delay, error: err as Error });
    }
  }

  quiesce(): void {
    this.#stopping = true;
    this.#ctx?.planHolder.off("change", this.#onPlan);
    for (const ep of this.#endpoints.values()) {
      ep.stopped = true;
      ep.iter?.stop();
    }
  }

  async stop(): Promise<void> {
    this.quiesce();
    await Promise.allSettled([...this.#endpoints.values()].map((e) => e.loop));
    await Promise.allSettled([...this.#inflight]);
  }
}
