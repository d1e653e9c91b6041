// The operator's runtime pieces that need no cluster: work queue semantics, condition bookkeeping,
// compare-before-apply.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { mergeConditions, readyFrom, statusDiffers } from "../../operator/runtime/conditions.ts";
import { APPLIED_HASH_ANNOTATION, applyReason, firstDifference, quantityValue, withHash } from "../../operator/runtime/compare.ts";
import { type Clock, ExponentialBackoff, WorkQueue } from "../../operator/runtime/workqueue.ts";

/** A clock the test moves by hand. */
function fakeClock() {
  let now = 0;
  const timers: { at: number; fn: () => void; id: number }[] = [];
  let next = 1;
  const clock: Clock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = next++;
      timers.push({ at: now + ms, fn, id });
      return id;
    },
    clearTimeout: (h) => {
      const i = timers.findIndex((t) => t.id === h);
      if (i >= 0) timers.splice(i, 1);
    },
  };
  const advance = (ms: number) => {
    now += ms;
    for (const t of timers.filter((x) => x.at <= now).sort((a, b) => a.at - b.at)) {
      timers.splice(timers.indexOf(t), 1);
      t.fn();
    }
  };
  return { clock, advance, pending: () => timers.length };
}

describe("work queue", () => {
  it("de-duplicates keys waiting to be processed", async () => {
    const q = new WorkQueue();
    q.add("a");
    q.add("b");
    q.add("a");
    assert.equal(q.len(), 2);
    assert.equal(await q.get(), "a");
    assert.equal(await q.get(), "b");
    assert.equal(q.len(), 0);
  });

  it("processes a key re-added while in progress once more, after done()", async () => {
    const q = new WorkQueue();
    q.add("a");
    const k = await q.get();
    q.add("a");
    q.add("a");
    assert.equal(q.len(), 0, "not handed to a second worker while the first processes it");
    q.done(k!);
    assert.equal(q.len(), 1);
    assert.equal(await q.get(), "a");
    q.done("a");
    assert.equal(q.len(), 0);
  });

  it("hands a key to a waiting worker", async () => {
    const q = new WorkQueue();
    const p = q.get();
    q.add("x");
    assert.equal(await p, "x");
  });

  it("addAfter keeps the earliest due time per key", () => {
    const { clock, advance } = fakeClock();
    const q = new WorkQueue({ clock });
    q.addAfter("a", 1000);
    q.addAfter("a", 100);
    q.addAfter("a", 5000);
    advance(99);
    assert.equal(q.len(), 0);
    advance(1);
    assert.equal(q.len(), 1);
    advance(10_000);
    assert.equal(q.len(), 1, "the later timers were dropped");
  });

  it("backs off per key exponentially from 5 ms to 5 minutes, and forget resets", () => {
    const b = new ExponentialBackoff();
    const delays = Array.from({ length: 20 }, () => b.when("k"));
    assert.deepEqual(delays.slice(0, 4), [5, 10, 20, 40]);
    assert.equal(delays.at(-1), 300_000);
    assert.equal(b.when("other"), 5, "per key");
    b.forget("k");
    assert.equal(b.when("k"), 5);
  });

  it("addRateLimited delays by the key's backoff", () => {
    const { clock, advance } = fakeClock();
    const q = new WorkQueue({ clock });
    assert.equal(q.addRateLimited("a"), 5);
    assert.equal(q.addRateLimited("a"), 10);
    advance(5);
    assert.equal(q.len(), 1);
    assert.equal(q.numRequeues("a"), 2);
    q.forget("a");
    assert.equal(q.numRequeues("a"), 0);
  });

  it("shutDown wakes waiting workers and waits for keys in progress", async () => {
    const q = new WorkQueue();
    q.add("busy");
    const k = await q.get();
    const idle = q.get();
    let drained = false;
    const shut = q.shutDown().then(() => (drained = true));
    assert.equal(await idle, undefined);
    await sleep(5);
    assert.equal(drained, false, "waits for the key in progress");
    q.done(k!);
    await shut;
    assert.equal(drained, true);
    q.add("late");
    assert.equal(q.len(), 0, "no adds after shutdown");
  });
});

describe("conditions", () => {
  const t0 = new Date("2026-11-27T10:00:00Z");
  const t1 = new Date("2026-11-27T11:00:00Z");
  const managed = ["Ready", "Accepted", "ReconciliationPaused"];

  it("sets lastTransitionTime only when the status changes", () => {
    const a = mergeConditions(undefined, [{ type: "Ready", status: "False", reason: "DNSNotVerified", message: "publish it" }], { now: t0, generation: 1, managed });
    assert.equal(a.conditions[0]!.lastTransitionTime, "2026-11-27T10:00:00Z");
    assert.equal(a.transitions.length, 1);
    const b = mergeConditions(a.conditions, [{ type: "Ready", status: "False", reason: "DNSNotVerified", message: "publish it, please" }], { now: t1, generation: 2, managed });
    assert.equal(b.conditions[0]!.lastTransitionTime, "2026-11-27T10:00:00Z", "same status: time kept");
    assert.equal(b.conditions[0]!.observedGeneration, 2);
    assert.equal(b.transitions.length, 0, "a message change is no transition");
    const c = mergeConditions(b.conditions, [{ type: "Ready", status: "True", reason: "Ready", message: "ok" }], { now: t1, generation: 2, managed });
    assert.equal(c.conditions[0]!.lastTransitionTime, "2026-11-27T11:00:00Z");
    assert.deepEqual(c.transitions.map((t) => [t.from, t.to]), [["False", "True"]]);
  });

  it("keeps conditions other controllers own and drops its own that are no longer set", () => {
    const live = [
      { type: "WarmupCurrent", status: "True" as const, reason: "X", message: "", lastTransitionTime: "2026-01-01T00:00:00Z" },
      { type: "ReconciliationPaused", status: "True" as const, reason: "Paused", message: "", lastTransitionTime: "2026-01-01T00:00:00Z" },
    ];
    const r = mergeConditions(live, [{ type: "Ready", status: "True", reason: "Ready", message: "" }], { now: t0, generation: 1, managed });
    assert.deepEqual(r.conditions.map((c) => c.type), ["Ready", "WarmupCurrent"]);
  });

  it("Ready carries the first failing part", () => {
    const r = readyFrom([
      { type: "Accepted", status: "True", reason: "Accepted", message: "" },
      { type: "DNSVerified", status: "False", reason: "DNSRecordsMissing", message: "publish TXT x" },
    ], "ok");
    assert.deepEqual(r, { type: "Ready", status: "False", reason: "DNSRecordsMissing", message: "publish TXT x" });
  });

  it("statusDiffers compares only the keys written", () => {
    assert.equal(statusDiffers({ a: 1, lanes: [1, 2] }, { a: 1 }), false);
    assert.equal(statusDiffers({ a: 1 }, { a: 2 }), true);
    assert.equal(statusDiffers({ a: 1 }, { b: undefined }), false);
    assert.equal(statusDiffers({ a: 1, b: 2 }, { b: undefined }), true);
    assert.equal(statusDiffers({ o: { x: 1, y: undefined } }, { o: { x: 1 } }), false);
  });
});

describe("compare before apply", () => {
  const desired = withHash({
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "d", namespace: "n", labels: { a: "1" }, annotations: {} },
    spec: { replicas: 2, template: { spec: { containers: [{ name: "c", resources: { limits: { cpu: "0.5", memory: "1Gi" } }, args: [] }] } } },
  });
  const hash = (desired.metadata as { annotations: Record<string, string> }).annotations[APPLIED_HASH_ANNOTATION]!;
  const live = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "d", namespace: "n", uid: "u", resourceVersion: "7", labels: { a: "1", extra: "x" }, annotations: { [APPLIED_HASH_ANNOTATION]: hash, "deployment.kubernetes.io/revision": "1" } },
    spec: {
      replicas: 2, progressDeadlineSeconds: 600,
      template: { metadata: { creationTimestamp: null }, spec: { containers: [{ name: "c", resources: { limits: { cpu: "500m", memory: "1Gi" } }, imagePullPolicy: "Always" }] } },
    },
    status: { replicas: 2 },
  };

  it("skips an apply when the live object already holds every desired value (defaults and quantities aside)", () => {
    assert.equal(applyReason(desired, live), undefined);
  });

  it("applies when absent, when a desired value drifted, and when the hash differs", () => {
    assert.equal(applyReason(desired, undefined), "absent");
    const drifted = structuredClone(live);
    drifted.spec.replicas = 5;
    assert.equal(applyReason(desired, drifted), "drift at .spec.replicas");
    const older = structuredClone(live);
    older.metadata.annotations[APPLIED_HASH_ANNOTATION] = "old";
    assert.equal(applyReason(desired, older), "changed");
  });

  it("compares lists element by element and quantities by value", () => {
    assert.equal(firstDifference([1, 2], [1, 2, 3]), ".");
    assert.equal(firstDifference({ q: "1" }, { q: "1000m" }), undefined);
    assert.equal(firstDifference({ q: "1Gi" }, { q: "1G" }), ".q");
    assert.equal(quantityValue("250m"), 0.25);
    assert.equal(quantityValue("abc"), undefined);
  });
});
