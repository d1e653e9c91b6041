// npm run bench -- warmup-sim [days]: a warm-up run on an accelerated clock with everything real
// (the integration harness: kube-apiserver, the operator as a process, NATS, dnsmasq, relay
// processes, Postfix receivers for 3 providers). Pool mail/outbound warms 2 addresses on a
// schedule (20 s days, 10/20/40/80 per day from days 1/3/5/7) with demand above every quota all
// along; its overflow pool mail/warm (one warm address, no schedule) takes what is over quota.
//
// Prints one JSON line: per lane, days to full volume (days until the lane's quota was the
// schedule's last stage) against the schedule's minimum, recipients attempted over the day's
// quota (must be 0), and messages delivered through overflow (the overflow pool's lanes).
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { LaneStatus } from "../api/v1alpha1/index.ts";
import type { MailEvent } from "../relay/delivery/events.ts";
import { STREAM_EVENTS, subjects } from "../relay/queue/topology.ts";
import { startPostfix } from "../test/env/peers/postfix.ts";
import { freePort, startProcess } from "../test/env/proc.ts";
import { submit } from "../test/integration/delivery-harness.ts";
import { domain, eventually, ns, path, pool, provider, schedule, startEnv } from "../test/integration/operator-env.ts";

const DAYS = Number(process.argv[2] ?? 12);
// 20 s: a lane waits a second or two into each day for that day's plan (quotaUntil), which must stay a
// small part of the day for the accelerated run to say what a 24 h day would.
const PERIOD_MS = 20_000;
const STAGES = [{ day: 1, daily: 10 }, { day: 3, daily: 20 }, { day: 5, daily: 40 }, { day: 7, daily: 80 }];
const IPS = ["127.0.88.1", "127.0.88.2"];
const WARM_IP = "127.0.88.3";
const MX = { gmail: "127.0.87.1", microsoft: "127.0.87.2", yahoo: "127.0.87.3" } as const;
const DOMAINS = { gmail: "gmail.test", microsoft: "outlook.test", yahoo: "yahoo.test" } as const;
const PROVIDERS = ["gmail", "microsoft", "yahoo"] as const;
const ROOT = join(import.meta.dirname, "..");
const log = (m: string) => process.stderr.write(`[warmup-sim] ${m}\n`);

const env = await startEnv({
  name: "warmup-sim", dnsAddress: "127.0.53.88",
  dnsRecords: PROVIDERS.flatMap((p) => [
    { type: "MX" as const, name: DOMAINS[p], value: `mx.${DOMAINS[p]}` },
    { type: "A" as const, name: `mx.${DOMAINS[p]}`, value: MX[p] },
  ]),
});
const stops: (() => Promise<unknown>)[] = [() => env.stop()];
try {
  await chmod(env.dir, 0o755);
  const pf = await startPostfix({ dir: join(env.dir, "postfix"), domains: Object.values(DOMAINS), listeners: PROVIDERS.map((p) => ({ address: MX[p], hostname: `mx.${DOMAINS[p]}` })) });
  stops.unshift(() => pf.stop());
  await env.apply(ns("mail"));
  await env.apply(provider("default", {}));
  for (const p of PROVIDERS) await env.apply(provider(p, { match: { domains: [DOMAINS[p]] }, feedbackLoop: p === "gmail" ? "None" : "ARF", shaping: { maxConnections: 2 } }));
  await env.apply(schedule("mail", "fast", { period: `${PERIOD_MS / 1000}s`, stages: STAGES, advance: { minSample: 5 } }));
  await env.apply(pool("mail", "warm", { addresses: [{ address: WARM_IP, hostname: "w1.sim.test" }] }));
  await env.apply(pool("mail", "outbound", {
    addresses: IPS.map((a, i) => ({ address: a, hostname: `o${i + 1}.sim.test` })), warmupScheduleRef: { name: "fast" }, overflowPoolRef: { name: "warm" },
  }));
  await env.apply(domain("mail", "sender", { domain: "sender.test", poolRef: { name: "outbound" }, senders: { trustedNetworks: ["127.0.0.0/8"] } }));
  const op = await env.startOperator();
  void op;
  await eventually("plan with quotas", async () => (await env.plan())?.pools.find((p) => p.id === "mail/outbound")?.lanes.some((l) => l.dailyQuota === 10));

  const startRelay = async (name: string, poolId: string, addresses: string[], listen: string) => {
    const dir = join(env.dir, name);
    await mkdir(join(dir, "secrets"), { recursive: true });
    const proc = startProcess({
      name, command: join(ROOT, "node_modules", ".bin", "node"), args: [join(ROOT, "relay", "main.ts")], logFile: join(dir, "relay.log"), cwd: ROOT,
      env: {
        ...process.env, MAILFLEET_NATS_URL: env.nats.urls.join(","), MAILFLEET_POOL: poolId, MAILFLEET_RELAY_ID: name, MAILFLEET_ADDRESSES: addresses.join(","),
        MAILFLEET_DNS_SERVERS: env.dns.server, MAILFLEET_LISTEN_ADDRESS: listen, MAILFLEET_INBOUND_PORT: "0",
        MAILFLEET_SUBMISSION_PORT: String(await freePort(listen)), MAILFLEET_HTTP_PORT: String(await freePort(listen)),
        MAILFLEET_SECRETS_DIR: join(dir, "secrets"), MAILFLEET_TLS_DIR: join(dir, "tls"), MAILFLEET_STREAM_REPLICAS: "1", MAILFLEET_LOG_LEVEL: "warn",
      },
    });
    stops.unshift(() => proc.stop(20_000));
  };
  await startRelay("relay-outbound", "mail/outbound", IPS, "127.0.89.1");
  await startRelay("relay-warm", "mail/warm", [WARM_IP], "127.0.89.2");

  const nc = await connect({ servers: env.nats.urls });
  stops.unshift(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await eventually("streams", async () => Boolean(await jsm.streams.info(STREAM_EVENTS).catch(() => null)), 120_000);
  const events: MailEvent[] = [];
  const iter = await (await js.consumers.get(STREAM_EVENTS, { filter_subjects: [subjects.events], deliver_policy: DeliverPolicy.All })).consume();
  void (async () => { for await (const m of iter) events.push(m.json<MailEvent>()); })().catch(() => {});
  stops.unshift(async () => iter.stop());

  // Status per warm-up day: the quota of each lane when the day opened.
  const days = new Map<number, Map<string, LaneStatus>>();
  let current: LaneStatus[] = [];
  let period = 0;
  let stop = false;
  const watch = (async () => {
    while (!stop) {
      const p = await env.get(path.pool("mail", "outbound")).catch(() => undefined);
      if (p?.status?.warmupDay && p.status.lanes?.length) {
        period = Math.floor(Date.parse(p.status.warmupDay) / PERIOD_MS);
        current = p.status.lanes;
        const m = days.get(period) ?? new Map<string, LaneStatus>();
        for (const l of current) if (!m.has(`${l.address}/${l.provider}`)) m.set(`${l.address}/${l.provider}`, l);
        days.set(period, m);
      }
      await sleep(250);
    }
  })();
  // Demand: three times the pool's day quota waiting per provider (the excess goes to overflow).
  const submitted = new Map<string, number>(PROVIDERS.map((p) => [p, 0]));
  let seq = 0;
  const demand = (async () => {
    while (!stop) {
      for (const p of PROVIDERS) {
        const done = events.filter((e) => e.rcpts[0]?.endsWith(`@${DOMAINS[p]}`) && (e.type === "delivered" || e.type === "bounced")).length;
        const quota = current.filter((l) => l.provider === p).reduce((a, l) => a + (l.dailyQuota ?? 0), 0) || 20;
        const n = Math.min(3 * quota - (submitted.get(p)! - done), 200);
        await Promise.all(Array.from({ length: Math.max(n, 0) }, () => submit(js, { rcpts: [`u${seq++}@${DOMAINS[p]}`] })));
        submitted.set(p, submitted.get(p)! + Math.max(n, 0));
      }
      await sleep(500);
    }
  })();
  await eventually("status", async () => current.length > 0 && period > 0, 120_000);
  const start = period;
  log(`day 1 is period ${start}; running ${DAYS} days of ${PERIOD_MS / 1000} s`);
  await eventually(`${DAYS} days`, async () => period - start >= DAYS, DAYS * PERIOD_MS * 3, 200);
  stop = true;
  await Promise.all([watch, demand]);

  const attempted = new Map<string, number>();
  const overflow = new Map<string, number>();
  for (const e of events) {
    if (!e.source || !e.provider) continue;
    const lane = `${e.source}/${e.provider}`;
    if (e.pool === "mail/warm" && e.type === "delivered") overflow.set(lane, (overflow.get(lane) ?? 0) + 1);
    if (e.type === "delivered" || e.type === "deferred" || (e.type === "bounced" && !e.async)) {
      const k = `${lane}|${Math.floor(Date.parse(e.slotAt ?? e.time) / PERIOD_MS)}`;
      attempted.set(k, (attempted.get(k) ?? 0) + e.rcpts.length);
    }
  }
  const last = STAGES.at(-1)!;
  const lanes: Record<string, unknown>[] = [];
  for (const ip of IPS) {
    for (const p of PROVIDERS) {
      const lane = `${ip}/${p}`;
      let full: number | null = null;
      let over = 0;
      for (let d = start; d < start + DAYS; d++) {
        const l = days.get(d)?.get(lane);
        if (full === null && l?.dailyQuota === last.daily) full = d - start;
        const n = attempted.get(`${lane}|${d}`) ?? 0;
        if (l?.dailyQuota !== undefined && n > l.dailyQuota) over += n - l.dailyQuota;
      }
      lanes.push({ lane, days_to_full: full, schedule_min_days: last.day - 1, over_quota: over, overflow_sent: 0 });
    }
  }
  for (const p of PROVIDERS) lanes.push({ lane: `${WARM_IP}/${p}`, days_to_full: 0, schedule_min_days: 0, over_quota: 0, overflow_sent: overflow.get(`${WARM_IP}/${p}`) ?? 0 });
  process.stdout.write(`${JSON.stringify({ bench: "warmup-sim", period_ms: PERIOD_MS, days: DAYS, lanes })}\n`);
} finally {
  for (const s of stops) await s().catch(() => {});
}
