// A receiving MTA (smtp-server) that records when each transaction opens and which client (source
// address) opened it, and answers a chosen reply to a client from a chosen instant: what the shaper
// tests and benchmark need from a provider's MX (a 421 4.7.28 at a known time, per-lane arrival
// times to the millisecond). Postfix is the receiver where real anvil limits matter; this one is
// for exact timing, which Postfix's logs (one-second resolution) cannot give.
import { SMTPServer, type SMTPServerSession } from "smtp-server";

export interface Transaction {
  /** The client's address (the lane's source address). */
  client: string;
  /** MAIL FROM received (ms since epoch): when the client opened the transaction. */
  at: number;
  /** Accepted after DATA; false when refused (the reply given). */
  accepted: boolean;
  reply?: string;
}

export interface RecorderHandle {
  readonly transactions: Transaction[];
  /**
   * From now on, MAIL FROM from `client` gets `reply` (e.g. "421 4.7.28 ..."); null: accept again.
   * Returns the instant the switch took effect.
   */
  setReply(client: string, reply: string | null): number;
  /** Transactions (opened) by a client, in order. */
  of(client: string): Transaction[];
  connections(): number;
  stop(): Promise<void>;
}

export async function startRecorder(o: { addresses: string[]; port?: number }): Promise<RecorderHandle> {
  const transactions: Transaction[] = [];
  const replies = new Map<string, string>();
  let open = 0;
  const clientOf = (s: SMTPServerSession) => (s.remoteAddress ?? "").replace(/^::ffff:/, "");
  const make = () => new SMTPServer({
    disabledCommands: ["AUTH", "STARTTLS"],
    disableReverseLookup: true,
    logger: false,
    size: 10 * 1024 * 1024,
    onConnect(_s, cb) { open++; cb(); },
    onClose() { open--; },
    onMailFrom(_addr, session, cb) {
      const client = clientOf(session);
      const reply = replies.get(client);
      const t: Transaction = { client, at: Date.now(), accepted: false };
      transactions.push(t);
      (session as unknown as { mfTx: Transaction }).mfTx = t;
      if (reply) {
        t.reply = reply;
        const m = /^(\d{3})\s+(.*)$/.exec(reply);
        const err = new Error(m ? m[2] : reply) as Error & { responseCode: number };
        err.responseCode = m ? Number(m[1]) : 421;
        cb(err);
        return;
      }
      cb();
    },
    onRcptTo(_a, _s, cb) { cb(); },
    onData(stream, session, cb) {
      stream.on("data", () => {});
      stream.on("end", () => {
        const t = (session as unknown as { mfTx?: Transaction }).mfTx;
        if (t) t.accepted = true;
        cb(null, "250 2.0.0 Ok: queued");
      });
    },
  });
  const servers: SMTPServer[] = [];
  for (const address of o.addresses) {
    const s = make();
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.listen(o.port ?? 25, address, () => resolve());
    });
    s.on("error", () => {});
    servers.push(s);
  }
  return {
    transactions,
    setReply(client, reply) {
      if (reply === null) replies.delete(client);
      else replies.set(client, reply);
      return Date.now();
    },
    of: (client) => transactions.filter((t) => t.client === client),
    connections: () => open,
    stop: () => Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r())))).then(() => {}),
  };
}
