// What the operator reads for IPPool status: lane rule states evaluated from the KV records.
import assert from "node:assert/strict";
import { test } from "node:test";
import type { Plan } from "../../api/plan.ts";
import { laneStatesFrom } from "../../relay/shaper/state.ts";
import type { RuleRecord } from "../../relay/shaper/rulestate.ts";

const shape = { maxConnections: 4, messagesPerConnection: 10, messageRate: null, connectionRate: null, recipientsPerMessage: 5, tlsRequired: false };
const plan = {
  schema: "mailfleet.io/plan/v1", revision: "r", generatedAt: "", domains: [], submitters: { credentials: [], networks: [] },
  delivery: { expiryMs: 1, retryBaseMs: 1, retryMaxMs: 1, idempotencyWindowMs: 0 },
  providers: [{ name: "gmail", domains: [], mxSuffixes: [], lane: shape, limits: { messageRate: null, maxConnections: null }, rules: [], feedbackLoop: false, recovery: { step: 0.25, intervalMs: 60_000 } }],
  pools: [{
    id: "mail/p", namespace: "mail", name: "p", addresses: [], egress: { mode: "HostNetwork", bindAddress: true }, overflowPool: null, warmup: null,
    lanes: ["10.0.0.1", "10.0.0.2"].map((address) => ({ address, provider: "gmail", state: "Healthy", shape, dailyQuota: null, hourlyQuota: null, stage: null })),
  }],
} as unknown as Plan;

test("lane states: suspension, recovery ramp, provider-wide suspension on every lane of the pool", () => {
  const t0 = Date.parse("2026-05-01T10:00:00Z");
  const records: RuleRecord[] = [
    { scope: "lane", pool: "mail/p", address: "10.0.0.1", provider: "gmail", adj: { suspend: { rule: "gmail-421-4728", until: t0 + 3_600_000 } }, at: t0, by: "relay-a" },
  ];
  const [s] = laneStatesFrom(records, { plan, now: t0 + 60_000 });
  assert.deepEqual(s, {
    pool: "mail/p", address: "10.0.0.1", provider: "gmail", state: "Suspended", rule: "gmail-421-4728", action: "SuspendLane",
    until: "2026-05-01T11:00:00.000Z", factor: 0, maxConnections: 0, since: "2026-05-01T10:00:00.000Z", by: "relay-a",
  });
  // An hour and two minutes later: recovering (one connection more and a quarter of the rate per minute).
  const [r] = laneStatesFrom(records, { plan, now: t0 + 3_600_000 + 120_000 });
  assert.equal(r!.state, "Throttled");
  assert.equal(r!.factor, 0.75);
  assert.equal(r!.maxConnections, 3);
  const [h] = laneStatesFrom(records, { plan, now: t0 + 3_600_000 + 600_000 });
  assert.equal(h!.state, "Healthy");
  assert.equal(h!.rule, undefined);

  const prov: RuleRecord = { scope: "provider", pool: "mail/p", provider: "gmail", adj: { suspend: { rule: "yahoo-tss04", until: t0 + 7_200_000 } }, at: t0, by: "relay-b" };
  const both = laneStatesFrom([prov], { plan, now: t0 + 1000 });
  assert.deepEqual(both.map((x) => [x.address, x.state, x.action]), [["10.0.0.1", "Suspended", "SuspendProvider"], ["10.0.0.2", "Suspended", "SuspendProvider"]]);
});
