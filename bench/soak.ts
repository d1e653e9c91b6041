// npm run bench -- soak [seconds]: one relay (`node relay/main.ts`, as a Pod runs it: SMTP
// submission from a trusted network, DKIM RSA-2048, JetStream on one node with `sync_interval:
// always`, so every message is fsynced before its 250; route stage, fleet shaper and delivery to
// smtp-sink through dnsmasq) under a steady load for `seconds` (default 600).
//
//   1. the maximum: as many submissions as 16 pooled connections carry, for 45 s after a 10 s
//      warm-up (accepted messages per second, while the relay delivers them too);
//   2. the soak: 80% of that, open loop (a message every 1/rate s whatever the replies), with the
//      relay's RSS sampled every 10 s.
// Prints one JSON line:
//   {"bench":"soak","msgs_per_s":N,"p99_accept_ms":N,"rss_start_mb":N,"rss_end_mb":N,
//    "rss_slope_mb_per_min":N,"max_msgs_per_s":N,...}
// The slope is a least-squares fit over the samples after the first minute (the heap grows to
// its working size first); the accept time is the client's, from the start of MAIL FROM to the
// 250 after DATA on a reused connection.
import { generateKeyPairSync } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import nodemailer from "nodemailer";
import { PLAN_BUCKET, PLAN_KEY } from "../api/plan.ts";
import { startNats } from "../test/env/nats.ts";
import { startDns } from "../test/env/peers/dns.ts";
import { startSmtpSink } from "../test/env/peers/postfix.ts";
import { freePort, startProcess } from "../test/env/proc.ts";
import { percentile } from "../test/env/workload.ts";
import { makePlan, POOL } from "../test/integration/delivery-harness.ts";

const SOAK_S = Number(process.argv[2] ?? 600);
const CONNECTIONS = 16;
const SINK = "127.0.182.1";
const RELAY = "127.0.182.2";
const SOURCE = { address: "127.0.182.10", hostname: "out.soak.test" };
const DNS = "127.0.53.182";
const DOMAIN = "soak.test";
const root = join(import.meta.dirname, "..");
const log = (s: string) => process.stderr.write(`bench soak: ${s}\n`);

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : 0;
}

/** Least-squares slope of y over x. */
function slope(points: [number, number][]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let num = 0, den = 0;
  for (const [x, y] of points) { num += (x - mx) * (y - my); den += (x - mx) ** 2; }
  return den ? num / den : 0;
}

const base = mkdtempSync(join(tmpdir(), "mailfleet-bench-soak-"));
chmodSync(base, 0o755);
const stops: (() => Promise<unknown>)[] = [];
let code = 0;
try {
  const dns = await startDns({ dir: join(base, "dns"), address: DNS, ttl: 3600, records: [
    { type: "MX", name: "sink.test", value: "mx.sink.test" },
    { type: "A", name: "mx.sink.test", value: SINK },
  ] });
  stops.push(() => dns.stop());
  const sink = await startSmtpSink({ address: SINK, port: 25, dir: join(base, "sink"), backlog: 1024 });
  stops.push(() => sink.stop());
  const nats = await startNats({ dir: join(base, "nats"), nodes: 1, syncAlways: true });
  stops.push(() => nats.stop());

  mkdirSync(join(base, "secrets"), { recursive: true });
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  writeFileSync(join(base, "secrets", `dkim.${DOMAIN}.mfr1.pem`), privateKey.export({ type: "pkcs8", format: "pem" }) as string);
  const plan = makePlan({
    providers: [{ name: "default", lane: { maxConnections: 20, messagesPerConnection: 1000, recipientsPerMessage: 10 } }],
    addresses: [SOURCE],
    domains: [{ domain: DOMAIN, dkim: [{ selector: "mfr1", algorithm: "rsa-sha256", keyName: `dkim.${DOMAIN}.mfr1.pem` }] }],
    networks: [{ cidr: "127.0.0.0/8", domains: [DOMAIN] }],
  });
  const nc = await connect({ servers: nats.urls });
  await (await new Kvm(jetstream(nc)).create(PLAN_BUCKET, { history: 1 })).put(PLAN_KEY, JSON.stringify(plan));
  await nc.close();

  const [port, httpPort] = [await freePort(RELAY), await freePort(RELAY)];
  const relay = startProcess({
    name: "relay", command: join(root, "node_modules", ".bin", "node"), args: [join(root, "relay", "main.ts")], logFile: join(base, "relay.log"), cwd: root,
    env: {
      ...process.env, MAILFLEET_NATS_URL: nats.urls.join(","), MAILFLEET_POOL: POOL, MAILFLEET_RELAY_ID: "soak-relay",
      MAILFLEET_ADDRESSES: SOURCE.address, MAILFLEET_DNS_SERVERS: DNS, MAILFLEET_SECRETS_DIR: join(base, "secrets"),
      MAILFLEET_TLS_DIR: join(base, "tls"), MAILFLEET_LISTEN_ADDRESS: RELAY, MAILFLEET_SUBMISSION_PORT: String(port),
      MAILFLEET_HTTP_PORT: String(httpPort), MAILFLEET_INBOUND_PORT: "0", MAILFLEET_LOG_LEVEL: "warn",
    },
  });
  stops.push(() => relay.stop(30_000));
  for (let i = 0; ; i++) {
    const ok = await fetch(`http://${RELAY}:${httpPort}/readyz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (i > 600 || relay.exitCode() !== undefined) throw new Error(`relay not ready (exit ${relay.exitCode()}), see ${base}/relay.log`);
    await sleep(100);
  }

  const transport = nodemailer.createTransport({ pool: true, maxConnections: CONNECTIONS, maxMessages: Infinity, host: RELAY, port, secure: false, ignoreTLS: true, name: "soak.client.test" });
  stops.push(async () => transport.close());
  const body = "A soak message of about two kilobytes. ".repeat(50).replace(/(.{1,76})( |$)/g, "$1\r\n");
  let n = 0;
  const send = async (): Promise<number> => {
    const i = n++;
    const t0 = performance.now();
    await transport.sendMail({ from: `app@${DOMAIN}`, to: `reader${i % 100}@sink.test`, subject: `soak ${i}`, text: body, messageId: `<soak-${i}@${DOMAIN}>` });
    return performance.now() - t0;
  };

  // 1. The maximum, closed loop.
  const closedLoop = async (ms: number) => {
    const end = performance.now() + ms;
    let done = 0;
    await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
      while (performance.now() < end) { await send(); done++; }
    }));
    return done;
  };
  log("warm-up (10 s), then the maximum (45 s)");
  await closedLoop(10_000);
  const maxStart = performance.now();
  const maxDone = await closedLoop(45_000);
  const max = maxDone / ((performance.now() - maxStart) / 1000);
  const rate = 0.8 * max;
  log(`maximum ${max.toFixed(0)} msgs/s accepted; soak at ${rate.toFixed(0)} msgs/s for ${SOAK_S} s`);
  // Let the delivery backlog of the maximum phase go out before the soak starts.
  for (let i = 0; i < 300 && sink.count() < n; i++) await sleep(1000);

  // 2. The soak, open loop.
  const latencies: number[] = [];
  const rss: [number, number][] = [];
  let failures = 0;
  const inflight = new Set<Promise<void>>();
  const t0 = performance.now();
  const sinkStart = sink.count();
  const sent0 = n;
  const sampler = setInterval(() => rss.push([(performance.now() - t0) / 60_000, rssMb(relay.pid)]), 10_000);
  rss.push([0, rssMb(relay.pid)]);
  let next = t0;
  while (performance.now() - t0 < SOAK_S * 1000) {
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
    next += 1000 / rate;
    if (inflight.size >= 4 * CONNECTIONS) { failures++; continue; } // the relay cannot keep up: count it, do not queue without bound
    const p = send().then((ms) => { latencies.push(ms); }, () => { failures++; }).finally(() => inflight.delete(p));
    inflight.add(p);
  }
  await Promise.allSettled([...inflight]);
  clearInterval(sampler);
  const secs = (performance.now() - t0) / 1000;
  rss.push([secs / 60, rssMb(relay.pid)]);
  const accepted = latencies.length;
  for (let i = 0; i < 300 && sink.count() < sinkStart + accepted; i++) await sleep(1000);
  const after1 = rss.filter(([m]) => m >= 1);
  const result = {
    bench: "soak",
    msgs_per_s: Math.round(accepted / secs),
    p99_accept_ms: Math.round(percentile(latencies, 99)),
    rss_start_mb: Math.round(rss[0]![1]),
    rss_end_mb: Math.round(rss.at(-1)![1]),
    rss_slope_mb_per_min: Number(slope(after1).toFixed(3)),
    rss_max_mb: Math.round(Math.max(...rss.map(([, v]) => v))),
    max_msgs_per_s: Math.round(max),
    target_msgs_per_s: Math.round(rate),
    p50_accept_ms: Math.round(percentile(latencies, 50)),
    seconds: Math.round(secs),
    accepted, failed_or_skipped: failures, sent: n - sent0,
    delivered: sink.count() - sinkStart,
    rss_samples_mb: rss.map(([m, v]) => [Number(m.toFixed(2)), Math.round(v)]),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (e) {
  log(`failed: ${(e as Error).stack}`);
  code = 1;
} finally {
  for (const s of stops.reverse()) await s().catch(() => {});
  if (!process.env.MAILFLEET_KEEP_STATE) rmSync(base, { recursive: true, force: true });
}
process.exit(code);
