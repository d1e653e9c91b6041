// How the relay's SMTP listeners (submission and inbound) take connections: smtp-server with a few
// additions it has no options for. They live here, in one place, because they reach into
// smtp-server's connection class (its CommonJS build: the ESM build is a separate copy whose
// prototype our patches would not reach, so every connection is made from the CJS class here).
//
//   - Replies whose text starts with an RFC 3463 enhanced code keep it as the only one
//     (smtp-server would derive its own from the basic code: 5.1.1 for every 550).
//   - Connection limits: all clients (421 4.3.2) and per client address (421 4.7.0), counted from
//     accept to close, so idle connections count too (Postfix's smtpd_client_connection_count_limit).
//   - Deadlines (Postfix's smtpd_per_request_deadline and smtpd_min_data_rate): smtp-server's idle
//     timeout restarts with every byte, so a client that drips one byte a second would hold its
//     connection for ever. Here a command line must be complete within the command timeout from
//     its first byte; DATA gets the same time from its first byte, extended by what arrives at the
//     minimum data rate (never beyond one command timeout ahead); a TLS handshake must end within
//     the command timeout. A late client gets 421 4.4.2 and is disconnected.
//   - AUTH before STARTTLS: 538 5.7.11 (RFC 4954: encryption required) instead of smtp-server's
//     500 for a command that is not offered; AUTH inside a mail transaction: 503 5.5.1 (RFC 4954
//     section 4), which smtp-server lets through, so a MAIL accepted for one identity (a trusted
//     network) cannot carry a message sent as another.
//   - The 100 ms early-talker pause before the greeting is optional (relay/README.md).
import { createRequire } from "node:module";
import { Counter, type Registry } from "prom-client";
import type { SMTPServer } from "smtp-server";
import type { RelayConfig } from "../config.ts";
import type { Logger } from "../runtime/logger.ts";

const require = createRequire(import.meta.url);

/** The parts of smtp-server's (CommonJS) SMTPConnection used here. */
interface Conn {
  remoteAddress: string;
  secure: boolean;
  session: { envelope?: { mailFrom?: unknown } };
  name: string;
  _ready: boolean;
  _closing: boolean;
  _upgrading: boolean;
  _parser: Parser | false;
  _socket: { destroy(): void; destroyed: boolean };
  send(code: number, data: unknown, context?: unknown): void;
  on(ev: string, fn: (x: never) => void): void;
  _setListeners(cb: () => void): void;
  connectionReady(): void;
  _createParser(): Parser;
  _onClose(): void;
  _onCommand(command: Buffer, callback?: () => void): void;
  _whenWritable(next: () => void): void;
}
interface Parser {
  _dataMode: boolean;
  /** The current DATA's stream: a new one for every DATA. */
  _dataStream: unknown;
  _write(chunk: Buffer, enc: BufferEncoding, next: (e?: Error | null) => void): void;
}
type ConnClass = { new (server: unknown, socket: unknown, options: unknown): Conn; prototype: Conn & Record<PropertyKey, unknown> };

const { SMTPConnection } = require("smtp-server/lib/smtp-connection.js") as { SMTPConnection: ConnClass };

// Replies whose text starts with an enhanced status code keep it (and get no second one).
const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
const patched = Symbol.for("mailfleet.smtp-server.patched");
const proto = SMTPConnection.prototype;
if (!proto[patched]) {
  const send = proto.send;
  proto.send = function (this: Conn, code: number, data: unknown, context?: unknown) {
    return send.call(this, code, data, typeof data === "string" && ENHANCED.test(data) ? false : context);
  };
  proto[patched] = true;
}

export interface SmtpLimits {
  /** Connections from all clients together (beyond: 421 4.3.2). */
  maxConnections: number;
  /** Connections from one client address (beyond: 421 4.7.0). */
  maxConnectionsPerIp: number;
  /** No byte at all for this long: 421 (smtp-server's socket timeout). */
  idleTimeoutMs: number;
  /** A command line, the start of DATA, a TLS handshake: complete within this. */
  commandTimeoutMs: number;
  /** DATA must arrive at least this fast (bytes per second) once its first timeout is used up. */
  minDataRate: number;
}

export const DEFAULT_LIMITS: SmtpLimits = {
  maxConnections: 5000,
  maxConnectionsPerIp: 100,
  idleTimeoutMs: 60_000,
  commandTimeoutMs: 30_000,
  minDataRate: 1024,
};

export function limitsFromConfig(c: RelayConfig): SmtpLimits {
  return {
    maxConnections: c.MAILFLEET_SMTP_MAX_CONNECTIONS,
    maxConnectionsPerIp: c.MAILFLEET_SMTP_MAX_CONNECTIONS_PER_IP,
    idleTimeoutMs: c.MAILFLEET_SMTP_IDLE_TIMEOUT,
    commandTimeoutMs: c.MAILFLEET_SMTP_COMMAND_TIMEOUT,
    minDataRate: c.MAILFLEET_SMTP_MIN_DATA_RATE,
  };
}

const GUARD_METRIC = "mailfleet_relay_smtp_guard_events_total";

/** Clients refused or cut by a limit or a deadline, or answered 538 for AUTH before STARTTLS; one counter for both listeners. */
export function guardCounter(registry: Registry): Counter<"listener" | "reason"> {
  return (registry.getSingleMetric(GUARD_METRIC) as Counter<"listener" | "reason"> | undefined) ?? new Counter({
    name: GUARD_METRIC, help: "SMTP clients refused or disconnected by a connection limit or deadline, or answered 538 for AUTH before STARTTLS",
    labelNames: ["listener", "reason"], registers: [registry],
  });
}

export type GuardEvent = "limit-total" | "limit-ip" | "timeout-command" | "timeout-data" | "timeout-tls" | "auth-before-tls";

export interface GuardOptions {
  limits: SmtpLimits;
  /** smtp-server's 100 ms pause before the greeting (it answers clients that talk first 421). */
  earlyTalkerDelay: boolean;
  log: Logger;
  /** AUTH is offered only after STARTTLS (538 5.7.11 before) and outside mail transactions (503 5.5.1). */
  authAfterTls?: boolean;
  onEvent?: (e: GuardEvent, ip: string) => void;
}

/** Per-connection deadline state. */
interface Watch {
  conn: Conn;
  ip: string;
  /** First byte of a command line not yet ended by LF. */
  partialSince: number | null;
  /** DATA under way: when it must be complete (extended as bytes arrive)... */
  dataDeadline: number | null;
  /** ...and which DATA that is (a deadline never carries over to the next message). */
  dataStream: unknown;
  upgradingSince: number | null;
}

export interface ConnectionGuard {
  /** Open connections per client address (tests, metrics). */
  perIp(): ReadonlyMap<string, number>;
  stop(): void;
}

/** Installs the limits and deadlines above on an smtp-server instance (before it listens). */
export function guardConnections(server: SMTPServer, o: GuardOptions): ConnectionGuard {
  const { limits, log } = o;
  const s = server as unknown as {
    connect(socket: unknown, opts: unknown): void;
    connections: Set<unknown>;
    options: { socketTimeout?: number; maxClients?: number };
    _onError(e: Error): void;
    _onClientConnect(d: unknown): void;
  };
  s.options.socketTimeout = limits.idleTimeoutMs;
  // Checked below (with our reply), not by smtp-server.
  delete s.options.maxClients;
  const perIp = new Map<string, number>();
  const watches = new Set<Watch>();

  const timeout = (w: Watch, kind: "timeout-command" | "timeout-data" | "timeout-tls") => {
    watches.delete(w);
    o.onEvent?.(kind, w.ip);
    log.info("SMTP client too slow: disconnected", { ip: w.ip, deadline: kind });
    if (kind === "timeout-tls") w.conn._socket.destroy(); // nothing can be written mid-handshake
    else w.conn.send(421, "4.4.2 Timeout: command or message not completed in time, closing connection", false);
  };
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const w of watches) {
      const c = w.conn;
      if (c._closing) { watches.delete(w); continue; }
      if (c._upgrading) {
        w.upgradingSince ??= now;
        if (now - w.upgradingSince > limits.commandTimeoutMs) timeout(w, "timeout-tls");
        continue;
      }
      w.upgradingSince = null;
      const parser = c._parser;
      if (parser && parser._dataMode) {
        if (w.dataDeadline !== null && w.dataStream === parser._dataStream && now > w.dataDeadline) timeout(w, "timeout-data");
      } else {
        w.dataDeadline = null;
        if (w.partialSince !== null && now - w.partialSince > limits.commandTimeoutMs) timeout(w, "timeout-command");
      }
    }
  }, Math.min(1000, Math.max(50, Math.floor(limits.commandTimeoutMs / 10))));
  sweep.unref();

  // Sees every chunk the command parser is given (the TLS session gets a new parser).
  const watchParser = (w: Watch, parser: Parser) => {
    const write = parser._write;
    parser._write = function (this: Parser, chunk: Buffer, enc: BufferEncoding, next: (e?: Error | null) => void) {
      const now = Date.now();
      if (this._dataMode) {
        w.partialSince = null;
        if (w.dataStream !== this._dataStream) {
          w.dataStream = this._dataStream;
          w.dataDeadline = null;
        }
        const horizon = now + limits.commandTimeoutMs;
        w.dataDeadline = w.dataDeadline === null ? horizon : Math.min(horizon, w.dataDeadline + (chunk.length * 1000) / limits.minDataRate);
      } else {
        const lf = chunk.lastIndexOf(0x0a);
        if (lf === -1) w.partialSince ??= now;
        else w.partialSince = lf === chunk.length - 1 ? null : now;
      }
      return write.call(this, chunk, enc, next);
    };
  };

  s.connect = function (socket, socketOptions) {
    const conn = new SMTPConnection(this, socket, socketOptions);
    this.connections.add(conn);
    conn.on("error", (err: Error) => this._onError(err));
    conn.on("connect", (data: unknown) => this._onClientConnect(data));

    const ip = conn.remoteAddress;
    const n = (perIp.get(ip) ?? 0) + 1;
    perIp.set(ip, n);
    const w: Watch = { conn, ip, partialSince: null, dataDeadline: null, dataStream: null, upgradingSince: null };
    let released = false;
    const onClose = conn._onClose;
    conn._onClose = function (this: Conn) {
      if (!released) {
        released = true;
        watches.delete(w);
        const left = (perIp.get(ip) ?? 1) - 1;
        if (left > 0) perIp.set(ip, left);
        else perIp.delete(ip);
      }
      return onClose.call(this);
    };
    const createParser = conn._createParser;
    conn._createParser = function (this: Conn) {
      const p = createParser.call(this);
      watchParser(w, p);
      return p;
    };
    if (conn._parser) watchParser(w, conn._parser);
    if (o.authAfterTls) {
      const onCommand = conn._onCommand;
      conn._onCommand = function (this: Conn, command: Buffer, callback?: () => void) {
        if (this._ready && !this._closing && /^AUTH(?:[ \t]|$)/i.test(String(command ?? ""))) {
          let refusal: [number, string] | undefined;
          if (!this.secure && !this._upgrading) {
            o.onEvent?.("auth-before-tls", ip);
            refusal = [538, "5.7.11 Encryption required for requested authentication mechanism: issue STARTTLS first"];
          } else if (this.session.envelope?.mailFrom) {
            refusal = [503, "5.5.1 AUTH not permitted during a mail transaction: RSET first"];
          }
          if (refusal) {
            this.send(refusal[0], refusal[1], false);
            setImmediate(() => this._whenWritable(callback ?? (() => false)));
            return;
          }
        }
        return onCommand.call(this, command, callback);
      };
    }
    watches.add(w);

    conn._setListeners(() => {
      if (this.connections.size > limits.maxConnections) {
        o.onEvent?.("limit-total", ip);
        return conn.send(421, "4.3.2 Too many connections, try again later", false);
      }
      if (n > limits.maxConnectionsPerIp) {
        o.onEvent?.("limit-ip", ip);
        return conn.send(421, `4.7.0 Too many connections from ${ip}, try again later`, false);
      }
      if (o.earlyTalkerDelay) setTimeout(() => conn.connectionReady(), 100).unref();
      else conn.connectionReady();
    });
  };

  return {
    perIp: () => perIp,
    stop: () => clearInterval(sweep),
  };
}
