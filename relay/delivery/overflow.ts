// Overflow: a provider's backlog moves to the pool's overflow pool when every lane of the pool for
// that provider is held by its warm-up quota (the shaper says so for the whole pool, not just this
// relay's lanes), as much of it as the lanes' daily quota left cannot take. Never when a lane is suspended, paused or blocked: that mail waits, since a
// provider that throttles one of our addresses must not get the same mail from another pool.
//
// The part is republished to the overflow pool's ready queue for the same provider (its relays
// send it from their warm addresses), marked with the pool it came from, then acked here. Mail
// overflows once: a part that already came from another pool is not moved again (no ping-pong
// between pools that overflow into each other); it waits for its pool's quota.
import type { Consumer, JetStreamClient } from "@nats-io/jetstream";
import { Counter, type Registry } from "prom-client";
import { decodeEnvelope, encodeEnvelope } from "../queue/envelope.ts";
import { subjects } from "../queue/topology.ts";
import type { Logger } from "../runtime/logger.ts";

const counters = new WeakMap<Registry, Counter<"pool" | "to" | "provider">>();

export function overflowCounter(registry: Registry): Counter<"pool" | "to" | "provider"> {
  let c = counters.get(registry);
  if (!c) {
    c = new Counter({
      name: "mailfleet_overflow_parts_total",
      help: "Parts moved to the overflow pool's ready queue (every lane of the pool quota-held for the provider)",
      labelNames: ["pool", "to", "provider"],
      registers: [registry],
    });
    counters.set(registry, c);
  }
  return c;
}

export interface OverflowMove {
  js: JetStreamClient;
  consumer: Consumer;
  from: string;
  to: string;
  provider: string;
  /** Parts moved per call at most. */
  max: number;
  registry: Registry;
  log: Logger;
}

/** Moves up to `max` parts; resolves to how many moved (0: the queue is empty for now). */
export async function moveToOverflow(o: OverflowMove): Promise<number> {
  const iter = await o.consumer.fetch({ max_messages: o.max, expires: 1000 });
  let moved = 0;
  for await (const m of iter) {
    let env;
    try {
      env = decodeEnvelope(m.data);
    } catch {
      m.term();
      continue;
    }
    if (env.overflowFrom) {
      // Already overflowed once: it waits for this pool's quota.
      m.nak(60_000);
      continue;
    }
    try {
      await o.js.publish(subjects.ready(o.to, o.provider), encodeEnvelope({ ...env, pool: o.to, overflowFrom: o.from }), { msgID: `ovf:${env.id}:${env.part}` });
      // Acked with the server's confirmation: the backlog this relay and the others read next
      // (stream info) no longer counts the part.
      await m.ackAck();
      moved++;
    } catch (err) {
      o.log.warn("overflow: part not moved; it stays", { qid: env.id, error: err as Error });
      m.nak(5000);
    }
  }
  if (moved) {
    overflowCounter(o.registry).inc({ pool: o.from, to: o.to, provider: o.provider }, moved);
    o.log.info("overflow: parts moved to the overflow pool", { to: o.to, provider: o.provider, parts: moved });
  }
  return moved;
}
