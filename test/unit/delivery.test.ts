// Delivery decisions and formats: outcomes, DSN building (read back by the classifier's DSN
// parser), MTA-STS policies, inbound helpers, webhook signatures.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { buildDsn, dsnStatus, headerBlock } from "../../relay/delivery/dsn.ts";
import { decideOutcome, wantsDsn } from "../../relay/delivery/outcomes.ts";
import { retrying } from "../../relay/delivery/settle.ts";
import { classifyDsn } from "../../relay/classify/index.ts";
import { mxMatches, parsePolicy, parseStsTxt } from "../../relay/routing/mta-sts.ts";
import { sourceFromReceived, acceptsRecipient } from "../../relay/inbound/reports.ts";
import { sign, webhookDelayMs, consumerName } from "../../relay/webhooks/dispatcher.ts";
import { buildIndex } from "../../relay/plan/index.ts";
import { makePlan, domainPlan } from "../integration/delivery-harness.ts";
import type { Envelope } from "../../relay/queue/envelope.ts";
import type { RcptResult } from "../../relay/delivery/attempt.ts";

const env = (o: Partial<Envelope> = {}): Envelope => ({
  v: 1, id: "0123456789abcdefghjk", part: 1, pool: "mail/outbound", domain: "sender.test", mailFrom: "app@sender.test",
  returnPath: "b-0123456789abcdefghjk@bounces.sender.test", rcpts: ["a@x.test"], body: { subject: "mf.body.0123456789abcdefghjk" },
  size: 10, submitter: "net:x", acceptedAt: 0, attempts: 0, ...o,
});
const r = (rcpt: string, cls: RcptResult["class"], permanent: boolean, reply = "250 ok"): RcptResult => ({ rcpt, reply, code: reply.slice(0, 3), class: cls, permanent });
const policy = { expiryMs: 100_000, retryBaseMs: 1000, retryMaxMs: 4000 };

test("decideOutcome: delivered, bounced, deferred with a retry time, expired at the end", () => {
  const d = decideOutcome(env(), [r("a", "delivered", false), r("b", "invalid-recipient", true, "550 5.1.1 x"), r("c", "greylisted", false, "450 4.2.0 x")], 10_000, policy, () => 1);
  assert.deepEqual([d.delivered.length, d.bounced.length, d.deferred.length, d.expired.length], [1, 1, 1, 0]);
  assert.equal(d.retryAt, 11_000);
  const e = decideOutcome(env({ attempts: 7 }), [r("c", "greylisted", false, "450 4.2.0 x")], 100_000, policy);
  assert.deepEqual([e.deferred.length, e.expired.length], [0, 1]);
});

test("wantsDsn: only with notifySender, a non-null sender, and NOTIFY allowing FAILURE", () => {
  const dp = domainPlan({ domain: "sender.test" });
  assert.equal(wantsDsn(env(), dp, "a@x.test"), true);
  assert.equal(wantsDsn(env({ mailFrom: "" }), dp, "a@x.test"), false);
  assert.equal(wantsDsn(env(), { ...dp, notifySender: false }, "a@x.test"), false);
  assert.equal(wantsDsn(env({ dsn: { notify: { "a@x.test": ["NEVER"] } } }), dp, "a@x.test"), false);
  assert.equal(wantsDsn(env({ dsn: { notify: { "a@x.test": ["DELAY"] } } }), dp, "a@x.test"), false);
  assert.equal(wantsDsn(env({ dsn: { notify: { "a@x.test": ["SUCCESS", "FAILURE"] } } }), dp, "a@x.test"), true);
});

test("buildDsn: an RFC 3464 report the DSN parser reads back", async () => {
  const original = Buffer.from("From: <app@sender.test>\r\nTo: <a@x.test>\r\nSubject: hello\r\nMessage-ID: <m1@sender.test>\r\n\r\nbody text\r\n");
  const raw = buildDsn({
    reportingMta: "relay-0.mailfleet.test", returnPathDomain: "bounces.sender.test", to: "app@sender.test", qid: "0123456789abcdefghjk",
    envid: "env-1", arrivalDate: 0, now: 60_000, full: false, reason: "Permanent failure.", original,
    recipients: [
      { rcpt: "a@x.test", action: "failed", status: dsnStatus("550 5.1.1 no such user", true), diagnostic: "550 5.1.1 <a@x.test>: no such user", remoteMta: "mx.x.test" },
      { rcpt: "b@x.test", action: "failed", status: dsnStatus("452 4.2.2 Mailbox full", true), diagnostic: "452 4.2.2 Mailbox full" },
    ],
  });
  const text = raw.toString();
  assert.match(text, /^Content-Type: multipart\/report; report-type=delivery-status;/m);
  assert.match(text, /^Auto-Submitted: auto-replied$/m);
  assert.match(text, /^Subject: hello$/m, "original headers included");
  assert.doesNotMatch(text, /body text/, "RET=HDRS: no body");
  const parsed = await classifyDsn(raw);
  assert.deepEqual(parsed.map((p) => [p.recipient, p.action, p.status, p.class]), [["a@x.test", "failed", "5.1.1", "invalid-recipient"], ["b@x.test", "failed", "5.2.2", "mailbox-full"]]);
  assert.equal(parsed[0]!.originalEnvelopeId, "env-1");
  assert.equal(headerBlock(original).endsWith("\r\n"), true);
});

test("MTA-STS: policy parsing, wildcard MX matching, TXT id", () => {
  const p = parsePolicy("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n", "abc");
  assert.deepEqual(p, { id: "abc", mode: "enforce", mx: ["mail.example.com", "*.example.net"], maxAgeS: 604800 });
  assert.ok(mxMatches("mail.example.com.", p.mx));
  assert.ok(mxMatches("mx1.example.net", p.mx));
  assert.ok(!mxMatches("a.mx1.example.net", p.mx), "a wildcard covers one label");
  assert.ok(!mxMatches("example.net", p.mx));
  assert.throws(() => parsePolicy("version: STSv1\nmode: enforce\nmax_age: 1\n", "x"), /no mx/);
  assert.throws(() => parsePolicy("mode: enforce\nmx: a\nmax_age: 1\n", "x"), /version/);
  assert.equal(parseStsTxt(["v=STSv1; id=20260101T000000;"]), "20260101T000000");
  assert.equal(parseStsTxt(["v=spf1 -all"]), null);
  assert.equal(parseStsTxt(["v=STSv1; id=1", "v=STSv1; id=2"]), null, "two records: no policy");
});

test("inbound: which addresses are taken, and the lane's address from Received headers", () => {
  const plan = buildIndex(makePlan({ providers: [], addresses: [{ address: "127.0.31.1", hostname: "o.test" }] }), "mail/outbound");
  assert.ok(acceptsRecipient(plan, "b-0123456789abcdefghjk@bounces.sender.test"));
  assert.ok(acceptsRecipient(plan, "FBL@bounces.sender.test"));
  assert.ok(acceptsRecipient(plan, "postmaster@bounces.sender.test"));
  assert.ok(!acceptsRecipient(plan, "bob@bounces.sender.test"));
  assert.ok(!acceptsRecipient(plan, "b-0123456789abcdefghjk@sender.test"), "only return-path domains");
  assert.ok(!acceptsRecipient(plan, "fbl@elsewhere.test"));
  const addrs = new Set(["127.0.31.1", "198.51.100.7"]);
  assert.equal(sourceFromReceived("Received: from out1.sender.test (out1.sender.test [127.0.31.1])\r\n\tby mx (Postfix)", addrs), "127.0.31.1");
  assert.equal(sourceFromReceived("Received: from 198.51.100.7 (EHLO relay-0)\r\n by mta1000.mail.yahoo.com with SMTPS", addrs), "198.51.100.7");
  assert.equal(sourceFromReceived("X-Other: 127.0.31.1\r\nReceived: from x ([10.0.0.1])", addrs), undefined, "only Received lines, only pool addresses");
});

test("webhooks: Stripe-style signature, backoff, consumer names", () => {
  const s = sign("secret", '{"a":1}', 1700000000);
  const mac = createHmac("sha256", "secret").update('1700000000.{"a":1}').digest("hex");
  assert.equal(s, `t=1700000000,v1=${mac}`);
  assert.equal(webhookDelayMs(1, 1000, 60_000, () => 1), 1000);
  assert.equal(webhookDelayMs(3, 1000, 60_000, () => 0), 2000);
  assert.equal(webhookDelayMs(30, 1000, 60_000, () => 1), 60_000);
  assert.match(consumerName("Sender.test", "hook"), /^wh-[A-Za-z0-9]{1,20}$/);
  assert.equal(consumerName("Sender.test", "hook"), consumerName("sender.test", "hook"));
  assert.notEqual(consumerName("sender.test", "a"), consumerName("sender.test", "b"));
});

test("retrying: tries again with growing waits until the step succeeds, and gives up with its last error after forMs", async () => {
  let t = 0;
  const waits: number[] = [];
  const clock = { now: () => t, sleep: async (ms: number) => { waits.push(ms); t += ms; } };
  let n = 0;
  const retried: number[] = [];
  const ok = await retrying(async () => { if (++n < 5) throw new Error(`no leader ${n}`); return "stored"; }, { forMs: 60_000, onRetry: (_, i) => retried.push(i), ...clock });
  assert.equal(ok, "stored");
  assert.deepEqual(waits, [250, 500, 1000, 2000]);
  assert.deepEqual(retried, [1, 2, 3, 4]);
  t = 0;
  waits.length = 0;
  await assert.rejects(retrying(async () => { throw new Error(`still no leader at ${t}`); }, { forMs: 5000, ...clock }), /still no leader at 3750/);
  assert.deepEqual(waits, [250, 500, 1000, 2000], "never waits past forMs");
});
