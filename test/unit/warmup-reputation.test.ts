// Reputation beyond warm-up: lanes of pools without a schedule (judged on their rates over the
// window, paused, blocked and resumed at the same volume), and SendingDomain pauses (rates per
// domain over the window, the plan's DomainPlan.paused, and what delivery does with it).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { validateObject } from "../../api/validate.ts";
import type { IPPool, MailboxProvider, SendingDomain } from "../../api/v1alpha1/index.ts";
import { type PeriodDoc, type RawCounts, applyToDoc, laneDelta } from "../../operator/warmup/counters.ts";
import { type EngineState, DEFAULT_PERIOD_MS, type StepInput, stepPool } from "../../operator/warmup/lanes.ts";
import { DOMAIN_PAUSED_CONDITION, domainWindow, stepDomain } from "../../operator/warmup/domains.ts";
import type { ReputationPolicy } from "../../operator/warmup/decide.ts";
import { compilePlan } from "../../operator/plan/compile.ts";
import { holdUntil, pauseOf } from "../../relay/delivery/paused.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";

const DAY = DEFAULT_PERIOD_MS;
const T0 = 20_000 * DAY; // period 20000 begins
const providers = [{ name: "gmail", feedbackLoop: false }, { name: "yahoo", feedbackLoop: true }];
const c = (attempted: number, x: Partial<RawCounts> = {}): RawCounts => ({ attempted, delivered: attempted, deferred: 0, bounced: 0, complaints: 0, ...x });

function warmPool(o: { listed?: Record<string, string[]> } = {}): IPPool {
  const p = validateObject({
    apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "warm", namespace: "mail", uid: "w1" },
    spec: {
      addresses: [{ address: "192.0.2.1", hostname: "a.example" }, { address: "192.0.2.2", hostname: "b.example" }],
      reputation: { window: "1h", resumeAfter: "2h" },
    },
  }) as IPPool;
  if (o.listed) p.status = { addresses: Object.entries(o.listed).map(([address, listed]) => ({ address, hostname: "x", forwardConfirmed: true, listed })) };
  return p;
}

function input(pool: IPPool, state: EngineState | null, now: number, docs: Map<number, PeriodDoc>, extra: Partial<StepInput> = {}): StepInput {
  return { pool, schedule: null, providers, state, now, counts: (p) => docs.get(p) ?? null, canClose: () => true, rules: [], ...extra };
}

describe("lanes of a pool without a warm-up schedule", () => {
  it("every lane has status: state and rates over the window, no stage or quota, no warm-up day", () => {
    const docs = new Map<number, PeriodDoc>([[20_000, { seq: 1, lanes: { "192.0.2.1/yahoo": c(100, { delivered: 97, bounced: 3 }) } }]]);
    const out = stepPool(input(warmPool(), null, T0 + 3_600_000, docs));
    assert.equal(out.status.lanes.length, 4);
    assert.equal(out.status.warmupDay, undefined);
    assert.equal(out.status.lanesHealthy, 4);
    const y = out.status.lanes.find((l) => l.address === "192.0.2.1" && l.provider === "yahoo")!;
    assert.deepEqual(
      { state: y.state, bounceRate: y.bounceRate, complaintRate: y.complaintRate, sentToday: y.sentToday, stage: y.stage, dailyQuota: y.dailyQuota, held: y.held },
      { state: "Healthy", bounceRate: 0.03, complaintRate: 0, sentToday: 100, stage: undefined, dailyQuota: undefined, held: undefined },
    );
    assert.equal(out.status.lanes.find((l) => l.provider === "gmail")!.complaintRate, null, "no feedback loop: blind, not zero");
    assert.equal(out.state.lanes["192.0.2.1/yahoo"]!.w, undefined, "no warm-up state is kept");
  });

  it("bounces over the window pause the lane; after resumeAfter it sends again at the same volume; Events say so", () => {
    const pool = warmPool();
    const docs = new Map<number, PeriodDoc>([[20_000, { seq: 1, lanes: { "192.0.2.1/gmail": c(50, { delivered: 40, bounced: 10 }), "192.0.2.2/gmail": c(50) } }]]);
    const paused = stepPool(input(pool, null, T0 + 600_000, docs));
    const by = (o: typeof paused, a: string, p: string) => o.status.lanes.find((l) => l.address === a && l.provider === p)!;
    // The address's bounce rate (10/50 over its lanes) pauses every lane of the address.
    assert.equal(by(paused, "192.0.2.1", "gmail").state, "Paused");
    assert.equal(by(paused, "192.0.2.1", "yahoo").state, "Paused");
    assert.equal(by(paused, "192.0.2.2", "gmail").state, "Healthy");
    assert.equal(by(paused, "192.0.2.1", "gmail").until, new Date(T0 + 600_000 + 7_200_000).toISOString());
    assert.match(by(paused, "192.0.2.1", "gmail").reason!, /bounce rate 20\.00% reached the pause threshold 10\.00%/);
    assert.ok(paused.notices.some((n) => n.reason === "Paused" && /address 192\.0\.2\.1/.test(n.note)));
    assert.equal(paused.status.lanesHealthy, 2);
    // Still paused before resumeAfter, though the bounces left the 1 h window.
    const during = stepPool(input(pool, paused.state, T0 + 600_000 + 3_700_000, docs));
    assert.equal(by(during, "192.0.2.1", "gmail").state, "Paused");
    // The window counts whole periods (a day here): once the bounces' day is out of it, after
    // resumeAfter, the lane is Healthy, with no stage to step back.
    const after = stepPool(input(pool, during.state, T0 + DAY + 3_600_000 + 600_000, docs));
    const l = by(after, "192.0.2.1", "gmail");
    assert.equal(l.state, "Healthy");
    assert.equal(l.decision, "Resumed");
    assert.match(l.reason!, /pause ended \(.*bounce rate.*\): sending again/);
    assert.equal(l.stage, undefined);
    assert.ok(after.notices.some((n) => n.reason === "Resumed"));
  });

  it("complaints at the pause threshold pause a lane whose provider reports them; warnings come earlier", () => {
    const pool = warmPool();
    // 0.2% complaints: above the 0.1% warning, below the 0.5% pause.
    const warn = stepPool(input(pool, null, T0 + 1000, new Map([[20_000, { seq: 1, lanes: { "192.0.2.2/yahoo": c(1000, { complaints: 2 }) } }]])));
    const w = warn.status.lanes.find((l) => l.address === "192.0.2.2" && l.provider === "yahoo")!;
    assert.equal(w.state, "Healthy");
    assert.match(w.reason!, /warning: complaint rate 0\.20% is above 0\.10%/);
    const pause = stepPool(input(pool, null, T0 + 1000, new Map([[20_000, { seq: 1, lanes: { "192.0.2.2/yahoo": c(1000, { complaints: 6 }) } }]])));
    assert.equal(pause.status.lanes.find((l) => l.address === "192.0.2.2" && l.provider === "yahoo")!.state, "Paused");
  });

  it("a blocklisted address blocks its lanes until delisted; a shaper rule shows as Throttled/Suspended", () => {
    const listed = stepPool(input(warmPool({ listed: { "192.0.2.2": ["zen.example"] } }), null, T0, new Map(), {
      rules: [{ pool: "mail/warm", address: "192.0.2.1", provider: "yahoo", state: "Throttled", rule: "slow", action: "SlowDown", until: "2030-01-01T00:00:00.000Z", factor: 0.5, maxConnections: 1 }],
    }));
    const by = (a: string, p: string) => listed.status.lanes.find((l) => l.address === a && l.provider === p)!;
    assert.deepEqual([by("192.0.2.2", "gmail").state, by("192.0.2.2", "yahoo").state], ["Blocked", "Blocked"]);
    assert.deepEqual([by("192.0.2.1", "yahoo").state, by("192.0.2.1", "yahoo").rule], ["Throttled", "slow"]);
    const clear = stepPool(input(warmPool(), listed.state, T0 + 60_000, new Map()));
    assert.equal(clear.status.lanes.find((l) => l.address === "192.0.2.2" && l.provider === "gmail")!.state, "Healthy");
    assert.ok(clear.notices.some((n) => n.reason === "Resumed" && /no longer listed/.test(n.note)));
  });

  it("a pause survives the loss of the stored state (status rebuilds it)", () => {
    const pool = warmPool();
    const docs = new Map<number, PeriodDoc>([[20_000, { seq: 1, lanes: { "192.0.2.1/gmail": c(50, { delivered: 40, bounced: 10 }) } }]]);
    const paused = stepPool(input(pool, null, T0 + 600_000, docs));
    pool.status = { ...pool.status, lanes: paused.status.lanes };
    const rebuilt = stepPool(input(pool, null, T0 + 700_000, new Map()));
    const l = rebuilt.status.lanes.find((x) => x.address === "192.0.2.1" && x.provider === "gmail")!;
    assert.equal(l.state, "Paused");
    assert.equal(l.until, paused.status.lanes.find((x) => x.address === "192.0.2.1" && x.provider === "gmail")!.until);
  });
});

const policy: ReputationPolicy = {
  windowMs: 3_600_000, warnBounceRate: 0.05, pauseBounceRate: 0.1, warnComplaintRate: 0.001, pauseComplaintRate: 0.005, resumeAfterMs: 7_200_000, minSample: 20,
};

describe("domain pauses", () => {
  const ev = (x: Partial<MailEvent>): MailEvent => ({
    type: "delivered", qid: "q", part: 1, pool: "mail/p", domain: "News.Example", provider: "yahoo", source: "192.0.2.1", rcpts: ["a@y.test"], attempts: 1,
    time: new Date(T0 + 1).toISOString(), ...x,
  });

  it("events count per sending domain and provider as well as per lane", () => {
    const d1 = laneDelta(ev({}))!;
    const d2 = laneDelta(ev({ type: "bounced", seq: 2 } as Partial<MailEvent>))!;
    assert.equal(d1.domain, "news.example/yahoo");
    const doc = applyToDoc(null, [{ seq: 1, ...d1 }, { seq: 2, ...d2 }]);
    assert.deepEqual(doc.domains, { "news.example/yahoo": { attempted: 2, delivered: 1, deferred: 0, bounced: 1, complaints: 0 } });
    assert.deepEqual(doc.lanes["192.0.2.1/yahoo"], doc.domains!["news.example/yahoo"]);
  });

  it("the window sums every pool's counters (overflow too), only periods within it; complaints only where reported", () => {
    const a = new Map<number, PeriodDoc>([
      [20_000, { seq: 1, lanes: {}, domains: { "news.example/yahoo": c(40, { complaints: 1 }), "news.example/gmail": c(40, { delivered: 30, bounced: 10 }), "other.example/gmail": c(100, { bounced: 50 }) } }],
      [19_999, { seq: 1, lanes: {}, domains: { "news.example/gmail": c(1000, { bounced: 1000 }) } }],
    ]);
    const b = new Map<number, PeriodDoc>([[200_000, { seq: 1, lanes: {}, domains: { "news.example/yahoo": c(20) } }]]);
    const w = domainWindow("News.Example", providers, [{ periodMs: DAY, counts: (p) => a.get(p) ?? null }, { periodMs: DAY / 10, counts: (p) => b.get(p) ?? null }], T0 + 3_601_000, 3_600_000);
    assert.deepEqual(w, { attempted: 100, delivered: 60, deferred: 0, bounced: 10, complaints: 1 });
    const blind = domainWindow("news.example", [{ name: "gmail", feedbackLoop: false }], [{ periodMs: DAY, counts: (p) => a.get(p) ?? null }], T0 + 3_601_000, 3_600_000);
    assert.equal(blind.complaints, null);
    // A window reaching into the day before counts that day too (windows are whole periods).
    assert.equal(domainWindow("news.example", providers, [{ periodMs: DAY, counts: (p) => a.get(p) ?? null }], T0 + 1000, 3_600_000).bounced, 1010);
  });

  it("pauses at the thresholds, holds until resumeAfter, then resumes; condition and Events say why", () => {
    const now = T0 + 1000;
    const healthy = stepDomain(policy, { attempted: 100, delivered: 96, deferred: 0, bounced: 4, complaints: 0 }, undefined, now);
    assert.equal(healthy.reputation.state, "Healthy");
    assert.equal(healthy.notice, undefined);
    assert.deepEqual([healthy.condition.type, healthy.condition.status, healthy.condition.reason], [DOMAIN_PAUSED_CONDITION, "False", "RatesBelowThresholds"]);
    const warn = stepDomain(policy, { attempted: 100, delivered: 94, deferred: 0, bounced: 6, complaints: 0 }, undefined, now);
    assert.equal(warn.condition.reason, "RatesWarning");
    assert.match(warn.reputation.warning!, /bounce rate 6\.00% is above 5\.00%/);
    const bounce = stepDomain(policy, { attempted: 100, delivered: 90, deferred: 0, bounced: 10, complaints: 0 }, undefined, now);
    assert.deepEqual([bounce.reputation.state, bounce.reputation.until, bounce.reputation.bounceRate], ["Paused", new Date(now + 7_200_000).toISOString(), 0.1]);
    assert.deepEqual([bounce.condition.status, bounce.condition.reason], ["True", "BounceRate"]);
    assert.equal(bounce.notice?.reason, "Paused");
    assert.match(bounce.notice!.note, /held in the queue \(still accepted\)/);
    const complaint = stepDomain(policy, { attempted: 1000, delivered: 1000, deferred: 0, bounced: 0, complaints: 5 }, undefined, now);
    assert.deepEqual([complaint.reputation.state, complaint.condition.reason, complaint.reputation.complaintRate], ["Paused", "ComplaintRate", 0.005]);
    // Fewer attempts than minSample: not judged.
    assert.equal(stepDomain(policy, { attempted: 10, delivered: 5, deferred: 0, bounced: 5, complaints: 0 }, undefined, now).reputation.state, "Healthy");
    // While paused, nothing is sent: the pause holds until its end, then the domain resumes.
    const quiet = { attempted: 0, delivered: 0, deferred: 0, bounced: 0, complaints: 0 };
    const still = stepDomain(policy, quiet, bounce.reputation, now + 7_100_000);
    assert.equal(still.reputation.state, "Paused");
    assert.equal(still.notice, undefined);
    const resumed = stepDomain(policy, quiet, bounce.reputation, now + 7_300_000);
    assert.equal(resumed.reputation.state, "Healthy");
    assert.equal(resumed.reputation.until, undefined);
    assert.equal(resumed.notice?.reason, "Resumed");
  });

  it("the plan carries the pause while it lasts (and changes by itself when it ends); delivery holds only until then", () => {
    const provider = validateObject({ apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: { name: "yahoo" }, spec: { match: { domains: ["yahoo.com"] } } }) as MailboxProvider;
    const pool = warmPool();
    const domain = validateObject({
      apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: { name: "news", namespace: "mail" },
      spec: { domain: "news.example", poolRef: { name: "warm" } },
    }) as SendingDomain;
    const now = T0;
    const until = new Date(now + 7_200_000).toISOString();
    domain.status = { reputation: { state: "Paused", until, reason: "bounce rate 10.00% reached the pause threshold 10.00%" } };
    const base = { providers: [provider], schedules: [], pools: [pool], domains: [domain], credentials: [], previous: null };
    const during = compilePlan({ ...base, now });
    const d = during.plan.domains.find((x) => x.domain === "news.example")!;
    assert.deepEqual(d.paused, { until, reason: "bounce rate 10.00% reached the pause threshold 10.00%" });
    assert.equal(during.nextChangeAt, now + 7_200_000);
    assert.deepEqual(pauseOf(d, now + 1000), { until: now + 7_200_000, reason: d.paused!.reason });
    assert.equal(pauseOf(d, now + 7_200_000), null, "a relay whose clock passed the end sends");
    assert.equal(holdUntil(now + 7_200_000, now), now + 7_200_000);
    assert.equal(holdUntil(now + 10, now), now + 1000, "never a tight loop");
    const after = compilePlan({ ...base, now: now + 7_200_001 });
    assert.equal(after.plan.domains.find((x) => x.domain === "news.example")!.paused, undefined);
    domain.status = { reputation: { state: "Healthy" } };
    assert.equal(compilePlan({ ...base, now }).plan.domains[0]!.paused, undefined);
  });
});
