// npm run bench -- shaping [--faults]
//
// The fleet shaper under backlog: 4 relay processes (`node relay/main.ts`) on a 3-node nats-server
// cluster (R3 streams and shaper KV), two lanes with a backlog each: a high lane limited to
// 6000/min and a low lane limited to 60/min. The receivers (smtp-server, test/env/peers/recorder.ts)
// record when each transaction opens and from which source address (= lane). The queue is loaded by
// publishing envelopes straight to the ready queues (the bench measures shaping, not acceptance).
//
// Prints one JSON line:
//   high.max_window_ratio       most transactions in any sliding 60 s window / 6000
//   high.utilization            delivered / allowed over the measured window
//   high.nats_msgs_per_delivery shaping traffic / deliveries: every message on the relays' shaper
//                               connections (KV reads and compare-and-sets with their replies, KV
//                               watch deliveries, core rule/up subjects), counted by the servers
//                               (/connz in_msgs + out_msgs of connections named "... shaper")
//   low.max_window_excess       most transactions in any sliding 60 s window - 60 (>= 0)
//   low.utilization
//   reaction_ms                 from the receiver answering 421 4.7.28 on the high lane until the
//                               last transaction any relay opens on it (worst of 5 trials)
// plus a few diagnostics (per-lane counts, shaper traffic per second, fault times).
//
// --faults: one relay SIGKILLed at 1/3 of the window and the NATS server leading the shaper's KV
// stream SIGKILLed at 2/3 (both stay down).
//
// Env: BENCH_SECONDS (measured window, default 180), BENCH_KEEP=1 keeps the state directory.
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { PLAN_BUCKET, PLAN_KEY } from "../api/plan.ts";
import { startNats } from "../test/env/nats.ts";
import { startDns } from "../test/env/peers/dns.ts";
import { startRecorder } from "../test/env/peers/recorder.ts";
import { freePort, startProcess, type ManagedProcess } from "../test/env/proc.ts";
import { makePlan, POOL } from "../test/integration/delivery-harness.ts";
import { ensureStreams, serverFeatures } from "../relay/queue/streams.ts";
import { encodeEnvelope, newQueueId, verpAddress, type Envelope } from "../relay/queue/envelope.ts";
import { subjects } from "../relay/queue/topology.ts";
import { createLogger } from "../relay/runtime/logger.ts";
import { SHAPER_STREAM } from "../relay/shaper/keys.ts";
import { maxInWindow } from "../relay/shaper/slots.ts";

const FAULTS = process.argv.includes("--faults");
const WINDOW_MS = Number(process.env.BENCH_SECONDS ?? 180) * 1000;
const WARMUP_MS = 20_000;
const RELAYS = 4;
const HIGH = { address: "127.0.81.1", hostname: "high.out.bench.test" };
const LOW = { address: "127.0.81.2", hostname: "low.out.bench.test" };
const HIGH_LIMIT = 6000;
const LOW_LIMIT = 60;
const ROOT = join(import.meta.dirname, "..");
const log = (msg: string) => process.stderr.write(`[shaping${FAULTS ? " --faults" : ""}] ${new Date().toISOString().slice(11, 19)} ${msg}\n`);

function getText(url: string): Promise<string> {
  return new Promise((resolve) => {
    const req = request(url, { timeout: 3000, agent: false }, (r) => {
      const chunks: Buffer[] = [];
      r.on("data", (c: Buffer) => chunks.push(c));
      r.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    });
    req.on("timeout", () => req.destroy(new Error(`timeout ${url}`)));
    req.on("error", () => resolve(""));
    req.end();
  });
}

function getJson(url: string): Promise<any> {
  return new Promise((resolve, reject) => {
    const req = request(url, { timeout: 3000, agent: false }, (r) => {
      const chunks: Buffer[] = [];
      r.on("data", (c: Buffer) => chunks.push(c));
      r.on("end", () => {
        try { resolve(JSON.parse(Buffer.concat(chunks).toString("utf8"))); } catch (e) { reject(e); }
      });
    });
    req.on("timeout", () => req.destroy(new Error(`timeout ${url}`)));
    req.on("error", reject);
    req.end();
  });
}

async function main(): Promise<void> {
  const base = await mkdtemp(join(tmpdir(), "mailfleet-bench-shaping-"));
  await chmod(base, 0o755);
  const procs = new Map<string, ManagedProcess>();
  const httpPorts = new Map<string, string>();
  let stopAll = async () => {};
  try {
    log(`state in ${base}`);
    const nats = await startNats({ dir: join(base, "nats"), nodes: 3 });
    const dns = await startDns({
      dir: join(base, "dns"),
      address: "127.0.53.81",
      records: [
        { type: "MX", name: "high.test", value: "mx.high.test" },
        { type: "A", name: "mx.high.test", value: "127.0.80.1" },
        { type: "MX", name: "low.test", value: "mx.low.test" },
        { type: "A", name: "mx.low.test", value: "127.0.80.2" },
      ],
    });
    const rec = await startRecorder({ addresses: ["127.0.80.1", "127.0.80.2"] });
    const nc = await connect({ servers: nats.urls, maxReconnectAttempts: -1 });
    stopAll = async () => {
      await Promise.all([...procs.values()].map((p) => p.stop(10_000).catch(() => {})));
      await nc.close().catch(() => {});
      await rec.stop();
      await dns.stop();
      await nats.stop();
    };
    const js = jetstream(nc, { timeout: 20_000 });
    const jsm = await jetstreamManager(nc, { timeout: 20_000 });
    await ensureStreams(nc, js, jsm, { replicas: 3, features: serverFeatures(nc) }, createLogger({ level: "error" }));
    const planKv = await new Kvm(js).create(PLAN_BUCKET, { history: 1, replicas: 3, storage: StorageType.File });

    const rules = [{ name: "gmail-421-4728", enhancedCode: "4.7.28", action: "SuspendLane" as const, durationMs: 5000 }];
    const spec = (state: "Healthy" | "Paused") => makePlan({
      providers: [
        {
          name: "high", mxSuffixes: ["high.test"], rules, recovery: { step: 0.5, intervalMs: 1000 },
          lane: { messageRate: { count: HIGH_LIMIT, periodMs: 60_000 }, maxConnections: 20, messagesPerConnection: 1000, recipientsPerMessage: 1 },
        },
        { name: "low", mxSuffixes: ["low.test"], lane: { messageRate: { count: LOW_LIMIT, periodMs: 60_000 }, maxConnections: 4, messagesPerConnection: 1000, recipientsPerMessage: 1 } },
      ],
      addresses: [HIGH, LOW],
      lanes: {
        [`${HIGH.address}/high`]: { state }, [`${LOW.address}/low`]: { state },
        [`${HIGH.address}/low`]: { state: "Paused" }, [`${LOW.address}/high`]: { state: "Paused" },
        [`${HIGH.address}/default`]: { state: "Paused" }, [`${LOW.address}/default`]: { state: "Paused" },
      },
      delivery: { retryBaseMs: 1000, retryMaxMs: 3000 },
    });
    await planKv.put(PLAN_KEY, JSON.stringify(spec("Paused")));

    // The backlog: envelopes straight onto the ready queues, one shared body.
    const total = WARMUP_MS + WINDOW_MS + 90_000;
    const nHigh = Math.ceil((HIGH_LIMIT * total) / 60_000);
    const nLow = Math.ceil((LOW_LIMIT * total) / 60_000) + 20;
    log(`loading ${nHigh} + ${nLow} envelopes`);
    const body = Buffer.from("From: <app@sender.test>\r\nTo: <x@high.test>\r\nSubject: bench\r\nMessage-ID: <bench@sender.test>\r\n\r\nshaping bench\r\n");
    await js.publish(subjects.body("bench"), body);
    const load = async (n: number, provider: string, domain: string) => {
      let inflight: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) {
        const id = newQueueId();
        const env: Envelope = {
          v: 1, id, part: 1, pool: POOL, domain: "sender.test", mailFrom: "app@sender.test", returnPath: verpAddress(id, "bounces.sender.test"),
          rcpts: [`u${i}@${domain}`], rcptDomain: domain, provider, mx: [`mx.${domain}`], body: { subject: subjects.body("bench") }, size: body.length,
          submitter: "net:127.0.0.0/8", acceptedAt: Date.now(), attempts: 0,
        };
        inflight.push(js.publish(subjects.ready(POOL, provider), encodeEnvelope(env), { msgID: `${id}:1` }));
        if (inflight.length >= 500) {
          await Promise.all(inflight);
          inflight = [];
        }
      }
      await Promise.all(inflight);
    };
    await load(nHigh, "high", "high.test");
    await load(nLow, "low", "low.test");

    log(`starting ${RELAYS} relays`);
    for (let i = 1; i <= RELAYS; i++) {
      const name = `relay-${i}`;
      const host = `127.0.82.${i}`;
      const httpPort = await freePort(host);
      httpPorts.set(name, `${host}:${httpPort}`);
      procs.set(name, startProcess({
        name,
        command: join(ROOT, "node_modules", ".bin", "node"),
        args: [join(ROOT, "relay", "main.ts")],
        logFile: join(base, `${name}.log`),
        cwd: ROOT,
        env: {
          ...process.env,
          MAILFLEET_NATS_URL: nats.urls.join(","),
          MAILFLEET_POOL: POOL,
          MAILFLEET_RELAY_ID: name,
          MAILFLEET_ADDRESSES: `${HIGH.address},${LOW.address}`,
          MAILFLEET_DNS_SERVERS: dns.server,
          MAILFLEET_LISTEN_ADDRESS: host,
          MAILFLEET_INBOUND_PORT: "0",
          MAILFLEET_SUBMISSION_PORT: String(await freePort(host)),
          MAILFLEET_HTTP_PORT: String(httpPort),
          MAILFLEET_SECRETS_DIR: join(base, "secrets"),
          MAILFLEET_TLS_DIR: join(base, "tls"),
          MAILFLEET_STREAM_REPLICAS: "3",
          MAILFLEET_LOG_LEVEL: "info",
        },
      }));
    }
    const logOf = (name: string) => readFile(join(base, `${name}.log`), "utf8").catch(() => "");
    for (const name of procs.keys()) {
      for (let i = 0; !(await logOf(name)).includes("relay started"); i++) {
        if (i > 600) throw new Error(`${name} did not start; see ${join(base, `${name}.log`)}`);
        await sleep(200);
      }
    }

    // Shaping traffic, counted by the servers: every connection named "... shaper", open or closed.
    const seen = new Map<string, number>();
    const sampleConnz = async () => {
      await Promise.all(nats.servers.map(async (s) => {
        if (!s.process) return;
        try {
          const z = await getJson(`${s.monitorUrl}/connz?state=all&limit=100000`);
          for (const c of z.connections ?? []) {
            if (!/ shaper$/.test(c.name ?? "")) continue;
            seen.set(`${s.name}:${c.cid}`, (c.in_msgs ?? 0) + (c.out_msgs ?? 0));
          }
        } catch {
          // a killed server: its last sample stands
        }
      }));
    };
    const shaperMsgs = () => [...seen.values()].reduce((a, b) => a + b, 0);
    // Per relay, every second (kept with BENCH_KEEP): high-lane slots spent, and whether it shapes
    // on its local share; says which relay sent what when a minute goes over.
    const perRelay: Record<string, [number, number, number][]> = {};
    const sampleRelays = async () => {
      const at = Date.now();
      await Promise.all([...procs.keys()].map(async (name) => {
        const text = await getText(`http://${httpPorts.get(name)}/metrics`);
        if (!text) return;
        const spent = /^mailfleet_shaper_slots_total\{[^}]*provider="high"[^}]*outcome="spent"[^}]*\} (\S+)/m.exec(text);
        const local = /^mailfleet_shaper_local_share(?:\{[^}]*\})? (\S+)/m.exec(text);
        (perRelay[name] ??= []).push([at, Number(spent?.[1] ?? 0), Number(local?.[1] ?? 0)]);
      }));
    };
    const sampler = setInterval(() => { void sampleConnz(); void sampleRelays(); }, 1000);

    log("lanes open: backlog draining");
    await planKv.put(PLAN_KEY, JSON.stringify(spec("Healthy")));
    await sleep(WARMUP_MS);
    await sampleConnz();
    const t0 = Date.now();
    const msgs0 = shaperMsgs();
    const faults: Record<string, number> = {};
    log(`measuring for ${WINDOW_MS / 1000} s`);
    if (FAULTS) {
      await sleep(WINDOW_MS / 3);
      const victim = "relay-2";
      log(`SIGKILL ${victim}`);
      faults.relay_killed_s = (Date.now() - t0) / 1000;
      procs.get(victim)!.signal("SIGKILL");
      await procs.get(victim)!.exited;
      procs.delete(victim);
      await sleep(WINDOW_MS / 3);
      const info = await jsm.streams.info(SHAPER_STREAM);
      const leader = nats.servers.findIndex((s) => s.name === info.cluster?.leader);
      log(`SIGKILL nats ${info.cluster?.leader} (leader of ${SHAPER_STREAM})`);
      faults.nats_killed_s = (Date.now() - t0) / 1000;
      await nats.kill(leader >= 0 ? leader : 0);
      await sleep(t0 + WINDOW_MS - Date.now());
    } else {
      await sleep(WINDOW_MS);
    }
    const t1 = Date.now();
    await sampleConnz();
    const msgs1 = shaperMsgs();
    clearInterval(sampler);

    const inWindow = (client: string) => rec.of(client).filter((t) => t.at >= t0 && t.at < t1);
    const high = inWindow(HIGH.address);
    const low = inWindow(LOW.address);
    const minutes = (t1 - t0) / 60_000;
    const highMax = maxInWindow(high.map((t) => t.at), 60_000);
    const lowMax = maxInWindow(low.map((t) => t.at), 60_000);
    const highDelivered = high.filter((t) => t.accepted).length;
    const lowDelivered = low.filter((t) => t.accepted).length;
    const traffic = msgs1 - msgs0;
    // Where the fullest minute lies, and its transactions per second, relative to t0 (the fault times are relative to t0 too).
    const fullest = (times: number[], limit: number) => {
      let lo = 0;
      let best = { from: 0, count: 0 };
      for (let hi = 0; hi < times.length; hi++) {
        while (times[hi]! - times[lo]! >= 60_000) lo++;
        if (hi - lo + 1 > best.count) best = { from: times[lo]!, count: hi - lo + 1 };
      }
      return { from_s: round((best.from - t0) / 1000, 1), over: best.count - limit };
    };
    const round = (x: number, d = 4) => Number(x.toFixed(d));
    const highFullest = fullest(high.map((t) => t.at), HIGH_LIMIT);
    log(`high lane's fullest minute starts at +${highFullest.from_s} s (${highFullest.over} over)`);
    if (process.env.BENCH_KEEP) {
      const relays = Object.fromEntries(Object.entries(perRelay).map(([k, v]) => [k, v.map(([at, spent, local]) => [at - t0, spent, local])]));
      await writeFile(join(base, "transactions.json"), JSON.stringify({ t0, t1, faults, high: high.map((t) => t.at - t0), low: low.map((t) => t.at - t0), relays }));
    }
    log(`high: ${high.length} opened, ${highDelivered} delivered, max ${highMax}/min; low: ${low.length} opened, ${lowDelivered} delivered, max ${lowMax}/min; shaper msgs ${traffic}`);

    // Reaction: the receiver answers 421 4.7.28 on the high lane; when does the last relay stop?
    const reactions: number[] = [];
    for (let trial = 0; trial < 5; trial++) {
      const flowing = Date.now();
      while (rec.of(HIGH.address).filter((t) => t.at > flowing && t.accepted).length < 50) await sleep(200);
      await sleep(2000);
      const from = rec.setReply(HIGH.address, "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your IP address");
      await sleep(3000);
      const opened = rec.of(HIGH.address).filter((t) => t.at >= from && t.at < from + 3000);
      rec.setReply(HIGH.address, null);
      const last = opened.length ? Math.max(...opened.map((t) => t.at)) : from;
      reactions.push(last - from);
      log(`reaction trial ${trial + 1}: first 421 at +${opened.length ? Math.min(...opened.map((t) => t.at)) - from : "-"} ms, last transaction at +${last - from} ms (${opened.length} opened)`);
    }

    // Diagnostics from the relays' metrics: shaper operations and slot outcomes, fleet-wide.
    const sums: Record<string, number> = {};
    await Promise.all([...procs.keys()].map(async (name) => {
      const port = httpPorts.get(name)!;
      const text = await getText(`http://${port}/metrics`);
      for (const line of text.split("\n")) {
        const m = /^mailfleet_shaper_(store_operations_total|slots_total|reservations_total)\{([^}]*)\} (\S+)/.exec(line);
        if (!m) continue;
        const labels = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
        const key = m[1] === "store_operations_total" ? `store.${labels.op}.${labels.result}` : `${m[1] === "slots_total" ? "slots" : "reservations"}.${labels.provider}.${labels.outcome ?? labels.result}`;
        sums[key] = (sums[key] ?? 0) + Number(m[3]);
      }
    }));
    log(`relay metrics (whole run): ${JSON.stringify(sums)}`);

    // Diagnostics from the relays' logs: local-share episodes.
    let localShare = 0;
    for (const name of [...procs.keys(), "relay-2"]) localShare += ((await logOf(name)).match(/local share of each limit/g) ?? []).length;

    const result = {
      bench: "shaping",
      high: {
        max_window_ratio: round(highMax / HIGH_LIMIT),
        utilization: round(highDelivered / (HIGH_LIMIT * minutes)),
        nats_msgs_per_delivery: round(traffic / Math.max(1, highDelivered + lowDelivered)),
      },
      low: {
        max_window_excess: Math.max(0, lowMax - LOW_LIMIT),
        utilization: round(lowDelivered / (LOW_LIMIT * minutes)),
      },
      reaction_ms: Math.max(...reactions),
      detail: {
        faults: FAULTS ? faults : null,
        window_s: round((t1 - t0) / 1000, 1),
        high_delivered: highDelivered, low_delivered: lowDelivered,
        high_max_per_min: highMax, low_max_per_min: lowMax,
        shaper_msgs: traffic, shaper_msgs_per_s: round(traffic / ((t1 - t0) / 1000), 2),
        reactions_ms: reactions,
        local_share_episodes: localShare,
        high_fullest_minute_from_s: highFullest.from_s,
      },
    };
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    await stopAll();
    if (!process.env.BENCH_KEEP) await rm(base, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => {
  process.stderr.write(`shaping bench failed: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
