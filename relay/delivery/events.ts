// Outcome events on MF_EVENTS (`mf.ev.<pool>.<type>`): what webhooks, suppression tooling and the
// warm-up counters read. Events may carry recipients (they are the customer's record of what
// happened to their mail); metrics never do.
//
// Each event has a Nats-Msg-Id built from what identifies it (queue id, part, type, attempt), so
// a step repeated after a crash (before its ack) does not publish it twice.
import { createHash } from "node:crypto";
import type { JetStreamClient } from "@nats-io/jetstream";
import { subjects, type EventType } from "../queue/topology.ts";

export interface MailEvent {
  type: EventType;
  /** Queue id (the one in the submitter's 250 reply and in VERP). */
  qid: string;
  part: number;
  pool: string;
  /** Sending domain. */
  domain: string;
  /** Recipient domain. */
  rcptDomain?: string;
  provider?: string;
  /** Source address the attempt went out from. */
  source?: string;
  rcpts: string[];
  /** Reply class (relay/classify), or "delivered". */
  class?: string;
  /** The receiver's reply (or the local error's equivalent). */
  reply?: string;
  /** Delivery attempts made so far, this one included. */
  attempts: number;
  /** ISO 8601. */
  time: string;
  /**
   * The shaper's send slot the attempt spent (ISO 8601). Warm-up counts an attempt in the day of its
   * slot, as the shaper's quota did: a transaction that ends just after midnight is yesterday's.
   */
  slotAt?: string;
  mx?: string;
  tls?: boolean;
  /** Response rule that decided, when one did. */
  rule?: string;
  /** deferred: when the next try is due (ISO 8601). */
  retryAt?: string;
  /** Arrived later at the return-path domain (asynchronous bounce) instead of in the SMTP dialogue. */
  async?: boolean;
  /** complained: ARF Feedback-Type; unsubscribed/suppressed: the scope. */
  feedbackType?: string;
  scope?: string;
  messageId?: string;
  submitter?: string;
  acceptedAt?: string;
}

export function eventMsgId(e: Pick<MailEvent, "qid" | "part" | "type" | "attempts">, extra = ""): string {
  return `ev:${e.qid}:${e.part}:${e.type}:${e.attempts}${extra ? `:${extra}` : ""}`;
}

/** A short stable hash, for message ids of events not tied to an attempt (inbound reports). */
export function digest(...parts: string[]): string {
  return createHash("sha256").update(parts.join("\0")).digest("base64url").slice(0, 22);
}

export async function publishEvent(js: JetStreamClient, e: MailEvent, msgId = eventMsgId(e)): Promise<void> {
  await js.publish(subjects.event(e.pool, e.type), JSON.stringify(e), { msgID: msgId });
}
