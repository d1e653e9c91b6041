// The envelope: what MF_QUEUE carries for each accepted message (before routing) or for each part
// of it (after routing: one recipient domain, one provider). The message itself is stored once in
// MF_BODY (or the object store when large) and referenced. Versioned like the plan: additive
// changes only, parsed loosely, so relays of two versions can share the queue during a rollout.
import { randomBytes } from "node:crypto";
import { z } from "zod";

export const ENVELOPE_VERSION = 1;

export const bodyRef = z.union([
  z.object({ subject: z.string() }).loose(),
  z.object({ object: z.string() }).loose(),
]);
export type BodyRef = z.infer<typeof bodyRef>;

export const envelope = z.object({
  v: z.number().int(),
  /** Queue id: shared by every part of one accepted message; in the 250 reply and in VERP. */
  id: z.string(),
  /** 0 before routing; after routing, parts are numbered from 1. */
  part: z.number().int().min(0),
  pool: z.string(),
  /** The sending domain (From and DKIM d=). */
  domain: z.string(),
  /** The submitter's envelope sender, for DSNs. Empty for the null sender. */
  mailFrom: z.string(),
  /** The envelope sender used on delivery: the return-path domain, with VERP. */
  returnPath: z.string(),
  rcpts: z.array(z.string()).min(1),
  /** Set by routing. */
  rcptDomain: z.string().optional(),
  provider: z.string().optional(),
  mx: z.array(z.string()).optional(),
  body: bodyRef,
  size: z.number().int().min(0),
  messageId: z.string().optional(),
  /** auth:<username>, net:<cidr> or http:<username>: who submitted, for rate limits and logs. */
  submitter: z.string(),
  acceptedAt: z.number().int(),
  attempts: z.number().int().min(0),
  /** Earliest next attempt (ms since epoch); set on deferral. */
  notBefore: z.number().int().optional(),
  lastReply: z.string().optional(),
  lastClass: z.string().optional(),
  /** RFC 3461 DSN parameters from the submission. */
  dsn: z.object({
    envid: z.string().optional(),
    ret: z.enum(["FULL", "HDRS"]).optional(),
    notify: z.record(z.string(), z.array(z.string())).optional(),
  }).loose().optional(),
  /** Pool id this part overflowed from (warm-up quota spent there). */
  overflowFrom: z.string().optional(),
  /**
   * Part 0 only: recipient domains an earlier route step already published parts for (the others
   * failed DNS and wait for another try). Added by delivery; optional, so older relays ignore it.
   */
  routed: z.array(z.string()).optional(),
  /**
   * How many parts the message was split into, when one route step made them all (so a final
   * outcome of the only part may delete the body). Absent: unknown. Added by delivery; optional.
   */
  parts: z.number().int().min(1).optional(),
}).loose();
export type Envelope = z.infer<typeof envelope>;

export function encodeEnvelope(e: Envelope): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(e));
}

export function decodeEnvelope(data: Uint8Array): Envelope {
  return envelope.parse(JSON.parse(new TextDecoder().decode(data)));
}

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32, lower case

/** 20-character queue id (100 random bits, or bits of a hash for idempotent retries). */
export function newQueueId(bytes: Uint8Array = randomBytes(13)): string {
  let out = "";
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5 && out.length < 20) {
      out += ALPHABET[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  return out.padEnd(20, "0");
}

export const QUEUE_ID_RE = /^[0-9a-hjkmnp-tv-z]{20}$/;

/** VERP: the queue id in the return-path local part, so an asynchronous bounce maps back. */
export function verpAddress(qid: string, returnPathDomain: string): string {
  return `b-${qid}@${returnPathDomain}`;
}

export function parseVerp(address: string): string | null {
  const m = /^b-([0-9a-hjkmnp-tv-z]{20})@/i.exec(address.trim().replace(/^<|>$/g, ""));
  return m ? m[1]!.toLowerCase() : null;
}
