// The warm-up engine's pure parts: counting events into lanes and periods (exactly once), and the
// per-pool step (period boundaries, closing each day once, overrides, reputation windows,
// complaint blindness, status).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { validateObject } from "../../api/validate.ts";
import type { IPPool, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { LANE_OVERRIDES_ANNOTATION } from "../../api/v1alpha1/index.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";
import { type PeriodDoc, type RawCounts, applyToDoc, counterKey, laneDelta, periodOf } from "../../operator/warmup/counters.ts";
import { type EngineState, type StepInput, periodsNeeded, stepPool } from "../../operator/warmup/lanes.ts";

const PERIOD = 10_000;
const schedule = (validateObject({
  apiVersion: "mailfleet.io/v1alpha1", kind: "WarmupSchedule", metadata: { name: "s", namespace: "mail" },
  spec: {
    period: "10s",
    stages: [{ day: 1, daily: 10 }, { day: 3, daily: 20 }, { day: 5, daily: 40 }, { day: 7, daily: 80 }],
    advance: { minSample: 5 },
    onFailure: { action: "StepBack", stepBackAfter: 2, stepBackBy: 1 },
  },
}) as WarmupSchedule).spec;

function mkPool(o: { annotations?: Record<string, string>; listed?: Record<string, string[]>; reputation?: Record<string, unknown> } = {}): IPPool {
  const p = validateObject({
    apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool",
    metadata: { name: "p", namespace: "mail", uid: "u1", ...(o.annotations ? { annotations: o.annotations } : {}) },
    spec: {
      addresses: [{ address: "192.0.2.1", hostname: "a.example" }, { address: "192.0.2.2", hostname: "b.example" }],
      warmupScheduleRef: { name: "s" },
      reputation: { window: "30s", resumeAfter: "20s", ...(o.reputation ?? {}) },
    },
  }) as IPPool;
  if (o.listed) p.status = { addresses: Object.entries(o.listed).map(([address, listed]) => ({ address, hostname: "x", forwardConfirmed: true, listed })) };
  return p;
}

const providers = [{ name: "gmail", feedbackLoop: false }, { name: "yahoo", feedbackLoop: true }];
const c = (attempted: number, x: Partial<RawCounts> = {}): RawCounts => ({ attempted, delivered: attempted, deferred: 0, bounced: 0, complaints: 0, ...x });

/** Runs the engine over days: traffic(day, lane, quota) says what each lane did that day. */
function simulate(days: number, traffic: (day: number, lane: string, quota: number) => RawCounts, pool = mkPool()) {
  let state: EngineState | null = null;
  const docs = new Map<number, PeriodDoc>();
  const t0 = 1_000 * PERIOD; // period 1000 begins
  const history: Record<string, { quota: number; decision?: string; state: string }[]> = {};
  let status = stepPool(input(pool, null, t0, docs)).status;
  state = stepPool(input(pool, null, t0, docs)).state;
  for (let d = 0; d < days; d++) {
    const period = 1000 + d;
    const doc: PeriodDoc = { seq: d + 1, lanes: {} };
    for (const l of status.lanes) {
      const key = `${l.address}/${l.provider}`;
      (history[key] ??= []).push({ quota: l.dailyQuota!, state: l.state });
      if (l.state === "Healthy") doc.lanes[key] = traffic(d, key, l.dailyQuota!);
    }
    docs.set(period, doc);
    // Mid-day step (reputation), then the boundary.
    let out = stepPool(input(pool, state, period * PERIOD + PERIOD / 2, docs));
    state = out.state;
    out = stepPool(input(pool, state, (period + 1) * PERIOD + 500, docs));
    state = out.state;
    status = out.status;
    for (const l of status.lanes) history[`${l.address}/${l.provider}`]!.at(-1)!.decision = l.decision;
  }
  return { history, status, state: state! };
}

function input(pool: IPPool, state: EngineState | null, now: number, docs: Map<number, PeriodDoc>, extra: Partial<StepInput> = {}): StepInput {
  return { pool, schedule, providers, state, now, counts: (p) => docs.get(p) ?? null, canClose: () => true, rules: [], ...extra };
}

describe("warm-up counters", () => {
  const ev = (type: MailEvent["type"], x: Partial<MailEvent> = {}): MailEvent => ({
    type, qid: "q", part: 0, pool: "mail/p", domain: "d.test", provider: "yahoo", source: "192.0.2.1", rcpts: ["a@y.test", "b@y.test"], attempts: 1,
    time: new Date(1_000 * PERIOD + 1).toISOString(), ...x,
  });
  it("attempted counts recipients delivered, deferred or bounced in the dialogue; complaints apart", () => {
    assert.deepEqual(laneDelta(ev("delivered"))!.delta, c(2));
    assert.deepEqual(laneDelta(ev("deferred"))!.delta, { attempted: 2, delivered: 0, deferred: 2, bounced: 0, complaints: 0 });
    assert.deepEqual(laneDelta(ev("bounced"))!.delta, { attempted: 2, delivered: 0, deferred: 0, bounced: 2, complaints: 0 });
    assert.deepEqual(laneDelta(ev("bounced", { async: true }))!.delta, { attempted: 0, delivered: 0, deferred: 0, bounced: 2, complaints: 0 }, "an async bounce was attempted already");
    assert.deepEqual(laneDelta(ev("complained", { rcpts: ["a@y.test"] }))!.delta, { attempted: 0, delivered: 0, deferred: 0, bounced: 0, complaints: 1 });
    assert.equal(laneDelta(ev("deferred", { source: undefined })), null, "no lane: the provider never saw it");
    assert.equal(laneDelta(ev("accepted")), null);
    assert.equal(laneDelta(ev("delivered"))!.lane, "192.0.2.1/yahoo");
  });
  it("period boundaries follow the event's time; keys name the pool, period length and period", () => {
    assert.equal(periodOf(1_000 * PERIOD, PERIOD), 1000);
    assert.equal(periodOf(1_001 * PERIOD - 1, PERIOD), 1000);
    assert.equal(periodOf(1_001 * PERIOD, PERIOD), 1001);
    assert.equal(counterKey("mail.x/p.q", PERIOD, 7), "c.mail=x_p=q.10000.7");
    assert.match(counterKey("mail/p", PERIOD, 7), /^[-/_=.a-zA-Z0-9]+$/);
  });
  it("a batch redelivered after it was stored is not counted twice", () => {
    const items = [{ seq: 5, lane: "l", delta: c(1) }, { seq: 6, lane: "l", delta: c(1) }];
    const once = applyToDoc(null, items);
    assert.deepEqual(once, { seq: 6, lanes: { l: c(2) } });
    assert.deepEqual(applyToDoc(once, items), once);
    assert.deepEqual(applyToDoc(once, [...items, { seq: 7, lane: "l", delta: c(3) }]).lanes.l, c(5));
  });
});

describe("warm-up engine step", () => {
  it("healthy lanes follow the schedule exactly, one decision per period", () => {
    const { history } = simulate(9, (_d, _l, q) => c(q));
    assert.deepEqual(history["192.0.2.1/gmail"]!.map((h) => h.quota), [10, 10, 20, 20, 40, 40, 80, 80, 80]);
    assert.deepEqual(history["192.0.2.2/yahoo"]!.map((h) => h.quota), [10, 10, 20, 20, 40, 40, 80, 80, 80]);
    assert.deepEqual(history["192.0.2.1/gmail"]!.map((h) => h.decision), ["Counted", "Advanced", "Counted", "Advanced", "Counted", "Advanced", "Counted", "Counted", "Counted"]);
  });

  it("closes a period once, however often it runs, and only when the counters caught up", () => {
    const pool = mkPool();
    const docs = new Map<number, PeriodDoc>([[1000, { seq: 1, lanes: { "192.0.2.1/gmail": c(10) } }]]);
    const first = stepPool(input(pool, null, 1000 * PERIOD + 10, docs));
    assert.equal(first.state.open, 1000);
    const notYet = stepPool(input(pool, first.state, 1001 * PERIOD + 10, docs, { canClose: () => false }));
    assert.equal(notYet.state.open, 1000, "counters not caught up: the day stays open");
    const closed = stepPool(input(pool, notYet.state, 1001 * PERIOD + 10, docs));
    assert.equal(closed.state.open, 1001);
    assert.equal(closed.status.warmupDay, new Date(1001 * PERIOD).toISOString());
    const again = stepPool(input(pool, closed.state, 1001 * PERIOD + 20, docs));
    assert.deepEqual(again.state, closed.state, "a second step (or replica) closes nothing more");
    assert.equal(again.notices.length, 0);
    const lane = closed.status.lanes.find((l) => l.address === "192.0.2.1" && l.provider === "gmail")!;
    assert.equal(lane.day, 1);
    assert.equal(lane.decision, "Counted");
  });

  it("after an outage, every missed period is closed in order", () => {
    const pool = mkPool();
    const docs = new Map<number, PeriodDoc>();
    for (let p = 1000; p < 1004; p++) docs.set(p, { seq: p, lanes: { "192.0.2.1/gmail": c(p < 1002 ? 10 : 20) } });
    const s0 = stepPool(input(pool, null, 1000 * PERIOD, docs)).state;
    assert.deepEqual(periodsNeeded(s0, 1004 * PERIOD + 10, PERIOD, 30_000), [1000, 1001, 1002, 1003, 1004]);
    const out = stepPool(input(pool, s0, 1004 * PERIOD + 10, docs));
    const lane = out.status.lanes.find((l) => l.address === "192.0.2.1" && l.provider === "gmail")!;
    assert.deepEqual([lane.day, lane.stage, lane.dailyQuota], [4, 2, 40]);
  });

  it("deferrals hold the lane, then step it back; Events say why", () => {
    const { history, status } = simulate(8, (d, l, q) => (l === "192.0.2.1/yahoo" && d >= 4 ? c(q, { delivered: q / 2, deferred: q / 2 }) : c(q)));
    const h = history["192.0.2.1/yahoo"]!;
    assert.deepEqual(h.map((x) => x.quota), [10, 10, 20, 20, 40, 40, 20, 20]);
    assert.deepEqual(h.map((x) => x.decision).slice(4, 7), ["Held", "SteppedBack", "Held"]);
    const lane = status.lanes.find((l) => l.address === "192.0.2.1" && l.provider === "yahoo")!;
    assert.equal(lane.decision, "SteppedBack");
    assert.match(lane.reason!, /deferral rate 50\.00% over the stage .* for 2 days: stepped back to stage 1/);
  });

  it("hold and stage by hand (the lane-overrides annotation)", () => {
    const held = mkPool({ annotations: { [LANE_OVERRIDES_ANNOTATION]: JSON.stringify({ "192.0.2.1/gmail": { hold: true, by: "ops" }, "192.0.2.2/gmail": { stage: 3 } }) } });
    const { history, status } = simulate(4, (_d, _l, q) => c(q), held);
    assert.deepEqual(history["192.0.2.1/gmail"]!.map((h) => h.quota), [10, 10, 10, 10]);
    assert.deepEqual(history["192.0.2.2/gmail"]!.map((h) => h.quota), [80, 80, 80, 80]);
    assert.deepEqual(history["192.0.2.1/yahoo"]!.map((h) => h.quota), [10, 10, 20, 20], "other lanes go on");
    const l1 = status.lanes.find((l) => l.address === "192.0.2.1" && l.provider === "gmail")!;
    assert.deepEqual([l1.held, l1.manual, l1.decision], [true, true, "HeldByHand"]);
  });

  it("complaints pause the lane and every lane of its address; after resumeAfter the lane resumes a stage lower", () => {
    const pool = mkPool();
    const docs = new Map<number, PeriodDoc>();
    let st = stepPool(input(pool, null, 1000 * PERIOD, docs)).state;
    // Two days at full use: stage 1 (20/day).
    for (const p of [1000, 1001]) {
      docs.set(p, { seq: p, lanes: Object.fromEntries(["192.0.2.1", "192.0.2.2"].flatMap((a) => providers.map((x) => [`${a}/${x.name}`, c(10)]))) });
      st = stepPool(input(pool, st, (p + 1) * PERIOD + 100, docs)).state;
    }
    docs.set(1002, { seq: 1002, lanes: { "192.0.2.2/yahoo": c(20, { complaints: 2 }), "192.0.2.2/gmail": c(20), "192.0.2.1/yahoo": c(20) } });
    const out = stepPool(input(pool, st, 1002 * PERIOD + 5000, docs));
    const by = (a: string, p: string) => out.status.lanes.find((l) => l.address === a && l.provider === p)!;
    assert.equal(by("192.0.2.2", "yahoo").state, "Paused");
    assert.match(by("192.0.2.2", "yahoo").reason!, /^address 192\.0\.2\.2: complaint rate 5\.00% reached the pause threshold/);
    assert.equal(by("192.0.2.2", "gmail").state, "Paused", "the address pauses: its other lanes too");
    assert.equal(by("192.0.2.1", "yahoo").state, "Healthy");
    assert.ok(out.notices.some((n) => n.reason === "Paused" && /address 192\.0\.2\.2/.test(n.note)));
    // Paused lanes' day does not count.
    const next = stepPool(input(pool, out.state, 1003 * PERIOD + 100, docs));
    assert.equal(next.status.lanes.find((l) => l.address === "192.0.2.2" && l.provider === "yahoo")!.day, 2);
    // After resumeAfter (20 s), the pause is renewed while the complaints are in the 30 s window;
    // once they are out, the lane resumes one stage lower.
    let s = next.state;
    let last = next;
    const notices: { reason: string; note: string }[] = [];
    for (let t = 1003 * PERIOD + 1000; t <= 1008 * PERIOD + 100; t += 1000) {
      last = stepPool(input(pool, s, t, docs, { canClose: (p) => p < Math.floor(t / PERIOD) }));
      s = last.state;
      notices.push(...last.notices);
    }
    const resumed = last.status.lanes.find((l) => l.address === "192.0.2.2" && l.provider === "yahoo")!;
    assert.equal(resumed.state, "Healthy");
    assert.equal(resumed.stage, 0);
    assert.ok(notices.some((n) => n.reason === "Resumed" && /^192\.0\.2\.2\/yahoo: pause ended .*resumed at stage 0 \(10\/day\)/.test(n.note)), JSON.stringify(notices));
  });

  it("a blind complaint gate is null in status, never zero; a known one with no complaints is 0", () => {
    const { status } = simulate(3, (_d, _l, q) => c(q));
    assert.equal(status.lanes.find((l) => l.provider === "gmail")!.complaintRate, null);
    assert.equal(status.lanes.find((l) => l.provider === "yahoo")!.complaintRate, 0);
  });

  it("a blocklisted address blocks its lanes; the shaper's rule shows on the lane", () => {
    const pool = mkPool({ listed: { "192.0.2.1": ["zen.example"] } });
    const out = stepPool(input(pool, null, 1000 * PERIOD, new Map(), {
      rules: [{ pool: "mail/p", address: "192.0.2.2", provider: "yahoo", state: "Suspended", rule: "ts04", action: "SuspendLane", until: "2030-01-01T00:00:00.000Z", factor: 0, maxConnections: 0 }],
    }));
    const by = (a: string, p: string) => out.status.lanes.find((l) => l.address === a && l.provider === p)!;
    assert.equal(by("192.0.2.1", "gmail").state, "Blocked");
    assert.match(by("192.0.2.1", "gmail").reason!, /zen\.example/);
    assert.deepEqual([by("192.0.2.2", "yahoo").state, by("192.0.2.2", "yahoo").rule, by("192.0.2.2", "yahoo").until], ["Suspended", "ts04", "2030-01-01T00:00:00.000Z"]);
    assert.equal(out.status.lanesHealthy, 1);
    assert.equal(out.status.lanesTotal, 4);
    assert.ok(out.notices.filter((n) => n.reason === "Blocked").length === 2);
  });

  it("nothing changes when nothing happens: the same step twice gives the same status", () => {
    const pool = mkPool();
    const a = stepPool(input(pool, null, 1000 * PERIOD + 10, new Map()));
    const b = stepPool(input(pool, a.state, 1000 * PERIOD + 20, new Map()));
    assert.deepEqual(b.status, a.status);
    assert.deepEqual(b.state, a.state);
  });
});
