// npm run bench -- faults [minutes per fault]: the local fleet (test/env/fleet.ts: 3 NATS servers,
// the operator, relays run by the runner, Postfix receivers, dnsmasq) under a steady load, through
// every fault of test/env/faults.ts one after the other (relays SIGKILLed repeatedly, a NATS
// server killed and restarted, the operator restarted, a receiver down, DNS failing, a slow
// receiver), then waits for every accepted message's final event. Prints one JSON line:
//   {"bench":"faults","accepted":N,"delivered":N,"bounced":N,"lost":N,"duplicates":N, ...}
// lost: accepted recipients with no final event, or delivered by the events but never arrived;
// duplicates: arrivals at the receivers beyond the first per (Message-ID, recipient).
import { join } from "node:path";
import { leftovers, removeDir, startFleet } from "../test/env/fleet.ts";
import { runFaults } from "../test/env/faults.ts";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";

const minutes = Number(process.argv[2] ?? 2);
const rate = Number(process.env.MAILFLEET_FAULTS_RATE ?? 10);
const log = (s: string) => process.stderr.write(`bench faults: ${s}\n`);
const dir = mkdtempSync(join(tmpdir(), "mf-bench-faults-"));
const fleet = await startFleet({ dir, net: 43, prometheus: false, log });
let code = 0;
try {
  await fleet.waitForRelays({ "mail/transactional": 2 });
  const t0 = Date.now();
  const run = await runFaults(fleet, {
    rate, faultMs: minutes * 60_000, gapMs: 30_000, kills: 6, killEveryMs: 20_000, slowSeconds: 20,
    settleMs: 15 * 60_000, log,
  });
  const r = run.report;
  for (const s of r.lostSamples) log(`lost: ${s}`);
  for (const e of run.workload.errors.slice(-5)) log(`workload: ${e}`);
  process.stdout.write(JSON.stringify({
    bench: "faults", accepted: r.accepted, delivered: r.delivered, bounced: r.bounced, lost: r.lost, duplicates: r.duplicates,
    accepted_recipients: r.acceptedRecipients, expired: r.expired, duplicate_final_events: r.duplicateFinals, deferred_events: r.deferred,
    duplicates_pct: r.accepted ? Number(((100 * r.duplicates) / r.acceptedRecipients).toFixed(3)) : 0,
    submissions_given_up: run.workload.failed, submission_retries: run.workload.retries, p99_accept_ms: Math.round(run.p99AcceptMs),
    rate_offered: rate, fault_minutes: minutes, wall_s: Math.round((Date.now() - t0) / 1000),
    duplicates_after: run.duplicatesAfter,
    timeline: run.timeline.map((t) => `${Math.round(t.at / 1000)}s ${t.what}`),
  }) + "\n");
  if (r.lost > 0) code = 1;
} finally {
  await fleet.stop();
  const left = leftovers(fleet.groups(), dir);
  if (left.length) log(`left running: ${left.map((p) => `${p.comm} ${p.pid}`).join(", ")}`);
  removeDir(dir);
}
process.exit(code);
