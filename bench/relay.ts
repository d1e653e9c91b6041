// npm run bench -- relay [messages] [sizes]: end to end, acceptance + delivery, against Postfix.
//
// smtp-source (Postfix's load tool, from a trusted network) submits `messages` (default 20,000)
// over 20 connections that each carry many messages (-d) to one relay process (`node
// relay/main.ts` (MAILFLEET_BENCH_RELAYS processes sharing the port, default 2), as a Pod runs it: SMTP submission, DKIM RSA-2048, JetStream with
// `sync_interval: always` on one node so every message is fsynced before its 250, route stage and
// delivery) which delivers to smtp-sink; then the same load through Postfix (relay mode, no DKIM)
// to the same sink. The clock runs from smtp-source's start until the sink has every message.
// Sizes default to 5 and 100 KiB. Prints one JSON line:
//   {"bench":"relay","durability":"...","results":[{"size_kb":5,"relay_msgs_per_s":N,
//    "postfix_msgs_per_s":N,"ratio":N,"relay_peak_rss_mb":N, ...CPU figures},...]}
// CPU per message (relay process, nats-server, Postfix's processes) is printed too: on a shared
// machine it is steadier than the wall clock.
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { PLAN_BUCKET, PLAN_KEY } from "../api/plan.ts";
import { startNats, type Nats } from "../test/env/nats.ts";
import { startDns } from "../test/env/peers/dns.ts";
import { runSmtpSource, startPostfix, startSmtpSink, type SmtpSinkHandle } from "../test/env/peers/postfix.ts";
import { freePort, startProcess } from "../test/env/proc.ts";
import { makePlan, POOL } from "../test/integration/delivery-harness.ts";

const N = Number(process.argv[2] ?? 20_000);
const SIZES = (process.argv[3] ?? "5,100").split(",").map(Number);
const CONNECTIONS = 20;
/** Relay processes sharing the submission port (SO_REUSEPORT), as Postfix runs several smtpd. */
const RELAYS = Number(process.env.MAILFLEET_BENCH_RELAYS ?? 2);
/** Extra node flags for the relay processes, e.g. MF_BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof". */
const nodeArgs = (process.env.MF_BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean);
const SINK = "127.0.180.1";
const RELAY = "127.0.180.2";
const POSTFIX = "127.0.180.3";
const SOURCE = { address: "127.0.180.10", hostname: "out.bench.test" };
const DNS = "127.0.53.180";
const DOMAIN = "bench.test";
const root = join(import.meta.dirname, "..");
const log = (s: string) => process.stderr.write(`bench relay: ${s}\n`);

/** utime+stime in ms of a process and its reaped children (/proc/<pid>/stat). */
function cpuMs(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 10;
  } catch {
    return 0;
  }
}
/** CPU of every process in a process group. */
function groupCpuMs(pgid: number): number {
  let t = 0;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const f = readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1]!.split(" ");
      if (Number(f[2]) === pgid) t += (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 10;
    } catch { /* gone */ }
  }
  return t;
}
/**
 * Counts fsync/fdatasync calls of the given processes (their threads, and children they fork
 * later: Postfix's master starts smtpd/cleanup on demand) with perf's syscall tracepoints, which
 * cost next to nothing (strace -c slows the traced process down several times). Returns a stop
 * function giving the count, or null when perf is not usable here.
 */
async function countFsyncs(pids: number[]): Promise<(() => Promise<number | null>) | null> {
  const { spawn, spawnSync } = await import("node:child_process");
  if (spawnSync("perf", ["--version"]).status !== 0) return null;
  const p = spawn("perf", ["stat", "-x", ",", "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "-p", pids.join(",")], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  p.stderr!.on("data", (d: Buffer) => (err += d));
  await new Promise((r) => setTimeout(r, 300));
  return async () => {
    p.kill("SIGINT");
    await new Promise((r) => p.once("exit", r));
    // CSV lines: count,unit,event,...
    const counts = err.split("\n").map((l) => l.split(",")).filter((f) => /sys_enter_f(data)?sync/.test(f[2] ?? ""));
    if (!counts.length || counts.some((f) => !/^\d+$/.test(f[0]!))) return null;
    return counts.reduce((n, f) => n + Number(f[0]), 0);
  };
}
/** Every process in a process group (Postfix's daemons are in its master's). */
function groupPids(pgid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (Number(readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1]!.split(" ")[2]) === pgid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}
function peakRssMb(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : 0;
}

async function drive(sink: SmtpSinkHandle, server: string, sizeKb: number): Promise<number> {
  const start = sink.count();
  const t0 = performance.now();
  await runSmtpSource({ server, from: `news@${DOMAIN}`, to: "reader@sink.test", count: N, connections: CONNECTIONS, sizeKb, reuse: true, timeoutMs: 3_600_000 });
  await sink.waitForCount(start + N, { timeoutMs: 3_600_000 });
  return (performance.now() - t0) / 1000;
}

async function runRelay(base: string, sink: SmtpSinkHandle, dnsServer: string, sizeKb: number) {
  const dir = join(base, `relay-${sizeKb}`);
  mkdirSync(join(dir, "secrets"), { recursive: true });
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(dir, "secrets", `dkim.${DOMAIN}.mfr1.pem`), privateKey.export({ type: "pkcs8", format: "pem" }) as string);
  const nats: Nats = await startNats({ dir: join(dir, "nats"), nodes: 1, syncAlways: true });
  try {
    const plan = makePlan({
      providers: [{ name: "default", lane: { maxConnections: CONNECTIONS, messagesPerConnection: 1000, recipientsPerMessage: 1 } }],
      addresses: [SOURCE],
      domains: [{ domain: DOMAIN, dkim: [{ selector: "mfr1", algorithm: "rsa-sha256", keyName: `dkim.${DOMAIN}.mfr1.pem` }] }],
      networks: [{ cidr: "127.0.0.0/8", domains: [DOMAIN] }],
    });
    const nc = await connect({ servers: nats.urls });
    await (await new Kvm(jetstream(nc)).create(PLAN_BUCKET, { history: 1 })).put(PLAN_KEY, JSON.stringify(plan));
    await nc.close();
    const port = await freePort(RELAY);
    const procs = await Promise.all(Array.from({ length: RELAYS }, async (_, i) => {
      const httpPort = await freePort(RELAY);
      const proc = startProcess({
        name: `relay-${i}`, command: join(root, "node_modules", ".bin", "node"), args: [...nodeArgs, join(root, "relay", "main.ts")], logFile: join(dir, `relay-${i}.log`), cwd: root,
        env: {
          ...process.env, MAILFLEET_NATS_URL: nats.urls.join(","), MAILFLEET_POOL: POOL, MAILFLEET_RELAY_ID: `bench-relay-${i}`,
          MAILFLEET_ADDRESSES: SOURCE.address, MAILFLEET_DNS_SERVERS: dnsServer, MAILFLEET_SECRETS_DIR: join(dir, "secrets"),
          MAILFLEET_TLS_DIR: join(dir, "tls"), MAILFLEET_LISTEN_ADDRESS: RELAY, MAILFLEET_SUBMISSION_PORT: String(port),
          MAILFLEET_HTTP_PORT: String(httpPort), MAILFLEET_INBOUND_PORT: "0", MAILFLEET_LOG_LEVEL: "warn",
        },
      });
      return { proc, httpPort };
    }));
    try {
      const { request } = await import("node:http");
      const ready = (httpPort: number) => new Promise<boolean>((r) => {
        const q = request({ host: RELAY, port: httpPort, path: "/readyz", agent: false, timeout: 2000 }, (res) => { res.resume(); r(res.statusCode === 200); });
        q.on("error", () => r(false));
        q.end();
      });
      for (const p of procs) {
        for (let i = 0; !(await ready(p.httpPort)); i++) {
          if (i > 600 || p.proc.exitCode() !== undefined) throw new Error(`relay not ready (exit ${p.proc.exitCode()}), see ${dir}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      // Warm the MX cache (the fast path skips the route stage for cached domains), as a running
      // relay would have it.
      const before = sink.count();
      await runSmtpSource({ server: `${RELAY}:${port}`, from: `news@${DOMAIN}`, to: "reader@sink.test", count: 20, connections: 1, sizeKb });
      await sink.waitForCount(before + 20, { timeoutMs: 120_000 });
      const natsPid = Object.values(nats.pids())[0]!;
      const relayCpu = () => procs.reduce((t, p) => t + cpuMs(p.proc.pid), 0);
      const fsyncs = await countFsyncs([natsPid]);
      const r0 = relayCpu(), n0 = cpuMs(natsPid);
      // MF_BENCH_STRACE=1: count nats-server's fsyncs during the run (slows it down).
      const { spawn } = await import("node:child_process");
      let straceOut = "";
      const st = process.env.MF_BENCH_STRACE ? spawn("strace", ["-f", "-c", "-e", "trace=fsync,fdatasync", "-p", String(natsPid)], { stdio: ["ignore", "ignore", "pipe"] }) : undefined;
      st?.stderr!.on("data", (d: Buffer) => (straceOut += d));
      if (st) await new Promise((r) => setTimeout(r, 500));
      const secs = await drive(sink, `${RELAY}:${port}`, sizeKb);
      const natsFsyncs = fsyncs ? await fsyncs() : null;
      if (st) {
        st.kill("SIGINT");
        await new Promise((r) => st.on("exit", r));
        log(`nats-server fsyncs for ${N} messages: ${straceOut.split("\n").filter((l) => /fsync|calls/.test(l)).join(" / ")}`);
      }
      if (process.env.MF_BENCH_METRICS) {
        const text = await new Promise<string>((r) => {
          const q = request({ host: RELAY, port: procs[0]!.httpPort, path: "/metrics", agent: false }, (res) => { let b = ""; res.on("data", (c) => (b += c)); res.on("end", () => r(b)); });
          q.on("error", () => r(""));
          q.end();
        });
        log(text.split("\n").filter((l) => /^mailfleet_relay_(accept_duration_seconds|commit_group_size)_(sum|count)|^mailfleet_delivery_latency_seconds_(sum|count)/.test(l)).join("\n"));
      }
      return {
        msgsPerS: Math.round(N / secs),
        // Peak RSS per relay process (the largest); CPU of all of them per message.
        peakRssMb: Math.max(...procs.map((p) => peakRssMb(p.proc.pid))),
        relayCpuMs: (relayCpu() - r0) / N,
        natsCpuMs: (cpuMs(natsPid) - n0) / N,
        natsFsyncs: natsFsyncs === null ? null : natsFsyncs / N,
      };
    } finally {
      await Promise.all(procs.map((p) => p.proc.stop(10_000)));
    }
  } finally {
    await nats.stop();
  }
}

async function runPostfix(base: string, sink: SmtpSinkHandle, sizeKb: number) {
  const dir = join(base, `postfix-${sizeKb}`);
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  const pf = await startPostfix({ dir, domains: ["local.bench.test"], listeners: [{ address: POSTFIX, port: 25, hostname: "pf.bench.test" }], relayhost: `[${SINK}]:25`, relayFrom: ["127.0.0.0/8"] });
  try {
    const master = Number(readFileSync(join(dir, "queue", "pid", "master.pid"), "utf8").trim());
    const fsyncs = await countFsyncs(groupPids(master));
    const c0 = groupCpuMs(master);
    const secs = await drive(sink, `${POSTFIX}:25`, sizeKb);
    const n = fsyncs ? await fsyncs() : null;
    return { msgsPerS: Math.round(N / secs), cpuMs: (groupCpuMs(master) - c0) / N, fsyncs: n === null ? null : n / N };
  } finally {
    await pf.stop();
  }
}

const base = mkdtempSync(join(tmpdir(), "mailfleet-bench-relay-"));
chmodSync(base, 0o755);
const dns = await startDns({ dir: join(base, "dns"), address: DNS, ttl: 3600, records: [
  { type: "MX", name: "sink.test", value: "mx.sink.test" },
  { type: "A", name: "mx.sink.test", value: SINK },
] });
const sink = await startSmtpSink({ address: SINK, port: 25, dir: join(base, "sink"), backlog: 1024 });
const results = [];
try {
  for (const sizeKb of SIZES) {
    log(`${N} messages of ${sizeKb} KiB through the relay`);
    const relay = await runRelay(base, sink, dns.server, sizeKb);
    log(`relay: ${relay.msgsPerS} msgs/s; now Postfix`);
    const postfix = await runPostfix(base, sink, sizeKb);
    log(`postfix: ${postfix.msgsPerS} msgs/s`);
    results.push({
      size_kb: sizeKb,
      relay_msgs_per_s: relay.msgsPerS,
      postfix_msgs_per_s: postfix.msgsPerS,
      ratio: +(relay.msgsPerS / postfix.msgsPerS).toFixed(2),
      relay_peak_rss_mb: relay.peakRssMb,
      relay_cpu_ms_per_msg: +relay.relayCpuMs.toFixed(2),
      nats_cpu_ms_per_msg: +relay.natsCpuMs.toFixed(2),
      postfix_cpu_ms_per_msg: +postfix.cpuMs.toFixed(2),
      nats_fsyncs_per_msg: relay.natsFsyncs === null ? null : +relay.natsFsyncs.toFixed(2),
      postfix_fsyncs_per_msg: postfix.fsyncs === null ? null : +postfix.fsyncs.toFixed(2),
    });
  }
  process.stdout.write(JSON.stringify({
    bench: "relay",
    durability: "single NATS node, sync_interval: always (fsync before 250); DKIM RSA-2048 (relay only)",
    messages: N, connections: CONNECTIONS, relay_processes: RELAYS, results,
  }) + "\n");
} finally {
  await sink.stop();
  await dns.stop();
  if (!process.env.MAILFLEET_KEEP_STATE) rmSync(base, { recursive: true, force: true });
}
