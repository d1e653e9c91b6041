import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { warmupScheduleSpec } from "../../api/v1alpha1/index.ts";
import {
  type LaneCounters, type LaneWarmup, daysToFull, endOfDay, judgeReputation, newLane, stageForDay,
} from "../../operator/warmup/decide.ts";

const spec = warmupScheduleSpec.parse({
  stages: [{ day: 1, daily: 100 }, { day: 2, daily: 200 }, { day: 4, daily: 400 }, { day: 6, daily: 1000 }],
  advance: { minSample: 10 },
  onFailure: { action: "StepBack", stepBackAfter: 2, stepBackBy: 1 },
});
const stages = spec.stages;
const day = (attempted: number, extra: Partial<LaneCounters> = {}): LaneCounters => ({
  attempted, delivered: attempted, deferred: 0, bounced: 0, complaints: 0, ...extra,
});

describe("warm-up decisions", () => {
  it("a healthy lane follows the schedule exactly", () => {
    let lane = newLane(stages);
    const quotas: number[] = [];
    for (let d = 0; d < 7; d++) {
      const quota = stages[lane.stage]!.daily;
      quotas.push(quota);
      lane = endOfDay(spec, stages, lane, day(quota)).next;
    }
    assert.deepEqual(quotas, [100, 200, 200, 400, 400, 1000, 1000]);
    assert.equal(daysToFull(stages, lane), 0);
  });

  it("a day under half the quota does not count", () => {
    const out = endOfDay(spec, stages, newLane(stages), day(49));
    assert.equal(out.decision, "NotCounted");
    assert.equal(out.next.day, 0);
    assert.match(out.reason, /used 49 of 100/);
  });

  it("deferrals hold the lane, then step it back", () => {
    let lane: LaneWarmup = newLane(stages, 2);
    assert.equal(lane.day, 3);
    const bad = day(400, { delivered: 200, deferred: 200 });
    const first = endOfDay(spec, stages, lane, bad);
    assert.equal(first.decision, "Held");
    assert.match(first.reason, /deferral rate 50\.00%/);
    lane = first.next;
    const second = endOfDay(spec, stages, lane, bad);
    assert.equal(second.decision, "SteppedBack");
    assert.equal(second.next.stage, 1);
    assert.equal(stages[second.next.stage]!.daily, 200);
  });

  it("held by hand changes nothing", () => {
    const lane = { ...newLane(stages), held: true };
    const out = endOfDay(spec, stages, lane, day(100));
    assert.equal(out.decision, "HeldByHand");
    assert.equal(out.next.day, 0);
  });

  it("a blind complaint gate is not a zero", () => {
    const out = endOfDay(spec, stages, newLane(stages, 1), day(200, { complaints: null }));
    assert.equal(out.decision, "Counted");
    assert.equal(out.next.stageTotals.complaints, null);
  });

  it("stageForDay", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map((d) => stageForDay(stages, d)), [0, 1, 1, 2, 2, 3, 3]);
  });
});

describe("reputation", () => {
  const policy = {
    windowMs: 86_400_000, warnBounceRate: 0.05, pauseBounceRate: 0.1, warnComplaintRate: 0.001,
    pauseComplaintRate: 0.005, resumeAfterMs: 3_600_000, minSample: 20,
  };
  const now = Date.parse("2026-11-27T00:00:00Z");
  it("pauses on complaints and resumes after the pause", () => {
    const paused = judgeReputation(policy, day(1000, { complaints: 6 }), [], { state: "Healthy" }, now);
    assert.equal(paused.state, "Paused");
    assert.match(paused.reason!, /complaint rate 0\.60%/);
    const still = judgeReputation(policy, day(1000, { complaints: 6 }), [], paused, now + 1000);
    assert.equal(still.state, "Paused");
    const after = judgeReputation(policy, day(1000), [], paused, now + 3_600_001);
    assert.deepEqual([after.state, after.resumed], ["Healthy", true]);
  });
  it("warns before pausing, blocks while listed", () => {
    assert.match(judgeReputation(policy, day(100, { bounced: 6 }), [], { state: "Healthy" }, now).warning!, /bounce rate 6\.00%/);
    assert.equal(judgeReputation(policy, day(100), ["zen.example"], { state: "Healthy" }, now).state, "Blocked");
  });
});

describe("failed gates on a lane that cannot use its quota", () => {
  it("a day under half the quota with deferrals over the gate is a failed day", () => {
    const out = endOfDay(spec, stages, newLane(stages, 2), day(150, { delivered: 50, deferred: 100 }));
    assert.equal(out.decision, "Held");
    assert.match(out.reason, /deferral rate 66\.67%/);
  });
});
