// Faults under load, one after the other, on a running local fleet (test/env/fleet.ts), with the
// ledger (test/env/workload.ts) of every accepted message and its final event. Shared by
// test/e2e/faults.test.ts (small: seconds per fault) and `npm run bench -- faults` (minutes).
//
//   relay-sigkill      a relay of the pool SIGKILLed, again and again (the runner restarts it)
//   nats-node          one NATS server of three SIGKILLed (the streams' leader when known), then
//                      restarted with its store
//   operator-restart   the operator stopped and started again
//   receiver-down      a provider's MX stops listening (connections refused): mail defers, then
//                      goes out when it listens again
//   dns-failing        the DNS server stops answering (queries time out)
//   slow-receiver      a receiver waits before answering the end of DATA
import { setTimeout as sleep } from "node:timers/promises";
import type { Fleet } from "./fleet.ts";
import { RECEIVERS } from "./fleet.ts";
import { Ledger, Workload, SENDERS, percentile, type LedgerReport, type WorkloadStats } from "./workload.ts";
import { STREAM_QUEUE } from "../../relay/queue/topology.ts";

export const FAULTS = ["relay-sigkill", "nats-node", "operator-restart", "receiver-down", "dns-failing", "slow-receiver"] as const;
export type Fault = (typeof FAULTS)[number];

export interface FaultPlan {
  /** Messages per second offered during the run. */
  rate: number;
  /** How long each fault lasts (receiver down, DNS failing, slow receiver, NATS node down). */
  faultMs: number;
  /** Load without faults between two faults. */
  gapMs: number;
  /** SIGKILLs of relays, spaced by killEveryMs. */
  kills: number;
  killEveryMs: number;
  /** The slow receiver's pause before its reply to the end of DATA. */
  slowSeconds: number;
  /** After the load stops: how long to wait for every accepted message's final event. */
  settleMs: number;
  faults?: Fault[];
  log?: (line: string) => void;
}

export interface FaultRun {
  report: LedgerReport;
  /** Duplicated messages by the last event of the timeline before their first copy arrived. */
  duplicatesAfter: Record<string, number>;
  workload: WorkloadStats;
  /** What happened when (ms since the start of the load). */
  timeline: { at: number; what: string }[];
  p99AcceptMs: number;
}

const POOL = "mail/transactional";

/** The server name leading MF_QUEUE's Raft group, from the monitoring endpoint of a live node. */
async function queueLeader(fleet: Fleet): Promise<number | undefined> {
  for (const s of fleet.nats.servers) {
    try {
      const j = await fleet.nats.monitor(s.index, "/jsz?streams=true");
      for (const a of j.account_details ?? []) {
        for (const st of a.stream_detail ?? []) {
          if (st.name === STREAM_QUEUE && st.cluster?.leader) {
            return fleet.nats.servers.find((x) => x.name === st.cluster.leader)?.index;
          }
        }
      }
    } catch { /* that node is down: ask the next */ }
  }
  return undefined;
}

export async function runFaults(fleet: Fleet, p: FaultPlan): Promise<FaultRun> {
  const log = p.log ?? ((l: string) => process.stderr.write(`faults: ${l}\n`));
  const faults = p.faults ?? [...FAULTS];
  const ledger = new Ledger(`${fleet.postfix.dir}/inbox`);
  await ledger.start(fleet.nats.urls);
  // The transactional pool's domains (the marketing pool's lanes warm up: their mail waits for
  // quota, which is not a fault). slow.test goes to the receiver that turns slow.
  const workload = new Workload({
    relays: (pool) => fleet.relays(pool).filter((r) => r.ready),
    ledger, rate: p.rate, concurrency: 16, bounceRatio: 0.05,
    senders: SENDERS.filter((s) => s.pool === POOL),
    recipientDomains: RECEIVERS.flatMap((r) => r.domains),
  }).start();
  const t0 = Date.now();
  const timeline: FaultRun["timeline"] = [];
  const mark = (what: string) => {
    timeline.push({ at: Date.now() - t0, what });
    const r = ledger.report();
    log(`${((Date.now() - t0) / 1000).toFixed(0)}s ${what} (accepted ${workload.stats.accepted}, delivered ${r.delivered}, waiting ${ledger.pending()}, retries ${workload.stats.retries})`);
  };
  try {
    await sleep(p.gapMs);
    for (const f of faults) {
      if (f === "relay-sigkill") {
        for (let i = 0; i < p.kills; i++) {
          const relays = fleet.relays(POOL).filter((r) => r.pid);
          const victim = relays[i % Math.max(1, relays.length)];
          if (victim?.pid) {
            try { process.kill(victim.pid, "SIGKILL"); } catch { /* already gone */ }
            mark(`SIGKILL relay ${victim.pod} (pid ${victim.pid})`);
          }
          await sleep(p.killEveryMs);
        }
      } else if (f === "nats-node") {
        const leader = await queueLeader(fleet);
        const i = leader ?? 0;
        await fleet.nats.kill(i);
        mark(`SIGKILL NATS server n${i}${leader === undefined ? "" : " (the MF_QUEUE leader)"}`);
        await sleep(p.faultMs);
        await fleet.nats.restart(i);
        mark(`NATS server n${i} restarted`);
      } else if (f === "operator-restart") {
        await fleet.restartOperator();
        mark("operator restarted");
      } else if (f === "receiver-down") {
        const r = RECEIVERS.find((x) => x.name === "yahoo")!;
        await fleet.postfix.stopListener(fleet.receiverAddress(r));
        mark(`receiver ${r.name} (${fleet.receiverAddress(r)}) stopped listening`);
        await sleep(p.faultMs);
        await fleet.postfix.startListener(fleet.receiverAddress(r));
        mark(`receiver ${r.name} listens again`);
      } else if (f === "dns-failing") {
        await fleet.dnsFail(true, "timeout");
        mark("DNS stops answering");
        await sleep(p.faultMs);
        await fleet.dnsFail(false);
        mark("DNS answers again");
      } else if (f === "slow-receiver") {
        const r = RECEIVERS.find((x) => x.name === "slow")!;
        await fleet.postfix.setEndOfDataDelay(fleet.receiverAddress(r), p.slowSeconds);
        mark(`receiver ${r.name} waits ${p.slowSeconds} s before answering DATA`);
        await sleep(p.faultMs);
        await fleet.postfix.setEndOfDataDelay(fleet.receiverAddress(r), 0);
        mark(`receiver ${r.name} answers at once again`);
      }
      await sleep(p.gapMs);
    }
  } finally {
    await workload.stop();
    mark("load stopped");
  }
  const report = await ledger.settle(p.settleMs, (r) => log(`settling: ${r.lost} of ${r.acceptedRecipients} recipients without a final event or arrival`));
  mark("settled");
  await ledger.stop();
  const duplicatesAfter: Record<string, number> = {};
  for (const at of report.duplicateFirstArrivals) {
    const e = timeline.filter((x) => x.at <= at - t0).at(-1);
    const k = e ? e.what : "before the first fault";
    duplicatesAfter[k] = (duplicatesAfter[k] ?? 0) + 1;
  }
  return { report, duplicatesAfter, workload: workload.stats, timeline, p99AcceptMs: percentile(workload.stats.latencies, 99) };
}
