import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  type SlotLimit, type SlotState, batchSize, graceFor, maxInWindow, release, reserve, usable, windowStart,
} from "../../relay/shaper/slots.ts";

const lane = (count: number, periodMs: number, extra: Partial<SlotLimit> = {}): SlotLimit => ({
  rate: { count, periodMs }, factor: 1, daily: null, hourly: null, dayMs: 86_400_000, dayZero: 0, ...extra,
});

describe("time-slot leases", () => {
  it("spaces slots by period/limit and chains across reservations", () => {
    const l = lane(6000, 60_000);
    const a = reserve({ tat: 0 }, l, 5, 1000, 1000);
    assert.deepEqual(a.slots, [1000, 1010, 1020, 1030, 1040]);
    const b = reserve(a.next, l, 3, 1001, 1000);
    assert.deepEqual(b.slots, [1050, 1060, 1070]);
    // An idle chain does not bank capacity: slots start at now.
    const c = reserve(b.next, l, 1, 5000, 1000);
    assert.deepEqual(c.slots, [5000]);
  });

  it("never reserves beyond the horizon", () => {
    const r = reserve({ tat: 0 }, lane(60, 60_000), 10, 0, 2500);
    assert.deepEqual(r.slots, [0, 1000, 2000]);
  });

  it("quotas: daily and hourly counts stop the chain until the next window", () => {
    const l = lane(6000, 60_000, { daily: 10, hourly: 4 });
    const r = reserve({ tat: 0 }, l, 10, 0, 10_000);
    assert.equal(r.slots.length, 4);
    assert.equal(r.retryAt, 3_600_000);
    const after = release(r.next, l, [r.slots[3]!]);
    assert.equal(after.hour!.used, 3);
  });

  it("quotas decided for a day that has ended grant nothing after it; a lane without quota is not held", () => {
    const day = 10_000;
    const l = lane(600, 60_000, { daily: 100, hourly: null, dayMs: day, quotaUntil: day });
    const r = reserve({ tat: 0 }, l, 50, 9_500, 5_000);
    assert.deepEqual(r.slots, [9_500, 9_600, 9_700, 9_800, 9_900], "slots up to the end of the quota's day only");
    assert.equal(r.retryAt, day + 250);
    assert.equal(reserve(r.next, l, 5, 10_100, 5_000).slots.length, 0, "nothing in the next day on the old plan");
    const next = reserve(r.next, { ...l, quotaUntil: 2 * day }, 5, 10_100, 5_000);
    assert.equal(next.slots.length, 5, "the next day's plan opens it");
    assert.equal(reserve({ tat: 0 }, lane(600, 60_000, { quotaUntil: day }), 3, 20_000, 5_000).slots.length, 3);
  });

  it("a limit without a quota keeps the windows others counted", () => {
    const q = lane(6000, 60_000, { daily: 10, hourly: 4 });
    const counted = reserve({ tat: 0 }, q, 3, 0, 10_000).next;
    const old = reserve(counted, lane(6000, 60_000), 5, 100, 10_000).next;
    assert.deepEqual([old.day?.used, old.hour?.used], [3, 3]);
    assert.equal(reserve(old, q, 10, 200, 10_000).slots.length, 1, "the quota relay still sees 3 of 4 used");
  });

  it("SlowDown factor stretches the interval", () => {
    const r = reserve({ tat: 0 }, lane(600, 60_000, { factor: 0.5 }), 3, 0, 10_000);
    assert.deepEqual(r.slots, [0, 200, 400]);
  });

  it("batch size follows the lane's rate and the number of relays", () => {
    assert.equal(batchSize(lane(6000, 60_000), 4, 1000, 500), 12);
    assert.equal(batchSize(lane(60, 60_000), 4, 1000, 500), 1);
    assert.equal(batchSize(lane(6000, 60_000), 1, 3, 500), 3);
  });

  it("any interleaving of relays stays within L + L*grace/P + 1 in every window, and within quota", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }), // relays
        fc.constantFrom(lane(6000, 60_000), lane(60, 60_000), lane(600, 10_000), lane(6000, 60_000, { daily: 2000, hourly: 300, dayMs: 600_000 })),
        fc.array(fc.record({ relay: fc.nat(7), wait: fc.integer({ min: 0, max: 400 }), n: fc.integer({ min: 1, max: 60 }), late: fc.integer({ min: 0, max: 100 }) }), { minLength: 20, maxLength: 300 }),
        (relays, limit, steps) => {
          let state: SlotState = { tat: 0 };
          let now = 0;
          const grace = graceFor(limit);
          const sent: number[] = [];
          let reservedInDay = new Map<number, number>();
          for (const step of steps) {
            now += step.wait;
            const r = reserve(state, limit, step.n, now, 1000);
            state = r.next;
            for (const s of r.slots) {
              const day = windowStart(s, limit.dayMs, limit.dayZero);
              reservedInDay.set(day, (reservedInDay.get(day) ?? 0) + 1);
              // Each relay spends its slot on time or a little late; too late is dropped.
              const at = s + (step.late % (relays + 1)) * (grace / 2);
              if (usable(s, at, grace)) sent.push(at);
            }
          }
          sent.sort((a, b) => a - b);
          const period = limit.rate!.periodMs;
          const bound = limit.rate!.count + (limit.rate!.count * grace) / period + 1;
          assert.ok(maxInWindow(sent, period) <= bound, `window ${maxInWindow(sent, period)} > ${bound}`);
          if (limit.daily !== null) for (const used of reservedInDay.values()) assert.ok(used <= limit.daily);
          reservedInDay = new Map();
        },
      ),
      { numRuns: 300 },
    );
  });

  it("maxInWindow counts a sliding window", () => {
    assert.equal(maxInWindow([0, 10, 20, 1000, 1005], 1000), 4);
    assert.equal(maxInWindow([0, 999, 1000], 1000), 2);
  });
});
