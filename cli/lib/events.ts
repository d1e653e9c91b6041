// Reading outcome events (MF_EVENTS, a Limits stream: an ordered consumer reads it without touching
// what the webhooks' durable consumers see).
import { DeliverPolicy } from "@nats-io/jetstream";
import { STREAM_EVENTS } from "../../relay/queue/topology.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";
import type { NatsHandle } from "./fleet.ts";

export type StoredEvent = MailEvent & { seq: number };

export interface EventScan {
  events: StoredEvent[];
  scanned: number;
  truncated: boolean;
  /** MF_EVENTS does not exist (no relay has run). */
  missing?: boolean;
}

/** Events on `filter` stored since `since` (ms), in order, keeping those `match` accepts; at most `max` read. */
export async function readEvents(h: NatsHandle, o: { filter: string; since: number; max: number; match: (e: MailEvent) => boolean }): Promise<EventScan> {
  let c;
  try {
    c = await h.js.consumers.get(STREAM_EVENTS, {
      filter_subjects: o.filter,
      deliver_policy: DeliverPolicy.StartTime,
      opt_start_time: new Date(o.since).toISOString(),
    });
  } catch (e) {
    if (/stream not found/i.test((e as Error).message)) return { events: [], scanned: 0, truncated: false, missing: true };
    throw e;
  }
  const events: StoredEvent[] = [];
  let scanned = 0;
  let truncated = false;
  try {
    outer: for (;;) {
      const want = Math.min(256, o.max - scanned);
      if (want <= 0) {
        truncated = true;
        break;
      }
      const batch = await c.fetch({ max_messages: want, expires: 2000 });
      let got = 0;
      for await (const m of batch) {
        got++;
        scanned++;
        try {
          const e = m.json<MailEvent>();
          if (o.match(e)) events.push({ ...e, seq: m.seq });
        } catch {
          /* not an event: skip */
        }
        if (m.info.pending === 0) break outer;
        if (scanned >= o.max) {
          truncated = m.info.pending > 0;
          break outer;
        }
      }
      if (got === 0) break;
    }
  } finally {
    await c.delete().catch(() => {});
  }
  return { events, scanned, truncated };
}
