// SMTP sessions to receivers, over nodemailer's SMTP connection (the layer under its SMTP
// transport), pooled per (source address, MX address): a session is opened bound to the lane's
// source address with the address's hostname as EHLO name, reused for up to the provider's
// messagesPerConnection transactions, and closed after a few idle seconds. Each open session holds
// a connection lease from the lane limiter, so lane connection caps count what is really open.
//
// The transport's own pool (`pool: true`) is not used: it resolves host names with the system
// resolver, hides when connections open and close (so it cannot hold leases), and reports one
// result per message instead of one per recipient.
import SMTPConnection from "nodemailer/lib/smtp-connection";
import { rootCertificates } from "node:tls";
import type { NodemailerError } from "nodemailer/lib/errors";
import type { ConnectionLease, LaneLimiter, LaneRef } from "../shaper/types.ts";
import { laneId } from "../shaper/types.ts";

/** opportunistic: STARTTLS when offered, any certificate (RFC 7435); required: STARTTLS or no
 * delivery (a provider that insists on encryption); verify: STARTTLS with a certificate valid
 * for the MX host name (MTA-STS enforce, RFC 8461). */
export type TlsMode = "opportunistic" | "required" | "verify";

export interface SessionTarget {
  /** The MX host's address (resolved through the relay's resolver, not the system's). */
  ip: string;
  port: number;
  /** The MX host name: TLS server name and certificate name. */
  mxHost: string;
}

export interface SessionOptions {
  localAddress: string;
  helo: string;
  tls: TlsMode;
  /** Extra trust anchors for verify mode (tests; production uses the system store). */
  ca?: string[];
  connectTimeoutMs?: number;
  /** Socket inactivity during a transaction. */
  socketTimeoutMs?: number;
}

/** One recipient's reply within a transaction. */
export interface RcptReply {
  rcpt: string;
  ok: boolean;
  reply: string;
}

export interface TransactionResult {
  replies: RcptReply[];
  /** Set when the session broke without a reply for some recipients (they get `error`). */
  error?: NodemailerError;
}

export class SmtpError extends Error {
  readonly code?: string;
  readonly response?: string;
  readonly responseCode?: number;
  constructor(err: NodemailerError | Error, context: string) {
    const e = err as NodemailerError;
    super(`${context}: ${e.message}`);
    this.name = "SmtpError";
    this.code = e.code;
    this.response = e.response;
    this.responseCode = e.responseCode;
  }
}

/** The lane limiter had no connection slot (cap reached, connection rate) within the wait. */
export class NoConnectionSlot extends Error {
  readonly retryAt: number;
  constructor(retryAt: number) {
    super("no connection slot for the lane");
    this.name = "NoConnectionSlot";
    this.retryAt = retryAt;
  }
}

export class SmtpSession {
  readonly key: string;
  readonly lane: LaneRef;
  readonly target: SessionTarget;
  readonly secure: boolean;
  sent = 0;
  closed = false;
  lease?: ConnectionLease;
  idleTimer?: NodeJS.Timeout;
  readonly #conn: SMTPConnection;
  #onClose: () => void = () => {};

  private constructor(key: string, lane: LaneRef, target: SessionTarget, conn: SMTPConnection) {
    this.key = key;
    this.lane = lane;
    this.target = target;
    this.#conn = conn;
    this.secure = conn.secure;
    const closed = () => {
      if (this.closed) return;
      this.closed = true;
      this.#onClose();
    };
    conn.on("end", closed);
    conn.on("error", closed);
  }

  set onClose(fn: () => void) {
    this.#onClose = fn;
  }

  static open(key: string, lane: LaneRef, target: SessionTarget, o: SessionOptions, plaintext = false): Promise<SmtpSession> {
    const verify = o.tls === "verify";
    const conn = new SMTPConnection({
      host: target.ip,
      port: target.port,
      localAddress: o.localAddress,
      name: o.helo,
      servername: target.mxHost,
      requireTLS: o.tls !== "opportunistic",
      opportunisticTLS: o.tls === "opportunistic",
      ignoreTLS: plaintext && o.tls === "opportunistic",
      tls: {
        rejectUnauthorized: verify,
        servername: target.mxHost,
        minVersion: "TLSv1.2",
        ...(verify && o.ca?.length ? { ca: [...rootCertificates, ...o.ca] } : {}),
      },
      connectionTimeout: o.connectTimeoutMs ?? 30_000,
      greetingTimeout: o.connectTimeoutMs ?? 30_000,
      socketTimeout: o.socketTimeoutMs ?? 300_000,
      allowInternalNetworkInterfaces: true,
      logger: false,
    });
    return new Promise((resolve, reject) => {
      let settled = false;
      conn.once("error", (err: NodemailerError) => {
        if (settled) return;
        settled = true;
        conn.close();
        reject(new SmtpError(err, `${target.mxHost} [${target.ip}]`));
      });
      conn.connect((err) => {
        if (settled) return;
        settled = true;
        if (err) {
          conn.close();
          reject(new SmtpError(err, `${target.mxHost} [${target.ip}]`));
        } else resolve(new SmtpSession(key, lane, target, conn));
      });
    });
  }

  /** One transaction: MAIL FROM, RCPT TO each, DATA. Never rejects: failures are replies. */
  send(from: string, rcpts: string[], body: Buffer, dsn?: { envid?: string; ret?: string }): Promise<TransactionResult> {
    this.sent++;
    return new Promise((resolve) => {
      const envelope = {
        from: from === "" ? (false as const) : from,
        to: rcpts,
        size: body.length,
        ...(dsn?.envid || dsn?.ret ? { dsn: { envid: dsn.envid, ret: dsn.ret } } : {}),
      };
      this.#conn.send(envelope, body, (err, info) => {
        if (!err && info) {
          const rejected = new Map<string, string>();
          for (const e of info.rejectedErrors ?? []) if (e.recipient) rejected.set(e.recipient, e.response ?? e.message);
          resolve({
            replies: rcpts.map((r) => (rejected.has(r) ? { rcpt: r, ok: false, reply: rejected.get(r)! } : { rcpt: r, ok: true, reply: info.response })),
          });
          return;
        }
        const e = err as NodemailerError;
        // Per-recipient refusals the connection noted before the failure (RCPT replies).
        const envelopeState = (this.#conn as unknown as { _envelope?: { rejectedErrors?: NodemailerError[] } })._envelope;
        const rejected = new Map<string, string>();
        for (const re of e.rejectedErrors ?? envelopeState?.rejectedErrors ?? []) if (re.recipient) rejected.set(re.recipient, re.response ?? re.message);
        if (e.command === "MAIL FROM" && e.response && /^[45]\d\d/.test(e.response)) {
          // MAIL FROM refused: that reply is the verdict for everyone. Pipelined RCPTs after it
          // only got "503 need MAIL command", which says nothing about the recipients.
          resolve({ replies: rcpts.map((r) => ({ rcpt: r, ok: false, reply: e.response! })) });
          return;
        }
        if (e.response && /^[2-5]\d\d/.test(e.response)) {
          // A reply ended the transaction: MAIL FROM, DATA or the final dot. Refused recipients
          // keep their own reply; the others share this one.
          resolve({ replies: rcpts.map((r) => ({ rcpt: r, ok: false, reply: rejected.get(r) ?? e.response! })) });
          return;
        }
        // No reply: the session broke (timeout, reset). Recipients already refused keep that.
        resolve({
          replies: rcpts.filter((r) => rejected.has(r)).map((r) => ({ rcpt: r, ok: false, reply: rejected.get(r)! })),
          error: e,
        });
      });
    });
  }

  /** RSET after a failed transaction, so the session can carry the next one. */
  reset(): Promise<boolean> {
    return new Promise((resolve) => {
      if (this.closed) return resolve(false);
      this.#conn.reset((err) => resolve(!err));
    });
  }

  close(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (!this.closed) {
      try {
        this.#conn.quit();
      } catch {
        /* already gone */
      }
      // quit() waits for the server's 221; make sure the socket goes even if it never comes.
      setTimeout(() => this.#conn.close(), 5000).unref();
    }
    this.closed = true;
    this.#onClose();
  }
}

export interface PoolOptions {
  limiter: LaneLimiter;
  idleMs?: number;
  /** How long to wait for a connection slot before giving up (the part goes back to the queue). */
  slotWaitMs?: number;
  /** Open connections changed for a lane (metrics). */
  onOpen?: (lane: LaneRef, open: number) => void;
}

/** Sessions pooled per (lane, MX address, TLS mode). */
export class SessionPool {
  readonly #idle = new Map<string, SmtpSession[]>();
  readonly #open = new Map<string, Set<SmtpSession>>();
  readonly #o: PoolOptions;
  #closing = false;

  constructor(o: PoolOptions) {
    this.#o = o;
  }

  #count(lane: LaneRef): void {
    this.#o.onOpen?.(lane, this.#open.get(laneId(lane))?.size ?? 0);
  }

  /** An idle session for the target, or a new one (waiting for a connection slot). */
  async acquire(lane: LaneRef, target: SessionTarget, o: SessionOptions): Promise<SmtpSession> {
    const key = `${laneId(lane)}|${target.ip}:${target.port}|${o.tls}`;
    const idle = this.#idle.get(key);
    while (idle?.length) {
      const s = idle.pop()!;
      if (s.idleTimer) clearTimeout(s.idleTimer);
      if (!s.closed) return s;
    }
    const lease = await this.#lease(lane);
    let session: SmtpSession;
    try {
      session = await SmtpSession.open(key, lane, target, o).catch(async (err: SmtpError) => {
        // Opportunistic TLS whose handshake failed: deliver in clear, as Postfix does in "may" mode.
        if (o.tls === "opportunistic" && err.code === "ETLS") return SmtpSession.open(key, lane, target, o, true);
        throw err;
      });
    } catch (err) {
      lease.release();
      throw err;
    }
    session.lease = lease;
    const set = this.#open.get(laneId(lane)) ?? new Set<SmtpSession>();
    this.#open.set(laneId(lane), set);
    set.add(session);
    session.onClose = () => {
      if (!set.delete(session)) return;
      lease.release();
      const list = this.#idle.get(key);
      if (list) {
        const i = list.indexOf(session);
        if (i >= 0) list.splice(i, 1);
      }
      this.#count(lane);
    };
    this.#count(lane);
    return session;
  }

  async #lease(lane: LaneRef): Promise<ConnectionLease> {
    const deadline = Date.now() + (this.#o.slotWaitMs ?? 30_000);
    for (;;) {
      const r = await this.#o.limiter.connect(lane);
      if ("release" in r) return r;
      // An idle session of this lane to another MX holds a slot: close it and try again.
      if (this.#closeOneIdle(lane)) continue;
      if (r.retryAt > deadline || this.#closing) throw new NoConnectionSlot(r.retryAt);
      await new Promise((res) => setTimeout(res, Math.max(20, Math.min(1000, r.retryAt - Date.now()))));
    }
  }

  #closeOneIdle(lane: LaneRef): boolean {
    const prefix = `${laneId(lane)}|`;
    for (const [key, list] of this.#idle) {
      if (!key.startsWith(prefix)) continue;
      const s = list.shift();
      if (s) {
        s.close();
        return true;
      }
    }
    return false;
  }

  /** Back to the pool after a transaction, or closed when spent, broken or draining. */
  release(s: SmtpSession, maxMessages: number, idleMs = this.#o.idleMs ?? 5000): void {
    if (s.closed) return;
    if (this.#closing || s.sent >= maxMessages) {
      s.close();
      return;
    }
    const list = this.#idle.get(s.key) ?? [];
    this.#idle.set(s.key, list);
    list.push(s);
    s.idleTimer = setTimeout(() => s.close(), idleMs);
    s.idleTimer.unref();
  }

  openCount(lane: LaneRef): number {
    return this.#open.get(laneId(lane))?.size ?? 0;
  }

  /** Closes idle sessions now and every other one as it is released. */
  closeAll(): void {
    this.#closing = true;
    for (const list of this.#idle.values()) for (const s of [...list]) s.close();
    this.#idle.clear();
  }
}
