// npm run bench -- delivery [messages] [sizeKb]: the delivery side alone. Envelopes and bodies are
// stored in NATS the way acceptance stores them (route queue), then one relay (route stage + lane
// scheduler, per-relay limits, one source address) delivers them to Postfix's smtp-sink; the
// clock runs from the first publish to the sink's count. Prints one JSON line.
import { mkdtemp, rm, chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { startNats } from "../test/env/nats.ts";
import { startDns } from "../test/env/peers/dns.ts";
import { startSmtpSink } from "../test/env/peers/postfix.ts";
import { loadRelayConfig } from "../relay/config.ts";
import { startRelay } from "../relay/main.ts";
import { PlanWatcher } from "../relay/plan/watcher.ts";
import { RouteStage } from "../relay/routing/stage.ts";
import { Delivery } from "../relay/delivery/service.ts";
import { createLogger } from "../relay/runtime/logger.ts";
import { encodeEnvelope, newQueueId, verpAddress, type Envelope } from "../relay/queue/envelope.ts";
import { subjects } from "../relay/queue/topology.ts";
import { makePlan, message, publishPlan, POOL } from "../test/integration/delivery-harness.ts";

const N = Number(process.argv[2] ?? 20_000);
const SIZE_KB = Number(process.argv[3] ?? 5);
const CONNECTIONS = 20;
const SOURCE = { address: "127.0.174.10", hostname: "out.bench.test" };

const base = await mkdtemp(join(tmpdir(), "mailfleet-bench-delivery-"));
await chmod(base, 0o755);
const nats = await startNats({ dir: join(base, "nats") });
const dns = await startDns({ dir: join(base, "dns"), address: "127.0.53.174", ttl: 300, records: [
  { type: "MX", name: "sink.test", value: "mx.sink.test" },
  { type: "A", name: "mx.sink.test", value: "127.0.174.1" },
] });
const sink = await startSmtpSink({ address: "127.0.174.1", port: 25, dir: join(base, "sink"), backlog: 1024 });
const config = loadRelayConfig({
  MAILFLEET_NATS_URL: nats.urls.join(","), MAILFLEET_POOL: POOL, MAILFLEET_RELAY_ID: "bench", MAILFLEET_ADDRESSES: SOURCE.address,
  MAILFLEET_DNS_SERVERS: dns.server, MAILFLEET_LOG_LEVEL: "warn",
});
const relay = await startRelay({ config, log: createLogger({ level: "warn" }), components: [new PlanWatcher(), new RouteStage({ concurrency: 256 }), new Delivery({ batch: 64 })] });
try {
  await publishPlan(relay.ctx.nc, makePlan({
    providers: [{ name: "default", lane: { maxConnections: CONNECTIONS, messagesPerConnection: 1000, recipientsPerMessage: 1 } }],
    addresses: [SOURCE],
  }));
  await relay.ctx.planHolder.ready(30_000);
  const js = jetstream(relay.ctx.nc);
  const body = message({ from: "app@sender.test", to: ["x@sink.test"], subject: "bench", text: `${"x".repeat(76)}\r\n`.repeat(Math.ceil((SIZE_KB * 1024) / 78)) });
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  let rss = 0;
  const sampler = setInterval(() => (rss = Math.max(rss, process.memoryUsage().rss)), 200);
  // Publish in windows of 500 outstanding PubAcks.
  for (let i = 0; i < N; i += 500) {
    await Promise.all(Array.from({ length: Math.min(500, N - i) }, async (_, k) => {
      const qid = newQueueId();
      await js.publish(subjects.body(qid), body, { msgID: `body:${qid}` });
      const env: Envelope = {
        v: 1, id: qid, part: 0, pool: POOL, domain: "sender.test", mailFrom: "app@sender.test", returnPath: verpAddress(qid, "bounces.sender.test"),
        rcpts: [`u${i + k}@sink.test`], body: { subject: subjects.body(qid) }, size: body.length, submitter: "bench", acceptedAt: Date.now(), attempts: 0,
      };
      await js.publish(subjects.route(POOL), encodeEnvelope(env), { msgID: `${qid}:0` });
    }));
  }
  const published = performance.now();
  await sink.waitForCount(N, { timeoutMs: 1_800_000 });
  const done = performance.now();
  const cpu = process.cpuUsage(cpu0);
  clearInterval(sampler);
  process.stdout.write(JSON.stringify({
    bench: "delivery",
    messages: N,
    size_kb: SIZE_KB,
    connections: CONNECTIONS,
    publish_s: +((published - t0) / 1000).toFixed(2),
    total_s: +((done - t0) / 1000).toFixed(2),
    msgs_per_s: Math.round(N / ((done - t0) / 1000)),
    // CPU of this process (the relay, plus the publishing of the envelopes) per message: less
    // sensitive than msgs_per_s to other load on the machine.
    cpu_ms_per_msg: +((cpu.user + cpu.system) / 1000 / N).toFixed(2),
    relay_peak_rss_mb: Math.round(rss / 1048576),
  }) + "\n");
} finally {
  await relay.shutdown();
  await sink.stop();
  await dns.stop();
  await nats.stop();
  await rm(base, { recursive: true, force: true });
}
