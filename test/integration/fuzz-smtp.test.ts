// Fuzzing the SMTP command handling of a running relay process over real sockets (fast-check):
// generated sessions of valid and mutated commands, parameters, line endings, lengths, pipelined
// groups, STARTTLS and AUTH, and messages with odd headers and smuggling sequences, from trusted,
// untrusted and authenticated clients. Invariants:
//   - every reply is a well-formed SMTP reply (one code on every line, the last line "ddd ",
//     an enhanced code of the same class) with a code valid for the command it answers;
//   - the relay never crashes and never hangs (every reply comes, a new client is served after
//     each session), and answers nothing it was not asked;
//   - AUTH succeeds only over TLS and outside a mail transaction;
//   - nothing is accepted from a client that may not send: MAIL is 250 only for a trusted or
//     authenticated client and one of its domains, and a message whose header names a From
//     domain the client may not use is never 250;
//   - a message is either accepted whole (250 with a queue id, envelope and body in JetStream)
//     or not at all (nothing stored).
// Budget: MAILFLEET_FUZZ_RUNS sessions (default 150) or MAILFLEET_FUZZ_SECONDS (default 60),
// whichever ends first; the seed is printed, and MAILFLEET_FUZZ_SEED replays a failure.
// Addresses: relay 127.0.122.1, trusted clients 127.0.120.0/24, untrusted 127.0.121.0/24.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeEnvelope } from "../../relay/queue/envelope.ts";
import { STREAM_BODY, STREAM_QUEUE, subjects } from "../../relay/queue/topology.ts";
import { domainPlan, eventually, makePlan, PASSWORD, startRelayFixture, startRelayProcess } from "./relay/fixture.ts";
import { RawSmtp, type Reply } from "./relay/smtp-client.ts";

const HOST = "127.0.122.1";
const MAX_SIZE = 64 * 1024;
const REPLY_TIMEOUT = 40_000; // longer than the AUTH back-off's 15 s cap: a missing reply is a hang
const ALLOWED = { net: new Set(["sender.test"]), app: new Set(["sender.test"]), app2: new Set(["other.test"]) } as const;

// ---- what a reply may be -------------------------------------------------------------------------

// RFC 5321 4.3.2 (and the extensions' RFCs: 3207 STARTTLS, 4954 AUTH, 1870 SIZE, 3461 DSN). Any
// command may also get 421 (closing), 500 (syntax, line too long), 501 (arguments), 503 (sequence).
const ANY = [421, 500, 501, 503];
const CODES: Record<string, number[]> = {
  GREETING: [220, 421, 554],
  EHLO: [250, 502, 504, 550],
  HELO: [250, 502, 504, 550],
  MAIL: [250, 450, 451, 452, 455, 530, 550, 552, 553, 555],
  RCPT: [250, 251, 450, 451, 452, 455, 530, 550, 551, 552, 553, 555],
  DATA: [354, 450, 451, 452, 530, 554],
  END: [250, 450, 451, 452, 550, 552, 554],
  RSET: [250],
  NOOP: [250],
  QUIT: [221],
  VRFY: [250, 251, 252, 502, 504, 550, 551, 553],
  HELP: [211, 214, 502, 504],
  STARTTLS: [220, 454],
  AUTH: [235, 334, 454, 504, 530, 534, 535, 538],
  AUTH_CONT: [235, 334, 454, 535],
  // Extensions not offered here; 550 5.7.0 is how Postfix's XCLIENT refuses a client.
  XCLIENT: [220, 250, 502, 550],
  XFORWARD: [250, 502, 550],
  EXPN: [250, 252, 502, 550],
  ETRN: [250, 251, 252, 253, 458, 459, 502],
  OTHER: [502],
};

function checkReply(r: Reply, what: string, verb: string): void {
  const codes = [...ANY, ...(CODES[verb] ?? CODES.OTHER!)];
  assert.ok(r.lines.length > 0, `${what}: empty reply`);
  r.lines.forEach((line, i) => {
    const last = i === r.lines.length - 1;
    assert.match(line, last ? /^\d{3}( [^\r\n]*)?$/ : /^\d{3}-[^\r\n]*$/, `${what}: malformed reply line ${JSON.stringify(line)}`);
    assert.equal(line.slice(0, 3), String(r.code), `${what}: mixed codes in ${JSON.stringify(r.lines)}`);
    const enhanced = /^\d{3}[ -]([245])\.\d{1,3}\.\d{1,3}(?: |$)/.exec(line);
    if (enhanced) assert.equal(enhanced[1], String(r.code)[0], `${what}: enhanced code of another class: ${JSON.stringify(line)}`);
    // RFC 2034 section 3: with ENHANCEDSTATUSCODES advertised, every 2xx/4xx/5xx reply carries
    // one, except the greeting and the replies to HELO and EHLO.
    else if (!["GREETING", "EHLO", "HELO"].includes(verb) && !/^3/.test(String(r.code))) assert.fail(`${what}: no enhanced status code in ${JSON.stringify(line)}`);
  });
  assert.ok(codes.includes(r.code), `${what}: ${r.code} is not a reply to ${verb}: ${JSON.stringify(r.lines)}`);
}

/** The verb smtp-server dispatches on: the line up to the first space, upper-cased. */
function verbOf(line: string): string {
  const v = line.split(" ")[0]!.toUpperCase();
  return v in CODES && v !== "GREETING" && v !== "END" && v !== "AUTH_CONT" && v !== "OTHER" ? v : "OTHER";
}

// ---- what a session is ---------------------------------------------------------------------------

const domainsArb = fc.constantFrom("sender.test", "other.test", "SENDER.TEST", "dest.test", "evil.test", "sender.test.", "xn--bcher-kva.test", "[127.0.0.1]", "localhost", "");
const localArb = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom("app", "news", "a.b+tag", "Ünïcode", "\"quoted local\"", "a%evil.test", "evil.test!a", "", "a..b", ".a") },
  { weight: 1, arbitrary: fc.string({ maxLength: 80 }) },
  { weight: 1, arbitrary: fc.constant("l".repeat(300)) },
);
const addressArb = fc.oneof(
  { weight: 8, arbitrary: fc.tuple(localArb, domainsArb).map(([l, d]) => `${l}@${d}`) },
  { weight: 1, arbitrary: fc.tuple(domainsArb, localArb, domainsArb).map(([r, l, d]) => `@${r}:${l}@${d}`) },
  { weight: 1, arbitrary: fc.constantFrom("", "postmaster", "a@b@c.test", "a@sender.test\r", "a@sender.test\u200b", "a@\0sender.test") },
);
const paramArb = fc.oneof(
  fc.constantFrom("SIZE=100", `SIZE=${MAX_SIZE + 1}`, "SIZE=x", "SIZE=", "SIZE", `SIZE=${"9".repeat(25)}`, "BODY=8BITMIME", "BODY=7BIT", "BODY=BINARYMIME", "BODY=junk", "SMTPUTF8", "RET=FULL", "RET=HDRS", "RET=x", "ENVID=abc", "ENVID=a+0D+0Ab", "AUTH=<>", "REQUIRETLS", "NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER,DELAY", "NOTIFY=x", "ORCPT=rfc822;a@b.test", "ORCPT=junk", "X-FOO=bar", "=", "\r"),
  fc.tuple(fc.stringMatching(/^[A-Za-z-]{1,8}$/), fc.string({ maxLength: 20 })).map(([k, v]) => `${k}=${v}`),
);

const mailLine = fc.tuple(fc.constantFrom("MAIL FROM:", "mail from:", "MAIL FROM: ", "MAIL FROM", "MAIL  FROM:", "MAIL TO:"), addressArb, fc.array(paramArb, { maxLength: 3 }), fc.boolean())
  .map(([verb, a, params, bracket]) => `${verb}${bracket ? `<${a}>` : a}${params.map((p) => ` ${p}`).join("")}`);
const rcptLine = fc.tuple(fc.constantFrom("RCPT TO:", "rcpt to:", "RCPT TO: ", "RCPT FROM:"), addressArb, fc.array(paramArb, { maxLength: 2 }), fc.boolean())
  .map(([verb, a, params, bracket]) => `${verb}${bracket ? `<${a}>` : a}${params.map((p) => ` ${p}`).join("")}`);
const simpleLine = fc.oneof(
  { weight: 4, arbitrary: mailLine },
  { weight: 4, arbitrary: rcptLine },
  { weight: 2, arbitrary: fc.constantFrom("RSET", "NOOP", "NOOP hello", "VRFY postmaster", "VRFY", "HELP", "HELP MAIL", "EHLO client.fuzz.test", "HELO client.fuzz.test", "EHLO", "EHLO a b", "EXPN list", "ETRN sender.test", "TURN", "BDAT 10 LAST", "XCLIENT ADDR=1.2.3.4", "GET / HTTP/1.1", "rset", "noop") },
  { weight: 1, arbitrary: fc.string({ maxLength: 60 }).map((s) => s.replace(/\n/g, "")) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 40 }).map((s) => s.replace(/\n/g, "")) },
);
const ending = fc.oneof({ weight: 8, arbitrary: fc.constant("\r\n") }, { weight: 2, arbitrary: fc.constant("\n") });

// Message content: header lines (valid, spoofed, malformed), body lines with dots and smuggling
// sequences, line endings mixed.
const headerLine = fc.oneof(
  { weight: 4, arbitrary: addressArb.map((a) => `From: ${a}`) },
  { weight: 2, arbitrary: fc.constantFrom("From: app@sender.test", "From: App <app@sender.test>", "From: x@other.test", "From : ceo@other.test", "FROM:app@sender.test", "From: app@sender.test, b@sender.test", "From: \"ceo@other.test\" <app@sender.test>", "From: =?utf-8?q?ceo=40other.test?= <app@sender.test>", "From:\r\n app@sender.test") },
  { weight: 3, arbitrary: fc.constantFrom("To: r@dest.test", "Subject: fuzz", "Subject: Grüße", "Message-ID: <fuzz@sender.test>", "Bcc: hidden@dest.test", "Return-Path: <x@evil.test>", "X-Campaign-ID: c1", " folded continuation", "\tfolded", "no colon here", "Fr\0om: ceo@other.test", "X-Empty:", ":no name") },
  { weight: 1, arbitrary: fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 60 })).map(([k, v]) => `${k}: ${v}`) },
);
const bodyLine = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 80 }) },
  { weight: 2, arbitrary: fc.constantFrom(".", "..", ". ", ".\r", "\n.\r\n", "\r\n.\n", "\r.\r", "\n.\n", "\r\n.\r", "MAIL FROM:<ceo@other.test>", "RCPT TO:<victim@dest.test>", "DATA", "QUIT", "\0", "--boundary", "From x Mon Jan 1") },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
);
const messageArb = fc.tuple(
  fc.array(headerLine, { maxLength: 8 }),
  fc.array(bodyLine, { maxLength: 10 }),
  fc.array(ending, { minLength: 20, maxLength: 20 }),
  fc.oneof({ weight: 15, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constant(MAX_SIZE + 1000) }),
).map(([headers, body, ends, pad]) => {
  let i = 0;
  const nl = () => ends[i++ % ends.length]!;
  let text = headers.map((h) => h + nl()).join("") + nl() + body.map((b) => b + nl()).join("");
  if (pad) text += ("p".repeat(998) + "\r\n").repeat(Math.ceil(pad / 1000));
  return text;
});

// A transaction most of whose parts are right, so that mutations reach acceptance and storage.
const benignHeader = fc.constantFrom("Message-ID: <m@sender.test>", "Date: Sat, 28 Nov 2026 00:00:00 +0000", "X-Campaign-ID: spring", "Bcc: hidden@dest.test", "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "X-Long: " + "v".repeat(900), "Reply-To: <ceo@other.test>", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8");
const validMessage = fc.tuple(
  fc.oneof({ weight: 8, arbitrary: fc.constantFrom("From: app@sender.test", "From: App <app@sender.test>", "From: news@SENDER.TEST") }, { weight: 1, arbitrary: fc.constant("From: x@other.test") }),
  fc.array(fc.oneof({ weight: 3, arbitrary: benignHeader }, { weight: 1, arbitrary: headerLine }), { maxLength: 3 }),
  fc.array(bodyLine, { maxLength: 6 }),
  fc.constantFrom("\r\n", "\r\n", "\n"),
).map(([from, extra, body, nl]) => [from, "To: r@dest.test", "Subject: fuzz", ...extra, "", ...body, ""].join(nl));
const transactionArb = fc.record({
  kind: fc.constant("transaction" as const),
  mail: fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom("MAIL FROM:<app@sender.test>", "MAIL FROM:<app@sender.test> BODY=8BITMIME SIZE=1000", "mail from:<news@sender.test> SMTPUTF8") },
    { weight: 1, arbitrary: fc.constant("MAIL FROM:<x@other.test>") },
    { weight: 1, arbitrary: mailLine },
  ),
  rcpts: fc.array(fc.oneof({ weight: 6, arbitrary: fc.constantFrom("RCPT TO:<r@dest.test>", "RCPT TO:<s@dest.test> NOTIFY=FAILURE") }, { weight: 1, arbitrary: rcptLine }), { minLength: 1, maxLength: 3 }),
  message: fc.oneof({ weight: 3, arbitrary: validMessage }, { weight: 1, arbitrary: messageArb }),
  pipelined: fc.boolean(),
});

type Step =
  | { kind: "transaction"; mail: string; rcpts: string[]; message: string; pipelined: boolean }
  | { kind: "login"; user: "app" | "app2" }
  | { kind: "line"; line: string; end: string }
  | { kind: "long"; n: number }
  | { kind: "pipeline"; lines: string[]; end: string }
  | { kind: "data"; message: string }
  | { kind: "starttls" }
  | { kind: "auth"; method: "PLAIN" | "LOGIN"; user: string; pass: string; initial: boolean };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: transactionArb },
  { weight: 1, arbitrary: fc.constantFrom("app" as const, "app2" as const).map((user) => ({ kind: "login" as const, user })) },
  { weight: 6, arbitrary: fc.tuple(simpleLine, ending).map(([line, end]) => ({ kind: "line" as const, line, end })) },
  { weight: 2, arbitrary: fc.tuple(fc.array(simpleLine, { minLength: 2, maxLength: 6 }), ending).map(([lines, end]) => ({ kind: "pipeline" as const, lines, end })) },
  { weight: 4, arbitrary: messageArb.map((message) => ({ kind: "data" as const, message })) },
  { weight: 1, arbitrary: fc.constant({ kind: "starttls" as const }) },
  { weight: 2, arbitrary: fc.record({
    kind: fc.constant("auth" as const), method: fc.constantFrom("PLAIN" as const, "LOGIN" as const),
    user: fc.constantFrom("app", "app2", "nobody", "", "app\0x"), pass: fc.constantFrom(PASSWORD, "wrong", ""), initial: fc.boolean(),
  }) },
  // A command line over smtp-server's 16 KiB limit (built when sent, so a counterexample stays readable).
  { weight: 1, arbitrary: fc.integer({ min: 16_000, max: 20_000 }).map((n) => ({ kind: "long" as const, n })) },
);

const sessionArb = fc.record({
  client: fc.oneof(
    { weight: 3, arbitrary: fc.integer({ min: 2, max: 250 }).map((n) => ({ ip: `127.0.120.${n}`, trusted: true })) },
    { weight: 2, arbitrary: fc.integer({ min: 2, max: 250 }).map((n) => ({ ip: `127.0.121.${n}`, trusted: false })) },
  ),
  steps: fc.array(stepArb, { minLength: 1, maxLength: 12 }),
});
type Session = typeof sessionArb extends fc.Arbitrary<infer S> ? S : never;

// ---- running a session ---------------------------------------------------------------------------

/** What a client did and what the relay must have stored for it. */
interface Outcome {
  accepted: string[];
}

function dotStuff(message: string): string {
  const text = message.replace(/(^|\r\n)\./g, "$1..");
  return text + (text.endsWith("\r\n") ? "" : "\r\n") + ".\r\n";
}

function headerFromDomains(message: string): string[] {
  const head = message.replace(/\r\n|\r|\n/g, "\n").split("\n\n")[0]!;
  const out: string[] = [];
  for (const line of head.split("\n")) {
    if (!/^from[ \t]*:/i.test(line)) continue;
    // Display names and comments may say anything ("ceo@other.test" <app@sender.test>): the
    // addresses are what is outside quotes and parentheses.
    const bare = line.replace(/"(?:[^"\\]|\\.)*"/g, "").replace(/\([^()]*\)/g, "");
    for (const m of bare.matchAll(/@([A-Za-z0-9.-]+)/g)) out.push(m[1]!.toLowerCase().replace(/\.$/, ""));
  }
  return out;
}

async function runSession(port: number, ca: string, s: Session): Promise<Outcome> {
  const out: Outcome = { accepted: [] };
  const c = await RawSmtp.open(HOST, port, s.client.ip);
  const state = { tls: false, user: null as null | "app" | "app2", mailOk: false, mailDomain: "", rcptOk: 0, closed: false };
  const reply = async (what: string, verb: string): Promise<Reply> => {
    let r: Reply;
    try {
      r = await c.reply(REPLY_TIMEOUT);
    } catch (e) {
      if (c.closed && !/no SMTP reply/.test((e as Error).message)) throw new Closed();
      throw new Error(`${what}: ${(e as Error).message} (hang)`);
    }
    checkReply(r, what, verb);
    if (r.code === 421 || r.code === 221) state.closed = true;
    return r;
  };
  const allowed = () => (state.user ? ALLOWED[state.user] : s.client.trusted ? ALLOWED.net : new Set<string>());
  const afterMail = (line: string, r: Reply) => {
    if (r.code !== 250) return;
    const from = /^mail from:\s*<?([^>\s]*)>?/i.exec(line)?.[1] ?? "";
    const domain = from.slice(from.lastIndexOf("@") + 1).toLowerCase();
    assert.ok(allowed().has(domain), `MAIL ${JSON.stringify(line)} accepted for ${s.client.ip} (user ${state.user}): may send as ${[...allowed()]}`);
    state.mailOk = true;
    state.mailDomain = domain;
  };
  const afterCommand = (line: string, r: Reply) => {
    const verb = verbOf(line);
    if (verb === "MAIL") afterMail(line, r);
    if (verb === "RCPT" && r.code === 250) {
      assert.ok(state.mailOk, `RCPT accepted without MAIL: ${line}`);
      state.rcptOk++;
    }
    if (["RSET", "EHLO", "HELO"].includes(verb) && r.code === 250) Object.assign(state, { mailOk: false, rcptOk: 0 });
  };
  class Closed extends Error {}
  const data = async (message: string) => {
    c.write("DATA\r\n");
    const r = await reply("DATA", "DATA");
    if (r.code !== 354) return;
    assert.ok(state.mailOk && state.rcptOk > 0, `354 without an accepted MAIL and RCPT (${JSON.stringify(state)})`);
    assert.ok(s.client.trusted || state.user, "354 for a client that may not send");
    c.write(dotStuff(message));
    const end = await reply("end of data", "END");
    if (end.code === 250) {
      const m = /queued as ([0-9a-z]{20})$/.exec(end.lines[0]!);
      assert.ok(m, `250 without a queue id: ${end.lines[0]}`);
      const bad = headerFromDomains(message).filter((d) => !allowed().has(d));
      assert.deepEqual(bad, [], `accepted a message whose From names ${bad} (client ${s.client.ip}, user ${state.user})`);
      assert.ok(Buffer.byteLength(message) <= MAX_SIZE + 1024, "accepted a message over the size limit");
      out.accepted.push(m[1]!);
    }
    Object.assign(state, { mailOk: false, rcptOk: 0 });
  };
  const starttls = async () => {
    try {
      await c.starttls(ca);
      Object.assign(state, { tls: true, user: null, mailOk: false, rcptOk: 0 });
      c.write("EHLO fuzz.test\r\n");
      await reply("EHLO after STARTTLS", "EHLO");
    } catch (e) {
      const m = /^STARTTLS: (\d{3}) /.exec((e as Error).message);
      if (!m) throw e;
      assert.ok([...ANY, 454, 502].includes(Number(m[1])), `STARTTLS answered ${m[1]}`);
      if (m[1] === "421") state.closed = true;
    }
  };
  try {
    checkReply(await c.reply(REPLY_TIMEOUT), "greeting", "GREETING");
    checkReply(await c.cmd("EHLO fuzz.test"), "EHLO", "EHLO");
    for (const step of s.steps) {
      if (state.closed) break;
      if (step.kind === "line") {
        c.write(step.line + step.end);
        const r = await reply(`${JSON.stringify(step.line.slice(0, 80))}`, verbOf(step.line));
        afterCommand(step.line, r);
        if (r.code === 354) {
          // DATA inside a plain line (it can be): send an empty message.
          c.write(".\r\n");
          const end = await reply("end of an empty message", "END");
          assert.notEqual(end.code, 250, "an empty message (no From) accepted");
          Object.assign(state, { mailOk: false, rcptOk: 0 });
        }
      } else if (step.kind === "long") {
        c.write(`NOOP ${"x".repeat(step.n)}\r\n`);
        await reply(`NOOP of ${step.n} bytes`, "NOOP");
      } else if (step.kind === "pipeline") {
        c.write(step.lines.map((l) => l + step.end).join(""));
        for (const line of step.lines) {
          const r = await reply(`pipelined ${JSON.stringify(line.slice(0, 80))}`, verbOf(line));
          afterCommand(line, r);
          if (state.closed) break;
        }
      } else if (step.kind === "transaction") {
        const lines = [step.mail, ...step.rcpts];
        if (step.pipelined) c.write(lines.map((l) => l + "\r\n").join(""));
        for (const line of lines) {
          if (!step.pipelined) c.write(line + "\r\n");
          afterCommand(line, await reply(JSON.stringify(line.slice(0, 80)), verbOf(line)));
          if (state.closed) break;
        }
        if (!state.closed) await data(step.message);
      } else if (step.kind === "login") {
        if (!state.tls) await starttls();
        if (state.closed || state.user || !state.tls) continue;
        c.write(`AUTH PLAIN ${Buffer.from(`\0${step.user}\0${PASSWORD}`).toString("base64")}\r\n`);
        const r = await reply("AUTH (right password)", "AUTH");
        if (r.code === 235) {
          assert.ok(!state.mailOk, "AUTH succeeded inside a mail transaction (RFC 4954: 503)");
          state.user = step.user;
        }
      } else if (step.kind === "data") {
        await data(step.message);
      } else if (step.kind === "starttls") {
        await starttls();
      } else {
        const b64 = (x: string) => Buffer.from(x).toString("base64");
        const plain = b64(`\0${step.user}\0${step.pass}`);
        const first = step.method === "PLAIN" ? (step.initial ? `AUTH PLAIN ${plain}` : "AUTH PLAIN") : (step.initial ? `AUTH LOGIN ${b64(step.user)}` : "AUTH LOGIN");
        c.write(first + "\r\n");
        let r = await reply(first, "AUTH");
        const answers = step.method === "PLAIN" ? [plain] : step.initial ? [b64(step.pass)] : [b64(step.user), b64(step.pass)];
        while (r.code === 334 && answers.length) {
          c.write(answers.shift()! + "\r\n");
          r = await reply("AUTH continuation", "AUTH_CONT");
        }
        if (r.code === 334) {
          c.write("*\r\n");
          r = await reply("AUTH abort", "AUTH_CONT");
        }
        if (r.code === 235) {
          assert.ok(state.tls, "AUTH succeeded without TLS");
          assert.ok(!state.mailOk, "AUTH succeeded inside a mail transaction (RFC 4954: 503)");
          assert.ok(step.pass === PASSWORD && (step.user === "app" || step.user === "app2"), `AUTH succeeded for ${step.user}/${step.pass}`);
          state.user = step.user as "app" | "app2";
        }
      }
    }
    if (!state.closed) {
      // Nothing answered that was not asked: the next reply is this NOOP's, and nothing follows it.
      const r = await c.cmd("NOOP");
      assert.equal(r.code, 250, `after the session, NOOP got ${JSON.stringify(r.lines)}`);
      await new Promise((res) => setTimeout(res, 20));
      assert.equal(c.pending, "", "the relay answered more than it was asked");
    }
  } catch (e) {
    if (!(e instanceof Closed)) throw e;
    assert.ok(state.closed || c.closed, "closed");
  } finally {
    await c.quit().catch(() => {});
  }
  return out;
}

test("SMTP command handling, fuzzed against a running relay process", { timeout: 900_000 }, async (t) => {
  const plan = await makePlan({
    domains: [domainPlan("sender.test"), domainPlan("other.test")],
    networks: [{ cidr: "127.0.120.0/24", domains: ["sender.test"] }],
    credentials: [{ username: "app", domains: ["sender.test"] }, { username: "app2", domains: ["other.test"] }],
  });
  const f = await startRelayFixture(t, { host: HOST, plan });
  const relay = await startRelayProcess(t, f, { name: "relay-fuzz", env: { MAILFLEET_MAX_MESSAGE_SIZE: "64Ki" } });
  const counts = async () => ({
    queue: (await f.jsm.streams.info(STREAM_QUEUE)).state,
    body: (await f.jsm.streams.info(STREAM_BODY)).state,
  });
  const accepted = new Set<string>();
  const seed = Number(process.env.MAILFLEET_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const numRuns = Number(process.env.MAILFLEET_FUZZ_RUNS ?? 150);
  const seconds = Number(process.env.MAILFLEET_FUZZ_SECONDS ?? 60);
  t.diagnostic(`fast-check seed ${seed} (MAILFLEET_FUZZ_SEED=${seed} replays it), ${numRuns} sessions or ${seconds} s`);
  let sessions = 0;
  try {
    await fc.assert(fc.asyncProperty(sessionArb, async (s) => {
      sessions++;
      const before = await counts();
      const out = await runSession(relay.submissionPort, f.caPem, s);
      assert.equal(relay.proc.exitCode(), undefined, "the relay process is running");
      // Accepted whole or not at all: exactly one envelope and one body per 250, each present.
      const after = await counts();
      // A retry with the same Message-ID, envelope and submitter gets the same queue id and is
      // stored once (relay/accept/acceptor.ts): count queue ids, not replies.
      const fresh = [...new Set(out.accepted)].filter((q) => !accepted.has(q));
      assert.equal(after.queue.messages - before.queue.messages, fresh.length, `envelopes stored: ${after.queue.messages - before.queue.messages}, messages accepted: ${fresh.length}`);
      assert.equal(after.body.messages - before.body.messages, fresh.length, "bodies stored");
      const ids = new Set<string>();
      for (let seq = before.queue.last_seq + 1; seq <= after.queue.last_seq; seq++) {
        ids.add(decodeEnvelope((await f.jsm.streams.getMessage(STREAM_QUEUE, { seq }))!.data).id);
      }
      assert.deepEqual([...ids].sort(), [...fresh].sort(), "the stored envelopes are the accepted messages'");
      for (const q of fresh) {
        assert.ok(await f.jsm.streams.getMessage(STREAM_BODY, { last_by_subj: subjects.body(q) }), `body of ${q}`);
        accepted.add(q);
      }
      // Still serving: a new client gets a greeting and a NOOP answered.
      const probe = await RawSmtp.open(HOST, relay.submissionPort, "127.0.120.1");
      assert.equal((await probe.reply(REPLY_TIMEOUT)).code, 220);
      assert.equal((await probe.cmd("NOOP")).code, 250);
      await probe.quit();
    }), { seed, numRuns, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, endOnFailure: Boolean(process.env.MAILFLEET_FUZZ_NO_SHRINK) });
  } catch (e) {
    throw new Error(`SMTP fuzzing failed (replay: MAILFLEET_FUZZ_SEED=${seed}): ${(e as Error).message}`, { cause: e });
  }
  t.diagnostic(`${sessions} sessions, ${accepted.size} messages accepted and stored`);
  assert.ok(sessions >= Math.min(numRuns, 10), `only ${sessions} sessions ran`);
  await eventually("relay still ready", async () => relay.proc.exitCode() === undefined, 5_000);
});
