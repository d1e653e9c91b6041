// Acceptance: from a submitted message to durable storage. Shared by SMTP submission and the HTTP
// injection API, so both follow the same rules:
//
//   1. the sender domain (envelope and From) must be one this submitter may use
//   2. line endings normalised (SMTP smuggling, see normalize.ts)
//   3. the relay's header fields (compose.ts), VERP return path, DKIM signatures (dkim.ts)
//   4. body to MF_BODY (or the object store when over the server's max payload) and envelope to
//      MF_QUEUE `mf.q.<pool>.route`, both acknowledged by JetStream (group commit, publisher.ts):
//      only then does the caller answer 250 with the queue id
//   5. an `accepted` event to MF_EVENTS, not waited for
//
// A client that retries after a lost 250 (same Message-ID, envelope and submitter) gets the same
// queue id, derived from a hash of those, and JetStream's duplicate window (the plan's
// idempotencyWindowMs) drops the second copy: it is answered 250 with the same id.
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { Counter, Histogram } from "prom-client";
import type { DomainPlan } from "../../api/plan.ts";
import { eventMsgId, type MailEvent } from "../delivery/events.ts";
import { routerFor } from "../routing/router.ts";
import { encodeEnvelope, newQueueId, verpAddress, type Envelope } from "../queue/envelope.ts";
import { STREAM_BODY, STREAM_EVENTS, STREAM_QUEUE, subjects } from "../queue/topology.ts";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { Suppressions } from "../suppression/index.ts";
import { composeHeader, fieldValue, findFields } from "./compose.ts";
import { dkimSignatures, signingKeys } from "./dkim.ts";
import { parseHeaders } from "./mailauth.ts";
import { normalizeLineEndings, splitMessage } from "./normalize.ts";
import { messageProblem } from "./syntax.ts";
import { Publisher, type StoredAck } from "./publisher.ts";
import { atomicStreams } from "../queue/streams.ts";
import { RateLimiter } from "./rate.ts";
import { Authenticator } from "../submission/auth.ts";

const require = createRequire(import.meta.url);
const addressparser = require("nodemailer/lib/addressparser") as (s: string) => { address?: string; name?: string; group?: unknown[] }[];

/** An SMTP reply for a refused submission (the HTTP API maps it to a status). */
export class AcceptError extends Error {
  readonly code: number;
  readonly enhanced: string;
  constructor(code: number, enhanced: string, text: string) {
    super(text);
    this.name = "AcceptError";
    this.code = code;
    this.enhanced = enhanced;
  }
  /** "550 5.7.1 text" */
  reply(): string {
    return `${this.code} ${this.enhanced} ${this.message}`;
  }
}

export const REPLIES = {
  notReady: () => new AcceptError(451, "4.3.0", "Relay not ready (no fleet plan yet), try again later"),
  queueUnavailable: () => new AcceptError(452, "4.3.1", "Insufficient system storage: queue unavailable, try again later"),
  senderNotAllowed: (d: string) => new AcceptError(550, "5.7.1", `Sender domain ${d} is not allowed for this client`),
  nullSender: () => new AcceptError(550, "5.7.1", "Null sender not accepted for submission"),
  fromMissing: () => new AcceptError(550, "5.6.0", "Message must have exactly one From address"),
  fromNotAllowed: (d: string) => new AcceptError(550, "5.7.1", `From domain ${d} is not allowed for this client`),
  suppressed: (reason: string) => new AcceptError(550, "5.7.1", `Recipient suppressed (${reason})`),
  rateLimited: () => new AcceptError(450, "4.7.1", "Submission rate limit exceeded, try again later"),
  tooBig: (max: number) => new AcceptError(552, "5.3.4", `Message size exceeds fixed maximum message size (${max} bytes)`),
  badAddress: (what: string) => new AcceptError(501, "5.1.7", `Bad ${what} address syntax`),
  badRecipient: () => new AcceptError(501, "5.1.3", "Bad recipient address syntax"),
  routedRecipient: () => new AcceptError(501, "5.1.3", "Bad recipient address syntax: % and ! routing in the local part is not relayed"),
  keyMissing: () => new AcceptError(451, "4.3.0", "DKIM key not available, try again later"),
};

export function domainOfAddress(address: string): string {
  const at = address.lastIndexOf("@");
  return at > 0 ? address.slice(at + 1).toLowerCase().replace(/\.$/, "") : "";
}

// RFC 5321 Mailbox, loosely: a local part without spaces or angle brackets, and a domain.
const ADDRESS_RE = /^[^\s<>@"]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}\.?$|^"[^"\r\n]+"@(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]{2,63}$/;
export function isAddress(a: string): boolean {
  return a.length <= 320 && ADDRESS_RE.test(a);
}

/**
 * A recipient whose local part routes onwards (the "percent hack" user%host@domain, a UUCP bang
 * path host!user@domain): receivers treat these as relay attempts (Postfix answers 554 5.7.1
 * Relay access denied) and blocklist traps probe with them, so they are refused at submission
 * rather than sent from the fleet's addresses. Source routes (<@a:b@c>) never get here: smtp-server
 * drops the route, as RFC 5321 appendix C says.
 */
export function isRoutedRecipient(a: string): boolean {
  const at = a.lastIndexOf("@");
  return /[%!]/.test(at > 0 ? a.slice(0, at) : a);
}

export interface SubmitRequest {
  /** auth:<username>, net:<cidr> or http:<username> */
  submitter: string;
  /** Sending domains this submitter may use (lower case). */
  allowedDomains: ReadonlySet<string>;
  clientIp: string;
  /** Envelope sender ('' is the null sender). */
  mailFrom: string;
  rcpts: string[];
  /** The message as received (dot-unstuffed). */
  raw: Buffer;
  dsn?: Envelope["dsn"];
  source: "smtp" | "http";
  /** Recipients already found suppressed (onSubmit: Drop) at RCPT TO: not stored, reported. */
  dropped?: string[];
}

export interface SubmitResult {
  qid: string;
  /** A retry of a message already stored (same queue id). */
  duplicate: boolean;
  /** Recipients dropped because they are suppressed (onSubmit: Drop). */
  dropped: string[];
  /** Queue ids of the per-recipient copies after the first (OneClick with several recipients). */
  copies: string[];
  /** The sending (From) domain. */
  domain: string;
}

export class Acceptor implements Component {
  readonly name = "accept";
  #ctx!: RelayContext;
  #log!: Logger;
  #publisher!: Publisher;
  suppressions!: Suppressions;
  #rate = new RateLimiter();
  /** Credential checks and AUTH failure throttling, shared by SMTP and HTTP. */
  auth!: Authenticator;
  #inflight = 0;
  #accepted!: Counter;
  #rejected!: Counter;
  #duration!: Histogram;
  #largeThreshold = 0;
  #pendingEvents: { subject: string; data: Uint8Array; msgId: string }[] = [];
  #eventTimer: NodeJS.Timeout | undefined;

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("accept");
    this.auth = new Authenticator(() => ctx.clock.now());
    const atomic = atomicStreams({ replicas: ctx.config.MAILFLEET_STREAM_REPLICAS, features: ctx.features });
    this.#publisher = new Publisher(ctx.nc, ctx.js, (stream) => ({ atomic: atomic.has(stream) }), ctx.registry);
    this.suppressions = new Suppressions(ctx.suppressKv, { perKeyTtl: ctx.features.msgTtl, clock: () => ctx.clock.now() });
    // Headroom for the NATS headers and protocol framing under max_payload.
    this.#largeThreshold = Math.max(64 * 1024, ctx.maxPayload - 16 * 1024);
    this.#accepted = new Counter({
      name: "mailfleet_relay_accepted_total", help: "Messages accepted (stored durably and answered 250)",
      labelNames: ["source", "domain"], registers: [ctx.registry],
    });
    this.#rejected = new Counter({
      name: "mailfleet_relay_submission_rejected_total", help: "Submissions refused, by reply code",
      labelNames: ["code", "enhanced"], registers: [ctx.registry],
    });
    this.#duration = new Histogram({
      name: "mailfleet_relay_accept_duration_seconds", help: "From end of DATA (or HTTP body) to durable storage",
      buckets: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], registers: [ctx.registry],
    });
  }

  async stop(): Promise<void> {
    // Submission listeners stop first (main stops in reverse order) and wait for their
    // transactions; anything still here finishes its publish before the connection drains.
    const deadline = Date.now() + 10_000;
    while (this.#inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await this.#flushEvents();
  }

  /** Counts a refusal (SMTP and HTTP report theirs here too). */
  rejected(e: AcceptError): void {
    this.#rejected.inc({ code: String(e.code), enhanced: e.enhanced });
  }

  /** Whether new mail can be taken now (NATS connected, plan loaded, not draining). */
  ready(): AcceptError | null {
    if (!this.#ctx.plan()) return REPLIES.notReady();
    if (!this.#ctx.natsConnected()) return REPLIES.queueUnavailable();
    return null;
  }

  /**
   * The DomainPlan for an envelope sender this submitter may use, or the refusal. Called at MAIL
   * FROM and again for the From field after DATA.
   */
  senderDomain(allowed: ReadonlySet<string>, address: string, what: "envelope" | "from" = "envelope"): DomainPlan {
    const plan = this.#ctx.plan();
    if (!plan) throw REPLIES.notReady();
    if (what === "envelope" && address === "") throw REPLIES.nullSender();
    const domain = domainOfAddress(address);
    if (!domain) throw REPLIES.badAddress("sender");
    const dp = plan.domains.get(domain);
    if (!dp || !allowed.has(domain)) throw what === "envelope" ? REPLIES.senderNotAllowed(domain) : REPLIES.fromNotAllowed(domain);
    return dp;
  }

  /** Per submitter and sending domain: the domain's submitRate (per relay). */
  takeRate(submitter: string, dp: DomainPlan): void {
    if (!dp.submitRate) return;
    if (!this.#rate.take(`${submitter}\0${dp.domain}`, dp.submitRate.count, dp.submitRate.periodMs, this.#ctx.clock.now())) throw REPLIES.rateLimited();
  }

  /**
   * Suppression of one recipient for a sending domain: throws (Refuse), returns "drop" (Drop),
   * or null. NATS trouble counts as not suppressed here; the store step decides on 452.
   */
  async recipientCheck(dp: DomainPlan, rcpt: string): Promise<"drop" | null> {
    let hit;
    try {
      hit = await this.suppressions.check(dp.domain, rcpt);
    } catch (e) {
      this.#log.warn("suppression check failed", { error: e });
      return null;
    }
    if (!hit) return null;
    if (dp.suppression.onSubmit === "Drop") return "drop";
    throw REPLIES.suppressed(hit.reason);
  }

  /** Unsubscribe token keys (current first), from the pool's Secret. */
  unsubscribeKeys(): Buffer[] {
    return ["unsubscribe.key", "unsubscribe.previous.key"].map((n) => this.#ctx.keyring.secret(n)).filter((k): k is Buffer => Boolean(k));
  }

  maxSize(): number {
    return this.#ctx.config.MAILFLEET_MAX_MESSAGE_SIZE;
  }

  async accept(req: SubmitRequest): Promise<SubmitResult> {
    const t0 = performance.now();
    this.#inflight++;
    try {
      const r = await this.#accept(req);
      this.#accepted.inc({ source: req.source, domain: r.domain });
      this.#duration.observe((performance.now() - t0) / 1000);
      return r;
    } catch (e) {
      if (e instanceof AcceptError) this.rejected(e);
      throw e;
    } finally {
      this.#inflight--;
    }
  }

  async #accept(req: SubmitRequest): Promise<SubmitResult> {
    const ctx = this.#ctx;
    const notReady = this.ready();
    if (notReady) throw notReady;
    if (req.raw.length > this.maxSize()) throw REPLIES.tooBig(this.maxSize());
    const envDomain = this.senderDomain(req.allowedDomains, req.mailFrom, "envelope");

    const raw = normalizeLineEndings(req.raw);
    const { header, body } = splitMessage(raw);
    // NUL, malformed header lines, oversized header section (syntax.ts says why).
    const problem = messageProblem(req.raw, header);
    if (problem) throw new AcceptError(problem.code, problem.enhanced, problem.text);
    const parsed = parseHeaders(header);
    const froms = findFields(parsed, "from");
    const fromList = froms.length === 1 ? addressparser(fieldValue(froms[0]!)).filter((a) => a.address) : [];
    if (fromList.length !== 1) throw REPLIES.fromMissing();
    const dp = this.senderDomain(req.allowedDomains, fromList[0]!.address!, "from");

    // Recipients suppressed for the From domain (RCPT TO checked the envelope domain's list).
    const dropped: string[] = [...(req.dropped ?? [])];
    let rcpts = req.rcpts.filter((r) => !dropped.includes(r));
    if (dp.domain !== envDomain.domain || req.source === "http") {
      // HTTP refuses the request (Refuse policy); SMTP after DATA can only drop (and report).
      const checks = await Promise.all(rcpts.map(async (r) => {
        try { return await this.recipientCheck(dp, r); } catch (e) { if (req.source === "http") throw e; return "drop" as const; }
      }));
      dropped.push(...rcpts.filter((_, i) => checks[i] === "drop"));
      rcpts = rcpts.filter((_, i) => checks[i] !== "drop");
    }

    const now = ctx.clock.now();
    const mids = findFields(parsed, "message-id");
    const messageId = mids.length ? fieldValue(mids[0]!) : undefined;
    // Idempotent retries: the queue id is a hash of what identifies the submission.
    const qid = messageId
      ? newQueueId(createHash("sha256").update([messageId, req.mailFrom.toLowerCase(), [...req.rcpts].map((r) => r.toLowerCase()).sort().join(","), req.submitter].join("\0")).digest().subarray(0, 13))
      : newQueueId();
    if (rcpts.length === 0) {
      // Every recipient suppressed with onSubmit: Drop. The client is told 250 (RFC 5321 allows
      // dropping accepted mail only with a record of it: the events).
      this.#events(dp, qid, req, dropped, now, messageId);
      return { qid, duplicate: false, dropped, copies: [], domain: dp.domain };
    }

    // Keys for every DKIM entry of the domain; a missing key is a temporary failure, not
    // unsigned mail (receivers would reject it or junk it).
    const { keys, missing } = signingKeys(this.#ctx.keyring, dp.dkim, now);
    if (missing) throw REPLIES.keyMissing();
    const unsubscribeKey = dp.listUnsubscribe.mode === "OneClick" ? this.#ctx.keyring.secret("unsubscribe.key") : undefined;
    if (dp.listUnsubscribe.mode === "OneClick" && !unsubscribeKey) {
      this.#log.warn("OneClick List-Unsubscribe without unsubscribe.key in the Secret: sending the mailto form only", { domain: dp.domain });
    }

    // One copy of the message, or one per recipient when a one-click header must name each.
    const perRcpt = dp.listUnsubscribe.mode === "OneClick" && Boolean(unsubscribeKey) && Boolean(dp.listUnsubscribe.url);
    const groups = perRcpt ? rcpts.map((r) => [r]) : [rcpts];
    const ids = groups.map((_, i) => (i === 0 ? qid : newQueueId(createHash("sha256").update(`${qid}:${i}`).digest().subarray(0, 13))));

    const stored = await Promise.all(groups.map(async (group, i) => {
      const id = ids[i]!;
      const composed = composeHeader({ parsed, domain: dp, qid: id, nowMs: now, ...(perRcpt ? { rcpt: group[0] } : {}), ...(unsubscribeKey ? { unsubscribeKey } : {}) });
      const sigs = await dkimSignatures(composed.parsed, body, dp.domain, keys, now);
      const message = Buffer.concat([Buffer.from(sigs, "latin1"), composed.header, Buffer.from("\r\n"), body]);
      return this.#store(dp, id, group, message, req, now, composed.messageId, i > 0 ? qid : undefined);
    }));
    this.#events(dp, qid, req, dropped, now, messageId, groups, ids);
    return { qid, duplicate: stored.every((s) => s), dropped, copies: ids.slice(1), domain: dp.domain };
  }

  /** Stores one copy; true when JetStream had it already (a retry). */
  async #store(dp: DomainPlan, id: string, rcpts: string[], message: Buffer, req: SubmitRequest, now: number, messageId: string, group?: string): Promise<boolean> {
    const ctx = this.#ctx;
    let bodyRef: Envelope["body"];
    let bodyAck: Promise<StoredAck | null>;
    if (message.length > this.#largeThreshold) {
      bodyRef = { object: id };
      bodyAck = ctx.large.info(id).then((info) => info ? null : ctx.large.putBlob({ name: id }, message).then(() => null));
    } else {
      bodyRef = { subject: subjects.body(id) };
      bodyAck = this.#publisher.for(STREAM_BODY).publish(subjects.body(id), message, `body:${id}`);
    }
    const env: Envelope & { group?: string } = {
      v: 1, id, part: 0, pool: dp.pool, domain: dp.domain,
      mailFrom: req.mailFrom,
      returnPath: dp.verp ? verpAddress(id, dp.returnPathDomain) : `bounces@${dp.returnPathDomain}`,
      rcpts, body: bodyRef, size: message.length, messageId, submitter: req.submitter,
      acceptedAt: now, attempts: 0,
      ...(req.dsn ? { dsn: req.dsn } : {}),
      ...(group ? { group } : {}),
    };
    try {
      // The body first: an envelope must never be visible before its body (delivery would find
      // no body to send). The envelope's commit follows the body's, so a message's 250 waits for
      // two commits in a row; other messages' commits overlap with it (group commit).
      await bodyAck;
      // Fast path (relay/DELIVERY.md): when every recipient domain's route is cached, the ready
      // parts go straight to their provider queues and skip the route stage's hop.
      const plan = ctx.plan();
      const parts = plan ? routerFor(ctx).routeFromCache(env, plan) : null;
      const queue = this.#publisher.for(STREAM_QUEUE);
      const envAcks = parts
        ? queue.publishAll(parts.map((p) => ({ subject: subjects.ready(p.pool, p.provider!), data: encodeEnvelope(p), msgId: `${p.id}:${p.part}` })))
        : [queue.publish(subjects.route(dp.pool), encodeEnvelope(env), `${id}:0`)];
      const e = await Promise.all(envAcks);
      return e.every((a) => a.duplicate);
    } catch (err) {
      this.#log.error("store failed: answering 452", { qid: id, error: err });
      throw REPLIES.queueUnavailable();
    }
  }

  #events(dp: DomainPlan, qid: string, req: SubmitRequest, dropped: string[], now: number, messageId?: string, groups: string[][] = [], ids: string[] = []): void {
    const time = new Date(now).toISOString();
    const base = { part: 0, pool: dp.pool, domain: dp.domain, attempts: 0, time, submitter: req.submitter, acceptedAt: time, ...(messageId ? { messageId } : {}) };
    const events: MailEvent[] = groups.map((rcpts, i) => ({ ...base, type: "accepted", qid: ids[i]!, rcpts }));
    if (dropped.length) events.push({ ...base, type: "suppressed", qid, rcpts: dropped, scope: "submission" });
    for (const e of events) this.#pendingEvents.push({ subject: subjects.event(e.pool, e.type), data: Buffer.from(JSON.stringify(e)), msgId: eventMsgId(e) });
    // Events are not part of the 250 promise: they wait up to 50 ms (or 200 of them) and go out
    // together, so they cost one commit per group instead of one fsync each.
    if (this.#pendingEvents.length >= 200) void this.#flushEvents();
    else this.#eventTimer ??= setTimeout(() => void this.#flushEvents(), 50);
  }

  async #flushEvents(): Promise<void> {
    clearTimeout(this.#eventTimer);
    this.#eventTimer = undefined;
    const batch = this.#pendingEvents;
    this.#pendingEvents = [];
    if (batch.length === 0) return;
    const acks = this.#publisher.for(STREAM_EVENTS).publishAll(batch);
    const failed = (await Promise.allSettled(acks)).filter((r) => r.status === "rejected").length;
    if (failed) this.#log.warn("events not published", { failed, of: batch.length });
  }
}
