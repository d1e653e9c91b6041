// A raw SMTP client for tests that need byte-level control (smuggling sequences, pipelining,
// exact replies): write bytes, read whole replies (multi-line aware).
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";

export interface Reply {
  code: number;
  text: string;
  lines: string[];
}

export class RawSmtp {
  #socket: Socket | TLSSocket;
  #buf = "";
  #waiters: (() => void)[] = [];
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    this.#attach(socket);
  }

  #attach(s: Socket | TLSSocket): void {
    s.setEncoding("latin1");
    s.on("data", (d: string) => { this.#buf += d; this.#wake(); });
    s.on("close", () => { this.#closed = true; this.#wake(); });
    s.on("error", () => { this.#closed = true; this.#wake(); });
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  static async open(host: string, port: number, localAddress?: string): Promise<RawSmtp> {
    const s = netConnect({ host, port, ...(localAddress ? { localAddress } : {}) });
    await new Promise<void>((res, rej) => { s.once("connect", () => res()); s.once("error", rej); });
    return new RawSmtp(s);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes received and not yet read as a reply (a server that answered more than asked). */
  get pending(): string {
    return this.#buf;
  }

  /** Reads one complete reply. */
  async reply(timeoutMs = 30_000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines: string[] = [];
      let pos = 0;
      let done = false;
      for (;;) {
        const nl = this.#buf.indexOf("\r\n", pos);
        if (nl === -1) break;
        const line = this.#buf.slice(pos, nl);
        lines.push(line);
        pos = nl + 2;
        if (/^\d{3} /.test(line) || /^\d{3}$/.test(line)) { done = true; break; }
      }
      if (done) {
        this.#buf = this.#buf.slice(pos);
        const code = Number(lines[lines.length - 1]!.slice(0, 3));
        return { code, lines, text: lines.map((l) => l.slice(4)).join("\n") };
      }
      if (this.#closed) throw new Error(`connection closed; pending: ${JSON.stringify(this.#buf)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no SMTP reply within ${timeoutMs} ms; pending: ${JSON.stringify(this.#buf)}`);
      await new Promise<void>((r) => { const t = setTimeout(r, left); this.#waiters.push(() => { clearTimeout(t); r(); }); });
    }
  }

  write(data: string | Buffer): void {
    this.#socket.write(data);
  }

  async cmd(line: string): Promise<Reply> {
    this.write(line + "\r\n");
    return this.reply();
  }

  /**
   * STARTTLS and the TLS handshake. `injected`: bytes written in the same packet right after the
   * STARTTLS line (STARTTLS command injection, CVE-2011-0411): a correct server discards them.
   */
  async starttls(ca: string, servername = "relay.mailfleet.test", injected = ""): Promise<void> {
    this.write(`STARTTLS\r\n${injected}`);
    const r = await this.reply();
    if (r.code !== 220) throw new Error(`STARTTLS: ${r.code} ${r.text}`);
    if (this.#buf) throw new Error(`STARTTLS: the server sent ${JSON.stringify(this.#buf)} after 220 in plaintext`);
    const plain = this.#socket as Socket;
    plain.removeAllListeners("data");
    const t = tlsConnect({ socket: plain, ca, servername });
    await new Promise<void>((res, rej) => { t.once("secureConnect", () => res()); t.once("error", rej); });
    this.#socket = t;
    this.#buf = "";
    this.#attach(t);
  }

  /** MAIL, RCPTs, DATA and the message (dot-stuffed here); returns the final reply. */
  async send(from: string, rcpts: string[], message: string | Buffer): Promise<Reply> {
    const m = await this.cmd(`MAIL FROM:<${from}>`);
    if (m.code !== 250) return m;
    for (const r of rcpts) {
      const rr = await this.cmd(`RCPT TO:<${r}>`);
      if (rr.code !== 250) { await this.cmd("RSET"); return rr; }
    }
    const d = await this.cmd("DATA");
    if (d.code !== 354) return d;
    const text = Buffer.isBuffer(message) ? message.toString("latin1") : message;
    this.write(text.replace(/\r\n\./g, "\r\n..").replace(/^\./, "..") + (text.endsWith("\r\n") ? "" : "\r\n") + ".\r\n");
    return this.reply();
  }

  async quit(): Promise<void> {
    if (!this.#closed) {
      try { await this.cmd("QUIT"); } catch { /* closed */ }
    }
    this.#socket.destroy();
  }
}

export function message(o: { from: string; to?: string; subject?: string; messageId?: string; extra?: string; body?: string }): string {
  return [
    `From: ${o.from}`,
    `To: ${o.to ?? "rcpt@example.org"}`,
    `Subject: ${o.subject ?? "test"}`,
    ...(o.messageId ? [`Message-ID: ${o.messageId}`] : []),
    ...(o.extra ? [o.extra] : []),
    "",
    o.body ?? "Hello.\r\n",
  ].join("\r\n");
}

export function qidOf(r: Reply): string {
  const m = /queued as ([0-9a-z]{20})/.exec(r.text);
  if (!m) throw new Error(`no queue id in ${r.code} ${r.text}`);
  return m[1]!;
}
