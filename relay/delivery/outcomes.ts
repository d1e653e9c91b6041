// What happens after an attempt: events, metrics, retries, bounces, suppression, DSNs, and the
// body's deletion. The decision is a pure function (decideOutcome); Outcomes does the I/O, in an
// order that makes a repeat after a crash harmless: events (deduplicated by id), then the deferred
// remainder (its schedule subject holds one schedule, so a repeat replaces it), then the DSN
// (deterministic queue id), then the body; the caller acks the envelope last.
import { createHash } from "node:crypto";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { DomainPlan } from "../../api/plan.ts";
import type { PlanIndex } from "../plan/index.ts";
import type { Logger } from "../runtime/logger.ts";
import { encodeEnvelope, newQueueId, type Envelope } from "../queue/envelope.ts";
import { subjects } from "../queue/topology.ts";
import type { RouteBounce } from "../routing/split.ts";
import { nextAttempt, type RetryPolicy } from "./backoff.ts";
import type { RcptResult } from "./attempt.ts";
import { buildDsn, dsnStatus, type DsnRecipient } from "./dsn.ts";
import { publishEvent, type MailEvent } from "./events.ts";
import type { DeliveryMetrics } from "./metrics.ts";
import type { BodyStore } from "./body.ts";
import { DEFAULT_DELIVERY } from "../../api/plan.ts";

/** Classes that make a recipient undeliverable for every sender (fleet-wide suppression). */
export const HARD_BOUNCE_CLASSES = new Set(["invalid-recipient", "bad-domain"]);

export interface SuppressionRequest {
  address: string;
  /** global: every sending domain (hard bounces); domain: one sending domain (complaints). */
  scope: "global" | "domain";
  domain?: string;
  reason: "hard-bounce" | "complaint" | "unsubscribe";
  ttlMs: number;
  qid?: string;
  class?: string;
}

/** The suppression list as delivery and inbound use it (relay/suppression provides it). */
export interface Suppressor {
  suppress(req: SuppressionRequest): Promise<void>;
}

export interface Decision {
  delivered: RcptResult[];
  bounced: RcptResult[];
  deferred: RcptResult[];
  /** Transient failures past the expiry: bounced as expired. */
  expired: RcptResult[];
  /** When the deferred ones are tried again. */
  retryAt?: number;
}

export function decideOutcome(env: Envelope, results: RcptResult[], now: number, policy: RetryPolicy, random?: () => number): Decision {
  const d: Decision = { delivered: [], bounced: [], deferred: [], expired: [] };
  for (const r of results) {
    if (r.class === "delivered") d.delivered.push(r);
    else if (r.permanent) d.bounced.push(r);
    else d.deferred.push(r);
  }
  if (d.deferred.length) {
    const next = nextAttempt(env.acceptedAt, env.attempts + 1, now, policy, random);
    if ("expired" in next) {
      d.expired = d.deferred;
      d.deferred = [];
    } else d.retryAt = next.at;
  }
  return d;
}

/** Whether the submitter wants a failure DSN for this recipient (RFC 3461 NOTIFY). */
export function wantsDsn(env: Envelope, domain: DomainPlan | undefined, rcpt: string): boolean {
  if (!domain?.notifySender || !env.mailFrom) return false;
  const notify = env.dsn?.notify?.[rcpt] ?? env.dsn?.notify?.[rcpt.toLowerCase()];
  if (!notify) return true;
  const n = notify.map((x) => x.toUpperCase());
  return !n.includes("NEVER") && n.includes("FAILURE");
}

export interface LaneInfo {
  source?: string;
  /** The shaper's send slot the attempt spent (ms): quotas count the attempt in its window. */
  slot?: number;
  provider?: string;
  mx?: string;
  tls?: boolean;
}

export interface OutcomeDeps {
  js: JetStreamClient;
  bodies: BodyStore;
  pool: string;
  plan: () => PlanIndex | undefined;
  suppressor?: Suppressor;
  metrics: DeliveryMetrics;
  log: Logger;
  now: () => number;
  /** Host name for Reporting-MTA in DSNs. */
  reportingMta: string;
  /**
   * DKIM-signs a DSN with the sending domain's keys (the relay's keyring). A DSN that cannot be
   * signed (a key file missing) goes out unsigned: the sender learning of the failure comes first.
   */
  sign?: (raw: Buffer, domain: DomainPlan) => Promise<Buffer>;
  random?: () => number;
}

function groupBy<T>(items: T[], key: (t: T) => string): T[][] {
  const m = new Map<string, T[]>();
  for (const i of items) {
    const k = key(i);
    m.set(k, [...(m.get(k) ?? []), i]);
  }
  return [...m.values()];
}

export class Outcomes {
  readonly #d: OutcomeDeps;
  constructor(deps: OutcomeDeps) {
    this.#d = deps;
  }

  #policy(): RetryPolicy {
    return this.#d.plan()?.plan.delivery ?? DEFAULT_DELIVERY;
  }

  #domain(env: Envelope): DomainPlan | undefined {
    return this.#d.plan()?.domains.get(env.domain.toLowerCase());
  }

  #event(env: Envelope, type: MailEvent["type"], rcpts: RcptResult[] | string[], lane: LaneInfo, extra: Partial<MailEvent> = {}): MailEvent {
    const list = rcpts.map((r) => (typeof r === "string" ? r : r.rcpt));
    const first = rcpts[0] && typeof rcpts[0] !== "string" ? (rcpts[0] as RcptResult) : undefined;
    return {
      type,
      qid: env.id,
      part: env.part,
      pool: env.pool,
      domain: env.domain,
      ...(env.rcptDomain ? { rcptDomain: env.rcptDomain } : {}),
      ...(lane.provider ?? env.provider ? { provider: lane.provider ?? env.provider } : {}),
      ...(lane.source ? { source: lane.source } : {}),
      rcpts: list,
      ...(first ? { class: first.class, reply: first.reply } : {}),
      ...(first?.rule ? { rule: first.rule } : {}),
      attempts: env.attempts + 1,
      time: new Date(this.#d.now()).toISOString(),
      ...(lane.slot !== undefined ? { slotAt: new Date(lane.slot).toISOString() } : {}),
      ...(lane.mx ? { mx: lane.mx } : {}),
      ...(lane.tls !== undefined ? { tls: lane.tls } : {}),
      ...(env.messageId ? { messageId: env.messageId } : {}),
      submitter: env.submitter,
      acceptedAt: new Date(env.acceptedAt).toISOString(),
      ...extra,
    };
  }

  /**
   * Records one attempt's results for a part. Resolves when everything that must survive is in
   * NATS; the caller then acks the envelope.
   */
  async record(env: Envelope, results: RcptResult[], lane: LaneInfo): Promise<Decision> {
    const d = decideOutcome(env, results, this.#d.now(), this.#policy(), this.#d.random);
    const m = this.#d.metrics;
    const labels = { pool: env.pool, source_ip: lane.source ?? "", provider: lane.provider ?? env.provider ?? "" };
    const latency = Math.max(0, this.#d.now() - env.acceptedAt) / 1000;
    const events: MailEvent[] = [];
    if (d.delivered.length) events.push(this.#event(env, "delivered", d.delivered, lane));
    for (const g of groupBy(d.bounced, (r) => `${r.class}\0${r.reply}`)) events.push(this.#event(env, "bounced", g, lane));
    for (const g of groupBy(d.expired, (r) => `${r.class}\0${r.reply}`)) events.push(this.#event(env, "expired", g, lane));
    for (const g of groupBy(d.deferred, (r) => `${r.class}\0${r.reply}`)) {
      events.push(this.#event(env, "deferred", g, lane, { retryAt: new Date(d.retryAt!).toISOString() }));
    }
    await Promise.all(events.map((e, i) => publishEvent(this.#d.js, e, `ev:${e.qid}:${e.part}:${e.type}:${e.attempts}:${i}`)));

    if (d.deferred.length) {
      const last = d.deferred[0]!;
      await this.defer({ ...env, rcpts: d.deferred.map((r) => r.rcpt), attempts: env.attempts + 1, lastReply: last.reply, lastClass: last.class }, d.retryAt!);
    }
    await this.#suppress(env, d.bounced);
    const failed = [
      ...d.bounced.map((r) => ({ r, why: "The receiving server refused it permanently." })),
      ...d.expired.map((r) => ({ r, why: `Delivery was retried until the message expired; the last reply was temporary.` })),
    ];
    if (failed.length) await this.#dsn(env, failed.map((f) => f.r), failed[0]!.why, lane);
    if (!d.deferred.length) await this.#finished(env);
    // Counted once everything is stored: a record that fails halfway is asked again.
    if (d.delivered.length) {
      m.delivered.inc({ ...labels, class: "delivered" }, d.delivered.length);
      m.latency.observe({ pool: env.pool, provider: labels.provider }, latency);
    }
    for (const r of [...d.bounced, ...d.expired]) m.bounced.inc({ ...labels, class: r.class });
    for (const r of d.deferred) m.deferred.inc({ ...labels, class: r.class });
    return d;
  }

  /** Puts a part (or a part 0 that still needs routing) back for a later try. */
  async defer(env: Envelope, at: number): Promise<void> {
    const target = env.part === 0 || !env.provider ? subjects.route(env.pool) : subjects.ready(env.pool, env.provider);
    const next: Envelope = { ...env, notBefore: at };
    await this.#d.js.publish(subjects.sched(env.pool, env.id, env.part), encodeEnvelope(next), {
      msgID: `${env.id}:${env.part}:d${env.attempts}`,
      schedule: { specification: new Date(at), target },
    });
  }

  /** Recipients whose domain takes no mail, found by the route step. */
  async routeBounces(env: Envelope, bounces: RouteBounce[]): Promise<void> {
    const m = this.#d.metrics;
    for (const b of bounces) {
      const part: Envelope = { ...env, part: b.part, rcpts: b.rcpts, rcptDomain: b.domain };
      const results: RcptResult[] = b.rcpts.map((r) => ({ rcpt: r, reply: b.reply, code: b.reply.slice(0, 3), class: b.class, permanent: true }));
      await publishEvent(this.#d.js, this.#event(part, "bounced", results, {}), `ev:${env.id}:${b.part}:bounced:route`);
      m.bounced.inc({ pool: env.pool, source_ip: "", provider: "", class: b.class }, b.rcpts.length);
      await this.#suppress(part, results);
      await this.#dsn(part, results, "The recipient domain accepts no mail.", {});
    }
  }

  /** Domains of a part 0 whose DNS failed: event and a retry of just those (or bounce when expired). */
  async routeRetry(env: Envelope, retry: { domain: string; rcpts: string[]; reply: string }[], routed: string[]): Promise<void> {
    const results: RcptResult[] = retry.flatMap((r) => r.rcpts.map((rcpt) => ({ rcpt, reply: r.reply, code: "451", enhanced: "4.4.3", class: "routing-error" as const, permanent: false })));
    const d = decideOutcome(env, results, this.#d.now(), this.#policy(), this.#d.random);
    if (d.expired.length) {
      await publishEvent(this.#d.js, this.#event(env, "expired", d.expired, {}), `ev:${env.id}:0:expired:${env.attempts + 1}`);
      this.#d.metrics.bounced.inc({ pool: env.pool, source_ip: "", provider: "", class: "routing-error" }, d.expired.length);
      await this.#dsn(env, d.expired, "The recipient domain could not be looked up until the message expired.", {});
      return;
    }
    await publishEvent(this.#d.js, this.#event(env, "deferred", d.deferred, {}, { retryAt: new Date(d.retryAt!).toISOString() }), `ev:${env.id}:0:deferred:${env.attempts + 1}`);
    this.#d.metrics.deferred.inc({ pool: env.pool, source_ip: "", provider: "", class: "routing-error" }, d.deferred.length);
    await this.defer({ ...env, routed, attempts: env.attempts + 1, lastReply: d.deferred[0]!.reply, lastClass: "routing-error" }, d.retryAt!);
  }

  async #suppress(env: Envelope, bounced: RcptResult[]): Promise<void> {
    const s = this.#d.suppressor;
    if (!s) return;
    const ttl = this.#domain(env)?.suppression.hardBounceTtlMs ?? 30 * 86_400_000;
    for (const r of bounced) {
      if (!HARD_BOUNCE_CLASSES.has(r.class)) continue;
      try {
        await s.suppress({ address: r.rcpt, scope: "global", reason: "hard-bounce", ttlMs: ttl, qid: env.id, class: r.class });
      } catch (err) {
        // Suppression is a protection, not a condition of the outcome: log and go on.
        this.#d.log.warn("suppression failed", { qid: env.id, error: err as Error });
      }
    }
  }

  async #dsn(env: Envelope, failed: RcptResult[], reason: string, lane: LaneInfo): Promise<void> {
    const domain = this.#domain(env);
    const rcpts = failed.filter((r) => wantsDsn(env, domain, r.rcpt));
    if (!rcpts.length || !domain) return;
    let original: Buffer;
    try {
      original = await this.#d.bodies.get(env.body);
    } catch {
      original = Buffer.from(`X-Mailfleet-Note: the original message is no longer available\r\n\r\n`);
    }
    const now = this.#d.now();
    const recipients: DsnRecipient[] = rcpts.map((r) => ({
      rcpt: r.rcpt,
      action: "failed",
      status: dsnStatus(r.reply, true),
      diagnostic: r.reply,
      ...(lane.mx ? { remoteMta: lane.mx } : {}),
      lastAttempt: now,
    }));
    const built = buildDsn({
      reportingMta: this.#d.reportingMta,
      returnPathDomain: domain.returnPathDomain,
      to: env.mailFrom,
      qid: env.id,
      ...(env.dsn?.envid ? { envid: env.dsn.envid } : {}),
      arrivalDate: env.acceptedAt,
      recipients,
      original,
      full: env.dsn?.ret === "FULL" && original.length < 256 * 1024,
      now,
      reason,
    });
    let raw = built;
    if (this.#d.sign && domain.dkim.length) {
      try {
        raw = await this.#d.sign(built, domain);
      } catch (err) {
        this.#d.log.warn("DSN sent unsigned: cannot DKIM-sign it", { qid: env.id, domain: domain.domain, error: err as Error });
      }
    }
    // A deterministic queue id: the same failure reported twice (a repeat after a crash) is one DSN.
    const seed = createHash("sha256").update(`dsn\0${env.id}\0${env.part}\0${env.attempts}\0${rcpts.map((r) => r.rcpt).join(",")}`).digest();
    const qid = newQueueId(seed.subarray(0, 13));
    const dsnEnv: Envelope = {
      v: 1,
      id: qid,
      part: 0,
      pool: env.pool,
      domain: env.domain,
      mailFrom: "",
      returnPath: "",
      rcpts: [env.mailFrom],
      body: { subject: subjects.body(qid) },
      size: raw.length,
      submitter: `dsn:${env.id}`,
      acceptedAt: now,
      attempts: 0,
    };
    await this.#d.js.publish(subjects.body(qid), raw, { msgID: `body:${qid}` });
    await this.#d.js.publish(subjects.route(env.pool), encodeEnvelope(dsnEnv), { msgID: `${qid}:0` });
    this.#d.metrics.dsns.inc({ pool: env.pool });
    this.#d.log.info("dsn queued", { qid: env.id, dsn: qid, rcpts: rcpts.length });
  }

  /** The part is final; when it was the message's only part, its body goes. */
  async #finished(env: Envelope): Promise<void> {
    if (env.parts !== 1) return;
    try {
      await this.#d.bodies.delete(env.body);
    } catch (err) {
      this.#d.log.warn("body not deleted (it expires with the stream's max age)", { qid: env.id, error: err as Error });
    }
  }
}
