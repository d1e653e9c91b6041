// Acceptance building blocks, pure: line-ending normalisation (SMTP smuggling), the fast relaxed
// body canonicalisation checked against mailauth's, the relay's header fields, unsubscribe tokens,
// the submission rate limiter, plan decoding and trusted-network matching.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { createRequire } from "node:module";
import { gzipSync } from "node:zlib";
import { describe, it } from "node:test";
import fc from "fast-check";
import { PLAN_SCHEMA, DEFAULT_DELIVERY, type Plan } from "../../api/plan.ts";
import { normalizeLineEndings, splitMessage } from "../../relay/accept/normalize.ts";
import { domainSigner, relaxedBody, relaxedBodyHash, secretKeySource } from "../../relay/accept/dkim.ts";
import { composeHeader, feedbackId } from "../../relay/accept/compose.ts";
import { parseHeaders } from "../../relay/accept/mailauth.ts";
import { unsubscribeToken, verifyUnsubscribeToken } from "../../relay/accept/unsubscribe.ts";
import { RateLimiter } from "../../relay/accept/rate.ts";
import { isAddress } from "../../relay/accept/acceptor.ts";
import { decodePlanValue } from "../../relay/plan/decode.ts";
import { buildIndex, networksFor, networkDomains } from "../../relay/plan/index.ts";
import { suppressionKey } from "../../relay/suppression/index.ts";
import { desiredStreams } from "../../relay/queue/streams.ts";

const require = createRequire(import.meta.url);
const { dkimBody } = require("mailauth/lib/dkim/body/index.js") as { dkimBody(c: string, a: string, l: false): { update(b: Buffer): void; digest(e: "base64"): string } };

const domain = {
  id: "mail/example.com", domain: "example.com", pool: "mail/pool-a", returnPathDomain: "bounces.example.com", verp: true, dkim: [],
  listUnsubscribe: { mode: "None" as const }, feedbackIdSender: null, notifySender: false,
  suppression: { onSubmit: "Refuse" as const, complaintTtlMs: 0, unsubscribeTtlMs: 0, hardBounceTtlMs: 0 }, submitRate: null, webhooks: [],
};

describe("normalizeLineEndings", () => {
  it("leaves CRLF text alone (same buffer)", () => {
    const b = Buffer.from("a\r\nb\r\n.\r\n");
    assert.equal(normalizeLineEndings(b), b);
  });
  it("turns bare LF and bare CR into CRLF, so smuggling sequences become ordinary lines", () => {
    assert.equal(normalizeLineEndings(Buffer.from("a\n.\r\nMAIL FROM:<x>\r\n")).toString(), "a\r\n.\r\nMAIL FROM:<x>\r\n");
    assert.equal(normalizeLineEndings(Buffer.from("a\r\n.\nb")).toString(), "a\r\n.\r\nb");
    assert.equal(normalizeLineEndings(Buffer.from("a\r.\rb")).toString(), "a\r\n.\r\nb");
    assert.equal(normalizeLineEndings(Buffer.from("\n\r\r\n")).toString(), "\r\n\r\n\r\n");
  });
  it("never leaves a bare CR or LF (property)", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(fc.constantFrom("\r", "\n", "\r\n", ".", "a"), { maxLength: 50 }), (bytes, parts) => {
      const out = normalizeLineEndings(Buffer.concat([Buffer.from(bytes), Buffer.from(parts.join(""))]));
      for (let i = 0; i < out.length; i++) {
        if (out[i] === 0x0d) assert.equal(out[i + 1], 0x0a);
        if (out[i] === 0x0a) assert.equal(out[i - 1], 0x0d);
      }
    }));
  });
  it("splits header and body at the first blank line", () => {
    const { header, body } = splitMessage(Buffer.from("From: a@b.c\r\nSubject: x\r\n\r\nbody\r\n\r\nmore"));
    assert.equal(header.toString(), "From: a@b.c\r\nSubject: x\r\n");
    assert.equal(body.toString(), "body\r\n\r\nmore");
    assert.equal(splitMessage(Buffer.from("From: a@b.c")).header.toString(), "From: a@b.c\r\n");
  });
});

describe("relaxed body canonicalisation", () => {
  it("matches mailauth's hash for random CRLF bodies", () => {
    const line = fc.array(fc.constantFrom("a", "b", " ", "\t", "  ", "x y", "é", "."), { maxLength: 12 }).map((p) => p.join(""));
    fc.assert(fc.property(fc.array(line, { maxLength: 20 }), fc.boolean(), (lines, trailing) => {
      const body = Buffer.from(lines.join("\r\n") + (trailing ? "\r\n" : ""), "utf8");
      const h = dkimBody("relaxed", "sha256", false);
      h.update(body);
      assert.equal(relaxedBodyHash(body), h.digest("base64"), JSON.stringify(body.toString()));
    }), { numRuns: 500 });
  });
  it("handles the RFC 6376 example and empty bodies", () => {
    assert.equal(relaxedBody(Buffer.from(" C \r\nD \t E\r\n\r\n\r\n")).toString(), " C\r\nD E\r\n");
    assert.equal(relaxedBody(Buffer.from("\r\n\r\n")).length, 0);
    assert.equal(relaxedBody(Buffer.alloc(0)).length, 0);
  });
  it("finishes on a long run of line breaks (a quadratic regex would not, within the test timeout)", () => {
    const body = Buffer.from("x" + "\r\n".repeat(500_000) + "y");
    assert.equal(relaxedBody(body).length, 1 + 2 * 500_000 + 1 + 2);
  });
});

describe("composeHeader", () => {
  const header = (s: string) => parseHeaders(Buffer.from(s));
  it("adds Message-ID and Date when missing, keeps them when present", () => {
    const c = composeHeader({ parsed: header("From: a@example.com\r\nTo: b@x.org\r\n"), domain, qid: "q".repeat(20), nowMs: 0 });
    const text = c.header.toString();
    assert.match(text, /^Message-ID: <q{20}\.0@example\.com>\r\n/m);
    assert.match(text, /^Date: Thu, 01 Jan 1970 00:00:00 \+0000\r\n/m);
    const k = composeHeader({ parsed: header("From: a@example.com\r\nMessage-ID: <m@x>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"), domain, qid: "q".repeat(20), nowMs: 0 });
    assert.equal(k.messageId, "<m@x>");
    assert.doesNotMatch(k.header.toString(), /Message-ID: <q/);
  });
  it("builds Feedback-ID from the submission headers and removes them, Bcc and Return-Path", () => {
    const parsed = header("From: a@example.com\r\nBcc: secret@x.org\r\nReturn-Path: <x@y>\r\nX-Campaign-ID: spring:sale\r\nX-Customer-ID: c42\r\nX-Mail-Type: promo\r\nFeedback-ID: theirs\r\n");
    assert.equal(feedbackId(parsed, "mfleet1"), "springsale:c42:promo:mfleet1");
    const c = composeHeader({ parsed, domain: { ...domain, feedbackIdSender: "mfleet1" }, qid: "q".repeat(20), nowMs: 0 });
    const text = c.header.toString();
    assert.match(text, /^Feedback-ID: springsale:c42:promo:mfleet1\r\n/m);
    assert.doesNotMatch(text, /Bcc|Return-Path|X-Campaign|X-Customer|X-Mail-Type|theirs/i);
    // Without a sender id, no Feedback-ID is added and the client's stays.
    assert.match(composeHeader({ parsed, domain, qid: "q".repeat(20), nowMs: 0 }).header.toString(), /Feedback-ID: theirs/);
  });
  it("OneClick: a per-recipient https URL with a token, List-Unsubscribe-Post, replacing the client's", () => {
    const key = Buffer.from("k".repeat(32));
    const d = { ...domain, listUnsubscribe: { mode: "OneClick" as const, url: "https://u.example.com/u/{token}", mailto: "unsub@example.com" } };
    const c = composeHeader({ parsed: header("From: a@example.com\r\nList-Unsubscribe: <mailto:old@x>\r\n"), domain: d, qid: "q".repeat(20), nowMs: 0, rcpt: "Bob@X.org", unsubscribeKey: key });
    const text = c.header.toString();
    assert.ok(c.oneClick);
    assert.doesNotMatch(text, /old@x/);
    assert.match(text, /^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/m);
    const m = /^List-Unsubscribe: <https:\/\/u\.example\.com\/u\/([A-Za-z0-9_-]+)>, <mailto:unsub@example\.com\?subject=unsubscribe>\r\n/m.exec(text);
    assert.ok(m, text);
    assert.deepEqual(verifyUnsubscribeToken([key], m[1]!), { domain: "example.com", rcpt: "bob@x.org", qid: "q".repeat(20) });
  });
  it("Mailto mode: only the mailto form, no Post field", () => {
    const d = { ...domain, listUnsubscribe: { mode: "Mailto" as const, mailto: "unsub@example.com" } };
    const text = composeHeader({ parsed: header("From: a@example.com\r\n"), domain: d, qid: "q".repeat(20), nowMs: 0 }).header.toString();
    assert.match(text, /^List-Unsubscribe: <mailto:unsub@example\.com\?subject=unsubscribe>\r\n/m);
    assert.doesNotMatch(text, /List-Unsubscribe-Post/);
  });
});

describe("unsubscribe tokens", () => {
  const key = Buffer.from("one key"), old = Buffer.from("old key");
  it("round-trips, hides the address, and refuses tampering and unknown keys", () => {
    const t = unsubscribeToken(key, "Example.com", "Ann@X.org");
    assert.doesNotMatch(Buffer.from(t, "base64url").toString("latin1"), /ann@x\.org/i);
    assert.deepEqual(verifyUnsubscribeToken([old, key], t), { domain: "example.com", rcpt: "ann@x.org" });
    assert.equal(verifyUnsubscribeToken([old], t), null);
    const bad = Buffer.from(t, "base64url");
    bad[20] = bad[20]! ^ 1;
    assert.equal(verifyUnsubscribeToken([key], bad.toString("base64url")), null);
    assert.equal(verifyUnsubscribeToken([key], "!!"), null);
  });
});

describe("RateLimiter (GCRA)", () => {
  it("allows count per period with a burst of count, then refuses until time passes", () => {
    const r = new RateLimiter();
    for (let i = 0; i < 5; i++) assert.ok(r.take("k", 5, 1000, 0), `take ${i}`);
    assert.equal(r.take("k", 5, 1000, 0), false);
    assert.ok(r.take("other", 5, 1000, 0));
    assert.ok(r.take("k", 5, 1000, 200));
    assert.equal(r.take("k", 5, 1000, 200), false);
  });
});

describe("addresses", () => {
  it("accepts mailboxes and refuses what is not one", () => {
    for (const a of ["a@example.com", "first.last+tag@sub.example.co.uk", "\"quoted name\"@example.com"]) assert.ok(isAddress(a), a);
    for (const a of ["", "a", "a@", "@b.c", "a b@c.d", "a@b", "<a@b.c>", "a@b..c", "a@-b.c"]) assert.equal(isAddress(a), false, a);
  });
  it("suppression keys are hashes, scoped", () => {
    const g = suppressionKey({ global: true }, "Ann@X.org");
    assert.match(g, /^h\.[0-9a-f]{64}$/);
    assert.equal(g, suppressionKey({ global: true }, "ann@x.org"));
    assert.match(suppressionKey({ domain: "example.com" }, "ann@x.org"), /^d\.[0-9a-f]{64}\.[0-9a-f]{64}$/);
  });
});

describe("plan decoding and indexes", () => {
  const plan: Plan = {
    schema: PLAN_SCHEMA, revision: "r1", generatedAt: "2026-01-01T00:00:00Z", providers: [], pools: [], domains: [domain],
    submitters: { credentials: [], networks: [{ cidr: "10.1.0.0/16", domains: ["example.com"] }, { cidr: "10.1.2.0/24", domains: ["b.example"] }, { cidr: "::1/128", domains: ["c.example"] }] },
    delivery: DEFAULT_DELIVERY,
  };
  it("reads gzip and plain JSON, names the field of a bad plan", () => {
    assert.equal(decodePlanValue(gzipSync(JSON.stringify(plan))).revision, "r1");
    assert.equal(decodePlanValue(Buffer.from(JSON.stringify(plan))).revision, "r1");
    assert.throws(() => decodePlanValue(Buffer.from("{not json")), /not JSON/);
    assert.throws(() => decodePlanValue(Buffer.from(JSON.stringify({ ...plan, domains: "x" }))), /domains/);
    assert.throws(() => decodePlanValue(Buffer.alloc(0)), /empty/);
  });
  it("matches trusted networks (IPv4-mapped too), most specific first", () => {
    const idx = buildIndex(plan, "mail/pool-a");
    assert.deepEqual(networksFor(idx, "10.1.2.3").map((n) => n.cidr), ["10.1.2.0/24", "10.1.0.0/16"]);
    assert.deepEqual([...networkDomains(networksFor(idx, "::ffff:10.1.2.3"))].sort(), ["b.example", "example.com"]);
    assert.deepEqual(networksFor(idx, "10.2.0.1"), []);
    assert.deepEqual(networksFor(idx, "::1").map((n) => n.cidr), ["::1/128"]);
    assert.deepEqual(networksFor(idx, "garbage"), []);
  });
});

describe("stream settings", () => {
  it("body max age = expiry + 1 day, duplicate window = idempotency window, atomic and schedules when supported", () => {
    const [body, queue, events] = desiredStreams({ replicas: 3, delivery: { expiryMs: 86_400_000, idempotencyWindowMs: 600_000 }, features: { version: "2.12.0", msgTtl: true, atomicBatch: true, msgSchedules: true } });
    assert.equal(body!.max_age, 2 * 86_400_000 * 1e6);
    assert.equal(body!.duplicate_window, 600_000 * 1e6);
    assert.equal(body!.num_replicas, 3);
    assert.equal(queue!.retention, "workqueue");
    assert.equal(queue!.allow_msg_schedules, true);
    assert.equal(events!.max_age, 7 * 86_400_000 * 1e6);
    const old = desiredStreams({ replicas: 1, features: { version: "2.10.0", msgTtl: false, atomicBatch: false, msgSchedules: false } });
    assert.equal(old[0]!.allow_atomic, undefined);
    assert.equal(old[1]!.allow_msg_schedules, undefined);
  });
});

describe("secretKeySource: DKIM keys from a Secret's data (the CLI's DSNs)", () => {
  const pem = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  const data = { "dkim-a.key": Buffer.from(pem).toString("base64"), "bad.key": Buffer.from("not a key").toString("base64") };
  const domain = (keyName: string) => ({ domain: "example.com", dkim: [{ selector: "s1", algorithm: "ed25519-sha256", keyName }] }) as never;

  it("parses a key once, and names a key that is missing or unreadable", async () => {
    const src = secretKeySource(data);
    assert.ok(src.get("dkim-a.key"));
    assert.equal(src.get("dkim-a.key"), src.get("dkim-a.key"), "parsed once");
    assert.equal(src.get("bad.key"), undefined);
    assert.equal(src.get("nope.key"), undefined);
    const sign = domainSigner(src, () => Date.parse("2026-11-28T00:00:00Z"));
    const signed = (await sign(Buffer.from("From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"), domain("dkim-a.key"))).toString();
    assert.match(signed, /^DKIM-Signature: [^]*d=example\.com[^]*s=s1/);
    await assert.rejects(sign(Buffer.from("From: a@example.com\r\n\r\nx\r\n"), domain("bad.key")), /DKIM key bad\.key is not in the pool's Secret/);
  });
});
