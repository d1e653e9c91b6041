// SMTP submission (smtp-server). Who may submit:
//   - clients that AUTH (PLAIN or LOGIN), which is offered only after STARTTLS, with a credential
//     of the plan: they may send as the credential's domains;
//   - clients from the plan's trusted networks (CIDRs, like Postfix's mynetworks), without AUTH:
//     they may send as the network's domains.
// Anyone else gets 530 5.7.0 at MAIL FROM. The envelope sender domain is checked at MAIL FROM and
// the From field's domain after DATA (relay/accept/acceptor.ts); recipients may be any domain.
// There is no relaying for anyone else: every message must come from one of our sending domains.
//
// Replies carry RFC 3463 enhanced codes chosen here; connection limits, deadlines and the reply to
// AUTH before STARTTLS come from connections.ts (relay/README.md "Security").
import { Counter, Gauge } from "prom-client";
import { SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerDataStream, type SMTPServerSession } from "smtp-server";
import type { Envelope } from "../queue/envelope.ts";
import { AcceptError, isAddress, isRoutedRecipient, REPLIES, type Acceptor } from "../accept/acceptor.ts";
import { networkDomains, networksFor } from "../plan/index.ts";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import type { Authenticator } from "./auth.ts";
import { guardConnections, guardCounter, limitsFromConfig, type ConnectionGuard, type SmtpLimits } from "./connections.ts";
import { CertWatcher } from "./tls.ts";

/** AUTH failures on one connection before it is closed (421 4.7.0), as RFC 4954 section 4 allows. */
export const MAX_AUTH_FAILURES_PER_CONNECTION = 3;

// ESMTP parameters we implement (what EHLO advertises, plus AUTH= of RFC 4954 section 5, which
// clients such as Postfix send); anything else is refused 555 5.5.4 (RFC 5321 section 4.1.1.11)
// instead of being ignored, so a bare CR that splits a command line into junk parameters is refused.
const MAIL_PARAMS = new Set(["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "REQUIRETLS"]);
const RCPT_PARAMS = new Set(["NOTIFY", "ORCPT"]);

function unknownParam(address: SMTPServerAddress, known: Set<string>): string | undefined {
  const args = address.args;
  if (!args || typeof args !== "object") return undefined;
  return Object.keys(args).find((k) => !known.has(k.toUpperCase()));
}

/** Per-connection state beyond smtp-server's session. */
interface ConnState {
  /** Recipients of the current transaction found suppressed with onSubmit: Drop. */
  dropped: Set<string>;
  /** Allowed domains of the current transaction (fixed at MAIL FROM). */
  allowed: ReadonlySet<string>;
  submitter: string;
}

function replyError(code: number, text: string): Error & { responseCode: number } {
  return Object.assign(new Error(text), { responseCode: code });
}

function smtpError(e: AcceptError): Error & { responseCode: number } {
  const err = new Error(`${e.enhanced} ${e.message}`) as Error & { responseCode: number };
  err.responseCode = e.code;
  return err;
}

export interface SubmissionOptions {
  /**
   * Keep smtp-server's 100 ms pause before the greeting (its early-talker check). Measured (20
   * connections, smtp-source, 5 KiB, this 2-vCPU machine): one message per connection 81 msgs/s
   * with the pause, 211 without (full acceptance; 151 vs 245 with acceptance stubbed out); many
   * messages per connection 162 vs 187, within noise. Submission clients are authenticated or
   * trusted, not strangers on port 25, and many open a connection per message: main.ts turns it
   * off for submission; the inbound MX listener keeps it. relay/README.md "Early-talker delay".
   */
  earlyTalkerDelay?: boolean;
  /** Address and port; default from the config. */
  host?: string;
  port?: number;
  maxRecipients?: number;
  /** Connection limits and deadlines; default from the config (MAILFLEET_SMTP_*). */
  limits?: Partial<SmtpLimits>;
}

export class SubmissionServer implements Component {
  readonly name = "submission";
  readonly #acceptor: Acceptor;
  readonly #o: SubmissionOptions;
  #ctx!: RelayContext;
  #log!: Logger;
  #server!: SMTPServer;
  #certs!: CertWatcher;
  #auth!: Authenticator;
  #state = new WeakMap<SMTPServerSession, ConnState>();
  #authFailuresBySession = new WeakMap<SMTPServerSession, number>();
  #open = new WeakSet<SMTPServerSession>();
  #guard: ConnectionGuard | undefined;
  #guardEvents!: Counter<"listener" | "reason">;
  #inData = 0;
  #draining = false;
  #authFailures!: Counter;
  #connections!: Gauge;
  /** The port actually bound (tests bind port 0). */
  port = 0;

  constructor(acceptor: Acceptor, o: SubmissionOptions = {}) {
    this.#acceptor = acceptor;
    this.#o = o;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("submission");
    this.#auth = this.#acceptor.auth;
    this.#authFailures = new Counter({ name: "mailfleet_relay_auth_failures_total", help: "Failed AUTH attempts on submission", registers: [ctx.registry] });
    this.#connections = new Gauge({ name: "mailfleet_relay_submission_connections", help: "Open submission connections", registers: [ctx.registry] });
    this.#guardEvents = guardCounter(ctx.registry);
    this.#certs = new CertWatcher(ctx.config.MAILFLEET_TLS_DIR, this.#log, (pair) => this.#server?.updateSecureContext(pair));
    const pair = this.#certs.load();
    if (!pair) this.#log.warn("no submission certificate: STARTTLS and AUTH are not offered (trusted networks only)");
    const acceptor = this.#acceptor;

    this.#server = new SMTPServer({
      name: undefined,
      banner: "mailfleet submission",
      ...(pair ? { key: pair.key, cert: pair.cert } : { hideSTARTTLS: true }),
      size: acceptor.maxSize(),
      authMethods: ["PLAIN", "LOGIN"],
      // We decide who must authenticate (trusted networks need not), at MAIL FROM.
      authOptional: true,
      allowInsecureAuth: false,
      disableReverseLookup: true,
      hideENHANCEDSTATUSCODES: false,
      hideDSN: false,
      logger: false,
      // AUTH is disabled per session until STARTTLS (onSecure) enables it: not offered in EHLO, and
      // answered 538 5.7.11 by the guard (connections.ts).
      onConnect: (session, cb) => {
        if (this.#draining || this.#ctx.draining()) return cb(Object.assign(new Error("4.3.2 Service shutting down, try another server"), { responseCode: 421 }));
        session.disabledCommands = ["AUTH"];
        this.#open.add(session);
        this.#connections.inc();
        cb();
      },
      // smtp-server calls onClose for refused connections too (limits, draining): count only ours.
      onClose: (session) => { if (this.#open.delete(session)) this.#connections.dec(); },
      onSecure: (_socket, session, cb) => {
        session.disabledCommands = [];
        cb();
      },
      onAuth: (auth, session, cb) => this.#onAuth(auth, session, cb),
      onMailFrom: (address, session, cb) => this.#onMailFrom(address, session, cb),
      onRcptTo: (address, session, cb) => this.#onRcptTo(address, session, cb),
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    });
    this.#server.on("error", (e) => this.#log.warn("smtp error", { error: e }));

    this.#guard = guardConnections(this.#server, {
      limits: { ...limitsFromConfig(ctx.config), ...(this.#o.limits ?? {}) },
      earlyTalkerDelay: this.#o.earlyTalkerDelay !== false,
      authAfterTls: true,
      log: this.#log,
      onEvent: (reason) => this.#guardEvents.inc({ listener: "submission", reason }),
    });
    const host = this.#o.host ?? ctx.config.MAILFLEET_LISTEN_ADDRESS;
    const port = this.#o.port ?? ctx.config.MAILFLEET_SUBMISSION_PORT;
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => reject(e);
      this.#server.server.once("error", onErr);
      // SO_REUSEPORT: several relay processes on one host share the port (the kernel spreads
      // connections): a HostNetwork rolling update starts the new relay while the old one drains,
      // and one host can run a relay per CPU, as Postfix runs several smtpd.
      (this.#server.server as import("node:net").Server).listen({ port, host, reusePort: port !== 0 }, () => {
        this.#server.server.off("error", onErr);
        resolve();
      });
    });
    const addr = this.#server.server.address();
    this.port = typeof addr === "object" && addr ? addr.port : port;
    this.#certs.start();
    this.#log.info("submission listening", { host, port: this.port, tls: Boolean(pair) });
  }

  quiesce(): void {
    this.#draining = true;
  }

  async stop(): Promise<void> {
    this.#draining = true;
    this.#certs?.stop();
    this.#guard?.stop();
    if (!this.#server) return;
    // Let transactions in DATA finish (their 250 waits for JetStream), then close the rest: the
    // server's close sends 421 to idle connections once its close timeout passes.
    const deadline = Date.now() + 15_000;
    while (this.#inData > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise<void>((resolve) => {
      (this.#server.options as { closeTimeout?: number }).closeTimeout = 100;
      this.#server.close(() => resolve());
    });
  }

  #clientIp(session: SMTPServerSession): string {
    return session.remoteAddress;
  }

  #onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, cb: (err: Error | null | undefined, response?: { user?: unknown }) => void): void {
    const ip = this.#clientIp(session);
    const plan = this.#ctx.plan();
    const username = String(auth.username ?? "");
    if (!plan) return cb(replyError(454, "4.3.0 Relay not ready, try again later"));
    const failed = (failures: number, waitedMs: number) => {
      this.#authFailures.inc();
      const onConn = (this.#authFailuresBySession.get(session) ?? 0) + 1;
      this.#authFailuresBySession.set(session, onConn);
      this.#log.warn("AUTH failed", { username: username.slice(0, 128), ip, method: auth.method, failures, onConnection: onConn, waitedMs });
      if (onConn >= MAX_AUTH_FAILURES_PER_CONNECTION) return cb(replyError(421, "4.7.0 Too many authentication failures, closing connection"));
      cb(replyError(535, "5.7.8 Authentication credentials invalid"));
    };
    if (auth.method !== "PLAIN" && auth.method !== "LOGIN") return failed(this.#auth.failure(ip), 0);
    this.#auth.check(ip, plan, username, String(auth.password ?? "")).then(({ user, failures, waitedMs }) => {
      if (!user) return failed(failures, waitedMs);
      this.#log.debug("AUTH ok", { username: user, ip });
      cb(null, { user });
    }, (e) => {
      this.#log.error("AUTH check failed", { error: e });
      cb(replyError(454, "4.3.0 Temporary authentication failure"));
    });
  }

  /** Who is submitting and which domains they may use; null when neither authenticated nor trusted. */
  #identity(session: SMTPServerSession): { submitter: string; allowed: ReadonlySet<string> } | null {
    const plan = this.#ctx.plan();
    if (!plan) return null;
    if (session.user) {
      const cred = plan.credentials.get(String(session.user));
      return cred ? { submitter: `auth:${cred.username}`, allowed: cred.domains } : { submitter: `auth:${String(session.user)}`, allowed: new Set() };
    }
    const nets = networksFor(plan, this.#clientIp(session));
    if (nets.length === 0) return null;
    return { submitter: `net:${nets[0]!.cidr}`, allowed: networkDomains(nets) };
  }

  #onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    try {
      if (this.#draining) throw new AcceptError(421, "4.3.2", "Service shutting down, try another server");
      const notReady = this.#acceptor.ready();
      if (notReady) throw notReady;
      const id = this.#identity(session);
      if (!id) throw new AcceptError(530, "5.7.0", "Authentication required");
      const bad = unknownParam(address, MAIL_PARAMS);
      if (bad !== undefined) throw new AcceptError(555, "5.5.4", `MAIL FROM parameter not recognized: ${bad.replace(/[^\x21-\x7e]/g, "?").slice(0, 32)}`);
      const from = address.address ?? "";
      if (from !== "" && !isAddress(from)) throw REPLIES.badAddress("sender");
      const dp = this.#acceptor.senderDomain(id.allowed, from, "envelope");
      this.#acceptor.takeRate(id.submitter, dp);
      this.#state.set(session, { dropped: new Set(), allowed: id.allowed, submitter: id.submitter });
      cb();
    } catch (e) {
      cb(this.#refuse(e, session));
    }
  }

  #onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const st = this.#state.get(session);
    const rcpt = address.address ?? "";
    (async () => {
      if (!st) throw new AcceptError(503, "5.5.1", "MAIL FROM first");
      const bad = unknownParam(address, RCPT_PARAMS);
      if (bad !== undefined) throw new AcceptError(555, "5.5.4", `RCPT TO parameter not recognized: ${bad.replace(/[^\x21-\x7e]/g, "?").slice(0, 32)}`);
      if (!isAddress(rcpt)) throw REPLIES.badRecipient();
      if (isRoutedRecipient(rcpt)) throw REPLIES.routedRecipient();
      if (session.envelope.rcptTo.length >= (this.#o.maxRecipients ?? 1000)) throw new AcceptError(452, "4.5.3", "Too many recipients");
      const dp = this.#acceptor.senderDomain(st.allowed, session.envelope.mailFrom ? session.envelope.mailFrom.address : "", "envelope");
      if ((await this.#acceptor.recipientCheck(dp, rcpt)) === "drop") st.dropped.add(rcpt);
    })().then(() => cb(), (e) => cb(this.#refuse(e, session)));
  }

  #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    this.#inData++;
    const chunks: Buffer[] = [];
    let size = 0;
    const max = this.#acceptor.maxSize();
    stream.on("data", (c: Buffer) => {
      size += c.length;
      if (size <= max) chunks.push(c);
    });
    stream.on("end", () => {
      const done = (err: Error | null, msg?: string) => {
        this.#inData--;
        cb(err, msg);
      };
      // smtp-server answers 552 itself for an oversized message (SIZE is advertised).
      if (stream.sizeExceeded || size > max) {
        this.#acceptor.rejected(REPLIES.tooBig(max));
        return done(Object.assign(new Error(`5.3.4 Message size exceeds fixed maximum message size (${max} bytes)`), { responseCode: 552 }));
      }
      const st = this.#state.get(session);
      const id = this.#identity(session);
      if (!st || !id) return done(this.#refuse(new AcceptError(503, "5.5.1", "Bad sequence of commands"), session));
      const mailFrom = session.envelope.mailFrom ? session.envelope.mailFrom.address : "";
      const rcpts = session.envelope.rcptTo.map((r) => r.address);
      this.#acceptor.accept({
        submitter: st.submitter, allowedDomains: st.allowed, clientIp: this.#clientIp(session),
        mailFrom, rcpts, raw: Buffer.concat(chunks, Math.min(size, max)), source: "smtp",
        dropped: [...st.dropped], ...dsnOf(session),
      }).then((r) => {
        this.#log.debug("accepted", { qid: r.qid, submitter: st.submitter, rcpts: rcpts.length, size, duplicate: r.duplicate });
        done(null, `2.0.0 Ok: queued as ${r.qid}`);
      }, (e) => done(this.#refuse(e, session, false)));
    });
  }

  /** An smtp-server error for a refusal; counts it (the acceptor counts its own). */
  #refuse(e: unknown, session: SMTPServerSession, count = true): Error {
    if (e instanceof AcceptError) {
      if (count) this.#acceptor.rejected(e);
      return smtpError(e);
    }
    this.#log.error("submission error", { error: e, ip: this.#clientIp(session) });
    const err = new AcceptError(451, "4.3.0", "Local error in processing, try again later");
    if (count) this.#acceptor.rejected(err);
    return smtpError(err);
  }
}

function dsnOf(session: SMTPServerSession): { dsn?: Envelope["dsn"] } {
  const env = session.envelope as unknown as { dsn?: { ret?: string; envid?: string }; rcptTo: { address: string; dsn?: { notify?: string[] } }[] };
  const notify: Record<string, string[]> = {};
  for (const r of env.rcptTo) if (r.dsn?.notify?.length) notify[r.address] = r.dsn.notify;
  const ret = env.dsn?.ret === "FULL" || env.dsn?.ret === "HDRS" ? env.dsn.ret : undefined;
  if (!ret && !env.dsn?.envid && Object.keys(notify).length === 0) return {};
  return { dsn: { ...(ret ? { ret } : {}), ...(env.dsn?.envid ? { envid: env.dsn.envid } : {}), ...(Object.keys(notify).length ? { notify } : {}) } };
}
