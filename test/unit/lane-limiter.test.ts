// The per-relay lane limiter and response rules, on a fake clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { LanePlan, Plan, PlanRule, ProviderPlan } from "../../api/plan.ts";
import { LocalLaneLimiter } from "../../relay/shaper/local.ts";
import { applyRule, effective, matchRule } from "../../relay/shaper/rules.ts";
import { classifyReply } from "../../relay/classify/index.ts";
import type { ConnectionLease, LaneRef, Observation } from "../../relay/shaper/types.ts";

const shape = { maxConnections: 3, messagesPerConnection: 10, messageRate: { count: 60, periodMs: 60_000 }, connectionRate: null, recipientsPerMessage: 5, tlsRequired: false };

function plan(rules: PlanRule[] = [], lane: Partial<LanePlan> = {}, limits: ProviderPlan["limits"] = { messageRate: null, maxConnections: null }): Plan {
  const p: ProviderPlan = { name: "gmail", domains: [], mxSuffixes: [], lane: shape, limits, rules, feedbackLoop: false, recovery: { step: 0.5, intervalMs: 60_000 } };
  return {
    schema: "mailfleet.io/plan/v1", revision: "r", generatedAt: "", providers: [p], domains: [],
    submitters: { credentials: [], networks: [] }, delivery: { expiryMs: 1e9, retryBaseMs: 1000, retryMaxMs: 10_000, idempotencyWindowMs: 600_000 },
    pools: [{
      id: "mail/p", namespace: "mail", name: "p", addresses: [{ address: "127.0.1.1", hostname: "o1.test" }], egress: { mode: "HostNetwork", bindAddress: true },
      overflowPool: null, warmup: null,
      lanes: [{ address: "127.0.1.1", provider: "gmail", state: "Healthy", shape, dailyQuota: null, hourlyQuota: null, stage: null, ...lane }],
    }],
  } as Plan;
}

const lane: LaneRef = { pool: "mail/p", address: "127.0.1.1", provider: "gmail" };
const obs = (reply: string): Observation => {
  const c = classifyReply(reply);
  return { reply, code: c.code, enhanced: c.enhanced, class: c.class, permanent: c.permanent };
};

test("rate: slots one interval apart, never more than asked within the horizon", async () => {
  let now = 1_000_000;
  const l = new LocalLaneLimiter({ now: () => now, horizonMs: 5000 });
  l.setPlan(plan());
  const g = await l.acquire(lane, 10);
  assert.deepEqual(g.slots, [1_000_000, 1_001_000, 1_002_000, 1_003_000, 1_004_000]);
  const g2 = await l.acquire(lane, 1);
  assert.deepEqual(g2.slots, []);
  assert.equal(g2.retryAt, 1_005_000);
  l.release(lane, g.slots.slice(2));
  now += 10;
  assert.deepEqual((await l.acquire(lane, 1)).slots, [1_002_000], "released tail slots are handed out again");
});

test("quota: hourly quota holds the lane until the next hour", async () => {
  let now = 3_600_000 * 10 + 5;
  const l = new LocalLaneLimiter({ now: () => now, horizonMs: 1_000_000 });
  l.setPlan(plan([], { hourlyQuota: 3, dailyQuota: 100 }));
  assert.equal((await l.acquire(lane, 10)).slots.length, 3);
  const v = l.view(lane);
  assert.equal(v.sendable, false);
  assert.equal(v.reason, "quota");
  assert.equal(v.until, 3_600_000 * 11);
  now = 3_600_000 * 11;
  assert.equal(l.view(lane).sendable, true);
});

test("plan state Suspended/Paused/Blocked: nothing is granted", async () => {
  for (const state of ["Suspended", "Paused", "Blocked"] as const) {
    const l = new LocalLaneLimiter({ now: () => 0 });
    l.setPlan(plan([], { state }));
    assert.equal(l.view(lane).sendable, false);
    assert.deepEqual((await l.acquire(lane, 1)).slots, []);
    assert.ok("retryAt" in (await l.connect(lane)));
  }
});

test("connections: capped per lane, leases released", async () => {
  const l = new LocalLaneLimiter({ now: () => 0 });
  l.setPlan(plan());
  const leases: ConnectionLease[] = [];
  for (let i = 0; i < 3; i++) {
    const c = await l.connect(lane);
    assert.ok("release" in c);
    leases.push(c);
  }
  assert.ok("retryAt" in (await l.connect(lane)));
  assert.equal(l.view(lane).open, 3);
  leases[0]!.release();
  leases[0]!.release();
  assert.equal(l.view(lane).open, 2);
});

test("rule: 421 4.7.28 suspends the lane, then it recovers one connection at a time", async () => {
  let now = 0;
  const rules: PlanRule[] = [{ name: "gmail-rate", enhancedCode: "4.7.28", action: "SuspendLane", durationMs: 600_000 }];
  const seen: string[] = [];
  const l = new LocalLaneLimiter({ now: () => now, onRule: (a) => seen.push(a.rule.name) });
  l.setPlan(plan(rules));
  const eff = await l.observe(lane, obs("421 4.7.28 Gmail has detected an unusual rate of unsolicited mail from your IP address"));
  assert.equal(eff.rule, "gmail-rate");
  assert.deepEqual(seen, ["gmail-rate"]);
  let v = l.view(lane);
  assert.equal(v.sendable, false);
  assert.equal(v.reason, "suspended");
  assert.equal(v.until, 600_000);
  now = 600_000;
  v = l.view(lane);
  assert.equal(v.sendable, true);
  assert.equal(v.maxConnections, 1);
  assert.equal(v.factor, 0.5);
  now = 660_000;
  assert.equal(l.view(lane).maxConnections, 2);
  now = 10_000_000;
  assert.equal(l.view(lane).maxConnections, 3);
  assert.equal(l.view(lane).factor, 1);
});

test("rule: SlowDown compounds at most once per interval; Bounce and Classify act on the message", async () => {
  const rules: PlanRule[] = [
    { name: "perm", text: "permanently deferred", action: "Bounce", classifyAs: "reputation-block" },
    { name: "slow", class: "rate-limited", action: "SlowDown", factor: 0.5, durationMs: 120_000 },
  ];
  let now = 0;
  const l = new LocalLaneLimiter({ now: () => now });
  l.setPlan(plan(rules));
  await l.observe(lane, obs("450 4.7.1 Error: too much mail from 127.0.1.1"));
  await l.observe(lane, obs("450 4.7.1 Error: too much mail from 127.0.1.1"));
  assert.equal(l.view(lane).factor, 0.5);
  now = 61_000;
  await l.observe(lane, obs("450 4.7.1 Error: too much mail from 127.0.1.1"));
  assert.equal(l.view(lane).factor, 0.25);
  const b = await l.observe(lane, obs("421 4.7.1 [TS03] All messages from 1.2.3.4 will be permanently deferred"));
  assert.deepEqual(b, { rule: "perm", action: "Bounce", bounce: true, classifyAs: "reputation-block" });
  assert.deepEqual(await l.observe(lane, obs("250 2.0.0 ok")), {});
});

test("rule: SuspendProvider holds every lane of the provider; CapConnections", async () => {
  const rules: PlanRule[] = [
    { name: "stop", code: "554", action: "SuspendProvider", durationMs: 1000 },
    { name: "cap", text: "too many connections", action: "CapConnections", connections: 1, durationMs: 1000 },
  ];
  const l = new LocalLaneLimiter({ now: () => 0 });
  l.setPlan(plan(rules));
  await l.observe(lane, obs("421 4.7.0 mx Error: too many connections from 127.0.1.1"));
  assert.equal(l.view(lane).maxConnections, 1);
  await l.observe(lane, obs("554 5.7.1 go away"));
  assert.equal(l.view(lane).reason, "provider-suspended");
});

test("rules: first match wins; a bad regex never matches", () => {
  const rules: PlanRule[] = [
    { name: "bad", text: "([", action: "Classify", classifyAs: "other" },
    { name: "a", code: "421", action: "SuspendLane", durationMs: 1 },
    { name: "b", code: "421", action: "SlowDown", factor: 0.5, durationMs: 1 },
  ];
  assert.equal(matchRule(rules, obs("421 4.7.0 try later"))?.name, "a");
  const adj = applyRule(undefined, rules[2]!, 4, { step: 0.25, intervalMs: 10 }, 0);
  assert.equal(effective(adj, 4, { step: 0.25, intervalMs: 10 }, 0).factor, 0.5);
  assert.equal(effective(adj, 4, { step: 0.25, intervalMs: 10 }, 21).factor, 1);
});

test("provider-wide message rate applies across lanes", async () => {
  const l = new LocalLaneLimiter({ now: () => 0, horizonMs: 10_000 });
  l.setPlan(plan([], {}, { messageRate: { count: 1, periodMs: 5000 }, maxConnections: 1 }));
  const g = await l.acquire(lane, 10);
  assert.deepEqual(g.slots, [0, 5000]);
  const c = await l.connect(lane);
  assert.ok("release" in c);
  assert.ok("retryAt" in (await l.connect(lane)), "provider connection cap");
});

test("address-wide limits (IPPool spec.addresses[].limits) apply across the address's lanes, the tightest winning", async () => {
  const p = plan();
  const pool = p.pools[0]!;
  p.providers.push({ ...p.providers[0]!, name: "yahoo" });
  pool.lanes.push({ ...pool.lanes[0]!, provider: "yahoo" });
  pool.addresses[0]!.limits = { messageRate: { count: 1, periodMs: 2000 }, maxConnections: 2 };
  const l = new LocalLaneLimiter({ now: () => 0, horizonMs: 10_000 });
  l.setPlan(p);
  const yahoo: LaneRef = { ...lane, provider: "yahoo" };
  // Each lane alone may send one a second; the address one every 2 s over both.
  const a = await l.acquire(lane, 3);
  const b = await l.acquire(yahoo, 3);
  assert.deepEqual([a.slots, b.slots], [[0, 2000, 4000], [6000, 8000]]);
  const leases = [await l.connect(lane), await l.connect(yahoo)];
  assert.ok(leases.every((c) => "release" in c));
  assert.ok("retryAt" in (await l.connect(lane)), "the address's connection cap, over both lanes (each lane allows 3)");
  (leases[1] as ConnectionLease).release();
  assert.ok("release" in (await l.connect(lane)), "a released connection frees the address's cap");
});

test("release: only the chain's tail is handed out again; slots from the middle are lost", async () => {
  const now = 0;
  const l = new LocalLaneLimiter({ now: () => now, horizonMs: 5000 });
  l.setPlan(plan());
  const g = await l.acquire(lane, 4);
  assert.deepEqual(g.slots, [0, 1000, 2000, 3000]);
  assert.ok((g.graceMs ?? 0) > 0);
  l.release(lane, [0, 2000, 3000]); // 1000 was spent
  assert.deepEqual((await l.acquire(lane, 1)).slots, [2000], "never before the spent slot's successor");
});
