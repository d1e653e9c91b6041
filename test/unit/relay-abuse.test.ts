// The pure parts of the relay's defences against abuse (relay/README.md "Security"): the AUTH
// throttle, and the inbound listener's report parsing. test/integration/abuse.test.ts drives the
// same through a running relay.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PLAN_SCHEMA, DEFAULT_DELIVERY, type Plan } from "../../api/plan.ts";
import { hashPassword } from "../../api/password.ts";
import { buildIndex } from "../../relay/plan/index.ts";
import { processInbound, UnreadableReport, type InboundDeps } from "../../relay/inbound/reports.ts";
import { Authenticator } from "../../relay/submission/auth.ts";

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
