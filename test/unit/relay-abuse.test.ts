// The pure parts of the relay's defences against abuse (relay/README.md "Security"): the header
// syntax check, recipient routing, and the AUTH throttle. test/integration/abuse.test.ts drives
// the same through a running relay.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { PLAN_SCHEMA, DEFAULT_DELIVERY, type Plan } from "../../api/plan.ts";
import { hashPassword } from "../../api/password.ts";
import { isRoutedRecipient } from "../../relay/accept/acceptor.ts";
import { normalizeLineEndings, splitMessage } from "../../relay/accept/normalize.ts";
import { MAX_HEADER_BYTES, messageProblem } from "../../relay/accept/syntax.ts";
import { buildIndex } from "../../relay/plan/index.ts";
import { processInbound, UnreadableReport, type InboundDeps } from "../../relay/inbound/reports.ts";
import { Authenticator } from "../../relay/submission/auth.ts";

const problem = (text: string | Buffer) => {
  const raw = Buffer.isBuffer(text) ? text : Buffer.from(text, "latin1");
  return messageProblem(raw, splitMessage(normalizeLineEndings(raw)).header);
};

describe("header syntax (relay/accept/syntax.ts)", () => {
  const fieldName = fc.stringMatching(/^[\x21-\x39\x3b-\x7e]{1,30}$/);
  const fieldValue = fc.stringMatching(/^[\x20-\x7e\x80-\xff]{0,60}$/);
  const field = fc.tuple(fieldName, fc.constantFrom("", " ", "\t"), fieldValue, fc.array(fc.stringMatching(/^[ \t][\x20-\x7e]{0,20}$/), { maxLength: 2 }))
    .map(([n, ws, v, folds]) => [`${n}${ws}:${v}`, ...folds].join("\r\n"));

  it("takes any header made of fields and folded lines, with any body", () => {
    fc.assert(fc.property(fc.array(field, { minLength: 1, maxLength: 20 }), fc.string(), (fields, body) => {
      assert.equal(problem(`${fields.join("\r\n")}\r\n\r\n${body.replace(/\0/g, "")}`), null);
    }), { seed: 7, numRuns: 300 });
  });

  it("refuses NUL anywhere, naming 554 5.6.0", () => {
    fc.assert(fc.property(fc.array(field, { minLength: 1, maxLength: 5 }), fc.nat(), (fields, at) => {
      const msg = Buffer.from(`${fields.join("\r\n")}\r\n\r\nbody\r\n`, "latin1");
      const i = at % msg.length;
      const withNul = Buffer.concat([msg.subarray(0, i), Buffer.from([0]), msg.subarray(i)]);
      assert.deepEqual(problem(withNul), { code: 554, enhanced: "5.6.0", text: "Message contains NUL characters" });
    }), { seed: 7, numRuns: 200 });
  });

  it("refuses a header line that is neither a field nor a continuation, and a first line that is folded", () => {
    assert.match(problem("From: a@b.test\r\nnot a field\r\n\r\nx")!.text, /line 2/);
    assert.match(problem("From: a@b.test\r\nFrom a@b.test Mon Jan 1\r\n\r\nx")!.text, /line 2/);
    assert.match(problem(" folded: first\r\nFrom: a@b.test\r\n\r\nx")!.text, /line 1/);
    assert.match(problem("From: a@b.test\r\nX\u00e9: 8-bit name\r\n\r\nx")!.text, /line 2/);
    // A bare CR or LF is a line end (normalised first): what follows it is judged as a line.
    assert.match(problem("From: a@b.test\r\nSubject: a\rnot a field\r\n\r\nx")!.text, /line 3/);
    assert.equal(problem("From: a@b.test\r\nSubject: a\nBcc: c@d.test\r\n\r\nx"), null);
    assert.equal(problem("From : a@b.test\r\n\r\nx"), null, "obsolete space before the colon");
  });

  it("refuses a header section over the limit with 552 5.3.4, and takes one at it", () => {
    const at = `X: ${"v".repeat(MAX_HEADER_BYTES - 5)}\r\n`;
    assert.equal(at.length, MAX_HEADER_BYTES);
    assert.equal(problem(`${at}\r\nbody`), null);
    assert.deepEqual(problem(`X${at}\r\nbody`), { code: 552, enhanced: "5.3.4", text: `Message header size exceeds the limit (${MAX_HEADER_BYTES} bytes)` });
  });
});

describe("recipient routing (isRoutedRecipient)", () => {
  it("flags % and ! in the local part only", () => {
    for (const a of ["a%b.test@c.test", "b.test!a@c.test", "\"a%b\"@c.test", "a%@c.test"]) assert.ok(isRoutedRecipient(a), a);
    for (const a of ["a@c.test", "a.b+tag@c.test", "a@c-d.test"]) assert.ok(!isRoutedRecipient(a), a);
  });
});

describe("AUTH throttle (relay/submission/auth.ts)", async () => {
  const plan: Plan = {
    schema: PLAN_SCHEMA, revision: "r1", generatedAt: new Date(0).toISOString(), providers: [], pools: [], domains: [],
    submitters: { credentials: [{ username: "app", hash: await hashPassword("right", "unit/app"), domains: ["a.test"] }], networks: [] },
    delivery: DEFAULT_DELIVERY,
  };
  const index = buildIndex(plan, "mail/pool");

  it("back-off doubles from 250 ms and stops at 15 s", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 8].map(Authenticator.backoff), [0, 250, 500, 1000, 2000, 4000, 8000, 15000, 15000]);
  });

  it("attempts from one address run one at a time, each after the back-off its failures earned", async () => {
    const auth = new Authenticator();
    const spans: [number, number][] = [];
    const t0 = Date.now();
    await Promise.all([1, 2, 3, 4].map(async () => {
      const r = await auth.check("192.0.2.1", index, "app", "wrong");
      spans.push([t0 + r.waitedMs, Date.now()]);
      assert.equal(r.user, null);
    }));
    assert.equal(auth.failures("192.0.2.1"), 4);
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) {
      assert.ok(spans[i]![0] >= spans[i - 1]![1] - 5, `attempt ${i} started before attempt ${i - 1} ended`);
    }
    // 0 + 250 + 500 + 1000 ms of back-off before the four checks.
    assert.ok(Date.now() - t0 >= 1700, `four failures from one address took ${Date.now() - t0} ms`);
    // Another address is not held back by this one's failures.
    const other = await auth.check("192.0.2.2", index, "app", "right");
    assert.deepEqual([other.user, other.waitedMs < 100], ["app", true]);
  });

  it("the right password still works from a throttled address, after its turn", async () => {
    const auth = new Authenticator();
    await auth.check("192.0.2.3", index, "app", "wrong");
    const r = await auth.check("192.0.2.3", index, "app", "right");
    assert.equal(r.user, "app");
    assert.ok(r.waitedMs >= 200, `waited ${r.waitedMs} ms`);
  });

  it("an unknown username costs a scrypt check too (no timing oracle)", async () => {
    const auth = new Authenticator();
    const time = async (user: string) => {
      const t = performance.now();
      for (let i = 0; i < 3; i++) await auth.verify(index, user, `wrong${i}`);
      return performance.now() - t;
    };
    await time("app");
    const known = await time("app");
    const unknown = await time("nobody");
    assert.ok(unknown > known * 0.5, `unknown ${unknown.toFixed(0)} ms vs known ${known.toFixed(0)} ms`);
  });
});

describe("inbound reports (relay/inbound/reports.ts)", () => {
  // A report that cannot be parsed will not parse next time either: the inbound listener takes it
  // and drops it (250) instead of answering 451 and having the reporting MTA retry it for days.
  it("a malformed report is an UnreadableReport, not a temporary failure", async () => {
    const plan: Plan = {
      schema: PLAN_SCHEMA, revision: "r1", generatedAt: new Date(0).toISOString(), providers: [], pools: [], domains: [],
      submitters: { credentials: [], networks: [] }, delivery: DEFAULT_DELIVERY,
    };
    const deps = { plan: () => buildIndex(plan, "mail/pool"), now: Date.now } as unknown as InboundDeps;
    const deep = (depth: number): string => depth === 0 ? "\r\nleaf\r\n" : `Content-Type: multipart/report; report-type=delivery-status; boundary="r${depth}"\r\n\r\n--r${depth}\r\n${deep(depth - 1)}`;
    for (const raw of [
      `From: MAILER-DAEMON@x.test\r\nMIME-Version: 1.0\r\n${deep(2000)}`,
      `From: fbl@x.test\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n--c\r\nnothing\r\n`,
    ]) {
      await assert.rejects(processInbound(Buffer.from(raw), ["postmaster@bounces.x.test"], deps), UnreadableReport);
    }
  });
});
