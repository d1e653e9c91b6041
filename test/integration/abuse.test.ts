// Abuse of the relay's listeners (issue 7), against a real relay process (`node relay/main.ts`)
// with a real nats-server, Postfix as the receiving MX (default settings: it would split a message
// at a bare-LF dot, the receiver SMTP smuggling needs), smtp-sink as a host the relay must never
// contact, and dnsmasq. A steady legitimate stream runs through every subtest: none of them may
// refuse it, and at the end every message it was answered 250 for is delivered.
//
// What is already covered in test/integration/relay/submission.test.ts (who may submit, reply
// paths, the four basic smuggling sequences at storage level) is extended here, not repeated.
//
// Addresses: relay 127.0.110.1, trusted clients 127.0.111.0/24 (the legitimate stream 127.0.111.1),
// untrusted 127.0.112.x, idle flood 127.0.113.x, Postfix MX 127.0.114.1, a host that must stay
// untouched (smtp-sink) 127.0.114.2, source address 127.0.115.10, DNS 127.0.53.110.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import nodemailer from "nodemailer";
import { hashPassword } from "../../api/password.ts";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle } from "../env/peers/dns.ts";
import { startPostfix, startSmtpSink, type DeliveredMessage, type PostfixHandle, type SmtpSinkHandle } from "../env/peers/postfix.ts";
import { createCA, issueCert } from "../env/pki.ts";
import { freePort, startProcess, type ManagedProcess } from "../env/proc.ts";
import { makePlan, publishPlan, until, POOL } from "./delivery-harness.ts";
import { message, RawSmtp, type Reply } from "./relay/smtp-client.ts";

const HOST = "127.0.110.1";
const LEGIT = "127.0.111.1";
const trusted = (n: number) => `127.0.111.${n}`;
const untrusted = (n: number) => `127.0.112.${n}`;
const MX = "127.0.114.1";
const EVIL_MX = "127.0.114.2";
const SOURCE = { address: "127.0.115.10", hostname: "out.abuse.test" };
const PASSWORD = "correct horse battery staple";
const MAX_SIZE = 2 * 1024 * 1024;
// Short deadlines keep the test short; the defaults are in relay/README.md "Security".
const COMMAND_TIMEOUT_S = 6;
const PER_IP = 30;
const MAX_CONNECTIONS = 3100;
const ROOT = join(import.meta.dirname, "..", "..");

let base: string;
let nats: Nats;
let dns: DnsHandle;
let pf: PostfixHandle;
let sink: SmtpSinkHandle;
let nc: NatsConnection;
let relay: ManagedProcess;
let caPem: string;
let logFile: string;
const port = { submission: 0, http: 0, inbound: 0 };

before(async () => {
  base = await mkdtemp(join(tmpdir(), "mailfleet-abuse-"));
  await chmod(base, 0o755);
  nats = await startNats({ dir: join(base, "nats"), syncAlways: true });
  dns = await startDns({
    dir: join(base, "dns"),
    address: "127.0.53.110",
    records: [
      { type: "MX", name: "dest.test", value: "mx.dest.test" },
      { type: "A", name: "mx.dest.test", value: MX },
      { type: "MX", name: "evil.test", value: "mx.evil.test" },
      { type: "A", name: "mx.evil.test", value: EVIL_MX },
      { type: "A", name: SOURCE.hostname, value: SOURCE.address },
    ],
  });
  pf = await startPostfix({ dir: join(base, "postfix"), domains: ["dest.test"], listeners: [{ address: MX, hostname: "mx.dest.test" }] });
  sink = await startSmtpSink({ address: EVIL_MX, dir: join(base, "sink") });
  nc = await connect({ servers: nats.urls });
  const plan = makePlan({
    providers: [{ name: "default", lane: { maxConnections: 4, messagesPerConnection: 200 } }],
    addresses: [SOURCE],
    networks: [{ cidr: "127.0.111.0/24", domains: ["sender.test"] }],
    domains: [{ domain: "sender.test" }, { domain: "other.test" }],
  });
  plan.submitters.credentials = [
    { username: "app", hash: await hashPassword(PASSWORD, "abuse/app"), domains: ["sender.test"] },
    { username: "app2", hash: await hashPassword(PASSWORD, "abuse/app2"), domains: ["other.test"] },
  ];
  await publishPlan(nc, plan);

  const ca = await createCA("mailfleet abuse test CA");
  const leaf = await issueCert(ca, { commonName: "relay.mailfleet.test", dnsNames: ["relay.mailfleet.test"], ipAddresses: [HOST], server: true });
  caPem = ca.certPem;
  await mkdir(join(base, "tls"), { recursive: true });
  await mkdir(join(base, "secrets"), { recursive: true });
  await writeFile(join(base, "tls", "tls.crt"), leaf.certPem);
  await writeFile(join(base, "tls", "tls.key"), leaf.keyPem, { mode: 0o600 });

  port.submission = await freePort(HOST);
  port.http = await freePort(HOST);
  port.inbound = await freePort(HOST);
  logFile = join(base, "relay.log");
  relay = startProcess({
    name: "relay-abuse",
    command: join(ROOT, "node_modules", ".bin", "node"),
    args: [join(ROOT, "relay", "main.ts")],
    logFile,
    cwd: ROOT,
    env: {
      ...process.env,
      MAILFLEET_NATS_URL: nats.urls.join(","), MAILFLEET_POOL: POOL, MAILFLEET_RELAY_ID: "relay-abuse",
      MAILFLEET_ADDRESSES: SOURCE.address, MAILFLEET_DNS_SERVERS: dns.server, MAILFLEET_LISTEN_ADDRESS: HOST,
      MAILFLEET_SUBMISSION_PORT: String(port.submission), MAILFLEET_HTTP_PORT: String(port.http), MAILFLEET_INBOUND_PORT: String(port.inbound),
      MAILFLEET_SECRETS_DIR: join(base, "secrets"), MAILFLEET_TLS_DIR: join(base, "tls"), MAILFLEET_MAX_MESSAGE_SIZE: "2Mi",
      MAILFLEET_SMTP_COMMAND_TIMEOUT: `${COMMAND_TIMEOUT_S}s`, MAILFLEET_SMTP_MAX_CONNECTIONS_PER_IP: String(PER_IP),
      MAILFLEET_SMTP_MAX_CONNECTIONS: String(MAX_CONNECTIONS), MAILFLEET_LOG_LEVEL: "info",
    },
  });
  await until("relay /readyz", async () => {
    if (relay.exitCode() !== undefined) throw new Error(`relay exited: ${relay.exitCode()}`);
    return (await http({ method: "GET", path: "/readyz" }).catch(() => ({ status: 0 }))).status === 200;
  }, 90_000);
});

after(async () => {
  await relay?.stop(10_000);
  await nc?.close();
  await sink?.stop();
  await pf?.stop();
  await dns?.stop();
  await nats?.stop();
  if (base && !process.env.MAILFLEET_KEEP_STATE) await rm(base, { recursive: true, force: true });
});

// ---- helpers ------------------------------------------------------------------------------------

function http(o: { method?: string; path: string; body?: unknown; from?: string }): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const payload = o.body === undefined ? undefined : JSON.stringify(o.body);
    const req = httpRequest({
      host: HOST, port: port.http, method: o.method ?? "POST", path: o.path, localAddress: o.from ?? trusted(2), agent: false,
      headers: payload === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(payload) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let body: unknown = text;
        try { body = JSON.parse(text); } catch { /* text */ }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    req.on("error", reject);
    req.end(payload);
  });
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = String((await http({ method: "GET", path: "/metrics" })).body);
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? "").includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** A connection that has read the greeting and said EHLO. */
async function session(from: string, p = port.submission): Promise<RawSmtp & { ehlo: Reply }> {
  const c = await RawSmtp.open(HOST, p, from);
  const g = await c.reply();
  assert.equal(g.code, 220, `greeting for ${from}: ${g.code} ${g.text}`);
  const ehlo = await c.cmd("EHLO client.abuse.test");
  assert.equal(ehlo.code, 250);
  return Object.assign(c, { ehlo });
}

async function tlsSession(from: string): Promise<RawSmtp> {
  const c = await session(from);
  await c.starttls(caPem);
  assert.equal((await c.cmd("EHLO client.abuse.test")).code, 250);
  return c;
}

/** Asserts a reply's code and enhanced status code ("550 5.7.1 ..."). */
function expectReply(r: Reply, code: number, enhanced?: string, what = ""): void {
  const first = r.lines[0] ?? "";
  assert.equal(r.code, code, `${what} ${JSON.stringify(r.lines)}`);
  if (enhanced) assert.ok(first.startsWith(`${code} ${enhanced} `), `${what}: expected ${code} ${enhanced}, got ${JSON.stringify(first)}`);
}

const plainToken = (user: string, pass: string) => Buffer.from(`\0${user}\0${pass}`).toString("base64");

async function delivered(): Promise<DeliveredMessage[]> {
  return pf.deliveredMessages();
}

function subjectOf(m: DeliveredMessage): string | undefined {
  return /^Subject: (.*)$/m.exec(m.raw.toString("latin1").split(/\r?\n\r?\n/)[0]!)?.[1]?.trim();
}

async function waitDelivered(subject: string): Promise<DeliveredMessage[]> {
  return until(`"${subject}" delivered`, async () => {
    const found = (await delivered()).filter((m) => subjectOf(m) === subject);
    return found.length ? found : undefined;
  }, 120_000);
}

// ---- the legitimate stream ------------------------------------------------------------------------

const legit = { accepted: new Set<string>(), refused: [] as string[], stop: false, done: Promise.resolve() };

function startLegitStream(): void {
  legit.done = (async () => {
    const transport = nodemailer.createTransport({ host: HOST, port: port.submission, ignoreTLS: true, localAddress: LEGIT, pool: true, maxConnections: 1, maxMessages: Infinity });
    let n = 0;
    while (!legit.stop) {
      const subject = `legit ${n++}`;
      const to = `legit${n}@dest.test`;
      try {
        const info = await transport.sendMail({ envelope: { from: "app@sender.test", to: [to] }, raw: message({ from: "app@sender.test", to, subject }) });
        if (/^250 /.test(info.response)) legit.accepted.add(subject);
        else legit.refused.push(`${subject}: ${info.response}`);
      } catch (e) {
        legit.refused.push(`${subject}: ${(e as Error).message}`);
      }
      await sleep(100);
    }
    transport.close();
  })();
}

/** Runs fn and checks the legitimate stream kept being accepted meanwhile. */
async function undisturbed(what: string, fn: () => Promise<void>): Promise<void> {
  const before = legit.accepted.size;
  await fn();
  await until(`the legitimate stream to progress during ${what}`, () => legit.accepted.size >= before + 3, 60_000);
  assert.deepEqual(legit.refused, [], `legitimate messages refused during ${what}`);
}

// ---- the tests ---------------------------------------------------------------------------------------

test("abuse: each attack gets the right reply and the legitimate stream is undisturbed", { timeout: 900_000 }, async (t) => {
  startLegitStream();
  await until("the legitimate stream to start", () => legit.accepted.size >= 3, 60_000);

  await t.test("open-relay attempts: untrusted clients, foreign sender domains, routes and percent hacks, the inbound MX", () => undisturbed("open-relay attempts", async () => {
    const u = await session(untrusted(1));
    expectReply(await u.cmd("MAIL FROM:<app@sender.test>"), 530, "5.7.0", "untrusted MAIL");
    expectReply(await u.cmd("MAIL FROM:<@sender.test:app@sender.test>"), 530, "5.7.0", "untrusted, source-routed MAIL");
    expectReply(await u.cmd("RCPT TO:<victim@dest.test>"), 503, "5.5.1", "untrusted RCPT");
    expectReply(await u.cmd("RCPT TO:<victim%dest.test@sender.test>"), 503, "5.5.1", "untrusted percent-hack RCPT");
    assert.equal((await u.cmd("DATA")).code, 503);
    await u.quit();

    // A trusted network may send only as its domains, whatever the route or quoting says.
    const tr = await session(trusted(3));
    expectReply(await tr.cmd("MAIL FROM:<ceo@other.test>"), 550, "5.7.1", "foreign sender domain");
    expectReply(await tr.cmd("MAIL FROM:<@sender.test:ceo@other.test>"), 550, "5.7.1", "source route (RFC 5321 C: ignored, the mailbox is ceo@other.test)");
    expectReply(await tr.cmd("MAIL FROM:<ceo@other.test@sender.test>"), 501, "5.1.7", "two @");
    expectReply(await tr.send("app@sender.test", ["x@dest.test"], message({ from: "ceo@other.test" })), 550, "5.7.1", "foreign From field");
    await tr.quit();

    // A credential may send only as its domains.
    const a = await tlsSession(untrusted(2));
    expectReply(await a.cmd(`AUTH PLAIN ${plainToken("app", PASSWORD)}`), 235, "2.7.0");
    expectReply(await a.cmd("MAIL FROM:<ceo@other.test>"), 550, "5.7.1", "credential, foreign sender domain");
    await a.cmd("RSET");
    expectReply(await a.send("app@sender.test", ["x@dest.test"], message({ from: "Boss <boss@other.test>" })), 550, "5.7.1", "credential, foreign From field");
    await a.quit();

    // A recipient's source route is dropped (RFC 5321 appendix C): the message goes to the
    // domain after the last @ and nowhere else (evil.test's MX is never contacted). A percent
    // hack or bang path is refused: receivers take it for a relay attempt (Postfix: 554 5.7.1
    // Relay access denied).
    const r = await session(trusted(3));
    expectReply(await r.send("app@sender.test", ["@evil.test:route1@dest.test"], message({ from: "app@sender.test", subject: "routing 1" })), 250, "2.0.0");
    expectReply(await r.cmd("MAIL FROM:<app@sender.test>"), 250);
    expectReply(await r.cmd("RCPT TO:<route2%evil.test@dest.test>"), 501, "5.1.3", "percent hack");
    expectReply(await r.cmd("RCPT TO:<evil.test!route3@dest.test>"), 501, "5.1.3", "bang path");
    await r.quit();
    assert.equal((await waitDelivered("routing 1"))[0]!.deliveredTo, "route1@dest.test");
    const h = await http({ path: "/v1/messages", body: { envelope: { from: "app@sender.test", to: ["route4%evil.test@dest.test"] }, subject: "routing 4", text: "x" } });
    assert.equal(h.status, 400, "percent hack over HTTP");

    // The inbound MX takes mail only for its own VERP and report addresses.
    const ib = await session(untrusted(3), port.inbound);
    assert.ok(!/AUTH/.test(ib.ehlo.text), "no AUTH on the inbound listener");
    expectReply(await ib.cmd("MAIL FROM:<spammer@evil.test>"), 250);
    for (const rcpt of ["victim@dest.test", "@bounces.sender.test:victim@dest.test", "victim%dest.test@bounces.sender.test", "postmaster%dest.test@bounces.sender.test", "b-0123456789abcdefghjk%dest.test@bounces.sender.test", "app@sender.test"]) {
      expectReply(await ib.cmd(`RCPT TO:<${rcpt}>`), 550, "5.7.1", `inbound RCPT ${rcpt}`);
    }
    expectReply(await ib.cmd("RCPT TO:<victim@dest.test@bounces.sender.test>"), 501, undefined, "two @ at the inbound MX");
    assert.equal((await ib.cmd("DATA")).code, 503, "no recipient taken");
    await ib.quit();
  }));

  await t.test("AUTH without TLS is not offered, and refused (538 5.7.11) if sent anyway", () => undisturbed("AUTH without TLS", async () => {
    const before = await metric("mailfleet_relay_smtp_guard_events_total", { reason: "auth-before-tls" });
    const c = await session(untrusted(4));
    assert.match(c.ehlo.text, /STARTTLS/);
    assert.doesNotMatch(c.ehlo.text, /AUTH/);
    expectReply(await c.cmd(`AUTH PLAIN ${plainToken("app", PASSWORD)}`), 538, "5.7.11", "AUTH PLAIN in clear");
    expectReply(await c.cmd("AUTH LOGIN"), 538, "5.7.11", "AUTH LOGIN in clear");
    expectReply(await c.cmd(`AUTH LOGIN ${Buffer.from("app").toString("base64")}`), 538, "5.7.11", "AUTH LOGIN with initial response in clear");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test>"), 530, "5.7.0", "the credential sent in clear did not authenticate");
    await c.quit();
    assert.equal(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "auth-before-tls" }), before + 3);
    const log = await readFile(logFile, "utf8");
    assert.ok(!log.includes(PASSWORD) && !log.includes(plainToken("app", PASSWORD)), "the credential sent in clear is not logged");
  }));

  await t.test("AUTH brute force: throttled per client address, cut after 3 failures per connection, logged without the password", () => undisturbed("AUTH brute force", async () => {
    const ip = untrusted(20);
    const guesses: string[] = [];
    const guess = async (c: RawSmtp, user = "app") => {
      const pw = `guess-${guesses.length}-${Math.random().toString(36).slice(2)}`;
      guesses.push(pw);
      return c.cmd(`AUTH PLAIN ${plainToken(user, pw)}`);
    };
    const c1 = await tlsSession(ip);
    expectReply(await guess(c1), 535, "5.7.8", "1st failure");
    expectReply(await guess(c1, "nosuchuser"), 535, "5.7.8", "2nd failure (unknown user)");
    expectReply(await guess(c1), 421, "4.7.0", "3rd failure on one connection closes it");
    await until("the connection closed", () => c1.closed, 10_000);

    // Parallel connections from the same address gain nothing: attempts are answered one at a
    // time, each after the back-off of the failures before it (1 s, 2 s, 4 s after 3, 4, 5).
    const conns = await Promise.all([1, 2, 3].map(() => tlsSession(ip)));
    const t0 = Date.now();
    const answered = await Promise.all(conns.map(async (c) => {
      const r = await guess(c);
      return { r, at: Date.now() - t0 };
    }));
    for (const { r } of answered) expectReply(r, 535, "5.7.8", "parallel guess");
    const last = Math.max(...answered.map((a) => a.at));
    assert.ok(last >= 6_000, `three parallel guesses after three failures are throttled (1 + 2 + 4 s of back-off): the last was answered after ${last} ms`);

    // The right password from that address waits its turn too, then works; another address is not held back.
    const ok = await tlsSession(ip);
    expectReply(await ok.cmd(`AUTH PLAIN ${plainToken("app", PASSWORD)}`), 235, "2.7.0", "right password from the throttled address");
    await ok.quit();
    const other = await tlsSession(untrusted(21));
    expectReply(await other.cmd(`AUTH PLAIN ${plainToken("app", PASSWORD)}`), 235, "2.7.0", "right password from another address");
    await other.quit();
    for (const c of conns) await c.quit();

    const log = await readFile(logFile, "utf8");
    const failures = log.split("\n").filter((l) => l.includes('"msg":"AUTH failed"') && l.includes(`"ip":"${ip}"`));
    assert.equal(failures.length, guesses.length, "every failure logged");
    assert.ok(failures.some((l) => l.includes('"username":"nosuchuser"')), "with the username");
    for (const pw of guesses) {
      assert.ok(!log.includes(pw) && !log.includes(plainToken("app", pw)) && !log.includes(plainToken("nosuchuser", pw)), "never the password");
    }
  }));

  await t.test("STARTTLS command injection: commands pipelined after STARTTLS in the same packet are discarded", () => undisturbed("STARTTLS injection", async () => {
    const c = await session(untrusted(5));
    await c.starttls(caPem, "relay.mailfleet.test", `AUTH PLAIN ${plainToken("app", PASSWORD)}\r\nMAIL FROM:<app@sender.test>\r\nRCPT TO:<injected@dest.test>\r\n`);
    const e = await c.cmd("EHLO client.abuse.test");
    assert.equal(e.code, 250, "the first reply in the TLS session answers the first command sent in it");
    assert.match(e.text, /AUTH PLAIN LOGIN/, "AUTH still offered: the injected AUTH did not run");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test>"), 530, "5.7.0", "not authenticated by the injected AUTH");
    await c.quit();

    const tr = await session(trusted(4));
    await tr.starttls(caPem, "relay.mailfleet.test", "MAIL FROM:<app@sender.test>\r\nRCPT TO:<injected@dest.test>\r\nDATA\r\n");
    assert.equal((await tr.cmd("EHLO client.abuse.test")).code, 250);
    expectReply(await tr.cmd("RCPT TO:<injected2@dest.test>"), 503, "5.5.1", "no injected transaction in the TLS session");
    expectReply(await tr.send("app@sender.test", ["after-tls@dest.test"], message({ from: "app@sender.test", subject: "after starttls" })), 250, "2.0.0");
    await tr.quit();
    const got = await waitDelivered("after starttls");
    assert.deepEqual(got.map((m) => m.deliveredTo), ["after-tls@dest.test"]);
  }));

  await t.test("envelope and header injection: CR/LF in SMTP parameters, bare CR/LF and NUL in headers, the HTTP API", () => undisturbed("injection", async () => {
    const c = await session(trusted(5));
    expectReply(await c.cmd("MAIL FROM:<app@sender.test>\rRCPT TO:<x@evil.test>"), 555, "5.5.4", "bare CR splitting MAIL into junk parameters");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test> ENVID=a+0D+0ABcc:x@evil.test"), 501, undefined, "CRLF in ENVID (xtext)");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test> X-EVIL=1"), 555, "5.5.4", "unknown MAIL parameter");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test>"), 250);
    expectReply(await c.cmd("RCPT TO:<x@dest.test> ORCPT=rfc822;x+0D+0ABcc:y@evil.test"), 501, undefined, "CRLF in ORCPT (xtext)");
    expectReply(await c.cmd("RCPT TO:<x@dest.test>\rDATA"), 555, "5.5.4", "bare CR splitting RCPT");
    expectReply(await c.cmd("RCPT TO:<x@dest.test\r>"), 501, undefined, "CR inside the address");
    await c.cmd("RSET");

    // Line ends are normalised before the From check: the relay reads the header as later hops do.
    const hdr = (lines: string) => `${lines}\r\n\r\nbody\r\n`;
    expectReply(await c.send("app@sender.test", ["inj@dest.test"], hdr("From: app@sender.test\r\nSubject: a\rFrom: ceo@other.test\r\nTo: inj@dest.test")), 550, "5.6.0", "a second From behind a bare CR");
    expectReply(await c.send("app@sender.test", ["inj@dest.test"], hdr("From: app@sender.test\r\nSubject: b\nFrom: ceo@other.test")), 550, "5.6.0", "a second From behind a bare LF");
    expectReply(await c.send("app@sender.test", ["inj@dest.test"], hdr("From: app@sender.test\r\nFr\0om: ceo@other.test\r\nSubject: c")), 554, "5.6.0", "NUL in a header field name");
    expectReply(await c.send("app@sender.test", ["inj@dest.test"], hdr("From: app@sender.test\r\nnot a header line\r\nFrom: ceo@other.test")), 554, "5.6.0", "a header line without a colon");
    expectReply(await c.send("app@sender.test", ["inj@dest.test"], hdr("From: app@sender.test\r\nSubject: hidden bcc\r\nX-Note: v\nBcc: hidden@dest.test\r\nTo: inj@dest.test")), 250, "2.0.0", "Bcc behind a bare LF");
    await c.quit();
    const [bcc] = await waitDelivered("hidden bcc");
    assert.equal(bcc!.deliveredTo, "inj@dest.test");
    assert.doesNotMatch(bcc!.raw.toString("latin1"), /^Bcc:/im, "Bcc removed");

    const good = { envelope: { from: "app@sender.test", to: ["http@dest.test"] }, subject: "http ok", text: "hello" };
    const cases: [string, unknown, RegExp][] = [
      ["CRLF in a header value", { ...good, headers: { "X-Note": "v\r\nBcc: x@evil.test" } }, /headers\.X-Note/],
      ["LF in a header value", { ...good, headers: { "X-Note": "v\nFrom: ceo@other.test" } }, /headers\.X-Note/],
      ["CRLF in a header name", { ...good, headers: { "X-Note: v\r\nBcc": "x@evil.test" } }, /headers\.X-Note/],
      ["a colon in a header name", { ...good, headers: { "From: ceo@other.test\r\nX": "v" } }, /headers\./],
      ["CRLF in the subject", { ...good, subject: "hi\r\nBcc: x@evil.test" }, /subject/],
      ["CRLF in the From header", { ...good, headers: { From: "app@sender.test\r\nBcc: x@evil.test" } }, /headers\.From/],
      ["CRLF in envelope.from", { ...good, envelope: { from: "app@sender.test\r\nRCPT TO:<x@evil.test>", to: ["http@dest.test"] } }, /sender/],
      ["CRLF in envelope.to", { ...good, envelope: { from: "app@sender.test", to: ["http@dest.test\r\nBcc: x@evil.test"] } }, /recipient/],
    ];
    for (const [what, body, field] of cases) {
      const r = await http({ path: "/v1/messages", body });
      assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.body)}`);
      assert.match(r.body.error.message, field, `${what}: the refusal names the field`);
    }
    const raw = (s: string) => ({ envelope: good.envelope, raw: Buffer.from(s).toString("base64") });
    const nul = await http({ path: "/v1/messages", body: raw("From: app@sender.test\r\nSubject: n\0ul\r\n\r\nx\r\n") });
    assert.equal(nul.status, 422);
    assert.deepEqual([nul.body.error.code, nul.body.error.enhanced], [554, "5.6.0"]);
    const bare = await http({ path: "/v1/messages", body: raw("From: app@sender.test\nSubject: x\rFrom: ceo@other.test\n\nx\n") });
    assert.equal(bare.status, 422);
    assert.deepEqual([bare.body.error.code, bare.body.error.enhanced], [550, "5.6.0"]);
    const ok = await http({ path: "/v1/messages", body: { ...good, headers: { "X-Campaign-ID": "c1" } } });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
  }));

  await t.test("SMTP smuggling: no variant ends the message early at the relay, and Postfix receives nothing it could split", () => undisturbed("smuggling", async () => {
    const VARIANTS = ["\n.\r\n", "\r\n.\n", "\r.\r", "\n.\n", "\r\n.\r", "\r.\n", "\n.\r", "\r\n.\r\r\n", "\r\n\r\n.\n", "\n..\n"];
    const c = await session(trusted(6));
    const subjects: string[] = [];
    for (const [i, seq] of VARIANTS.entries()) {
      for (const smuggle of [true, false]) {
        const subject = `smuggle ${i} ${smuggle}`;
        subjects.push(subject);
        expectReply(await c.cmd("MAIL FROM:<app@sender.test>"), 250);
        expectReply(await c.cmd(`RCPT TO:<smuggle-${i}-${smuggle}@dest.test>`), 250);
        assert.equal((await c.cmd("DATA")).code, 354);
        c.write(`From: app@sender.test\r\nTo: smuggle-${i}@dest.test\r\nSubject: ${subject}\r\n\r\nfirst part${seq}`);
        await assert.rejects(c.reply(400), /no SMTP reply/, `${JSON.stringify(seq)} ended the message at the relay`);
        c.write((smuggle
          ? `MAIL FROM:<ceo@other.test>\r\nRCPT TO:<victim-${i}@dest.test>\r\nDATA\r\nFrom: ceo@other.test\r\nTo: victim-${i}@dest.test\r\nSubject: SMUGGLED ${i}\r\n\r\nsmuggled\r\n`
          : "") + "last line\r\n.\r\n");
        expectReply(await c.reply(), 250, "2.0.0", `${JSON.stringify(seq)} smuggle=${smuggle}`);
        // Nothing else was answered: the next reply is the NOOP's.
        expectReply(await c.cmd("NOOP"), 250, "2.0.0", "no reply to smuggled commands");
      }
    }
    await c.quit();
    const all = await until("every smuggling message delivered", async () => {
      const d = (await delivered()).filter((m) => m.deliveredTo.startsWith("smuggle-"));
      return d.length >= subjects.length ? d : undefined;
    }, 180_000);
    for (const s of subjects) {
      const copies = all.filter((m) => subjectOf(m) === s);
      assert.equal(copies.length, 1, `${s}: one message`);
      const text = copies[0]!.raw.toString("latin1");
      assert.match(text, /first part/);
      assert.match(text, /last line/, `${s}: Postfix got the whole message`);
      if (s.endsWith("true")) assert.match(text, /SMUGGLED[\s\S]*smuggled/, `${s}: the smuggled part stayed inside the message`);
    }
    const split = (await delivered()).filter((m) => m.deliveredTo.startsWith("victim-") || /^SMUGGLED/.test(subjectOf(m) ?? ""));
    assert.deepEqual(split.map((m) => m.deliveredTo), [], "Postfix split nothing off");
  }));

  await t.test("oversize: SIZE over the limit 552 5.3.4, a DATA over it 552 5.3.4 after the whole message, nothing stored", () => undisturbed("oversize", async () => {
    const c = await session(trusted(7));
    expectReply(await c.cmd(`MAIL FROM:<app@sender.test> SIZE=${MAX_SIZE + 1}`), 552, "5.3.4", "SIZE over the limit");
    expectReply(await c.cmd("MAIL FROM:<app@sender.test> SIZE=12x"), 501, "5.5.4", "SIZE not a number");
    expectReply(await c.cmd(`MAIL FROM:<app@sender.test> SIZE=${"9".repeat(21)}`), 501, "5.5.4", "SIZE of 21 digits");
    expectReply(await c.cmd(`MAIL FROM:<app@sender.test> SIZE=${MAX_SIZE}`), 250, undefined, "SIZE at the limit");
    expectReply(await c.cmd("RCPT TO:<big@dest.test>"), 250);
    assert.equal((await c.cmd("DATA")).code, 354);
    const line = "x".repeat(998) + "\r\n";
    c.write(`From: app@sender.test\r\nSubject: oversize\r\n\r\n`);
    for (let i = 0; i < 3000; i++) c.write(line); // 3 MB, in pieces: the reply must wait for the end
    await assert.rejects(c.reply(300), /no SMTP reply/, "no reply before the end of the message");
    c.write(".\r\n");
    expectReply(await c.reply(), 552, "5.3.4", "message over the limit");
    expectReply(await c.send("app@sender.test", ["after-big@dest.test"], message({ from: "app@sender.test", subject: "after oversize" })), 250, "2.0.0", "the connection stays usable");
    await c.quit();
    await waitDelivered("after oversize");
  }));

  await t.test("slow drip (one byte a second) is cut by the deadlines with 421 4.4.2; a slow but steady DATA is not", () => undisturbed("slow drip", async () => {
    /** Connects, writes `prefix` at once and waits for `waitFor` in the replies, then writes one byte a second of `drip` until the relay closes. */
    const dripper = async (from: string, prefix: string, waitFor: RegExp, drip: string): Promise<{ text: string; closedAfterMs: number }> => {
      const s: Socket = netConnect({ host: HOST, port: port.submission, localAddress: from });
      let text = "";
      let closed = false;
      s.setEncoding("latin1");
      s.on("data", (d: string) => { text += d; });
      s.on("error", () => {});
      const gone = new Promise<void>((r) => s.on("close", () => { closed = true; r(); }));
      await until(`${from}: greeting`, () => text.includes("\r\n"), 30_000);
      if (prefix) s.write(prefix, "latin1");
      await until(`${from}: ${waitFor}`, () => waitFor.test(text), 30_000);
      const started = Date.now();
      for (let i = 0; i < drip.length && !closed; i++) {
        s.write(drip[i]!, "latin1");
        await Promise.race([sleep(1000), gone]);
      }
      await Promise.race([gone, sleep(60_000)]);
      s.destroy();
      assert.ok(closed, `${from}: the relay never closed the dripping connection: ${JSON.stringify(text.slice(-200))}`);
      return { text, closedAfterMs: Date.now() - started };
    };
    const steady = (async () => {
      // 24 KiB at 2 KiB/s: longer than the command timeout, above the minimum data rate.
      const c = await session(trusted(9));
      expectReply(await c.cmd("MAIL FROM:<app@sender.test>"), 250);
      expectReply(await c.cmd("RCPT TO:<steady@dest.test>"), 250);
      assert.equal((await c.cmd("DATA")).code, 354);
      c.write("From: app@sender.test\r\nSubject: slow but steady\r\n\r\n");
      for (let i = 0; i < 24; i++) {
        c.write(("y".repeat(1022) + "\r\n"));
        await sleep(500);
      }
      c.write(".\r\n");
      const r = await c.reply();
      await c.quit();
      return r;
    })();
    const [cmd, data, tls, ok] = await Promise.all([
      dripper(untrusted(30), "", /^220 /, "EHLO " + "a".repeat(300)),
      dripper(trusted(8), "EHLO drip\r\nMAIL FROM:<app@sender.test>\r\nRCPT TO:<drip@dest.test>\r\nDATA\r\n", /354 /, "From: app@sender.test\r\nSubject: drip\r\n\r\n" + "z".repeat(300)),
      dripper(untrusted(31), "EHLO tls\r\nSTARTTLS\r\n", /220 [^\r]*TLS/, "\x16\x03\x01\x02\x00" + "\x01".repeat(300)),
      steady,
    ]);
    for (const [what, r] of [["command", cmd], ["DATA", data]] as const) {
      assert.match(r.text, /421 4\.4\.2 /, `${what} drip: answered 421 4.4.2: ${JSON.stringify(r.text.slice(-200))}`);
      assert.ok(r.closedAfterMs >= (COMMAND_TIMEOUT_S - 1) * 1000, `${what} drip: not cut before the deadline (${r.closedAfterMs} ms)`);
    }
    assert.ok(tls.closedAfterMs >= (COMMAND_TIMEOUT_S - 1) * 1000, `TLS handshake drip cut at its deadline (${tls.closedAfterMs} ms)`);
    expectReply(ok, 250, "2.0.0", "slow but steady DATA");
    await waitDelivered("slow but steady");
    assert.ok(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "timeout-command" }) >= 1);
    assert.ok(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "timeout-data" }) >= 1);
    assert.ok(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "timeout-tls" }) >= 1);
  }));

  await t.test(`thousands of idle connections: others are still served; ${PER_IP + 1}th from one address 421 4.7.0, over ${MAX_CONNECTIONS} 421 4.3.2`, () => undisturbed("idle connections", async () => {
    const flood: Socket[] = [];
    const openIdle = (from: string) => new Promise<string>((resolve) => {
      const s = netConnect({ host: HOST, port: port.submission, localAddress: from });
      flood.push(s);
      let text = "";
      s.setEncoding("latin1");
      s.on("data", (d: string) => { text += d; if (text.includes("\r\n")) resolve(text.split("\r\n")[0]!); });
      s.on("error", () => resolve(`error: ${text}`));
      s.on("close", () => resolve(text.split("\r\n")[0] || "closed"));
    });
    try {
      const addresses = Array.from({ length: 100 }, (_, i) => `127.0.113.${i + 1}`);
      const greetings: string[] = [];
      for (const a of addresses) greetings.push(...(await Promise.all(Array.from({ length: PER_IP }, () => openIdle(a)))));
      assert.equal(greetings.filter((g) => g.startsWith("220 ")).length, 3000, "3000 idle connections greeted");
      assert.match(await openIdle(addresses[0]!), /^421 4\.7\.0 Too many connections from 127\.0\.113\.1/);

      // While 3000 sit idle, a new client is served.
      const c = await session(trusted(10));
      expectReply(await c.send("app@sender.test", ["during-idle@dest.test"], message({ from: "app@sender.test", subject: "during idle flood" })), 250, "2.0.0");
      await c.quit();

      // Over the total: 421 4.3.2 (the open connections, the legitimate stream's among them, carry on).
      const more: string[] = [];
      for (const a of ["127.0.113.101", "127.0.113.102", "127.0.113.103", "127.0.113.104"]) more.push(...(await Promise.all(Array.from({ length: PER_IP }, () => openIdle(a)))));
      assert.ok(more.some((g) => /^421 4\.3\.2 /.test(g)), `over ${MAX_CONNECTIONS}: 421 4.3.2 (${[...new Set(more.map((g) => g.slice(0, 12)))].join(", ")})`);
    } finally {
      for (const s of flood) s.destroy();
    }
    await until("the flood's connections closed at the relay", async () => (await metric("mailfleet_relay_submission_connections")) < 20, 60_000);
    const c = await session(trusted(10));
    expectReply(await c.send("app@sender.test", ["after-idle@dest.test"], message({ from: "app@sender.test", subject: "after idle flood" })), 250, "2.0.0");
    await c.quit();
    await waitDelivered("during idle flood");
    await waitDelivered("after idle flood");
    assert.ok(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "limit-ip" }) >= 1);
    assert.ok(await metric("mailfleet_relay_smtp_guard_events_total", { reason: "limit-total" }) >= 1);
  }));

  await t.test("malformed MIME: passed through when only the body is odd; refused when the header is (NUL, no colon, oversized)", () => undisturbed("malformed MIME", async () => {
    const c = await session(trusted(11));
    const head = (subject: string, extra = "") => `From: app@sender.test\r\nTo: mime@dest.test\r\nSubject: ${subject}\r\nMIME-Version: 1.0\r\n${extra}`;
    const nested = (depth: number): string => depth === 0
      ? "Content-Type: text/plain\r\n\r\nleaf\r\n"
      : `Content-Type: multipart/mixed; boundary="b${depth}"\r\n\r\n--b${depth}\r\n${nested(depth - 1)}--b${depth}--\r\n`;
    const passed: [string, string][] = [
      ["broken boundaries", head("broken boundaries", 'Content-Type: multipart/mixed; boundary="declared"\r\n') + "\r\n--other\r\nContent-Type: text/plain\r\n\r\nno closing boundary\r\n--declared\r\n"],
      ["nested multiparts", head("nested multiparts") + nested(60)],
      ["8-bit header", head("Grüße aus Köln ✓", "Content-Type: text/plain; charset=utf-8\r\n") + "\r\n8-bit header without SMTPUTF8\r\n"],
      ["no body", head("no body").replace(/\r\n$/, "")],
      ["many fields", head("many fields") + Array.from({ length: 5000 }, (_, i) => `X-F${i}: v`).join("\r\n") + "\r\n\r\nbody\r\n"],
    ];
    for (const [what, msg] of passed) expectReply(await c.send("app@sender.test", ["mime@dest.test"], msg), 250, "2.0.0", what);
    const refused: [string, string, number, string][] = [
      ["NUL in the body", head("nul body") + "\r\nbinary\0zero\r\n", 554, "5.6.0"],
      ["NUL in a header", head("nul\0header") + "\r\nx\r\n", 554, "5.6.0"],
      ["a header line without a colon", head("no colon", "this is not a field\r\n") + "\r\nx\r\n", 554, "5.6.0"],
      ["a folded line before any field", " folded\r\n" + head("folded first") + "\r\nx\r\n", 554, "5.6.0"],
      ["a header section of 300 KiB", head("huge header", `X-Big: ${"h".repeat(300 * 1024)}\r\n`) + "\r\nx\r\n", 552, "5.3.4"],
    ];
    for (const [what, msg, code, enhanced] of refused) expectReply(await c.send("app@sender.test", ["mime@dest.test"], msg), code, enhanced, what);
    await c.quit();
    for (const s of ["broken boundaries", "nested multiparts", "no body"]) await waitDelivered(s);
    const eight = Buffer.from("Subject: Grüße aus Köln ✓");
    await until("the 8-bit header delivered with its bytes unchanged", async () => (await delivered()).some((m) => m.raw.includes(eight)), 120_000);

    // The inbound MX parses MIME (bounce and complaint reports): malformed reports are taken and
    // dropped, not fatal.
    const ib = await session(untrusted(40), port.inbound);
    const deep = (depth: number): string => depth === 0 ? "\r\nleaf\r\n" : `Content-Type: multipart/report; report-type=delivery-status; boundary="r${depth}"\r\n\r\n--r${depth}\r\n${deep(depth - 1)}`;
    for (const [what, body] of [
      ["deeply nested, never closed", `From: MAILER-DAEMON@dest.test\r\nSubject: bounce\r\nMIME-Version: 1.0\r\n${deep(2000)}`],
      ["broken report", "From: MAILER-DAEMON@dest.test\r\nSubject: bounce\r\nContent-Type: multipart/report; boundary=\"x\"\r\n\r\n--y\r\nContent-Type: message/delivery-status\r\n\r\nnot: a status\r\n"],
    ] as const) {
      expectReply(await ib.send("MAILER-DAEMON@dest.test", ["postmaster@bounces.sender.test"], body), 250, undefined, `inbound: ${what}`);
    }
    await ib.quit();
    assert.equal(relay.exitCode(), undefined, "the relay is still running");
  }));

  legit.stop = true;
  await legit.done;
  assert.deepEqual(legit.refused, [], "no legitimate message refused");
  const subjects = [...legit.accepted];
  await until("every legitimate message answered 250 delivered", async () => {
    const got = new Set((await delivered()).map(subjectOf));
    return subjects.every((s) => got.has(s));
  }, 300_000);
  t.diagnostic(`legitimate stream: ${subjects.length} messages accepted and delivered`);
  assert.equal(sink.count(), 0, "evil.test's MX was never sent anything");
  assert.equal(relay.exitCode(), undefined, "the relay is still running");
  const log = await readFile(logFile, "utf8");
  assert.doesNotMatch(log, /"msg":"(submission error|http handler failed)"|Uncaught|FATAL/, "no internal errors in the relay log");
});
