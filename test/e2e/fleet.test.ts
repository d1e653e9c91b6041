// Scaling and rollouts on the local fleet (test/env/fleet.ts), at small scale.
//
// A pool of its own ("scaled": one address, PerAddress egress, one relay to start with) sends a
// backlog to a provider of its own ("lanetest": 120 messages a minute per lane, 2 connections)
// whose MX is one of the fleet's Postfix receivers. Then:
//   1. replicas 1 -> 3 through the IPPool's scale subresource (what `kubectl scale` does): the new
//      relays take part in delivery, and the lane stays within its limit in every 60 s window of
//      the arrivals the receiver recorded (the limit's period; fleet-wide shaping);
//   2. replicas 3 -> 1: the relays that go are drained (SIGTERM only, exit 0), nothing is lost;
//   3. a new relay version (the pod template's image): old and new relays run side by side and
//      apply the same plan revision, also one published mid-rollout; the old ones drain; nothing
//      is lost.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { leftovers, removeDir, startFleet, type Fleet } from "../env/fleet.ts";
import { Ledger, Workload, type Sender } from "../env/workload.ts";
import type { RelayInfo } from "../env/runner/runner.ts";

const NS = "mail";
const POOL = `${NS}/scaled`;
const POOL_PATH = `/apis/mailfleet.io/v1alpha1/namespaces/${NS}/ippools/scaled`;
const SD_PATH = `/apis/mailfleet.io/v1alpha1/namespaces/${NS}/sendingdomains/scaled-example-com`;
const ADDRESS = "127.0.1.21";
const LANE_PER_MINUTE = 120;
const SENDER: Sender = { domain: "scaled.example.com", pool: POOL, channels: ["smtp-trusted"] };

describe("scaling and rollouts", { timeout: 1_800_000 }, () => {
  let fleet: Fleet;
  let dir: string;
  let ledger: Ledger;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mf-fleet-e2e-"));
    fleet = await startFleet({
      dir, net: 41, prometheus: false, log: () => {},
      examples: (o) => o.kind === "MailboxProvider" || o.kind === "Namespace",
      // lanes.test's MX is the "default" receiver's host; the lanetest provider claims the domain.
      extraDomains: [{ domain: "lanes.test", receiver: "default" }],
    });
    await fleet.apply({
      apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: { name: "lanetest" },
      spec: { displayName: "Lane test", match: { domains: ["lanes.test"] }, shaping: { maxConnections: 4, messagesPerConnection: 100, messageRate: `${LANE_PER_MINUTE}/min` } },
    });
    await fleet.apply({
      apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "scaled", namespace: NS },
      spec: { addresses: [{ address: ADDRESS, hostname: "mta21.scaled.example.com" }], egress: { mode: "PerAddress" }, relay: { replicas: 1 } },
    });
    await fleet.apply({
      apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: { name: "scaled-example-com", namespace: NS },
      spec: { domain: "scaled.example.com", poolRef: { name: "scaled" }, senders: { trustedNetworks: ["127.0.0.0/8"] } },
    });
    await fleet.waitForRelays({ [POOL]: 1 });
    ledger = new Ledger(join(fleet.postfix.dir, "inbox"));
    await ledger.start(fleet.nats.urls);
  });

  after(async () => {
    await ledger?.stop();
    await fleet?.stop();
    if (fleet) assert.deepEqual(leftovers(fleet.groups(), dir), [], "processes left after stop");
    if (dir) removeDir(dir);
  });

  const relays = () => fleet.relays(POOL);
  const workload = (o: { rate: number; count?: number }) => new Workload({
    relays: (p) => fleet.relays(p).filter((r) => r.ready), ledger, senders: [SENDER], recipientDomains: ["lanes.test"], concurrency: 8, ...o,
  }).start();
  async function scale(replicas: number): Promise<void> {
    await fleet.patch(`${POOL_PATH}/scale`, { spec: { replicas } });
  }
  async function until<T>(what: string, timeoutMs: number, f: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await f();
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; relays: ${JSON.stringify(fleet.runner.relays().map((r) => [r.pod, r.state, r.ready, r.terminating]))}`);
      await sleep(500);
    }
  }
  /** Messages delivered per relay (its own /metrics), for the lanetest provider. */
  async function deliveredBy(r: RelayInfo): Promise<number> {
    const text = await fetch(`http://${r.listenAddress}:${r.httpPort}/metrics`).then((x) => x.text());
    let n = 0;
    for (const m of text.matchAll(/^mailfleet_delivered_total\{([^}]*)\} (\S+)$/gm)) if (/provider="lanetest"/.test(m[1]!)) n += Number(m[2]);
    return n;
  }
  /** The plan revisions a relay applied, in order, from its log. */
  function revisions(r: RelayInfo): string[] {
    return [...readFileSync(r.logFile, "utf8").matchAll(/"msg":"plan applied","revision":"([^"]+)"/g)].map((m) => m[1]!);
  }
  async function assertNothingLost(t: { diagnostic(s: string): void }): Promise<void> {
    const r = await ledger.settle(300_000);
    t.diagnostic(JSON.stringify({ ...r, lostSamples: undefined }));
    assert.equal(r.lost, 0, `lost: ${r.lostSamples.join("; ")}`);
    assert.ok(r.duplicates <= 1, `${r.duplicates} messages arrived twice`);
  }

  it("scaling up through the scale subresource adds relays that share the lane without exceeding it", async (t) => {
    const w = workload({ rate: 4, count: 280 });
    await sleep(20_000);
    const scaleObj = await fleet.get(`${POOL_PATH}/scale`);
    assert.equal(scaleObj.spec.replicas, 1);
    const scaledAt = Date.now();
    await scale(3);
    const three = await until("3 ready relays", 240_000, () => { const l = relays().filter((r) => r.ready); return l.length >= 3 && l; });
    const readyAt = Date.now();
    const before = new Map(await Promise.all(three.map(async (r) => [r.pod, await deliveredBy(r)] as const)));
    await w.done();
    await assertNothingLost(t);
    // The lane (ADDRESS x lanetest) in every 60 s window: at most the limit (+1, the allowance for
    // slow lanes), whatever number of relays shared it. The limit counts messages (transactions),
    // not recipients: a message to two recipients of lanes.test is one transaction, one receiver
    // queue id, two Maildir files.
    const firstSeen = new Map<string, number>();
    for (const a of ledger.arrivalLog) if (a.clientIp === ADDRESS && !firstSeen.has(a.queueId)) firstSeen.set(a.queueId, a.at);
    const times = [...firstSeen.values()].sort((a, b) => a - b);
    let worst = 0;
    for (let i = 0, j = 0; i < times.length; i++) {
      while (times[i]! - times[j]! >= 60_000) j++;
      worst = Math.max(worst, i - j + 1);
    }
    t.diagnostic(`${times.length} transactions from ${ADDRESS}; busiest 60 s window: ${worst} (limit ${LANE_PER_MINUTE})`);
    const buckets = new Map<number, number>();
    for (const x of times) { const b = Math.floor((x - scaledAt) / 10_000) * 10; buckets.set(b, (buckets.get(b) ?? 0) + 1); }
    t.diagnostic(`transactions per 10 s, seconds from the scale-up: ${[...buckets].map(([b, n]) => `${b}:${n}`).join(" ")}; 3 relays ready at +${Math.round((readyAt - scaledAt) / 1000)} s`);
    const after = await Promise.all(three.map(async (r) => [r.pod, await deliveredBy(r) - (before.get(r.pod) ?? 0)] as const));
    t.diagnostic(`delivered after the scale-up, per relay: ${JSON.stringify(after)}`);
    assert.ok(times.length >= 200, `only ${times.length} transactions from ${ADDRESS}`);
    assert.ok(worst <= LANE_PER_MINUTE + 1, `the lane carried ${worst} messages in 60 s, limit ${LANE_PER_MINUTE}`);
    assert.ok(after.every(([, n]) => n > 0), "every relay took part in delivery after the scale-up");
    assert.ok(worst >= LANE_PER_MINUTE * 0.8, `the lane carried at most ${worst} in 60 s with a backlog: the relays do not use it`);
  });

  it("scaling down drains the relays that go: SIGTERM, transactions finish, exit 0, nothing lost", async (t) => {
    const w = workload({ rate: 3 });
    await sleep(10_000);
    const endedBefore = fleet.runner.ended().length;
    await scale(1);
    await until("one relay left", 180_000, () => fleet.runner.relays().filter((r) => r.env.MAILFLEET_POOL === POOL).length === 1);
    await sleep(5000);
    await w.stop();
    const gone = fleet.runner.ended().slice(endedBefore).filter((e) => e.namespace === NS && e.pod.startsWith("scaled-"));
    t.diagnostic(JSON.stringify(gone.map((e) => ({ pod: e.pod, why: e.why, exit: e.exitCode, signals: e.signalsSent }))));
    assert.equal(gone.length, 2);
    for (const e of gone) {
      assert.deepEqual(e.signalsSent, ["SIGTERM"], `${e.pod} needed more than SIGTERM`);
      assert.equal(e.exitCode, 0, `${e.pod} exited ${e.exitCode}`);
      assert.match(readFileSync(join(fleet.runner.stateDir, "logs", `${NS}_${e.pod}_${e.uid.slice(0, 8)}.log`), "utf8"), /"msg":"relay stopped"/);
    }
    await assertNothingLost(t);
  });

  it("a rollout of a new relay version: old and new relays apply the same plan revision, old ones drain, nothing lost", async (t) => {
    await scale(2);
    await until("2 ready relays", 180_000, () => relays().filter((r) => r.ready).length >= 2);
    const old = new Set(relays().map((r) => r.pod));
    const w = workload({ rate: 3 });
    await sleep(5000);
    const endedBefore = fleet.runner.ended().length;
    await fleet.patch(POOL_PATH, { spec: { relay: { image: "localhost/mailfleet-relay:v2" } } });
    // Both versions running: the new relay read the plan the old ones have.
    const both = await until("an old and a new relay running, the new one with its plan", 180_000, () => {
      const l = relays();
      const n = l.find((r) => !old.has(r.pod) && revisions(r).length > 0);
      const o = l.find((r) => old.has(r.pod));
      return n && o ? { n, o } : undefined;
    });
    const r1 = revisions(both.n).at(-1)!;
    assert.equal(revisions(both.o).at(-1), r1, "the new relay applies the plan revision the old one has");
    // A plan change while both run: every relay running then applies it.
    await fleet.patch(SD_PATH, { spec: { senders: { trustedNetworks: ["127.0.0.0/8", "192.0.2.0/24"] } } });
    const r2 = await until("a new plan revision on the new relay", 60_000, () => { const v = revisions(both.n).at(-1); return v !== r1 && v; });
    const stillOld = relays().filter((r) => old.has(r.pod));
    t.diagnostic(`revision ${r1} on old and new; then ${r2}, also on ${stillOld.length} old relay(s) still running: ${stillOld.map((r) => `${r.pod} ${revisions(r).at(-1)}`).join(", ")}`);
    for (const r of stillOld) await until(`${r.pod} to apply ${r2}`, 30_000, () => revisions(r).includes(r2) || !relays().some((x) => x.pod === r.pod));
    // The rollout completes: two new relays, the old ones drained.
    await until("the rollout to finish", 240_000, () => { const l = fleet.runner.relays().filter((r) => r.env.MAILFLEET_POOL === POOL); return l.length === 2 && l.every((r) => !old.has(r.pod) && r.ready); });
    await w.stop();
    const gone = fleet.runner.ended().slice(endedBefore).filter((e) => old.has(e.pod));
    t.diagnostic(JSON.stringify(gone.map((e) => ({ pod: e.pod, exit: e.exitCode, signals: e.signalsSent }))));
    assert.equal(gone.length, 2);
    for (const e of gone) {
      assert.deepEqual(e.signalsSent, ["SIGTERM"]);
      assert.equal(e.exitCode, 0);
    }
    await assertNothingLost(t);
  });
});
