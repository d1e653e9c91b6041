// Durable pull consumers on MF_QUEUE for the route step and the ready queues, shared by all the
// relays of a pool (each envelope goes to one of them). Created idempotently by whichever relay
// starts first; settings this module owns are brought up to date in place.
//
// AckWait is one minute: long enough for a normal transaction, and a relay working on a long one
// (a big message to a slow receiver) says so with working() every third of it. A relay killed
// mid-transaction leaves its envelopes unacked; NATS hands them to another relay (or to it after
// restart) one AckWait later. MaxDeliver is unlimited (mail must not be dropped by the queue);
// MaxAckPending bounds what one pool can have in flight.
import { AckPolicy, DeliverPolicy, type ConsumerConfig, type JetStreamManager } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { STREAM_QUEUE } from "../queue/topology.ts";

export const ACK_WAIT_MS = 60_000;

export async function ensureQueueConsumer(jsm: JetStreamManager, durable: string, subject: string, ackWaitMs = ACK_WAIT_MS): Promise<void> {
  const want: Partial<ConsumerConfig> = {
    durable_name: durable,
    filter_subject: subject,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(ackWaitMs),
    max_ack_pending: 10_000,
    max_deliver: -1,
    max_waiting: 512,
  };
  try {
    const info = await jsm.consumers.info(STREAM_QUEUE, durable);
    const cfg = info.config;
    if (cfg.ack_wait !== want.ack_wait || cfg.max_ack_pending !== want.max_ack_pending) {
      await jsm.consumers.update(STREAM_QUEUE, durable, { ack_wait: want.ack_wait, max_ack_pending: want.max_ack_pending });
    }
    return;
  } catch (e) {
    if (!/consumer not found/i.test((e as Error).message)) throw e;
  }
  try {
    await jsm.consumers.add(STREAM_QUEUE, want);
  } catch (e) {
    // Another relay created it meanwhile.
    if (!/already (exists|in use)/i.test((e as Error).message)) throw e;
  }
}
