// A steady mixed workload for the local fleet, and the ledger that proves nothing accepted is lost.
//
// Workload: messages from the examples' sending domains to several providers' domains, through the
// three ways in: SMTP submission with AUTH after STARTTLS, SMTP from a trusted network, and the
// HTTP API. A message whose submission fails for a temporary reason (a relay killed, NATS without
// quorum: 4xx or a broken connection) is retried as a real client would, with the same Message-ID
// on the same channel, so acceptance's idempotent queue id makes a retry after a lost 250 one
// message, not two.
//
// Ledger: every message answered 250 (its queue id) with its recipients; every outcome event on
// MF_EVENTS; every message that arrived at a receiver (Postfix's Maildir, by Message-ID and
// Delivered-To). lost = accepted recipients with no final event (delivered, bounced, expired), or
// delivered by the events but never arrived; duplicates = arrivals beyond the first.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import nodemailer, { type Transporter } from "nodemailer";
import { STREAM_EVENTS, subjects } from "../../relay/queue/topology.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";
import { headerFields } from "./peers/postfix.ts";
import type { RelayInfo } from "./runner/runner.ts";

export type Channel = "smtp-auth" | "smtp-trusted" | "http";

export interface Sender {
  domain: string;
  pool: string;
  channels: Channel[];
}

/** The examples' sending domains (examples/30-domains.yaml) and how each may submit. */
export const SENDERS: Sender[] = [
  { domain: "example.com", pool: "mail/transactional", channels: ["smtp-auth", "smtp-trusted", "http"] },
  { domain: "billing.example.org", pool: "mail/transactional", channels: ["smtp-trusted", "http"] },
  { domain: "news.example.com", pool: "mail/marketing", channels: ["smtp-auth", "smtp-trusted"] },
];
/** The credential of examples/30-domains.yaml (Secret app-smtp). */
export const CREDENTIAL = { user: "app", pass: "change-me-to-a-long-random-password" };

const FINAL = new Set(["delivered", "bounced", "expired"]);
const norm = (mid: string | undefined) => (mid ?? "").trim().replace(/^<|>$/g, "");
const key = (mid: string, rcpt: string) => `${norm(mid)}\n${rcpt.toLowerCase()}`;

export interface Accepted {
  mid: string;
  qid: string;
  rcpts: string[];
  domain: string;
  channel: Channel;
  at: number;
  acceptMs: number;
}

export interface Arrival {
  mid: string;
  rcpt: string;
  /** The receiver's queue id: one SMTP transaction (all its recipients) has one. */
  queueId: string;
  clientIp: string;
  receivedBy: string;
  at: number;
}

export interface LedgerReport {
  accepted: number;
  acceptedRecipients: number;
  delivered: number;
  bounced: number;
  expired: number;
  /** Accepted recipients without a final event, or delivered but never arrived. */
  lost: number;
  /** Arrivals beyond the first per (Message-ID, recipient). */
  duplicates: number;
  /** Final events beyond the first per recipient (a repeated attempt after a crash). */
  duplicateFinals: number;
  /** When the first copy of each duplicated message arrived (ms since the epoch). */
  duplicateFirstArrivals: number[];
  deferred: number;
  arrivals: number;
  lostSamples: string[];
}

export class Ledger {
  readonly accepted = new Map<string, Accepted>();
  /** key -> final event types seen */
  readonly finals = new Map<string, string[]>();
  readonly arrivals = new Map<string, Arrival[]>();
  readonly counts: Record<string, number> = {};
  /** Every arrival in order (lane checks read client address and time). */
  readonly arrivalLog: Arrival[] = [];
  #nc?: NatsConnection;
  #stop = new AbortController();
  #seenFiles = new Set<string>();
  #tasks: Promise<void>[] = [];
  readonly inbox: string;

  constructor(inbox: string) {
    this.inbox = inbox;
  }

  /** Follows MF_EVENTS from now on (an ordered consumer: it survives NATS nodes going away) and
   * the receivers' Maildir. */
  async start(natsUrls: string[]): Promise<void> {
    this.#nc = await connect({ servers: natsUrls, maxReconnectAttempts: -1, reconnectTimeWait: 250, noAsyncTraces: true });
    const js = jetstream(this.#nc);
    const jsm = await jetstreamManager(this.#nc);
    const since = new Date(Date.now() - 5000).toISOString();
    // The last stream sequence seen: a consumer made again (after an error, or a stall) goes on
    // from there, so no event is missed or counted twice.
    let lastSeq = 0;
    this.#tasks.push((async () => {
      while (!this.#stop.signal.aborted) {
        try {
          const c = await js.consumers.get(STREAM_EVENTS, lastSeq
            ? { filter_subjects: [subjects.events], deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 }
            : { filter_subjects: [subjects.events], deliver_policy: DeliverPolicy.StartTime, opt_start_time: since });
          const msgs = await c.consume({ max_messages: 500 });
          const close = () => { void msgs.close(); };
          this.#stop.signal.addEventListener("abort", close, { once: true });
          // An ordered consumer can stall without an error when the server it used dies (seen
          // with a NATS server killed for two minutes): when the stream has events past the last
          // one seen and none came for 10 s, start again from there.
          let progressAt = Date.now();
          const watchdog = setInterval(() => {
            jsm.streams.info(STREAM_EVENTS).then((i) => {
              if (i.state.last_seq > lastSeq && Date.now() - progressAt > 10_000) close();
            }, () => {});
          }, 5000);
          try {
            for await (const m of msgs) {
              progressAt = Date.now();
              if (m.seq <= lastSeq) continue;
              lastSeq = m.seq;
              this.event(m.json<MailEvent>());
            }
          } finally {
            clearInterval(watchdog);
            this.#stop.signal.removeEventListener("abort", close);
          }
        } catch {
          // the stream not created yet, or NATS going through a fault: try again
        }
        await sleep(500, undefined, { signal: this.#stop.signal }).catch(() => {});
      }
    })());
    this.#tasks.push((async () => {
      while (!this.#stop.signal.aborted) {
        this.scanInbox();
        await sleep(500, undefined, { signal: this.#stop.signal }).catch(() => {});
      }
    })());
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await Promise.allSettled(this.#tasks);
    await this.#nc?.close().catch(() => {});
  }

  accept(a: Accepted): void {
    this.accepted.set(norm(a.mid), { ...a, mid: norm(a.mid) });
  }

  event(e: MailEvent): void {
    this.counts[e.type] = (this.counts[e.type] ?? 0) + 1;
    if (!FINAL.has(e.type) || !e.messageId) return;
    for (const r of e.rcpts) {
      const k = key(e.messageId, r);
      const l = this.finals.get(k);
      if (l) l.push(e.type);
      else this.finals.set(k, [e.type]);
    }
  }

  /** New Maildir files since the last scan (only their header is read). */
  scanInbox(): void {
    for (const sub of ["new", "cur"]) {
      let names: string[];
      try { names = readdirSync(join(this.inbox, sub)); } catch { continue; }
      for (const name of names) {
        const base = name.split(":")[0]!;
        if (this.#seenFiles.has(base)) continue;
        let raw: Buffer;
        try { raw = readFileSync(join(this.inbox, sub, name)); } catch { continue; }
        this.#seenFiles.add(base);
        const end = raw.indexOf("\n\n");
        const f = headerFields(end > 0 ? raw.subarray(0, end + 2) : raw);
        const get = (n: string) => f.find((x) => x.name === n)?.value ?? "";
        const received = get("received");
        const client = /\(\S+\s+\[([^\]]+)\]\)/.exec(received)?.[1] ?? "";
        const by = /\bby\s+(\S+)/.exec(received)?.[1] ?? "";
        const queueId = /\bwith\s+\S+\s+id\s+([0-9A-Za-z]+)/.exec(received)?.[1] ?? "";
        const t = Date.parse(received.slice(received.lastIndexOf(";") + 1).trim());
        const a: Arrival = { mid: norm(get("message-id")), rcpt: get("delivered-to").toLowerCase(), queueId, clientIp: client, receivedBy: by, at: Number.isNaN(t) ? Date.now() : t };
        const k = key(a.mid, a.rcpt);
        const l = this.arrivals.get(k);
        if (l) l.push(a);
        else this.arrivals.set(k, [a]);
        this.arrivalLog.push(a);
      }
    }
  }

  /** Accepted recipients with no final event yet. */
  pending(): number {
    let n = 0;
    for (const a of this.accepted.values()) for (const r of a.rcpts) if (!this.finals.has(key(a.mid, r))) n++;
    return n;
  }

  /** Waits until every accepted recipient has a final event and every delivered one arrived. */
  async settle(timeoutMs: number, progress?: (r: LedgerReport) => void): Promise<LedgerReport> {
    const deadline = Date.now() + timeoutMs;
    let last = 0;
    for (;;) {
      this.scanInbox();
      const r = this.report();
      if (r.lost === 0 || Date.now() > deadline) return r;
      if (progress && Date.now() - last > 15_000) { progress(r); last = Date.now(); }
      await sleep(1000);
    }
  }

  report(): LedgerReport {
    let rcpts = 0, delivered = 0, bounced = 0, expired = 0, lost = 0, duplicateFinals = 0;
    const lostSamples: string[] = [];
    for (const a of this.accepted.values()) {
      for (const r of a.rcpts) {
        rcpts++;
        const k = key(a.mid, r);
        const f = this.finals.get(k);
        const arrived = this.arrivals.get(k)?.length ?? 0;
        let why = "";
        if (!f) why = "no final event";
        else {
          duplicateFinals += f.length - 1;
          if (f.includes("delivered")) {
            delivered++;
            if (!arrived) why = "delivered by the events but not at the receiver";
          } else if (f.includes("bounced")) bounced++;
          else expired++;
        }
        if (why) {
          lost++;
          if (lostSamples.length < 10) lostSamples.push(`${a.qid} ${a.mid} ${r}: ${why}`);
        }
      }
    }
    let duplicates = 0, arrivals = 0;
    const duplicateFirstArrivals: number[] = [];
    for (const l of this.arrivals.values()) {
      arrivals += l.length;
      duplicates += l.length - 1;
      if (l.length > 1) duplicateFirstArrivals.push(Math.min(...l.map((a) => a.at)));
    }
    return {
      accepted: this.accepted.size, acceptedRecipients: rcpts, delivered, bounced, expired, lost, duplicates, duplicateFinals, duplicateFirstArrivals,
      deferred: this.counts.deferred ?? 0, arrivals, lostSamples,
    };
  }
}

export interface WorkloadOptions {
  /** Relays to submit to: running and ready ones of a pool. */
  relays: (pool: string) => RelayInfo[];
  ledger?: Ledger;
  /** Messages per second (all channels together). */
  rate: number;
  /** Submissions in flight at most. */
  concurrency?: number;
  senders?: Sender[];
  /** Recipient domains (default: the receivers' domains). */
  recipientDomains: string[];
  /** Share of messages with one recipient that does not exist (550 at the receiver: a bounce). */
  bounceRatio?: number;
  /** Share with one recipient whose mailbox defers (450 4.2.1) every time. */
  deferRatio?: number;
  /** Message body size in bytes (approximately). */
  bodyBytes?: number;
  /** Tries per message on temporary failures. */
  maxTries?: number;
  /** Stop after this many messages (default: until stop()). */
  count?: number;
}

export interface WorkloadStats {
  started: number;
  accepted: number;
  refused: number;
  /** Given up after maxTries temporary failures. */
  failed: number;
  retries: number;
  byChannel: Record<Channel, number>;
  /** Accept latencies (ms) of the last accepted submissions (ring of 100,000). */
  latencies: number[];
  errors: string[];
}

interface Msg { s: Sender; channel: Channel; rcpts: string[]; mid: string; from: string; subject: string; text: string }

let workloads = 0;

export class Workload {
  readonly stats: WorkloadStats = { started: 0, accepted: 0, refused: 0, failed: 0, retries: 0, byChannel: { "smtp-auth": 0, "smtp-trusted": 0, http: 0 }, latencies: [], errors: [] };
  #o: WorkloadOptions;
  #stop = new AbortController();
  #loop?: Promise<void>;
  #inflight = new Set<Promise<void>>();
  #transports = new Map<string, Transporter>();
  #n = 0;
  #latIndex = 0;
  /** A tag of this workload in Message-IDs: two workloads never send the same Message-ID (which
   * acceptance would take for a retry of the first and store once). */
  readonly run = `${Date.now().toString(36)}${process.pid.toString(36)}${(workloads++).toString(36)}`;

  constructor(o: WorkloadOptions) {
    this.#o = o;
  }

  start(): this {
    this.#loop = this.#run();
    return this;
  }

  /** Stops sending new messages and waits for those in flight. */
  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#loop;
    await Promise.allSettled([...this.#inflight]);
    for (const t of this.#transports.values()) t.close();
    this.#transports.clear();
  }

  /** Waits until `count` messages (option) were all dealt with. */
  async done(): Promise<void> {
    await this.#loop;
    await Promise.allSettled([...this.#inflight]);
  }

  setRate(rate: number): void {
    this.#o.rate = rate;
  }

  async #run(): Promise<void> {
    const conc = this.#o.concurrency ?? 20;
    let next = performance.now();
    while (!this.#stop.signal.aborted && (this.#o.count === undefined || this.#n < this.#o.count)) {
      while (this.#inflight.size >= conc && !this.#stop.signal.aborted) await Promise.race(this.#inflight);
      const now = performance.now();
      if (next > now) await sleep(next - now, undefined, { signal: this.#stop.signal }).catch(() => {});
      if (this.#stop.signal.aborted) break;
      next = Math.max(next + 1000 / this.#o.rate, performance.now() - 1000); // catch up at most 1 s
      const p = this.#one(this.#n++).finally(() => this.#inflight.delete(p));
      this.#inflight.add(p);
    }
  }

  #message(n: number): Msg {
    const senders = this.#o.senders ?? SENDERS;
    const s = senders[n % senders.length]!;
    const channel = s.channels[Math.floor(n / senders.length) % s.channels.length]!;
    const doms = this.#o.recipientDomains;
    const rcpts = [`user${n % 13}@${doms[n % doms.length]}`];
    if (n % 4 === 1) rcpts.push(`user${(n + 5) % 13}@${doms[(n + 1) % doms.length]}`);
    const r = ((n * 7919) % 1000) / 1000; // spread deterministically
    if (r < (this.#o.bounceRatio ?? 0)) rcpts.push(`unknown-${this.run}-${n}@${doms[(n + 2) % doms.length]}`);
    else if (r < (this.#o.bounceRatio ?? 0) + (this.#o.deferRatio ?? 0)) rcpts.push(`busy-${this.run}-${n}@${doms[(n + 3) % doms.length]}`);
    const mid = `<wl-${this.run}-${n}@${s.domain}>`;
    const from = `app@${s.domain}`;
    const size = this.#o.bodyBytes ?? 800;
    const line = `workload message ${n} from ${s.domain} via ${channel}. `;
    const text = line.repeat(Math.max(1, Math.ceil(size / line.length))).replace(/(.{1,76})( |$)/g, "$1\r\n");
    return { s, channel, rcpts, mid, from, subject: `workload ${n}`, text };
  }

  async #one(n: number): Promise<void> {
    const m = this.#message(n);
    this.stats.started++;
    const tries = this.#o.maxTries ?? 30;
    for (let i = 0; i < tries; i++) {
      const relays = this.#o.relays(m.s.pool);
      if (!relays.length) { await sleep(1000); continue; }
      const relay = relays[(n + i) % relays.length]!;
      const t0 = performance.now();
      try {
        const qid = m.channel === "http" ? await this.#http(relay, m) : await this.#smtp(relay, m);
        const ms = performance.now() - t0;
        this.stats.accepted++;
        this.stats.byChannel[m.channel]++;
        this.stats.latencies[this.#latIndex++ % 100_000] = ms;
        this.#o.ledger?.accept({ mid: m.mid, qid, rcpts: m.rcpts, domain: m.s.domain, channel: m.channel, at: Date.now(), acceptMs: ms });
        return;
      } catch (e) {
        const code = (e as { responseCode?: number }).responseCode ?? 0;
        if (code >= 500) {
          this.stats.refused++;
          this.#error(`${m.channel} ${relay.pod}: ${(e as Error).message}`);
          return;
        }
        this.stats.retries++;
        if (i >= 3) this.#error(`${m.channel} ${relay.pod} (try ${i + 1}): ${(e as Error).message}`);
        this.#dropTransport(relay, m.channel);
        await sleep(Math.min(5000, 250 * 2 ** i));
      }
    }
    this.stats.failed++;
  }

  #error(s: string): void {
    if (this.stats.errors.length >= 200) this.stats.errors.shift();
    this.stats.errors.push(`${new Date().toISOString()} ${s}`);
  }

  #tkey(r: RelayInfo, c: Channel) {
    return `${c}|${r.listenAddress}|${r.pid}`;
  }

  #dropTransport(r: RelayInfo, c: Channel): void {
    const k = this.#tkey(r, c);
    this.#transports.get(k)?.close();
    this.#transports.delete(k);
  }

  async #smtp(r: RelayInfo, m: Msg): Promise<string> {
    const k = this.#tkey(r, m.channel);
    let t = this.#transports.get(k);
    if (!t) {
      const auth = m.channel === "smtp-auth";
      t = nodemailer.createTransport({
        pool: true, maxConnections: 4, maxMessages: 500,
        host: r.listenAddress, port: r.submissionPort, secure: false, name: "client.workload.test",
        ...(auth ? { requireTLS: true, auth: { user: CREDENTIAL.user, pass: CREDENTIAL.pass }, tls: { rejectUnauthorized: false } } : { ignoreTLS: true }),
        connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 60_000,
      });
      this.#transports.set(k, t);
    }
    const info = await t.sendMail({ from: m.from, to: m.rcpts, subject: m.subject, text: m.text, messageId: m.mid });
    const qid = /queued as (\S+)/.exec(String(info.response))?.[1];
    if (!qid) throw new Error(`no queue id in ${String(info.response)}`);
    return qid;
  }

  async #http(r: RelayInfo, m: Msg): Promise<string> {
    const res = await fetch(`http://${r.listenAddress}:${r.httpPort}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ envelope: { from: m.from, to: m.rcpts }, headers: { "Message-ID": m.mid }, subject: m.subject, text: m.text }),
      signal: AbortSignal.timeout(60_000),
    });
    const body = await res.json() as { queueId?: string; error?: { code: number; message: string } };
    if (res.status === 202 && body.queueId) return body.queueId;
    const err = new Error(`HTTP ${res.status}: ${body.error?.message ?? JSON.stringify(body)}`) as Error & { responseCode?: number };
    err.responseCode = body.error?.code ?? (res.status >= 500 ? 451 : 550);
    throw err;
  }
}

/** p-th percentile of a list of numbers. */
export function percentile(values: number[], p: number): number {
  const v = values.filter((x) => x !== undefined).sort((a, b) => a - b);
  if (!v.length) return 0;
  return v[Math.min(v.length - 1, Math.floor((p / 100) * v.length))]!;
}
