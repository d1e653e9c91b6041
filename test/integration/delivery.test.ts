// The delivery side against real components: nats-server, dnsmasq serving the test zones, Postfix
// instances as provider MX hosts (real anvil limits and cidr client replies), an HTTPS server for
// MTA-STS policies and python3-dkim on the receiving side. Envelopes and bodies are put into NATS
// the way acceptance stores them.
//
// Addresses: relay sources 127.0.71.1-2, MX hosts 127.0.70.x, DNS 127.0.53.70, policy 127.0.70.20.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, type Server } from "node:https";
import { generateKeyPairSync } from "node:crypto";
import { dkimSign } from "mailauth/lib/dkim/sign.js";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle, type DnsRecord } from "../env/peers/dns.ts";
import { startPostfix, type PostfixHandle, type DeliveredMessage } from "../env/peers/postfix.ts";
import { verifyDkim } from "../env/peers/dkim-verify.ts";
import { createCA, issueCert } from "../env/pki.ts";
import { loadRelayConfig } from "../../relay/config.ts";
import { startRelay, type Relay } from "../../relay/main.ts";
import { PlanWatcher } from "../../relay/plan/watcher.ts";
import { RouteStage } from "../../relay/routing/stage.ts";
import { Delivery } from "../../relay/delivery/service.ts";
import { QueueMetrics } from "../../relay/delivery/queue-metrics.ts";
import { InboundServer } from "../../relay/inbound/server.ts";
import { WebhookDispatcher, SIGNATURE_HEADER } from "../../relay/webhooks/dispatcher.ts";
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer as createHttpServer, type IncomingMessage } from "node:http";
import { mkdir, writeFile } from "node:fs/promises";
import nodemailer from "nodemailer";
import { Router, useRouter } from "../../relay/routing/router.ts";
import { createLogger } from "../../relay/runtime/logger.ts";
import { classifyDsn } from "../../relay/classify/index.ts";
import { Suppressions } from "../../relay/suppression/index.ts";
import type { Plan } from "../../api/plan.ts";
import { eventLog, makePlan, message, publishPlan, submit, until, POOL, type PlanSpec } from "./delivery-harness.ts";

const T = { timeout: 300_000 };
const OUT1 = { address: "127.0.71.1", hostname: "out1.sender.test" };
const OUT2 = { address: "127.0.71.2", hostname: "out2.sender.test" };

let base: string;
let nats: Nats;
let dns: DnsHandle;
let pf: PostfixHandle;
let limited: PostfixHandle;
let relay: Relay;
let policyServer: Server;
let hookServer: import("node:http").Server;
const hookPosts: { body: string; headers: IncomingMessage["headers"]; status: number }[] = [];
const HOOK_SECRET = "whsec-test-0123456789";
const INBOUND = { host: "127.0.71.9", port: 2525 };
let events: Awaited<ReturnType<typeof eventLog>>;
let delivery: Delivery;
let plan: Plan;

const dkimKey = generateKeyPairSync("rsa", { modulusLength: 2048 });
const DKIM_KEY_FILE = "dkim-sender.test-s1.key";

const records: DnsRecord[] = [
  // Two company domains on one provider's MX suffix (MX rollup), and the provider's own domain.
  { type: "MX", name: "acme.test", value: "mx1.gprov.test", priority: 10 },
  { type: "MX", name: "globex.test", value: "mx1.gprov.test", priority: 5 },
  { type: "MX", name: "globex.test", value: "backup.secondary.test", priority: 50 },
  { type: "A", name: "mx1.gprov.test", value: "127.0.70.1" },
  { type: "A", name: "backup.secondary.test", value: "127.0.70.2" },
  { type: "MX", name: "other.test", value: "mx.other.test" },
  { type: "MX", name: "sender.test", value: "mx.other.test" },
  { type: "A", name: "mx.other.test", value: "127.0.70.2" },
  { type: "MX", name: "tls-req.test", value: "mx.tls.test" },
  { type: "A", name: "mx.tls.test", value: "127.0.70.3" },
  { type: "MX", name: "opp.test", value: "mx.opp.test" },
  { type: "A", name: "mx.opp.test", value: "127.0.70.4" },
  // MTA-STS: sts.test enforces and its MX offers TLS; sts-plain.test enforces but its MX does not.
  { type: "MX", name: "sts.test", value: "mx.sts.test" },
  { type: "A", name: "mx.sts.test", value: "127.0.70.5" },
  { type: "TXT", name: "_mta-sts.sts.test", value: "v=STSv1; id=20260101" },
  { type: "A", name: "mta-sts.sts.test", value: "127.0.70.20" },
  { type: "MX", name: "sts-plain.test", value: "mxplain.sts-plain.test" },
  { type: "A", name: "mxplain.sts-plain.test", value: "127.0.70.6" },
  { type: "TXT", name: "_mta-sts.sts-plain.test", value: "v=STSv1; id=1" },
  { type: "A", name: "mta-sts.sts-plain.test", value: "127.0.70.20" },
  { type: "MX", name: "retry.test", value: "mx.retry.test" },
  { type: "A", name: "mx.retry.test", value: "127.0.70.7" },
  { type: "MX", name: "busy.test", value: "mx.busy.test" },
  { type: "A", name: "mx.busy.test", value: "127.0.70.8" },
  { type: "MX", name: "limited.test", value: "mx.limited.test" },
  { type: "A", name: "mx.limited.test", value: "127.0.70.10" },
  { type: "MX", name: "nullmx.test", value: "." },
  // implicit MX: no MX record, an address
  { type: "A", name: "implicit.test", value: "127.0.70.2" },
  { type: "MX", name: "late.test", value: "mx.other.test" },
  { type: "TXT", name: "s1._domainkey.sender.test", value: `v=DKIM1; k=rsa; p=${dkimKey.publicKey.export({ type: "spki", format: "der" }).toString("base64")}` },
];

const baseSpec: PlanSpec = {
  providers: [
    { name: "gprov", mxSuffixes: ["gprov.test"], lane: { recipientsPerMessage: 3, maxConnections: 2 } },
    { name: "tlsprov", domains: ["tls-req.test", "notls.test"], lane: { tlsRequired: true } },
  ],
  addresses: [OUT1, OUT2],
  delivery: { retryBaseMs: 1000, retryMaxMs: 3000 },
  // The relay signs the DSNs it writes with the domain's key (a file in its Secret, written below).
  domains: [{ domain: "sender.test", dkim: [{ selector: "s1", algorithm: "rsa-sha256", keyName: DKIM_KEY_FILE }] }],
};

async function applyPlan(spec: PlanSpec): Promise<void> {
  plan = makePlan(spec);
  await publishPlan(relay.ctx.nc, plan);
  await until("plan applied", () => relay.ctx.plan()?.revision === plan.revision, 30_000);
}

const suppressions = () => new Suppressions(relay.ctx.suppressKv, { perKeyTtl: true });

const to = (rcpt: string) => (m: DeliveredMessage) => m.deliveredTo === rcpt;

async function delivered(handle: PostfixHandle, rcpt: string, timeoutMs = 120_000): Promise<DeliveredMessage> {
  const [m] = await handle.waitForMessages(1, { filter: to(rcpt), timeoutMs });
  return m!;
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), "mailfleet-delivery-"));
  await chmod(base, 0o755);
  nats = await startNats({ dir: join(base, "nats") });
  dns = await startDns({ dir: join(base, "dns"), address: "127.0.53.70", records });
  pf = await startPostfix({
    dir: join(base, "postfix"),
    domains: ["acme.test", "globex.test", "other.test", "sender.test", "tls-req.test", "opp.test", "sts.test", "sts-plain.test", "retry.test", "busy.test", "implicit.test", "late.test", "notls.test"],
    listeners: [
      {
        address: "127.0.70.1",
        hostname: "mx1.gprov.test",
        rejectRecipients: [
          { pattern: /^unknown-/, reply: "550 5.1.1 The email account that you tried to reach does not exist" },
          { pattern: /^busy-/, reply: "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages" },
        ],
      },
      { address: "127.0.70.2", hostname: "mx.other.test" },
      { address: "127.0.70.3", hostname: "mx.tls.test", requireTls: true },
      { address: "127.0.70.4", hostname: "mx.opp.test", tlsOffered: true },
      { address: "127.0.70.5", hostname: "mx.sts.test", tlsOffered: true },
      { address: "127.0.70.6", hostname: "mxplain.sts-plain.test" },
      { address: "127.0.70.7", hostname: "mx.retry.test" },
      { address: "127.0.70.8", hostname: "mx.busy.test", rejectRecipients: [{ pattern: /.*/, reply: "452 4.2.2 Mailbox full, try later" }] },
    ],
  });
  // Anvil limits per client: a second instance, its own time unit.
  limited = await startPostfix({
    dir: join(base, "postfix-limited"),
    domains: ["limited.test"],
    listeners: [{ address: "127.0.70.10", hostname: "mx.limited.test", limits: { messageRatePerUnit: 6, connectionCountLimit: 3, rateTimeUnit: "30s" } }],
  });

  // The MTA-STS policy host: HTTPS with a certificate from a test CA the relay is told to trust.
  const ca = await createCA("mailfleet delivery test CA");
  const cert = await issueCert(ca, { commonName: "mta-sts.sts.test", dnsNames: ["mta-sts.sts.test", "mta-sts.sts-plain.test"], server: true });
  policyServer = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    const host = (req.headers.host ?? "").split(":")[0];
    const mx = host === "mta-sts.sts.test" ? "mx.sts.test" : "*.sts-plain.test";
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`version: STSv1\r\nmode: enforce\r\nmx: ${mx}\r\nmax_age: 86400\r\n`);
  });
  await new Promise<void>((r) => policyServer.listen(443, "127.0.70.20", r));

  // Webhook receiver: fails the first two POSTs of each event, then takes it.
  const seen = new Map<string, number>();
  hookServer = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const id = String(req.headers["mailfleet-event-id"]);
      const n = (seen.get(id) ?? 0) + 1;
      seen.set(id, n);
      const status = n <= 2 ? 500 : 200;
      hookPosts.push({ body: Buffer.concat(chunks).toString("utf8"), headers: req.headers, status });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => hookServer.listen(8089, INBOUND.host, r));
  const secrets = join(base, "secrets");
  await mkdir(secrets, { recursive: true });
  await writeFile(join(secrets, "webhook.sender.test.hook"), `${HOOK_SECRET}\n`);
  await writeFile(join(secrets, DKIM_KEY_FILE), dkimKey.privateKey.export({ type: "pkcs8", format: "pem" }) as string, { mode: 0o600 });

  const config = loadRelayConfig({
    MAILFLEET_SECRETS_DIR: secrets,
    MAILFLEET_TLS_DIR: join(base, "no-tls"),
    MAILFLEET_NATS_URL: nats.urls.join(","),
    MAILFLEET_POOL: POOL,
    MAILFLEET_RELAY_ID: "relay-test-1",
    MAILFLEET_ADDRESSES: `${OUT1.address},${OUT2.address}`,
    MAILFLEET_DNS_SERVERS: dns.server,
    MAILFLEET_LOG_LEVEL: process.env.MAILFLEET_TEST_LOG ? "debug" : "warn",
  });
  const trust = [pf.tlsCertPem!, ca.certPem];
  const router = new Router({ servers: [dns.server], ca: trust, minTtlMs: 2000 });
  useRouter({ config }, router);
  relay = await startRelay({
    config,
    log: createLogger({ level: config.MAILFLEET_LOG_LEVEL }),
    components: [
      new PlanWatcher(),
      new RouteStage({ router }),
      (delivery = new Delivery({ router, ca: trust, idleMs: 2000 })),
      new QueueMetrics({ intervalMs: 1000 }),
      new InboundServer({ router, ...INBOUND }),
      new WebhookDispatcher({ retryBaseMs: 300 }),
    ],
  });
  events = await eventLog(relay.ctx.nc);
  await applyPlan(baseSpec);
});

after(async () => {
  events?.stop();
  await relay?.shutdown();
  await new Promise<void>((r) => (policyServer ? policyServer.close(() => r()) : r()));
  await new Promise<void>((r) => (hookServer ? hookServer.close(() => r()) : r()));
  await pf?.stop();
  await limited?.stop();
  await dns?.stop();
  await nats?.stop();
  if (base && !process.env.MAILFLEET_KEEP_STATE) await rm(base, { recursive: true, force: true });
});

describe("routing", () => {
  test("MX rollup: two domains on one provider's MX suffix share the provider; others go to default", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["ann@acme.test", "bea@globex.test", "cid@other.test", "dee@implicit.test"] });
    const a = await events.waitFor((e) => e.qid === s.qid && e.type === "delivered" && e.rcpts.includes("ann@acme.test"), "acme delivered");
    const b = await events.waitFor((e) => e.qid === s.qid && e.type === "delivered" && e.rcpts.includes("bea@globex.test"), "globex delivered");
    const c = await events.waitFor((e) => e.qid === s.qid && e.type === "delivered" && e.rcpts.includes("cid@other.test"), "other delivered");
    const d = await events.waitFor((e) => e.qid === s.qid && e.type === "delivered" && e.rcpts.includes("dee@implicit.test"), "implicit MX delivered");
    assert.equal(a.provider, "gprov");
    assert.equal(b.provider, "gprov", "a backup MX at a higher preference does not break the rollup");
    assert.equal(c.provider, "default");
    assert.equal(d.provider, "default");
    assert.equal((await delivered(pf, "bea@globex.test")).listener, "127.0.70.1", "the lowest preference MX gets the mail");
    assert.equal((await delivered(pf, "dee@implicit.test")).listener, "127.0.70.2");
    assert.deepEqual(new Set([a.part, b.part, c.part, d.part]).size, 4, "one part per recipient domain");
  });

  test("null MX: bounced at once as bad-domain, with a DSN to the sender", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["x@nullmx.test"], mailFrom: "nullsender@sender.test" });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "bounced", "null MX bounce");
    assert.equal(e.class, "bad-domain");
    assert.match(e.reply!, /^556 5\.1\.10/);
    const dsn = await delivered(pf, "nullsender@sender.test");
    assert.equal(dsn.returnPath, "", "a DSN has the null sender");
    const parsed = await classifyDsn(dsn.raw);
    assert.equal(parsed.length, 1);
    assert.equal(parsed[0]!.recipient, "x@nullmx.test");
    assert.equal(parsed[0]!.class, "bad-domain");
    assert.match(dsn.raw.toString(), /^From: Mail Delivery System <MAILER-DAEMON@bounces\.sender\.test>/m);
    // Signed by the route step with the sending domain's key, as a receiver checking the bounce sees it.
    const v = await verifyDkim(dsn.raw, dns.server);
    assert.ok(v.ok, `DSN DKIM: ${JSON.stringify(v)}`);
    assert.deepEqual(v.signatures.map((x) => [x.d, x.s, x.ok]), [["sender.test", "s1", true]]);
    assert.equal((await suppressions().check("sender.test", "x@nullmx.test"))?.scope, "global");
  });

  test("NXDOMAIN: bounced at once as bad-domain", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["y@no-such-domain.test"] });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "bounced", "NXDOMAIN bounce");
    assert.equal(e.class, "bad-domain");
    assert.match(e.reply!, /^550 5\.1\.2/);
  });

  test("DNS failing then recovering: the route step retries, then delivers", T, async () => {
    await dns.fail(true);
    let s;
    try {
      s = await submit(relay.ctx.js, { rcpts: ["zed@late.test"] });
      const d = await events.waitFor((x) => x.qid === s!.qid && x.type === "deferred", "DNS deferral", 60_000);
      assert.equal(d.class, "routing-error");
      assert.match(d.reply!, /^451 4\.4\.3/);
    } finally {
      await dns.fail(false);
    }
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "delivered after DNS recovered");
    assert.deepEqual(e.rcpts, ["zed@late.test"]);
    await delivered(pf, "zed@late.test");
  });
});

describe("outcomes", () => {
  test("delivered: from the lane's address and hostname, the body unchanged (DKIM verifies at the receiver)", T, async () => {
    const raw = message({ from: "app@sender.test", to: ["dkim@acme.test"], subject: "signed" });
    const signed = await dkimSign(raw, { signatureData: [{ signingDomain: "sender.test", selector: "s1", privateKey: dkimKey.privateKey.export({ type: "pkcs8", format: "pem" }) as string }] } as never);
    const body = Buffer.concat([Buffer.from(signed.signatures), raw]);
    const s = await submit(relay.ctx.js, { rcpts: ["dkim@acme.test"], body });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "delivered");
    const m = await delivered(pf, "dkim@acme.test");
    assert.equal(m.clientIp, e.source, "the receiver sees the lane's source address");
    assert.equal(m.helo, e.source === OUT1.address ? OUT1.hostname : OUT2.hostname, "EHLO name = the address's hostname");
    assert.equal(m.returnPath, s.env.returnPath, "VERP return path");
    const v = await verifyDkim(m.raw, dns.server);
    assert.ok(v.ok, `DKIM: ${JSON.stringify(v)}`);
  });

  test("several recipients per transaction, up to the provider's recipientsPerMessage", T, async () => {
    const rcpts = ["r1@acme.test", "r2@acme.test", "r3@acme.test", "r4@acme.test", "r5@acme.test"];
    const s = await submit(relay.ctx.js, { rcpts });
    await until("5 delivered", () => events.events.filter((e) => e.qid === s.qid && e.type === "delivered").flatMap((e) => e.rcpts).length === 5);
    const parts = events.events.filter((e) => e.qid === s.qid && e.type === "delivered");
    assert.deepEqual(parts.map((p) => p.rcpts.length).sort(), [2, 3]);
    const msgs = await pf.waitForMessages(5, { filter: (m) => rcpts.includes(m.deliveredTo) });
    assert.equal(new Set(msgs.map((m) => m.queueId)).size, 2, "two transactions for five recipients");
  });

  test("5xx: bounced at once with a DSN to the sender; other recipients of the part delivered", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["unknown-1@acme.test", "known@acme.test"], mailFrom: "bouncer@sender.test" });
    const b = await events.waitFor((x) => x.qid === s.qid && x.type === "bounced", "bounce");
    assert.deepEqual(b.rcpts, ["unknown-1@acme.test"]);
    assert.equal(b.class, "invalid-recipient");
    await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "the other recipient");
    const dsn = await delivered(pf, "bouncer@sender.test");
    const parsed = await classifyDsn(dsn.raw);
    assert.equal(parsed[0]!.recipient, "unknown-1@acme.test");
    assert.equal(parsed[0]!.class, "invalid-recipient");
    assert.match(dsn.raw.toString(), /Subject: test /, "the DSN carries the original headers");
    assert.deepEqual((await verifyDkim(dsn.raw, dns.server)).signatures.map((x) => [x.d, x.s, x.ok]), [["sender.test", "s1", true]], "signed by delivery");
    const hit = await until("suppressed", () => suppressions().check("other-sender.test", "unknown-1@acme.test"), 30_000);
    assert.equal(hit.scope, "global", "a hard bounce is suppressed for every sending domain");
    assert.equal(hit.reason, "hard-bounce");
    assert.equal(await suppressions().check("sender.test", "known@acme.test"), null);
  });

  test("4xx: deferred, then delivered on a later try", T, async () => {
    for (const a of [OUT1.address, OUT2.address]) await pf.setClientReply(a, "450 4.3.2 Service currently unavailable, try again later", { listener: "127.0.70.7" });
    let s;
    try {
      s = await submit(relay.ctx.js, { rcpts: ["later@retry.test"] });
      const d = await events.waitFor((x) => x.qid === s!.qid && x.type === "deferred", "deferral");
      assert.equal(d.attempts, 1);
      assert.ok(d.retryAt);
    } finally {
      for (const a of [OUT1.address, OUT2.address]) await pf.clearClientReply(a, { listener: "127.0.70.7" });
    }
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "delivered on retry");
    assert.ok(e.attempts >= 2);
    await delivered(pf, "later@retry.test");
  });

  test("4xx until the expiry: bounced as expired with a DSN to the sender", T, async () => {
    const expiry = plan.delivery.expiryMs;
    const s = await submit(relay.ctx.js, { rcpts: ["full@busy.test"], mailFrom: "expiry@sender.test", acceptedAt: Date.now() - expiry + 6000 });
    await events.waitFor((x) => x.qid === s.qid && x.type === "deferred", "deferred first");
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "expired", "expired");
    assert.equal(e.class, "mailbox-full");
    const dsn = await delivered(pf, "expiry@sender.test");
    const parsed = await classifyDsn(dsn.raw);
    assert.equal(parsed[0]!.recipient, "full@busy.test");
    assert.equal(parsed[0]!.action, "failed");
  });
});

describe("TLS", () => {
  test("opportunistic: STARTTLS when the receiver offers it", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["o@opp.test", "p@other.test"] });
    const a = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered" && x.rcpts[0] === "o@opp.test", "opp");
    const b = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered" && x.rcpts[0] === "p@other.test", "plain");
    assert.equal(a.tls, true);
    assert.equal(b.tls, false);
    assert.equal((await delivered(pf, "o@opp.test")).tls, true);
  });

  test("provider requires TLS: delivered over TLS, never in clear to a receiver without it", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["t@tls-req.test"] });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "tls delivered");
    assert.equal(e.provider, "tlsprov");
    assert.equal((await delivered(pf, "t@tls-req.test")).tls, true);
    await dns.addRecords([{ type: "MX", name: "notls.test", value: "mx.other.test" }]);
    const n = await submit(relay.ctx.js, { rcpts: ["n@notls.test"] });
    const d = await events.waitFor((x) => x.qid === n.qid && x.type === "deferred", "no TLS: deferred");
    assert.equal(d.class, "routing-error");
    assert.match(d.reply!, /4\.7\.5/);
    assert.equal((await pf.deliveredMessages()).filter(to("n@notls.test")).length, 0);
  });

  test("MTA-STS enforce: verified TLS to a listed MX; an MX without TLS gets nothing", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["s@sts.test", "q@sts-plain.test"] });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "sts delivered");
    assert.deepEqual(e.rcpts, ["s@sts.test"]);
    assert.equal(e.tls, true);
    const d = await events.waitFor((x) => x.qid === s.qid && x.type === "deferred" && x.rcpts[0] === "q@sts-plain.test", "sts-plain deferred");
    assert.equal(d.class, "routing-error");
    assert.match(d.reply!, /4\.7\.5 .*(TLS|STARTTLS)/i, "deferred for want of TLS");
    assert.equal((await pf.deliveredMessages()).filter(to("q@sts-plain.test")).length, 0);
  });
});

async function metric(name: string): Promise<string> {
  return (await relay.ctx.registry.getSingleMetricAsString(name)) ?? "";
}

function sum(text: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line.trim()) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.split(" ").pop());
  }
  return total;
}

describe("lanes", () => {
  const lim = { name: "lim", mxSuffixes: ["limited.test"] };

  test("lane limits under the receiver's anvil limits never trigger them", T, async () => {
    // anvil: 6 messages per 30 s per client; each lane: 5 per 30 s (one every 6 s), 2 connections (anvil: 3).
    await applyPlan({ ...baseSpec, providers: [...baseSpec.providers, { ...lim, lane: { messageRate: { count: 5, periodMs: 30_000 }, maxConnections: 2 } }] });
    const rcpts = Array.from({ length: 16 }, (_, i) => `u${i}@limited.test`);
    const subs = await Promise.all(rcpts.map((r) => submit(relay.ctx.js, { rcpts: [r] })));
    const qids = new Set(subs.map((s) => s.qid));
    await until("16 delivered", () => events.events.filter((e) => qids.has(e.qid) && e.type === "delivered").length === 16, 240_000);
    assert.equal(events.events.filter((e) => qids.has(e.qid) && e.type !== "delivered").length, 0, "no deferral");
    assert.doesNotMatch(await limited.log(), /too much mail|too many connections/, "anvil never fired");
    const msgs = await limited.waitForMessages(16);
    assert.deepEqual(new Set(msgs.map((m) => m.clientIp)), new Set([OUT1.address, OUT2.address]), "both lanes sent");
    const gauge = await metric("mailfleet_lane_connections");
    assert.match(gauge, /source_ip="127\.0\.71\.[12]",provider="lim"|provider="lim".*source_ip/);
    await until("queue depth gauge back at 0", async () => /mailfleet_queue_depth\{[^}]*provider="lim"[^}]*\} 0/.test(await metric("mailfleet_queue_depth")), 30_000);
  });

  test("lane limit above the receiver's: the relay backs off from the real 450 and delivers everything", T, async () => {
    await applyPlan({
      ...baseSpec,
      providers: [...baseSpec.providers, { ...lim, lane: { messageRate: { count: 60, periodMs: 30_000 }, maxConnections: 2 }, rules: [{ name: "slow-on-rate", class: "rate-limited", action: "SlowDown", factor: 0.5, durationMs: 15_000 }] }],
      // only one lane sends to this provider: the other is paused by the plan
      lanes: { [`${OUT2.address}/lim`]: { state: "Paused" } },
    });
    const before = (await limited.deliveredMessages()).length;
    const rcpts = Array.from({ length: 12 }, (_, i) => `v${i}@limited.test`);
    const subs = await Promise.all(rcpts.map((r) => submit(relay.ctx.js, { rcpts: [r] })));
    const qids = new Set(subs.map((s) => s.qid));
    const d = await events.waitFor((e) => qids.has(e.qid) && e.type === "deferred", "a deferral from anvil", 120_000);
    assert.equal(d.class, "rate-limited");
    assert.match(d.reply!, /^450 4\.7\.1 .*too much mail/);
    await until("rule fired", async () => sum(await metric("mailfleet_rule_activations_total"), { rule: "slow-on-rate", source_ip: OUT1.address }) >= 1, 30_000);
    assert.ok(delivery.limiter.view({ pool: POOL, address: OUT1.address, provider: "lim" }).factor < 1, "the lane slowed down");
    await until("12 delivered", () => events.events.filter((e) => qids.has(e.qid) && e.type === "delivered").length === 12, 300_000);
    const msgs = (await limited.deliveredMessages()).slice(before);
    assert.ok(msgs.every((m) => m.clientIp === OUT1.address), "a paused lane sends nothing");
  });

  test("a provider's 421 4.7.28 (Postfix cidr client reply) suspends the lane; the other lane carries the mail", T, async () => {
    const rules = [{ name: "unusual-rate", enhancedCode: "4.7.28", action: "SuspendLane" as const, durationMs: 600_000 }];
    const gprov = { ...baseSpec.providers[0]!, rules };
    // Only out2 may send to gprov at first, so the first message meets the 421.
    await applyPlan({ ...baseSpec, providers: [gprov, baseSpec.providers[1]!], lanes: { [`${OUT1.address}/gprov`]: { state: "Paused" } } });
    await pf.setClientReply(OUT2.address, "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP address", { listener: "127.0.70.1" });
    try {
      const s = await submit(relay.ctx.js, { rcpts: ["rule1@acme.test"] });
      const d = await events.waitFor((e) => e.qid === s.qid && e.type === "deferred", "deferred by 421");
      assert.equal(d.source, OUT2.address);
      assert.equal(d.rule, "unusual-rate");
      assert.match(d.reply!, /^421 4\.7\.28/);
      const v = delivery.limiter.view({ pool: POOL, address: OUT2.address, provider: "gprov" });
      assert.equal(v.sendable, false);
      assert.equal(v.reason, "suspended");
      assert.ok(sum(await metric("mailfleet_rule_activations_total"), { rule: "unusual-rate", action: "SuspendLane" }) >= 1);
      // out1 opens; the deferred message and new ones go through it, none through suspended out2.
      await applyPlan({ ...baseSpec, providers: [gprov, baseSpec.providers[1]!] });
      const more = await Promise.all(["rule2@acme.test", "rule3@acme.test", "rule4@acme.test"].map((r) => submit(relay.ctx.js, { rcpts: [r] })));
      for (const q of [s, ...more]) {
        const e = await events.waitFor((x) => x.qid === q.qid && x.type === "delivered", "delivered via out1");
        assert.equal(e.source, OUT1.address);
      }
      for (const r of ["rule1@acme.test", "rule2@acme.test", "rule3@acme.test", "rule4@acme.test"]) assert.equal((await delivered(pf, r)).clientIp, OUT1.address);
    } finally {
      await pf.clearClientReply(OUT2.address, { listener: "127.0.70.1" });
    }
  });
});

/** Sends a message to the relay's inbound listener; resolves with the reply or the error's reply. */
async function sendInbound(from: string, to: string, raw: Buffer): Promise<string> {
  const t = nodemailer.createTransport({ host: INBOUND.host, port: INBOUND.port, ignoreTLS: true, localAddress: "127.0.70.1", name: "mx1.gprov.test" });
  try {
    return (await t.sendMail({ envelope: { from, to: [to] }, raw })).response;
  } catch (err) {
    return String((err as { response?: string }).response ?? (err as Error).message);
  } finally {
    t.close();
  }
}

function postfixDsn(o: { to: string; rcpt: string; reply: string; status: string; original: string }): Buffer {
  const b = "5F1A2B3C4D.1764300000/mx1.gprov.test";
  return Buffer.from([
    "From: MAILER-DAEMON@mx1.gprov.test (Mail Delivery System)",
    "Subject: Undelivered Mail Returned to Sender",
    `To: ${o.to}`,
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${b}"`,
    "Message-Id: <20261128000000.5F1A2B3C4D@mx1.gprov.test>",
    "",
    "This is a MIME-encapsulated message.",
    "",
    `--${b}`,
    "Content-Description: Notification",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "This is the mail system at host mx1.gprov.test.",
    "",
    `<${o.rcpt}>: ${o.reply}`,
    "",
    `--${b}`,
    "Content-Description: Delivery report",
    "Content-Type: message/delivery-status",
    "",
    "Reporting-MTA: dns; mx1.gprov.test",
    "X-Postfix-Queue-ID: 5F1A2B3C4D",
    "",
    `Final-Recipient: rfc822; ${o.rcpt}`,
    `Original-Recipient: rfc822;${o.rcpt}`,
    "Action: failed",
    `Status: ${o.status}`,
    "Remote-MTA: dns; mailstore.gprov.test",
    `Diagnostic-Code: smtp; ${o.reply}`,
    "",
    `--${b}`,
    "Content-Description: Undelivered Message Headers",
    "Content-Type: text/rfc822-headers",
    "",
    o.original.trimEnd(),
    "",
    `--${b}--`,
    "",
  ].join("\r\n"));
}

describe("inbound", () => {
  test("only VERP and report addresses of return-path domains are taken: no open relay", T, async () => {
    const msg = message({ from: "x@elsewhere.test", to: ["y@other.test"], subject: "relay me" });
    assert.match(await sendInbound("x@elsewhere.test", "someone@other.test", msg), /^550 5\.7\.1/);
    assert.match(await sendInbound("x@elsewhere.test", "random@bounces.sender.test", msg), /^550 5\.7\.1/);
    assert.match(await sendInbound("x@elsewhere.test", "b-00000000000000000000@bounces.unknown.test", msg), /^550 5\.7\.1/);
  });

  test("an asynchronous bounce (RFC 3464, to the VERP address) becomes a bounce event for its message and lane", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["gone@acme.test"] });
    const d = await events.waitFor((e) => e.qid === s.qid && e.type === "delivered", "delivered first");
    const m = await delivered(pf, "gone@acme.test");
    const original = headerText(m.raw);
    const dsn = postfixDsn({ to: s.env.returnPath, rcpt: "gone@acme.test", reply: "550 5.1.1 <gone@acme.test>: Recipient address rejected: User unknown in virtual mailbox table", status: "5.1.1", original });
    assert.match(await sendInbound("", s.env.returnPath, dsn), /^250/);
    const b = await events.waitFor((e) => e.qid === s.qid && e.type === "bounced" && e.async === true, "async bounce");
    assert.deepEqual(b.rcpts, ["gone@acme.test"]);
    assert.equal(b.class, "invalid-recipient");
    assert.equal(b.source, d.source, "the lane's source address, from the receiver's Received header");
    assert.equal(b.provider, "gprov", "the provider, from the recipient domain's MX rollup");
    assert.equal(b.domain, "sender.test");
    assert.equal((await until("suppressed", () => suppressions().check("sender.test", "gone@acme.test"), 30_000)).scope, "global");
  });

  test("a feedback-loop report (RFC 5965 ARF) becomes a complaint for the lane and a per-domain suppression", T, async () => {
    const s = await submit(relay.ctx.js, { rcpts: ["angry@acme.test"] });
    await events.waitFor((e) => e.qid === s.qid && e.type === "delivered", "delivered first");
    const m = await delivered(pf, "angry@acme.test");
    const b = "----=_arf_1";
    const arf = Buffer.from([
      "From: FBL <fbl@feedback.gprov.test>",
      "To: fbl@bounces.sender.test",
      "Subject: FW: complaint",
      "MIME-Version: 1.0",
      `Content-Type: multipart/report; report-type=feedback-report; boundary="${b}"`,
      "",
      `--${b}`,
      "Content-Type: text/plain",
      "",
      "This is an email abuse report.",
      "",
      `--${b}`,
      "Content-Type: message/feedback-report",
      "",
      "Feedback-Type: abuse",
      "User-Agent: gprov-fbl/1.0",
      "Version: 1",
      `Original-Mail-From: <${s.env.returnPath}>`,
      "Original-Rcpt-To: <angry@acme.test>",
      `Source-IP: ${m.clientIp}`,
      "Reported-Domain: sender.test",
      "",
      `--${b}`,
      "Content-Type: text/rfc822-headers",
      "",
      headerText(m.raw).trimEnd(),
      "",
      `--${b}--`,
      "",
    ].join("\r\n"));
    assert.match(await sendInbound("fbl@feedback.gprov.test", "fbl@bounces.sender.test", arf), /^250/);
    const c = await events.waitFor((e) => e.type === "complained" && e.qid === s.qid, "complaint");
    assert.deepEqual(c.rcpts, ["angry@acme.test"]);
    assert.equal(c.source, m.clientIp);
    assert.equal(c.provider, "gprov");
    assert.equal(c.feedbackType, "abuse");
    const hit = await until("suppressed for the domain", () => suppressions().check("sender.test", "angry@acme.test"), 30_000);
    assert.equal(hit.scope, "domain");
    assert.equal(await suppressions().check("other-sender.test", "angry@acme.test"), null, "complaints suppress per sending domain only");
    assert.ok(sum(await metric("mailfleet_complaints_total"), { source_ip: m.clientIp, provider: "gprov" }) >= 1);
  });
});

function headerText(raw: Buffer): string {
  const t = raw.toString("latin1");
  const i = t.search(/\r?\n\r?\n/);
  return (i >= 0 ? t.slice(0, i) : t).replace(/\r?\n/g, "\r\n");
}

describe("webhooks", () => {
  test("events are POSTed signed (HMAC-SHA256) and retried until the endpoint takes them", T, async () => {
    await applyPlan({ ...baseSpec, domains: [{ domain: "sender.test", webhooks: [{ name: "hook", url: `http://${INBOUND.host}:8089/hook`, events: ["delivered", "bounced"], keyName: "webhook.sender.test.hook" }] }] });
    await until("webhook consumer", async () => (await relay.ctx.jsm.consumers.list("MF_EVENTS").next()).some((c) => c.name.startsWith("wh-")), 30_000);
    const s = await submit(relay.ctx.js, { rcpts: ["hooked@acme.test"] });
    const ok = await until("accepted POST", () => hookPosts.find((p) => p.status === 200 && JSON.parse(p.body).qid === s.qid), 120_000);
    const tries = hookPosts.filter((p) => p.headers["mailfleet-event-id"] === ok.headers["mailfleet-event-id"]);
    assert.equal(tries.length, 3, "two failures, then success");
    assert.deepEqual(tries.map((p) => p.headers["mailfleet-attempt"]), ["1", "2", "3"]);
    const ev = JSON.parse(ok.body);
    assert.equal(ev.type, "delivered");
    assert.deepEqual(ev.rcpts, ["hooked@acme.test"]);
    // Verify the signature as a receiver would.
    const sig = String(ok.headers[SIGNATURE_HEADER.toLowerCase()]);
    const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(sig);
    assert.ok(m, sig);
    const expect = createHmac("sha256", HOOK_SECRET).update(`${m[1]}.${ok.body}`).digest();
    assert.ok(timingSafeEqual(expect, Buffer.from(m[2]!, "hex")));
    assert.ok(Math.abs(Date.now() / 1000 - Number(m[1])) < 300);
    // Types the endpoint did not ask for are not sent.
    assert.ok(hookPosts.every((p) => ["delivered", "bounced"].includes(JSON.parse(p.body).type)));
  });
});
