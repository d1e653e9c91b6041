// The relay's HTTP side, one port:
//   POST /v1/messages             injection API for applications (same rules as SMTP submission)
//   POST /v1/unsubscribe/<token>  RFC 8058 one-click unsubscribe (the URL in List-Unsubscribe)
//   GET  /metrics /healthz /readyz
//
// Authentication as on SMTP: HTTP Basic with a plan credential, accepted only over TLS, or a
// client address in a trusted network. TLS and plain HTTP share the port: the first byte of a
// connection tells a TLS ClientHello (0x16) from an HTTP request, so Prometheus and kubelet probes
// stay plain while applications use https with the submission certificate.
//
// POST /v1/messages, JSON:
//   { "envelope": { "from": "a@example.com", "to": ["b@example.org"] },
//     "headers": { "From": "...", "Subject": "...", "X-Campaign-ID": "..." },   optional
//     "subject": "...", "text": "...", "html": "...",                           or
//     "raw": "<base64 of a whole RFC 5322 message>" }
// 202 { "queueId": "...", "duplicate": false, "dropped": [], "copies": [] } once stored durably.
// Refusals: { "error": { "code": 550, "enhanced": "5.7.1", "message": "..." } } with 400 (syntax),
// 401 (no credential), 403 (domain not allowed), 413 (size), 422 (message content, suppressed),
// 429 (rate), 503 + Retry-After (queue or NATS unavailable).
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { createRequire } from "node:module";
import type { TLSSocket } from "node:tls";
import { z } from "zod";
import { AcceptError, isAddress, isRoutedRecipient, REPLIES, type Acceptor } from "../accept/acceptor.ts";
import { verifyUnsubscribeToken } from "../accept/unsubscribe.ts";
import { digest, publishEvent, type MailEvent } from "../delivery/events.ts";
import { networkDomains, networksFor } from "../plan/index.ts";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { CertWatcher } from "../submission/tls.ts";

const require = createRequire(import.meta.url);
const MailComposer = require("nodemailer/lib/mail-composer") as new (o: Record<string, unknown>) => { compile(): { build(cb: (e: Error | null, m: Buffer) => void): void } };

// Header fields become lines of the message: a name is RFC 5322 ftext (printable ASCII but the
// colon), a value has no CR, LF or NUL (nodemailer would quietly fold or mangle them; a clear
// refusal that names the header is better than a header the application did not write).
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]{1,76}$/;
const oneLine = z.string().max(16_384).refine((v) => !/[\r\n\0]/.test(v), "must not contain CR, LF or NUL");
const headerMap = z.record(z.string(), oneLine).superRefine((h, ctx) => {
  for (const name of Object.keys(h)) {
    if (!FIELD_NAME.test(name)) ctx.addIssue({ code: "custom", path: [name], message: "is not a header field name (printable ASCII without colon or space)" });
  }
});

const messageRequest = z.object({
  envelope: z.object({ from: z.string(), to: z.array(z.string()).min(1).max(1000) }),
  headers: headerMap.optional(),
  subject: oneLine.optional(),
  text: z.string().optional(),
  html: z.string().optional(),
  raw: z.string().optional(),
}).refine((m) => m.raw !== undefined || m.text !== undefined || m.html !== undefined, { message: "one of raw, text or html is required", path: ["text"] });

function statusOf(e: AcceptError): number {
  if (e.code === 530) return 401;
  if (e.code === 552) return 413;
  if (e.code === 450 && e.enhanced === "4.7.1") return 429;
  if (e.code >= 400 && e.code < 500) return 503;
  if (e.code === 501) return 400;
  if (e.enhanced === "5.7.1" && /suppressed/i.test(e.message)) return 422;
  if (e.enhanced.startsWith("5.7.")) return 403;
  return 422;
}

function build(o: Record<string, unknown>): Promise<Buffer> {
  return new Promise((resolve, reject) => new MailComposer(o).compile().build((e, m) => (e ? reject(e) : resolve(m))));
}

export class HttpServer implements Component {
  readonly name = "http";
  readonly #acceptor: Acceptor;
  readonly #o: { host?: string; port?: number };
  #ctx!: RelayContext;
  #log!: Logger;
  #net!: NetServer;
  #http!: Server;
  #https: HttpsServer | undefined;
  #certs!: CertWatcher;
  #draining = false;
  /** Open connections (raw until handed to the HTTP or HTTPS server, then the socket it uses). */
  readonly #conns = new Set<Socket>();
  /** Connections with a request in progress. */
  readonly #busy = new Set<Socket>();
  port = 0;

  constructor(acceptor: Acceptor, o: { host?: string; port?: number } = {}) {
    this.#acceptor = acceptor;
    this.#o = o;
  }

  async start(ctx: RelayContext): Promise<void> {
    this.#ctx = ctx;
    this.#log = ctx.log.child("http");
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      const conn = req.socket;
      this.#busy.add(conn);
      res.once("close", () => {
        this.#busy.delete(conn);
        if (this.#draining) conn.end();
      });
      this.#handle(req, res).catch((e) => {
        this.#log.error("http handler failed", { error: e, path: req.url?.split("?")[0] });
        if (!res.headersSent) this.#json(res, 500, { error: { message: "internal error" } });
        else res.destroy();
      });
    };
    this.#http = createHttpServer({ keepAliveTimeout: 60_000 }, handler);
    this.#certs = new CertWatcher(ctx.config.MAILFLEET_TLS_DIR, this.#log, (pair) => this.#https?.setSecureContext(pair));
    const pair = this.#certs.load();
    if (pair) this.#https = createHttpsServer({ key: pair.key, cert: pair.cert, keepAliveTimeout: 60_000 }, handler);
    const track = (c: Socket) => {
      this.#conns.add(c);
      c.once("close", () => { this.#conns.delete(c); this.#busy.delete(c); });
    };
    this.#https?.on("secureConnection", (tls: Socket) => track(tls));
    this.#net = createNetServer({ pauseOnConnect: false }, (socket: Socket) => {
      track(socket);
      socket.once("readable", () => {
        const first = socket.read(1) as Buffer | null;
        if (!first) return socket.destroy();
        socket.unshift(first);
        const tls = first[0] === 0x16 && this.#https;
        // A TLS connection's requests come on the TLSSocket wrapping this one: track that instead.
        if (tls) this.#conns.delete(socket);
        (tls ? this.#https! : this.#http).emit("connection", socket);
      });
      socket.on("error", () => socket.destroy());
    });
    const host = this.#o.host ?? ctx.config.MAILFLEET_LISTEN_ADDRESS;
    const port = this.#o.port ?? ctx.config.MAILFLEET_HTTP_PORT;
    await new Promise<void>((resolve, reject) => {
      this.#net.once("error", reject);
      this.#net.listen(port, host, () => { this.#net.off("error", reject); resolve(); });
    });
    const addr = this.#net.address();
    this.port = typeof addr === "object" && addr ? addr.port : port;
    this.#certs.start();
    this.#log.info("http listening", { host, port: this.port, tls: Boolean(pair) });
  }

  quiesce(): void {
    this.#draining = true;
  }

  async stop(): Promise<void> {
    this.#draining = true;
    this.#certs?.stop();
    // Stop accepting, and close idle connections (keep-alive ones of Prometheus, probes and API
    // clients; ones that never sent a byte): net.Server#close waits for every connection, which
    // would last their keep-alive timeout (60 s), past the Pod's grace period. The HTTP servers'
    // own closeIdleConnections() cannot help: they never listen, so they track no connections.
    // Requests in progress finish; their connections are closed when the response is done.
    const closed = new Promise<void>((r) => this.#net ? this.#net.close(() => r()) : r());
    const closeIdle = () => { for (const c of this.#conns) if (!this.#busy.has(c)) c.destroy(); };
    closeIdle();
    const timer = setInterval(closeIdle, 100);
    try { await closed; } finally { clearInterval(timer); }
  }

  #json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
    res.end(text);
  }

  async #body(req: IncomingMessage, limit: number): Promise<Buffer | null> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > limit) return null;
      chunks.push(c);
    }
    return Buffer.concat(chunks);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    if (req.method === "GET" && path === "/healthz") return this.#json(res, 200, { ok: true });
    if (req.method === "GET" && path === "/readyz") {
      const plan = Boolean(this.#ctx.plan());
      const nats = this.#ctx.natsConnected();
      const ok = plan && nats && !this.#draining;
      return this.#json(res, ok ? 200 : 503, { ok, plan, nats, draining: this.#draining });
    }
    if (req.method === "GET" && path === "/metrics") {
      const text = await this.#ctx.registry.metrics();
      res.writeHead(200, { "content-type": this.#ctx.registry.contentType });
      return void res.end(text);
    }
    if (path.startsWith("/v1/unsubscribe/")) return this.#unsubscribe(req, res, path.slice("/v1/unsubscribe/".length));
    if (path === "/v1/messages") {
      if (req.method !== "POST") return this.#json(res, 405, { error: { message: "use POST" } }, { allow: "POST" });
      return this.#messages(req, res);
    }
    return this.#json(res, 404, { error: { message: "not found" } });
  }

  #refuse(res: ServerResponse, e: AcceptError, count = true): void {
    if (count) this.#acceptor.rejected(e);
    const status = statusOf(e);
    this.#json(res, status, { error: { code: e.code, enhanced: e.enhanced, message: e.message } }, status === 503 || status === 429 ? { "retry-after": "30" } : {});
  }

  /** Who is calling: a credential (Basic, over TLS only) or a trusted network. */
  async #identity(req: IncomingMessage): Promise<{ submitter: string; allowed: ReadonlySet<string> } | AcceptError> {
    const plan = this.#ctx.plan();
    if (!plan) return REPLIES.notReady();
    const ip = req.socket.remoteAddress ?? "";
    const authz = req.headers.authorization;
    if (authz) {
      if (!(req.socket as TLSSocket).encrypted) return new AcceptError(530, "5.7.0", "Basic authentication only over TLS");
      const m = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(authz.trim());
      const decoded = m ? Buffer.from(m[1]!, "base64").toString("utf8") : "";
      const colon = decoded.indexOf(":");
      const username = colon > 0 ? decoded.slice(0, colon) : "";
      // Throttled per client address like SMTP AUTH (relay/submission/auth.ts).
      const { user, failures, waitedMs } = await this.#acceptor.auth.check(ip, plan, username, decoded.slice(colon + 1));
      if (!user) {
        this.#log.warn("HTTP authentication failed", { username: username.slice(0, 128), ip, failures, waitedMs });
        return new AcceptError(530, "5.7.8", "Authentication credentials invalid");
      }
      return { submitter: `http:${user}`, allowed: plan.credentials.get(user)!.domains };
    }
    const nets = networksFor(plan, ip);
    if (nets.length === 0) return new AcceptError(530, "5.7.0", "Authentication required");
    return { submitter: `net:${nets[0]!.cidr}`, allowed: networkDomains(nets) };
  }

  async #messages(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#draining) return this.#refuse(res, new AcceptError(421, "4.3.2", "Service shutting down, try another server"));
    const id = await this.#identity(req);
    if (id instanceof AcceptError) return this.#refuse(res, id);
    const max = this.#acceptor.maxSize();
    // base64 and JSON escaping make the request larger than the message.
    const body = await this.#body(req, Math.ceil(max * 1.4) + 1024 * 1024);
    if (!body) return this.#refuse(res, REPLIES.tooBig(max));
    let parsed: z.infer<typeof messageRequest>;
    try {
      const r = messageRequest.safeParse(JSON.parse(body.toString("utf8")));
      if (!r.success) {
        const i = r.error.issues[0]!;
        return this.#refuse(res, new AcceptError(501, "5.5.4", `Bad request: ${i.path.join(".") || "body"}: ${i.message}`));
      }
      parsed = r.data;
    } catch {
      return this.#refuse(res, new AcceptError(501, "5.5.4", "Bad request: body is not JSON"));
    }
    const from = parsed.envelope.from;
    if (!isAddress(from)) return this.#refuse(res, REPLIES.badAddress("sender"));
    const bad = parsed.envelope.to.find((r) => !isAddress(r));
    if (bad !== undefined) return this.#refuse(res, REPLIES.badRecipient());
    if (parsed.envelope.to.some(isRoutedRecipient)) return this.#refuse(res, REPLIES.routedRecipient());
    try {
      const dp = this.#acceptor.senderDomain(id.allowed, from, "envelope");
      this.#acceptor.takeRate(id.submitter, dp);
    } catch (e) {
      if (e instanceof AcceptError) return this.#refuse(res, e);
      throw e;
    }
    let raw: Buffer;
    if (parsed.raw !== undefined) {
      raw = Buffer.from(parsed.raw, "base64");
    } else {
      const headers = { ...(parsed.headers ?? {}) };
      const take = (name: string) => {
        const k = Object.keys(headers).find((h) => h.toLowerCase() === name);
        if (!k) return undefined;
        const v = headers[k];
        delete headers[k];
        return v;
      };
      raw = await build({
        from: take("from") ?? from,
        to: take("to") ?? parsed.envelope.to,
        cc: take("cc"),
        subject: parsed.subject ?? take("subject"),
        messageId: take("message-id"),
        date: take("date"),
        text: parsed.text,
        html: parsed.html,
        headers,
      });
    }
    try {
      const r = await this.#acceptor.accept({
        submitter: id.submitter, allowedDomains: id.allowed, clientIp: req.socket.remoteAddress ?? "",
        mailFrom: from, rcpts: parsed.envelope.to, raw, source: "http",
      });
      this.#json(res, 202, { queueId: r.qid, duplicate: r.duplicate, dropped: r.dropped, copies: r.copies });
    } catch (e) {
      if (e instanceof AcceptError) return this.#refuse(res, e, false);
      throw e;
    }
  }

  /** RFC 8058: POST with body "List-Unsubscribe=One-Click"; no authentication, the token is it. */
  async #unsubscribe(req: IncomingMessage, res: ServerResponse, token: string): Promise<void> {
    if (req.method !== "POST") return this.#json(res, 405, { error: { message: "one-click unsubscribe is a POST (RFC 8058)" } }, { allow: "POST" });
    await this.#body(req, 4096);
    const who = verifyUnsubscribeToken(this.#acceptor.unsubscribeKeys(), decodeURIComponent(token));
    if (!who) return this.#json(res, 404, { error: { message: "unknown or invalid unsubscribe link" } });
    const dp = this.#ctx.plan()?.domains.get(who.domain);
    await this.#acceptor.suppressions.add({
      scope: { domain: who.domain }, address: who.rcpt, reason: "unsubscribe",
      ttlMs: dp?.suppression.unsubscribeTtlMs ?? 0, detail: "one-click",
    });
    this.#log.info("unsubscribed", { domain: who.domain, qid: who.qid });
    if (dp) {
      const time = new Date(this.#ctx.clock.now()).toISOString();
      const e: MailEvent = { type: "unsubscribed", qid: who.qid ?? "", part: 0, pool: dp.pool, domain: who.domain, rcpts: [who.rcpt], attempts: 0, time, scope: "domain", feedbackType: "one-click" };
      publishEvent(this.#ctx.js, e, `unsub:${who.qid ?? ""}:${digest(who.domain, who.rcpt)}`).catch((err) => this.#log.warn("event not published", { error: err }));
    }
    this.#json(res, 200, { ok: true });
  }
}
