// The inbound listener (MAILFLEET_INBOUND_PORT): the MX of the return-path domains points at the
// relays. It takes mail only for b-<qid>@<return-path domain> (VERP: asynchronous bounces) and for
// fbl@, abuse@ and postmaster@ of those domains (feedback-loop reports, and the postmaster address
// RFC 5321 §4.5.1 requires); anything else gets 550 5.7.1 at RCPT TO: it is no open relay. A
// message is answered 250 only once what it reports is stored as events (reports.ts), 451 if
// that fails, so the reporting MTA keeps it and tries again.
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from "smtp-server";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { CertWatcher } from "../submission/tls.ts";
import { guardConnections, guardCounter, limitsFromConfig, type ConnectionGuard } from "../submission/connections.ts";
import { routerFor, type Router } from "../routing/router.ts";
import { deliveryMetrics, type DeliveryMetrics } from "../delivery/metrics.ts";
import { suppressorFor } from "../delivery/suppress.ts";
import type { Suppressor } from "../delivery/outcomes.ts";
import { acceptsRecipient, processInbound, UnreadableReport } from "./reports.ts";

const MAX_SIZE = 10 * 1024 * 1024;

export interface InboundOptions {
  router?: Router;
  suppressor?: Suppressor;
  port?: number;
  host?: string;
}

function smtpError(code: number, text: string): Error {
  return Object.assign(new Error(text), { responseCode: code });
}

export class InboundServer implements Component {
  readonly name = "inbound";
  readonly #o: InboundOptions;
  #ctx!: RelayContext;
  #log!: Logger;
  #metrics!: DeliveryMetrics;
  #server?: SMTPServer;
  #certs?: CertWatcher;
  #router!: Router;
  #suppressor?: Suppressor;
  #draining = false;
  #guard?: ConnectionGuard;

  constructor(o: InboundOptions = {}) {
    this.#o = o;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("inbound");
    this.#metrics = deliveryMetrics(ctx.registry);
    this.#router = this.#o.router ?? routerFor(ctx);
    this.#suppressor = this.#o.suppressor ?? suppressorFor(ctx);
    const port = this.#o.port ?? ctx.config.MAILFLEET_INBOUND_PORT;
    if (!port) return; // 0: no inbound listener on this relay
    this.#certs = new CertWatcher(ctx.config.MAILFLEET_TLS_DIR, this.#log, (pair) => this.#server?.updateSecureContext(pair));
    const pair = this.#certs.load();
    this.#server = new SMTPServer({
      banner: "mailfleet inbound",
      ...(pair ? { key: pair.key, cert: pair.cert } : { hideSTARTTLS: true }),
      size: MAX_SIZE,
      disabledCommands: ["AUTH"],
      authOptional: true,
      disableReverseLookup: true,
      logger: false,
      onConnect: (_session, cb) => cb(this.#draining || ctx.draining() ? smtpError(421, "4.3.2 Service shutting down, try another server") : undefined),
      onMailFrom: (_address, _session, cb) => cb(),
      onRcptTo: (address, _session, cb) => {
        const plan = ctx.plan();
        if (!plan) return cb(smtpError(451, "4.3.0 Not ready, try again later"));
        if (!acceptsRecipient(plan, address.address)) {
          this.#metrics.inbound.inc({ kind: "refused" });
          return cb(smtpError(550, "5.7.1 Relaying denied"));
        }
        cb();
      },
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
    });
    this.#server.on("error", (e) => this.#log.warn("inbound smtp error", { error: e }));
    // The MX of the return-path domains faces the whole Internet: the same connection limits and
    // deadlines as submission (relay/README.md "Security"), with smtp-server's early-talker pause.
    const events = guardCounter(ctx.registry);
    this.#guard = guardConnections(this.#server, {
      limits: limitsFromConfig(ctx.config), earlyTalkerDelay: true, log: this.#log,
      onEvent: (reason) => events.inc({ listener: "inbound", reason }),
    });
    const host = this.#o.host ?? ctx.config.MAILFLEET_LISTEN_ADDRESS;
    await new Promise<void>((resolve, reject) => {
      this.#server!.once("error", reject);
      this.#server!.listen(port, host, () => {
        this.#server!.off("error", reject);
        resolve();
      });
    });
    this.#certs.start();
    this.#log.info("inbound listening", { host, port });
  }

  #onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      if (stream.sizeExceeded) return cb(smtpError(552, "5.3.4 Message too big"));
      const raw = Buffer.concat(chunks);
      const rcpts = session.envelope.rcptTo.map((r) => r.address);
      processInbound(raw, rcpts, {
        js: this.#ctx.js,
        plan: () => this.#ctx.plan(),
        router: this.#router,
        ...(this.#suppressor ? { suppressor: this.#suppressor } : {}),
        metrics: this.#metrics,
        log: this.#log,
        now: () => this.#ctx.clock.now(),
      }).then(
        (r) => {
          this.#metrics.inbound.inc({ kind: r.kind });
          this.#log.info("inbound report", { kind: r.kind, events: r.events });
          cb(null, "2.6.0 Report received");
        },
        (err: Error) => {
          // A report that cannot be parsed will not parse next time either: take it and log.
          if (err instanceof UnreadableReport || /classifyDsn|parseArf|not a delivery status|not an ARF|feedback report/.test(err.message)) {
            this.#metrics.inbound.inc({ kind: "other" });
            this.#log.warn("inbound report not understood; dropped", { error: err });
            return cb(null, "2.6.0 Received");
          }
          this.#log.warn("inbound report not stored; the sender will retry", { error: err });
          cb(smtpError(451, "4.3.0 Temporary failure, try again later"));
        },
      );
    });
  }

  quiesce(): void {
    this.#draining = true;
  }

  async stop(): Promise<void> {
    this.#draining = true;
    this.#certs?.stop();
    this.#guard?.stop();
    if (this.#server) await new Promise<void>((r) => this.#server!.close(() => r()));
  }
}
