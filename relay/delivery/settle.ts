// After a transaction the receiver answered, its part must not be tried again: the outcome is
// stored and the ack confirmed, each asked again while NATS cannot take it. When a NATS server
// dies, the streams and consumers it led elect new leaders, which takes seconds; an ack sent
// meanwhile is dropped without a word, and the part came back after AckWait and went out twice
// (the faults e2e once counted 34 such repeats after the queue's leader was killed). With this,
// only a relay that dies in that window sends a part twice (at-least-once, rare).
//
// nats.js confirms an ack once (JsMsg.ackAck); asking again is a request on the message's reply
// subject, which is what ackAck sends. Written here because the client has no retrying form.
import type { NatsConnection } from "@nats-io/transport-node";
import type { JsMsg } from "@nats-io/jetstream";

const ACK = new TextEncoder().encode("+ACK");
const realSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)).unref());

export interface RetryOptions {
  /** Give up (throw the last error) once this long has passed since the first try. */
  forMs: number;
  /** Called after each failed try that will be tried again (n = 1 for the first). */
  onRetry?: (err: unknown, n: number) => void;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Runs `step` until it resolves, waiting 250 ms between tries, doubling to 2 s, for at most `forMs`; then throws its last error. */
export async function retrying<T>(step: () => Promise<T>, o: RetryOptions): Promise<T> {
  const now = o.now ?? Date.now;
  const sleep = o.sleep ?? realSleep;
  const start = now();
  let delay = 250;
  for (let n = 1; ; n++) {
    try {
      return await step();
    } catch (err) {
      if (now() - start + delay > o.forMs) throw err;
      o.onRetry?.(err, n);
      await sleep(delay);
      delay = Math.min(2000, delay * 2);
    }
  }
}

/**
 * Acks `m` and waits until the consumer's leader confirms it, asking again (each time waiting at
 * most `timeoutMs` for the answer) for at most `forMs`. False when it never confirmed: the part
 * may then come back after AckWait.
 */
export async function confirmAck(nc: NatsConnection, m: JsMsg, o: { forMs: number; timeoutMs?: number }): Promise<boolean> {
  const timeout = o.timeoutMs ?? 2000;
  // The JsMsg interface does not declare the reply subject; its implementation has it.
  const reply = (m as JsMsg & { reply?: string }).reply;
  const ask = async () => {
    // The first ask goes through the message (so it counts as acked there: no more progress acks).
    if (!(await m.ackAck({ timeout })) && reply) await nc.request(reply, ACK, { timeout });
  };
  try {
    await retrying(ask, { forMs: o.forMs });
    return true;
  } catch {
    return false;
  }
}
