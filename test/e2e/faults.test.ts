// Faults under load, small scale (`npm run bench -- faults` is the full run): the local fleet of
// test/env/fleet.ts carries a steady load while a relay is SIGKILLed repeatedly, one NATS server of
// three is killed and restarted, the operator restarts, a receiver stops listening, DNS stops
// answering and a receiver turns slow. The ledger (test/env/workload.ts) holds every message
// answered 250 and its final event: nothing accepted may be lost, and duplicates stay rare.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { leftovers, removeDir, startFleet, type Fleet } from "../env/fleet.ts";
import { runFaults, type FaultRun } from "../env/faults.ts";

describe("faults under load", { timeout: 1_800_000 }, () => {
  let fleet: Fleet;
  let dir: string;
  let run: FaultRun;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mf-faults-"));
    fleet = await startFleet({ dir, net: 42, prometheus: false, runnerBackoff: { initialMs: 2000, maxMs: 10_000 }, log: () => {} });
    await fleet.waitForRelays({ "mail/transactional": 2 });
  });

  after(async () => {
    await fleet?.stop();
    if (fleet) assert.deepEqual(leftovers(fleet.groups(), dir), [], "processes left after stop");
    if (dir) removeDir(dir);
  });

  it("loses no accepted message through relay SIGKILLs, a NATS server lost, an operator restart, a receiver down, DNS failing and a slow receiver", async (t) => {
    const lines: string[] = [];
    run = await runFaults(fleet, {
      rate: 5, faultMs: 25_000, gapMs: 10_000, kills: 3, killEveryMs: 10_000, slowSeconds: 8, settleMs: 360_000,
      log: (l) => lines.push(l),
    });
    for (const l of lines) t.diagnostic(l);
    const r = run.report;
    t.diagnostic(JSON.stringify({ ...r, lostSamples: undefined, duplicateFirstArrivals: undefined, duplicatesAfter: run.duplicatesAfter, retries: run.workload.retries, gaveUp: run.workload.failed }));
    for (const s of r.lostSamples) t.diagnostic(`lost: ${s}`);
    assert.ok(r.accepted > 100, `only ${r.accepted} messages accepted: ${run.workload.errors.slice(-3).join(" | ")}`);
    assert.equal(r.lost, 0, "accepted recipients without a final event (or delivered but never arrived)");
    assert.ok(r.bounced > 0, "the unknown recipients bounced");
    assert.equal(r.delivered + r.bounced + r.expired, r.acceptedRecipients);
    // At-least-once: a relay killed between the receiver's 250 and its ack sends that message
    // again. Rare, not never.
    assert.ok(r.duplicates <= Math.max(3, r.acceptedRecipients * 0.01), `${r.duplicates} duplicates of ${r.acceptedRecipients}`);
  });

  it("the receiver that went down made mail defer, and it went out when the receiver came back", () => {
    assert.ok(run.report.deferred > 0, "no deferred events while a receiver refused connections");
  });
});
