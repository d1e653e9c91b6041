// Reading stream messages one by one through the JetStream API (`STREAM.MSG.GET` with
// next_by_subj), answered by the stream leader, so what is read is what the stream holds now.
//
// Why not a consumer: MF_QUEUE is a WorkQueue stream, which takes only explicit-ack consumers whose
// filters do not overlap the relays' (nats-server refuses an ordered consumer there: "consumer in
// pull mode requires explicit ack policy on workqueue stream"), and an ack would delete the mail.
// Why not direct get batches: MF_QUEUE does not set allow_direct. One request per message is
// bounded by the callers (--max-scan).
import type { NatsConnection } from "@nats-io/transport-node";

export interface RawMsg {
  seq: number;
  subject: string;
  /** ms since epoch: when the stream stored it. */
  time: number;
  data: Uint8Array;
  headers: Record<string, string>;
}

interface MsgGetReply {
  message?: { subject: string; seq: number; hdrs?: string; data?: string; time: string };
  error?: { code: number; err_code?: number; description: string };
}

/** NATS header block ("NATS/1.0\r\nKey: Value\r\n...") to a map (last value wins). */
export function parseHeaders(b64: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!b64) return out;
  const text = Buffer.from(b64, "base64").toString("utf8");
  for (const line of text.split("\r\n").slice(1)) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

/** The first message at or after `seq` whose subject matches `subject` (wildcards allowed), or null. */
export async function nextMessage(nc: NatsConnection, stream: string, seq: number, subject: string): Promise<RawMsg | null> {
  const r = await nc.request(`$JS.API.STREAM.MSG.GET.${stream}`, JSON.stringify({ seq, next_by_subj: subject }), { timeout: 10_000 });
  const reply = r.json<MsgGetReply>();
  if (reply.error) {
    if (reply.error.code === 404) return null;
    throw new Error(`${stream}: ${reply.error.description}`);
  }
  const m = reply.message!;
  return {
    seq: m.seq,
    subject: m.subject,
    time: Date.parse(m.time),
    data: m.data ? Buffer.from(m.data, "base64") : new Uint8Array(),
    headers: parseHeaders(m.hdrs),
  };
}

/** One message by sequence, or null when it is gone. */
export async function messageAt(nc: NatsConnection, stream: string, seq: number): Promise<RawMsg | null> {
  const r = await nc.request(`$JS.API.STREAM.MSG.GET.${stream}`, JSON.stringify({ seq }), { timeout: 10_000 });
  const reply = r.json<MsgGetReply>();
  if (reply.error) {
    if (reply.error.code === 404) return null;
    throw new Error(`${stream}: ${reply.error.description}`);
  }
  const m = reply.message!;
  return { seq: m.seq, subject: m.subject, time: Date.parse(m.time), data: m.data ? Buffer.from(m.data, "base64") : new Uint8Array(), headers: parseHeaders(m.hdrs) };
}

/**
 * Messages matching `subject` in stream order from `fromSeq`, at most `max` of them. Stops early
 * when `stop` says so.
 */
export async function* scan(nc: NatsConnection, stream: string, subject: string, o: { fromSeq?: number; max: number }): AsyncGenerator<RawMsg> {
  let seq = o.fromSeq ?? 1;
  for (let n = 0; n < o.max; n++) {
    const m = await nextMessage(nc, stream, seq, subject);
    if (!m) return;
    yield m;
    seq = m.seq + 1;
  }
}
