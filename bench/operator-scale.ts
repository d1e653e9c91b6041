// npm run bench -- operator-scale
//
// 1000 SendingDomains, 20 IPPools with 200 addresses (half HostNetwork, half PerAddress), a
// schedule and providers, applied at once to a fresh local control plane (etcd + kube-apiserver)
// with NATS and dnsmasq; the operator runs under the chart's memory limit (see memoryCgroup).
// Prints one JSON line:
//   seconds_to_current    until every object's status is current (observedGeneration == generation
//                         and Ready known)
//   operator_peak_rss_mb  the operator's peak RSS (VmHWM), plus its key generator process's
//   quiet_minute_writes   operator writes other than Lease renewals in a quiet minute afterwards
//                         (kube-apiserver audit log)
// plus seconds_to_keys (every domain signing with both keys) and seconds_to_plan (the plan in KV
// holds every domain with its keys), since DKIM keys (1000 RSA-2048) are made after status first
// says "GeneratingKeys".
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { OPERATOR_USER, current, domain, ns, path, pool, provider, schedule, startEnv } from "../test/integration/operator-env.ts";

const NS = "bench";
const DOMAINS = Number(process.env.BENCH_DOMAINS ?? 1000);
const POOLS = Number(process.env.BENCH_POOLS ?? 20);
const PER_POOL = Number(process.env.BENCH_ADDRESSES_PER_POOL ?? 10);
const log = (msg: string) => process.stderr.write(`[operator-scale] ${msg}\n`);

/** Peak RSS of a process and its children (the operator's key generator), in MB. */
function vmHWM(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  let mb = m ? Number(m[1]) / 1024 : 0;
  let children: string[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
  } catch { /* none */ }
  for (const c of children) {
    try { mb += vmHWM(Number(c)); } catch { /* exited */ }
  }
  return mb;
}

async function pool_(items: (() => Promise<unknown>)[], width: number): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (i < items.length) await items[i++]!();
  }));
}

/**
 * The operator runs as it would in its container: under the chart's memory limit (512 MiB), in a
 * cgroup v1 memory group. That matters: Node sizes its heap from the cgroup's limit (about 260 MB
 * under 512 MiB, against about 4 GB on this 24 GB machine without one), so without the limit V8
 * lets garbage pile up to several hundred MB before collecting. Needs root and the cgroup v1 memory
 * controller; without them the operator runs unlimited (and the figure says more about V8's
 * defaults than about the operator). BENCH_MEMORY_LIMIT_MB=0: no limit.
 */
function memoryCgroup(limitMb: number): string | undefined {
  if (!limitMb) return undefined;
  const dir = `/sys/fs/cgroup/memory/mailfleet-bench-${process.pid}`;
  try {
    mkdirSync(dir);
    writeFileSync(`${dir}/memory.limit_in_bytes`, String(limitMb * 1024 * 1024));
    return dir;
  } catch (err) {
    log(`no memory cgroup (${(err as Error).message})`);
    return undefined;
  }
}

function rmCgroup(dir: string): void {
  try { rmdirSync(dir); } catch { /* processes still in it, or already gone */ }
}

const cleanups: (() => void)[] = [];

async function main(): Promise<void> {
  log("starting the control plane, NATS and dnsmasq");
  const env = await startEnv({ name: "bench-operator-scale", dnsAddress: "127.0.53.99" });
  try {
    await env.apply(ns(NS));
    const nodeArgs = (process.env.BENCH_OPERATOR_NODE_ARGS ?? "").split(" ").filter(Boolean);
    const cgroup = memoryCgroup(Number(process.env.BENCH_MEMORY_LIMIT_MB ?? 512));
    if (cgroup) cleanups.push(() => rmCgroup(cgroup));
    log(cgroup ? `operator in memory cgroup ${cgroup} (${process.env.BENCH_MEMORY_LIMIT_MB ?? 512} MiB, the chart's limit)` : "operator without a memory limit");
    const op = await env.startOperator({ identity: "bench", args: ["--log-level", "info", "--dns-recheck-unverified", "30s"], nodeArgs, ...(cgroup ? { cgroup } : {}) });
    const pid = op.proc.pid;
    let peak = vmHWM(pid);
    const sampler = setInterval(() => {
      try { peak = Math.max(peak, vmHWM(pid)); } catch { /* exited */ }
    }, 1000);

    const objects: any[] = [
      provider("default", {}),
      provider("gmail", { match: { domains: ["gmail.com"], mxSuffixes: ["google.com"] }, shaping: { maxConnections: 3, messageRate: "600/min" } }),
      provider("microsoft", { match: { mxSuffixes: ["mail.protection.outlook.com"] }, shaping: { maxConnections: 5 } }),
      provider("yahoo", { match: { domains: ["yahoo.com"] } }),
      schedule(NS, "std", { stages: [{ day: 1, daily: 50 }, { day: 3, daily: 500 }, { day: 10, daily: 5000 }, { day: 30, daily: 50000 }] }),
    ];
    for (let p = 0; p < POOLS; p++) {
      objects.push(pool(NS, `pool-${p}`, {
        addresses: Array.from({ length: PER_POOL }, (_, a) => ({ address: `10.${100 + p}.0.${a + 1}`, hostname: `mta${a + 1}.pool${p}.bench.test` })),
        egress: { mode: p % 2 ? "PerAddress" : "HostNetwork" },
        ...(p % 4 === 3 ? { warmupScheduleRef: { name: "std" } } : {}),
        relay: { replicas: p % 2 ? 1 : 2 },
      }));
    }
    for (let d = 0; d < DOMAINS; d++) objects.push(domain(NS, `d${d}`, { domain: `d${d}.bench.test`, poolRef: { name: `pool-${d % POOLS}` }, senders: { trustedNetworks: ["10.0.0.0/8"] } }));

    // At once, as `kubectl apply -f fleet/` would: 32 requests in flight, what others name first
    // (the admission webhook refuses a reference to an object that does not exist).
    log(`applying ${objects.length} objects at once`);
    const t0 = Date.now();
    const rank = (o: any) => ({ MailboxProvider: 0, WarmupSchedule: 0, IPPool: 1, SendingDomain: 2 } as Record<string, number>)[o.kind]!;
    for (const r of [0, 1, 2]) await pool_(objects.filter((o) => rank(o) === r).map((o) => () => env.apply(o)), 32);
    log(`applied in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const total = objects.length;
    let secondsToCurrent = 0;
    let secondsToKeys = 0;
    let secondsToPlan = 0;
    let keyringsDone = false;
    for (;;) {
      const lists = await Promise.all([path.domain(NS), path.pool(NS), path.schedule(NS), path.provider()].map((p) => env.get(p)));
      const all = lists.flatMap((l) => l.items);
      const nCurrent = all.filter(current).length;
      const domains = lists[0].items;
      const keyed = domains.filter((d: any) => d.status?.dkim?.filter((k: any) => k.state === "Active").length === 2).length;
      const now = (Date.now() - t0) / 1000;
      if (!secondsToCurrent && all.length === total && nCurrent === total) secondsToCurrent = now;
      if (!secondsToKeys && keyed === DOMAINS) secondsToKeys = now;
      if (!secondsToPlan && secondsToKeys) {
        const plan = await env.plan();
        if (plan && plan.domains.length === DOMAINS && plan.domains.every((d) => d.dkim.length === 2)) secondsToPlan = (Date.now() - t0) / 1000;
      }
      // Done means done: every pool's keyring also holds the keys of its domains.
      if (secondsToPlan && !keyringsDone) {
        const rings = await Promise.all(Array.from({ length: POOLS }, (_, p) => env.get(path.secret(NS, `pool-${p}-relay`))));
        keyringsDone = rings.every((r, p) => Object.keys(r?.data ?? {}).length === Math.ceil((DOMAINS - p) / POOLS) * 2);
      }
      const mm = await op.metrics().catch(() => "");
      const g = (n: string) => (Number(new RegExp(`^mailfleet_operator_${n} (\\S+)`, "m").exec(mm)?.[1] ?? 0) / 1048576).toFixed(0);
      log(`${now.toFixed(0)} s: ${nCurrent}/${total} current, ${keyed}/${DOMAINS} domains signing with both keys, rss peak ${peak.toFixed(0)} MB (now rss ${g("process_resident_memory_bytes")}, heap ${g("nodejs_heap_size_used_bytes")}/${g("nodejs_heap_size_total_bytes")}, external ${g("nodejs_external_memory_bytes")})`);
      if (secondsToCurrent && secondsToKeys && secondsToPlan && keyringsDone) break;
      if (now > 1800) throw new Error("not converged after 30 minutes");
      await sleep(2000);
    }

    if (process.env.BENCH_HEAP_SNAPSHOT) {
      // Needs NODE_OPTIONS=--heapsnapshot-signal=SIGUSR2; the snapshot lands in the operator's cwd.
      process.kill(pid, "SIGUSR2");
      log("asked the operator for a heap snapshot");
      await sleep(30_000);
    }
    log("settling 30 s, then measuring a quiet minute");
    await sleep(30_000);
    const since = new Date().toISOString();
    await sleep(60_000);
    const writes = env.audit({ since, user: OPERATOR_USER }).filter((e) => e.objectRef?.resource !== "leases");
    for (const w of writes.slice(0, 20)) log(`quiet-minute write: ${w.verb} ${w.objectRef?.resource}${w.objectRef?.subresource ? `/${w.objectRef.subresource}` : ""} ${w.objectRef?.namespace}/${w.objectRef?.name}`);
    clearInterval(sampler);
    const m = await op.metrics();
    for (const name of ["nodejs_heap_size_used_bytes", "nodejs_heap_size_total_bytes", "nodejs_external_memory_bytes", "process_resident_memory_bytes"]) {
      const v = new RegExp(`^mailfleet_operator_${name} (\\S+)`, "m").exec(m)?.[1];
      if (v) log(`${name}: ${(Number(v) / 1048576).toFixed(0)} MB`);
    }
    peak = Math.max(peak, vmHWM(pid));
    const out = {
      bench: "operator-scale",
      seconds_to_current: Number(secondsToCurrent.toFixed(1)),
      operator_peak_rss_mb: Number(peak.toFixed(0)),
      quiet_minute_writes: writes.length,
      seconds_to_keys: Number(secondsToKeys.toFixed(1)),
      seconds_to_plan: Number(secondsToPlan.toFixed(1)),
      domains: DOMAINS,
      pools: POOLS,
      addresses: POOLS * PER_POOL,
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await env.stop();
    for (const c of cleanups) c();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`operator-scale: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
