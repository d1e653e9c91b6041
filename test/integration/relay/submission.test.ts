// SMTP submission against a real nats-server (sync_interval: always): who may submit, every
// refusal reply, STARTTLS/AUTH, DKIM (checked by python3-dkim through dnsmasq), VERP and the
// headers bulk senders need, SMTP smuggling, idempotent retries, live plan changes.
// Addresses: relay 127.0.30.1, trusted clients 127.0.31.0/24, untrusted 127.0.32.5, DNS 127.0.33.1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import nodemailer from "nodemailer";
import { startDns } from "../../env/peers/dns.ts";
import { verifyDkim } from "../../env/peers/dkim-verify.ts";
import { parseVerp } from "../../../relay/queue/envelope.ts";
import { STREAM_BODY, STREAM_QUEUE } from "../../../relay/queue/topology.ts";
import { domainPlan, eventually, makeDkimKeys, makePlan, PASSWORD, startRelayFixture } from "./fixture.ts";
import { message, qidOf, RawSmtp } from "./smtp-client.ts";

const run = promisify(execFile);
const HOST = "127.0.30.1";
const TRUSTED = "127.0.31.7";
const UNTRUSTED = "127.0.32.5";

test("SMTP submission", { timeout: 600_000 }, async (t) => {
  const keys = makeDkimKeys("example.com");
  const plan = await makePlan({
    domains: [
      domainPlan("example.com", {
        feedbackIdSender: "mfleet01",
        listUnsubscribe: { mode: "OneClick", url: "https://unsub.example.com/u/{token}", mailto: "unsub@example.com" },
      }, keys),
      domainPlan("other.example"),
      domainPlan("drop.example", { suppression: { onSubmit: "Drop", complaintTtlMs: 0, unsubscribeTtlMs: 0, hardBounceTtlMs: 0 } }),
      domainPlan("rated.example", { submitRate: { count: 2, periodMs: 3_600_000 } }),
    ],
    networks: [{ cidr: "127.0.31.0/24", domains: ["example.com", "drop.example", "rated.example"] }],
    credentials: [{ username: "app", domains: ["example.com"] }, { username: "app2", domains: ["other.example"] }],
  });
  const f = await startRelayFixture(t, { host: HOST, plan, keys });
  const port = f.submission.port;
  const dns = await startDns({ dir: join(f.dir, "dns"), address: "127.0.33.1", records: keys.map((k) => k.txt) });
  t.after(() => dns.stop());
  const open = (from = TRUSTED) => RawSmtp.open(HOST, port, from);
  const ehlo = async (c: RawSmtp) => { const r = await c.reply(); assert.equal(r.code, 220); return c.cmd("EHLO client.test"); };

  await t.test("AUTH is offered only after STARTTLS; before it AUTH is refused", async () => {
    const c = await open(UNTRUSTED);
    const e = await ehlo(c);
    assert.match(e.text, /STARTTLS/);
    assert.doesNotMatch(e.text, /AUTH/);
    assert.match(e.text, /SIZE 2097152/);
    assert.match(e.text, /PIPELINING/);
    assert.match(e.text, /ENHANCEDSTATUSCODES/);
    const a = await c.cmd(`AUTH PLAIN ${Buffer.from(`\0app\0${PASSWORD}`).toString("base64")}`);
    assert.ok(a.code >= 500, `${a.code} ${a.text}`);
    await c.starttls(f.caPem);
    const e2 = await c.cmd("EHLO client.test");
    assert.match(e2.text, /AUTH PLAIN LOGIN/);
    await c.quit();
  });

  await t.test("unauthenticated, untrusted clients get 530 5.7.0; open-relay attempts are refused", async () => {
    const c = await open(UNTRUSTED);
    await ehlo(c);
    const r = await c.cmd("MAIL FROM:<news@example.com>");
    assert.equal(r.code, 530);
    assert.match(r.lines[0]!, /^530 5\.7\.0 /);
    const r2 = await c.cmd("MAIL FROM:<someone@elsewhere.org>");
    assert.equal(r2.code, 530);
    const rc = await c.cmd("RCPT TO:<victim@elsewhere.org>");
    assert.ok(rc.code >= 500);
    await c.quit();
    // Trusted network, foreign sender domain: not a relay for anyone.
    const d = await open();
    await ehlo(d);
    const r3 = await d.cmd("MAIL FROM:<someone@elsewhere.org>");
    assert.match(r3.lines[0]!, /^550 5\.7\.1 /);
    const r4 = await d.cmd("MAIL FROM:<x@other.example>");
    assert.match(r4.lines[0]!, /^550 5\.7\.1 /, "a domain the network may not use");
    await d.quit();
  });

  await t.test("AUTH: wrong password 535 5.7.8 (throttled), right one sends as the credential's domains only", async () => {
    const c = await open(UNTRUSTED);
    await ehlo(c);
    await c.starttls(f.caPem);
    await c.cmd("EHLO client.test");
    const bad = await c.cmd(`AUTH PLAIN ${Buffer.from("\0app\0wrong").toString("base64")}`);
    assert.match(bad.lines[0]!, /^535 5\.7\.8 /);
    assert.ok(f.acceptor.auth.failures(UNTRUSTED) >= 1);
    assert.ok(f.logs.some((l) => l.includes("AUTH failed") && l.includes('"username":"app"') && !l.includes("wrong")), "failure logged without the password");
    const ok = await c.cmd(`AUTH PLAIN ${Buffer.from(`\0app\0${PASSWORD}`).toString("base64")}`);
    assert.equal(ok.code, 235);
    const other = await c.cmd("MAIL FROM:<x@other.example>");
    assert.match(other.lines[0]!, /^550 5\.7\.1 /);
    await c.cmd("RSET");
    const r = await c.send("news@example.com", ["someone@gmail.test"], message({ from: "News <news@example.com>" }));
    assert.equal(r.code, 250, r.text);
    assert.match(r.lines[0]!, /^250 2\.0\.0 Ok: queued as [0-9a-z]{20}$/);
    // Durable before the 250: the envelope is in the stream right now, no waiting.
    const qid = qidOf(r);
    const env = (await f.envelopes()).find((e) => e.id === qid);
    assert.ok(env, "envelope stored when 250 arrived");
    assert.equal(env.submitter, "auth:app");
    assert.ok(await f.body(env));
    await c.quit();
  });

  await t.test("AUTH inside a mail transaction is 503 5.5.1: a trusted network's MAIL cannot carry another identity's message", async () => {
    const c = await open();
    await ehlo(c);
    await c.starttls(f.caPem);
    await c.cmd("EHLO client.test");
    assert.equal((await c.cmd("MAIL FROM:<news@example.com>")).code, 250, "the network may send as example.com");
    const app2 = `AUTH PLAIN ${Buffer.from(`\0app2\0${PASSWORD}`).toString("base64")}`;
    const during = await c.cmd(app2);
    assert.match(during.lines[0]!, /^503 5\.5\.1 /, during.text);
    assert.equal((await c.cmd("RSET")).code, 250);
    assert.equal((await c.cmd(app2)).code, 235, "after RSET the identity may change");
    const r = await c.cmd("MAIL FROM:<news@example.com>");
    assert.match(r.lines[0]!, /^550 5\.7\.1 /, "authenticated as app2: example.com is not its domain");
    await c.quit();
  });

  await t.test("nodemailer with STARTTLS and AUTH LOGIN, many messages over one pooled connection", async () => {
    const transport = nodemailer.createTransport({
      host: HOST, port, secure: false, requireTLS: true, pool: true, maxConnections: 1, maxMessages: 100,
      auth: { user: "app", pass: PASSWORD, method: "LOGIN" }, tls: { ca: f.caPem, servername: "relay.mailfleet.test" }, localAddress: UNTRUSTED,
    });
    const infos = await Promise.all(Array.from({ length: 5 }, (_, i) => transport.sendMail({ from: "news@example.com", to: `n${i}@gmail.test`, subject: `n${i}`, text: "hi" })));
    transport.close();
    for (const info of infos) assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9a-z]{20}$/);
  });

  await t.test("syntax errors: 501 with 5.1.x/5.5.x; null sender refused", async () => {
    const c = await open();
    await ehlo(c);
    assert.match((await c.cmd("MAIL FROM:<not an address>")).lines[0]!, /^501 5\.[15]\.\d+ /);
    assert.match((await c.cmd("MAIL FROM:<a@b>")).lines[0]!, /^501 5\.1\.7 /);
    assert.match((await c.cmd("MAIL FROM:<>")).lines[0]!, /^550 5\.7\.1 /);
    assert.equal((await c.cmd("MAIL FROM:<news@example.com>")).code, 250);
    assert.match((await c.cmd("RCPT TO:<bad@>")).lines[0]!, /^501 5\.[15]\.\d+ /);
    assert.match((await c.cmd("RCPT TO:<x y@example.org>")).lines[0]!, /^501 5\.[15]\.\d+ /);
    assert.match((await c.cmd("MAIL FROM:<news@example.com>")).lines[0]!, /^503 /, "nested MAIL");
    await c.quit();
  });

  await t.test("From field must be exactly one address of an allowed domain (550 5.7.1 / 550 5.6.0)", async () => {
    const c = await open();
    await ehlo(c);
    const r = await c.send("news@example.com", ["x@gmail.test"], message({ from: "ceo@other.example" }));
    assert.match(r.lines[0]!, /^550 5\.7\.1 From domain other\.example/);
    const r2 = await c.send("news@example.com", ["x@gmail.test"], "To: x@gmail.test\r\nSubject: no from\r\n\r\nbody\r\n");
    assert.match(r2.lines[0]!, /^550 5\.6\.0 /);
    const r3 = await c.send("news@example.com", ["x@gmail.test"], message({ from: "a@example.com, b@example.com" }));
    assert.match(r3.lines[0]!, /^550 5\.6\.0 /);
    const r4 = await c.send("news@example.com", ["x@gmail.test"], message({ from: "Sales <sales@drop.example>" }));
    assert.equal(r4.code, 250, "another domain the network may use is fine");
    await c.quit();
  });

  await t.test("oversize: SIZE above the limit and a DATA over it both get 552", async () => {
    const c = await open();
    await ehlo(c);
    assert.match((await c.cmd("MAIL FROM:<news@example.com> SIZE=99999999")).lines[0]!, /^552 /);
    const big = message({ from: "news@example.com", body: ("x".repeat(998) + "\r\n").repeat(2200) });
    const r = await c.send("news@example.com", ["x@gmail.test"], big);
    assert.equal(r.code, 552);
    assert.match(r.lines[0]!, /^552 5\.3\.4 /);
    // The connection is still usable.
    assert.equal((await c.send("news@example.com", ["x@gmail.test"], message({ from: "news@example.com" }))).code, 250);
    await c.quit();
  });

  await t.test("suppressed recipients: refused with 550 5.7.1, or dropped with an event (onSubmit: Drop)", async () => {
    await f.acceptor.suppressions.add({ scope: { global: true }, address: "Gone@Gmail.test", reason: "hard-bounce" });
    await f.acceptor.suppressions.add({ scope: { domain: "drop.example" }, address: "unsub@gmail.test", reason: "unsubscribe" });
    const c = await open();
    await ehlo(c);
    await c.cmd("MAIL FROM:<news@example.com>");
    const r = await c.cmd("RCPT TO:<gone@gmail.test>");
    assert.match(r.lines[0]!, /^550 5\.7\.1 Recipient suppressed \(hard-bounce\)/);
    await c.cmd("RSET");
    const d = await c.send("sales@drop.example", ["unsub@gmail.test", "fine@gmail.test"], message({ from: "sales@drop.example" }));
    assert.equal(d.code, 250);
    const env = (await f.envelopes()).find((e) => e.id === qidOf(d))!;
    assert.deepEqual(env.rcpts, ["fine@gmail.test"]);
    const ev = await eventually("suppressed event", async () => (await f.events()).find((e) => e.data.type === "suppressed" && e.data.qid === qidOf(d)));
    assert.deepEqual(ev.data.rcpts, ["unsub@gmail.test"]);
    await c.quit();
  });

  await t.test("per-submitter rate limit (submitRate) answers 450 4.7.1", async () => {
    const c = await open();
    await ehlo(c);
    for (let i = 0; i < 2; i++) assert.equal((await c.send("a@rated.example", ["x@gmail.test"], message({ from: "a@rated.example" }))).code, 250);
    const r = await c.cmd("MAIL FROM:<a@rated.example>");
    assert.match(r.lines[0]!, /^450 4\.7\.1 /);
    await c.quit();
  });

  await t.test("DKIM (RSA-2048 and Ed25519) verifies with python3-dkim; VERP; bulk-sender headers", async () => {
    const c = await open();
    await ehlo(c);
    const r = await c.send("news@example.com", ["reader@gmail.test"], message({
      from: "News <news@example.com>", extra: "X-Campaign-ID: spring\r\nX-Customer-ID: c7\r\nX-Mail-Type: promo\r\nBcc: hidden@x.org",
      body: "Trailing spaces   \r\nand\ttabs\r\n\r\n\r\n",
    }));
    assert.equal(r.code, 250);
    await c.quit();
    const env = (await f.envelopes()).find((e) => e.id === qidOf(r))!;
    assert.equal(env.returnPath, `b-${env.id}@bounces.example.com`);
    assert.equal(parseVerp(env.returnPath), env.id);
    assert.equal(env.mailFrom, "news@example.com");
    const raw = await f.body(env);
    const text = raw.toString("latin1");
    const v = await verifyDkim(raw, dns.server);
    assert.ok(v.ok, JSON.stringify(v));
    assert.deepEqual(v.signatures.map((s) => s.a).sort(), ["ed25519-sha256", "rsa-sha256"]);
    assert.match(text, /^Feedback-ID: spring:c7:promo:mfleet01\r\n/m);
    assert.match(text, /^List-Unsubscribe: <https:\/\/unsub\.example\.com\/u\/[A-Za-z0-9_-]+>, <mailto:unsub@example\.com\?subject=unsubscribe>\r\n/m);
    assert.match(text, /^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/m);
    assert.match(text, /^Date: /m);
    assert.doesNotMatch(text, /X-Campaign-ID|Bcc:|hidden@x\.org/);
    assert.match(text, /h=[^;]*List-Unsubscribe-Post/);
  });

  await t.test("OneClick with several recipients: one signed copy per recipient, each header naming its recipient", async () => {
    const c = await open();
    await ehlo(c);
    const r = await c.send("news@example.com", ["a@gmail.test", "b@yahoo.test"], message({ from: "news@example.com" }));
    assert.equal(r.code, 250);
    await c.quit();
    const qid = qidOf(r);
    const envs = (await f.envelopes()).filter((e) => e.id === qid || (e as { group?: string }).group === qid);
    assert.equal(envs.length, 2);
    assert.deepEqual(envs.map((e) => e.rcpts).flat().sort(), ["a@gmail.test", "b@yahoo.test"]);
    const urls = await Promise.all(envs.map(async (e) => /List-Unsubscribe: <(https:[^>]+)>/.exec((await f.body(e)).toString())![1]));
    assert.notEqual(urls[0], urls[1]);
    for (const e of envs) assert.ok((await verifyDkim(await f.body(e), dns.server)).ok);
  });

  await t.test("SMTP smuggling: bare LF/CR around a dot neither ends DATA nor survives in the stored message", async () => {
    const c = await open();
    await ehlo(c);
    const before = (await f.envelopes()).length;
    for (const seq of ["\n.\r\n", "\r\n.\n", "\r.\r", "\n.\n"]) {
      await c.cmd("MAIL FROM:<news@example.com>");
      await c.cmd("RCPT TO:<victim@gmail.test>");
      assert.equal((await c.cmd("DATA")).code, 354);
      c.write(`From: news@example.com\r\nTo: victim@gmail.test\r\nSubject: smuggle\r\n\r\nfirst${seq}MAIL FROM:<ceo@other.example>\r\nRCPT TO:<x@gmail.test>\r\nDATA\r\nFrom: ceo@other.example\r\n\r\nsmuggled\r\n.\r\n`);
      const r = await c.reply();
      assert.equal(r.code, 250, `${JSON.stringify(seq)}: ${r.text}`);
      const body = (await f.body((await f.envelopes()).find((e) => e.id === qidOf(r))!)).toString("latin1");
      assert.match(body, /smuggled/, "the smuggled part stayed inside the one message");
      for (let i = 0; i < body.length; i++) {
        if (body[i] === "\r") assert.equal(body[i + 1], "\n", `bare CR at ${i} for ${JSON.stringify(seq)}`);
        if (body[i] === "\n") assert.equal(body[i - 1], "\r", `bare LF at ${i} for ${JSON.stringify(seq)}`);
      }
    }
    // Nothing else arrived: one message per sequence, no second transaction.
    assert.equal((await f.envelopes()).length, before + 4);
    await c.quit();
  });

  await t.test("PIPELINING: several transactions written at once", async () => {
    const c = await open();
    await ehlo(c);
    c.write("MAIL FROM:<news@example.com>\r\nRCPT TO:<p0@gmail.test>\r\nDATA\r\n");
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 354);
    c.write(`${message({ from: "news@example.com" })}\r\n.\r\nMAIL FROM:<news@example.com>\r\nRCPT TO:<p1@gmail.test>\r\nDATA\r\n`);
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 250);
    assert.equal((await c.reply()).code, 354);
    c.write(`${message({ from: "news@example.com" })}\r\n.\r\n`);
    assert.equal((await c.reply()).code, 250);
    await c.quit();
  });

  await t.test("a retry after a lost 250 (same Message-ID, envelope, submitter) gets the same queue id and is stored once", async () => {
    const msg = message({ from: "news@example.com", messageId: "<retry-1@example.com>" });
    const c1 = await open();
    await ehlo(c1);
    const r1 = await c1.send("news@example.com", ["r@gmail.test"], msg);
    c1.write("QUIT\r\n");
    const c2 = await open();
    await ehlo(c2);
    const r2 = await c2.send("news@example.com", ["r@gmail.test"], msg);
    assert.equal(r1.code, 250);
    assert.equal(r2.code, 250);
    assert.equal(qidOf(r1), qidOf(r2));
    assert.equal((await f.envelopes()).filter((e) => e.id === qidOf(r1)).length, 1);
    // Another recipient is another submission.
    const r3 = await c2.send("news@example.com", ["other@gmail.test"], msg);
    assert.notEqual(qidOf(r3), qidOf(r1));
    await c2.quit();
  });

  await t.test("swaks from a trusted network", async () => {
    const { stdout } = await run("swaks", ["--server", `${HOST}:${port}`, "--local-interface", TRUSTED, "--from", "news@example.com", "--to", "s@gmail.test", "--h-From", "news@example.com", "--body", "via swaks"]);
    assert.match(stdout, /<-\s+250 2\.0\.0 Ok: queued as [0-9a-z]{20}/);
  });

  await t.test("plan applied live: a domain removed is refused at once; a bad plan value keeps the last good plan", async () => {
    const next = await makePlan({ ...{ domains: plan.domains.filter((d) => d.domain !== "rated.example") }, networks: plan.submitters.networks, credentials: [{ username: "app", domains: ["example.com"] }] });
    await f.publishPlan(next);
    await f.waitPlan(next.revision);
    const c = await open();
    await ehlo(c);
    assert.match((await c.cmd("MAIL FROM:<a@rated.example>")).lines[0]!, /^550 5\.7\.1 /);
    await f.publishPlan(Buffer.from("{\"schema\":\"mailfleet.io/plan/v1\",\"broken\":true}"));
    await eventually("rejection counted", async () => /mailfleet_relay_plan_rejected_total(\{[^}]*\})? 1/.test(await f.relay.ctx.registry.metrics()));
    assert.equal(f.relay.ctx.plan()!.revision, next.revision);
    assert.equal((await c.send("news@example.com", ["x@gmail.test"], message({ from: "news@example.com" }))).code, 250);
    await c.quit();
  });

  await t.test("metrics count acceptances and refusals by code", async () => {
    const m = await f.relay.ctx.registry.metrics();
    assert.match(m, /mailfleet_relay_accepted_total\{[^}]*source="smtp"[^}]*\} \d+/);
    assert.match(m, /mailfleet_relay_submission_rejected_total\{[^}]*code="530"/);
    assert.match(m, /mailfleet_relay_submission_rejected_total\{[^}]*code="552"/);
    assert.match(m, /mailfleet_relay_accept_duration_seconds_bucket/);
    assert.doesNotMatch(m, /gmail\.test|qid=/, "no recipients or ids in labels");
    assert.ok((await f.streamCount(STREAM_BODY)) > 0 && (await f.streamCount(STREAM_QUEUE)) > 0);
  });
});
