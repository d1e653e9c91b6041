// Thirty warm-up days on an accelerated clock (a 10 s warm-up day), everything real: the operator
// (a process, its least-privilege ServiceAccount) on a real kube-apiserver, NATS, dnsmasq, one
// relay process sending from 2 source addresses, Postfix receivers for 3 providers (gmail: no
// feedback loop; microsoft and yahoo: ARF). Demand stays above every lane's quota all along.
//
// - On day 8 the microsoft receiver starts answering 450 to the first address (setClientReply: a
//   real 4xx in the SMTP dialogue): that lane holds, then steps back.
// - On day 14 yahoo sends ARF complaints (to the relay's inbound listener) about mail from the
//   second address: the address's lanes pause. The mail is a second sending domain's (promo.test),
//   which pauses too (0.5% complaints); sender.test, whose demand fills the lanes, does not.
// - The other lanes follow the schedule exactly, and no lane ever attempts more than its day's
//   quota (counted from MF_EVENTS: delivered + deferred + bounced recipients per lane and day).
//
// What stays in real time is sized for the 10 s day: the relay's retry back-off is the plan's,
// Postfix has no anvil limits here, the reputation window is 3 days (30 s).
//
// Addresses: sources 127.0.78.1-2, Postfix MX 127.0.77.1-3, relay listener 127.0.79.1, DNS 127.0.53.78.
import assert from "node:assert/strict";
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import nodemailer from "nodemailer";
import type { LaneStatus } from "../../api/v1alpha1/index.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";
import { verpAddress } from "../../relay/queue/envelope.ts";
import { STREAM_EVENTS, subjects } from "../../relay/queue/topology.ts";
import { stageForDay } from "../../operator/warmup/decide.ts";
import { startPostfix } from "../env/peers/postfix.ts";
import { freePort, startProcess } from "../env/proc.ts";
import { submit } from "./delivery-harness.ts";
import { type Env, domain, eventsFor, eventually, ns, path, pool, provider, schedule, startEnv } from "./operator-env.ts";

const NS = "mail";
const POOL_NAME = "outbound"; // delivery-harness submits to mail/outbound
const PERIOD_MS = 10_000;
const DAYS = 30;
const IP1 = "127.0.78.1";
const IP2 = "127.0.78.2";
const MX = { gmail: "127.0.77.1", microsoft: "127.0.77.2", yahoo: "127.0.77.3" } as const;
const DOMAINS = { gmail: "gmail.test", microsoft: "outlook.test", yahoo: "yahoo.test" } as const;
const PROVIDERS = ["gmail", "microsoft", "yahoo"] as const;
// Full volume is 40 a day: six lanes at 40 in a 10 s day, less the second or two before the day's
// plan arrives, is what one relay on a loaded 2-core machine keeps up with.
const STAGES = [{ day: 1, daily: 10 }, { day: 4, daily: 20 }, { day: 8, daily: 30 }, { day: 12, daily: 40 }];
const ROOT = join(import.meta.dirname, "..", "..");

test("warm-up: 30 days on an accelerated clock, 2 IPs x 3 providers", { timeout: 900_000 }, async (t) => {
  const env: Env = await startEnv({
    name: "warmup", dnsAddress: "127.0.53.78",
    dnsRecords: [
      ...PROVIDERS.flatMap((p) => [
        { type: "MX" as const, name: DOMAINS[p], value: `mx.${DOMAINS[p]}` },
        { type: "A" as const, name: `mx.${DOMAINS[p]}`, value: MX[p] },
      ]),
      { type: "A", name: "o1.warmup.test", value: IP1 }, { type: "A", name: "o2.warmup.test", value: IP2 },
      { type: "PTR", name: IP1, value: "o1.warmup.test" }, { type: "PTR", name: IP2, value: "o2.warmup.test" },
    ],
  });
  t.after(() => env.stop());
  await chmod(env.dir, 0o755); // Postfix's delivery agent (nobody) must reach its inbox
  const pf = await startPostfix({
    dir: join(env.dir, "postfix"),
    domains: Object.values(DOMAINS),
    listeners: PROVIDERS.map((p) => ({ address: MX[p], hostname: `mx.${DOMAINS[p]}` })),
  });
  t.after(() => pf.stop());

  await env.apply(ns(NS));
  await env.apply(provider("default", {}));
  await env.apply(provider("gmail", { match: { domains: [DOMAINS.gmail] }, feedbackLoop: "None", shaping: { maxConnections: 2 } }));
  await env.apply(provider("microsoft", { match: { domains: [DOMAINS.microsoft] }, feedbackLoop: "ARF", shaping: { maxConnections: 2 } }));
  await env.apply(provider("yahoo", { match: { domains: [DOMAINS.yahoo] }, feedbackLoop: "ARF", shaping: { maxConnections: 2 } }));
  await env.apply(schedule(NS, "fast", {
    period: "10s", stages: STAGES,
    advance: { minUsage: 0.5, maxBounceRate: 0.05, maxDeferralRate: 0.2, maxComplaintRate: 0.001, minSample: 5 },
    onFailure: { action: "StepBack", stepBackAfter: 2, stepBackBy: 1 },
  }));
  await env.apply(pool(NS, POOL_NAME, {
    addresses: [{ address: IP1, hostname: "o1.warmup.test" }, { address: IP2, hostname: "o2.warmup.test" }],
    warmupScheduleRef: { name: "fast" },
    reputation: { window: "30s", resumeAfter: "40s" },
  }));
  await env.apply(domain(NS, "sender", { domain: "sender.test", poolRef: { name: POOL_NAME }, senders: { trustedNetworks: ["127.0.0.0/8"] } }));
  // The complaints are about promo.test's mail: that domain pauses (its mail waits), sender.test's
  // demand keeps the lanes busy.
  await env.apply(domain(NS, "promo", { domain: "promo.test", poolRef: { name: POOL_NAME }, senders: { trustedNetworks: ["127.0.0.0/8"] } }));
  const op = await env.startOperator();
  await eventually("the plan has the pool's lanes with quotas", async () => {
    const plan = await env.plan();
    const p = plan?.pools.find((x) => x.id === `${NS}/${POOL_NAME}`);
    return p && plan!.domains.length === 2 && p.lanes.filter((l) => l.dailyQuota === 10).length >= 6;
  });

  // The relay: sends from both addresses, takes reports on its inbound listener.
  const relayDir = join(env.dir, "relay");
  await mkdir(join(relayDir, "secrets"), { recursive: true });
  const listen = "127.0.79.1";
  const inboundPort = await freePort(listen);
  const relay = startProcess({
    name: "relay", command: join(ROOT, "node_modules", ".bin", "node"), args: [join(ROOT, "relay", "main.ts")],
    logFile: join(relayDir, "relay.log"), cwd: ROOT,
    env: {
      ...process.env,
      MAILFLEET_NATS_URL: env.nats.urls.join(","), MAILFLEET_POOL: `${NS}/${POOL_NAME}`, MAILFLEET_RELAY_ID: "relay-1",
      MAILFLEET_ADDRESSES: `${IP1},${IP2}`, MAILFLEET_DNS_SERVERS: env.dns.server, MAILFLEET_LISTEN_ADDRESS: listen,
      MAILFLEET_INBOUND_PORT: String(inboundPort), MAILFLEET_SUBMISSION_PORT: String(await freePort(listen)), MAILFLEET_HTTP_PORT: String(await freePort(listen)),
      MAILFLEET_SECRETS_DIR: join(relayDir, "secrets"), MAILFLEET_TLS_DIR: join(relayDir, "tls"), MAILFLEET_STREAM_REPLICAS: "1", MAILFLEET_LOG_LEVEL: "info",
    },
  });
  t.after(() => relay.stop(20_000));

  const nc = await connect({ servers: env.nats.urls });
  t.after(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await eventually("the relay made the streams", async () => Boolean(await jsm.streams.info(STREAM_EVENTS).catch(() => null)), 120_000);

  // Every outcome event, from the start.
  const events: MailEvent[] = [];
  const consumer = await js.consumers.get(STREAM_EVENTS, { filter_subjects: [subjects.events], deliver_policy: DeliverPolicy.All });
  const iter = await consumer.consume();
  void (async () => { for await (const m of iter) events.push(m.json<MailEvent>()); })().catch(() => {});
  t.after(() => iter.stop());

  // What status says, per warm-up day (the day's quota is the one status gives while it is open).
  type Seen = { day: number; lanes: Map<string, LaneStatus> };
  const days = new Map<number, Seen>();
  const history = new Map<string, { period: number; lane: LaneStatus }[]>();
  let current: LaneStatus[] = [];
  let currentPeriod = 0;
  let stopWatch = false;
  const watch = (async () => {
    while (!stopWatch) {
      const p = await env.get(path.pool(NS, POOL_NAME)).catch(() => undefined);
      const wd = p?.status?.warmupDay;
      if (wd && p.status.lanes?.length) {
        const period = Math.floor(Date.parse(wd) / PERIOD_MS);
        current = p.status.lanes;
        currentPeriod = period;
        const seen = days.get(period) ?? { day: period, lanes: new Map() };
        for (const l of p.status.lanes as LaneStatus[]) {
          const key = `${l.address}/${l.provider}`;
          // The quota of a day: what status said when the day opened (before any pause in it).
          if (!seen.lanes.has(key)) seen.lanes.set(key, l);
          const h = history.get(key) ?? [];
          const last = h.at(-1);
          if (!last || JSON.stringify(last.lane) !== JSON.stringify(l) || last.period !== period) h.push({ period, lane: l });
          history.set(key, h);
        }
        days.set(period, seen);
      }
      await sleep(250);
    }
  })();
  t.after(async () => { stopWatch = true; await watch; });

  // Demand above quota: per provider, keep about twice the day's total quota waiting.
  const submitted = new Map<string, number>(PROVIDERS.map((p) => [p, 0]));
  const done = (p: string) => events.filter((e) => e.rcpts[0]?.endsWith(`@${DOMAINS[p as keyof typeof DOMAINS]}`) && (e.type === "delivered" || (e.type === "bounced" && !e.async) || e.type === "expired")).length;
  let stopDemand = false;
  let seq = 0;
  const demand = (async () => {
    while (!stopDemand) {
      for (const p of PROVIDERS) {
        const quota = current.filter((l) => l.provider === p).reduce((a, l) => a + (l.dailyQuota ?? 0), 0) || 20;
        const missing = 2 * quota - (submitted.get(p)! - done(p));
        const batch = [];
        for (let i = 0; i < Math.min(missing, 200); i++) batch.push(submit(js, { rcpts: [`u${seq++}@${DOMAINS[p]}`], subject: `warm ${seq}` }));
        await Promise.all(batch);
        submitted.set(p, submitted.get(p)! + batch.length);
      }
      await sleep(500);
    }
  })();
  t.after(async () => { stopDemand = true; await demand; });

  await eventually("status.lanes written", async () => current.length >= 6 && currentPeriod > 0, 120_000);
  // Day 1 is the first whole day: the one status first showed began before the relays had mail
  // (on a loaded machine too late in the day for its quota to be half used).
  const opened = currentPeriod;
  await eventually("the first whole day", async () => currentPeriod > opened, 60_000, 100);
  const start = currentPeriod;
  const dayOf = () => currentPeriod - start + 1;
  t.diagnostic(`day 1 is period ${start}`);

  // Day 8: the microsoft receiver defers everything from IP1.
  await eventually("day 8", async () => dayOf() >= 8, 300_000, 200);
  await pf.setClientReply(IP1, "450 4.7.1 Service unavailable, try again later", { listener: MX.microsoft });
  t.diagnostic(`microsoft defers ${IP1} from period ${currentPeriod}`);

  // Day 12: some promo.test mail to yahoo, part of it from IP2.
  await eventually("day 12", async () => dayOf() >= 12, 300_000, 200);
  for (let i = 0; i < 16; i++) await submit(js, { rcpts: [`p${i}@${DOMAINS.yahoo}`], subject: `promo ${i}`, domain: "promo.test" });
  // Day 14: yahoo complains about promo.test's mail from IP2.
  await eventually("day 14", async () => dayOf() >= 14, 300_000, 200);
  const fromIp2 = await eventually("IP2 delivered promo.test's mail to yahoo", async () => {
    const list = events.filter((e) => e.type === "delivered" && e.source === IP2 && e.provider === "yahoo" && e.domain === "promo.test").slice(-5);
    return list.length === 5 ? list : undefined;
  }, 120_000);
  for (const e of fromIp2) assert.match(await sendArf(listen, inboundPort, e, IP2, "promo.test"), /^250/);
  await eventually("complaints counted", async () => events.filter((e) => e.type === "complained" && e.source === IP2).length >= 5, 60_000);
  t.diagnostic(`yahoo complaints about ${IP2} in period ${currentPeriod}`);
  // The complained-about domain pauses too (its mail waits in the queue); the other does not.
  const promo = await eventually("promo.test pauses on its complaint rate", async () => {
    const d = await env.get(path.domain(NS, "promo"));
    return d?.status?.reputation?.state === "Paused" ? d : undefined;
  }, 60_000);
  assert.match(promo.status.reputation.reason, /^complaint rate .* reached the pause threshold 0\.50%/);
  assert.equal((await env.get(path.domain(NS, "sender"))).status?.reputation?.state, "Healthy");

  await eventually(`day ${DAYS} over`, async () => dayOf() > DAYS, 600_000, 200);
  stopDemand = true;
  await demand;

  // --- Healthy lanes follow the schedule exactly: every day counted, the quota the schedule's for that day.
  const quotaOn = (lane: string, period: number) => days.get(period)?.lanes.get(lane)?.dailyQuota;
  for (const lane of [`${IP1}/gmail`, `${IP1}/yahoo`]) {
    const seq: string[] = [];
    for (let p = start; p < start + DAYS; p++) {
      // A day the engine closed late (the counters catching up under load) may be seen only closed.
      const l = days.get(p)?.lanes.get(lane);
      if (!l) continue;
      const want = STAGES[stageForDay(STAGES, l.day!)]!.daily;
      assert.equal(l.dailyQuota, want, `${lane} day ${p - start + 1} (qualifying day ${l.day}): quota ${l.dailyQuota}, schedule ${want}`);
      seq.push(`${l.day}:${l.dailyQuota}`);
    }
    assert.ok(seq.length >= DAYS - 3, `${lane}: status seen on most days (${seq.length})`);
    const first = days.get(start)!.lanes.get(lane)!.day!;
    const final = history.get(lane)!.at(-1)!;
    t.diagnostic(`${lane}: ${seq.join(" ")}`);
    assert.ok(final.lane.day! - first >= DAYS, `${lane}: every day counted (${first} -> ${final.lane.day}: ${seq.join(" ")})`);
  }

  // --- The deferring lane held, then stepped back.
  const def = history.get(`${IP1}/microsoft`)!.map((h) => h.lane);
  const heldAt = def.findIndex((l) => l.decision === "Held" && /deferral rate/.test(l.reason ?? ""));
  assert.ok(heldAt >= 0, `IP1/microsoft held: ${JSON.stringify(def.map((l) => l.decision))}`);
  const backAt = def.findIndex((l, i) => i > heldAt && l.decision === "SteppedBack");
  assert.ok(backAt > heldAt, "then stepped back");
  assert.ok(def[backAt]!.dailyQuota! < def[heldAt]!.dailyQuota!, `quota fell: ${def[heldAt]!.dailyQuota} -> ${def[backAt]!.dailyQuota}`);

  // --- The complained-about IP paused: all its lanes (gmail is blind to complaints: the address pauses it).
  for (const p of PROVIDERS) {
    const h = history.get(`${IP2}/${p}`)!.map((x) => x.lane);
    const paused = h.find((l) => l.state === "Paused");
    assert.ok(paused, `${IP2}/${p} paused`);
    assert.match(paused.reason!, /complaint rate/);
    assert.ok(paused.until, "with the time it resumes");
  }
  assert.equal(history.get(`${IP1}/yahoo`)!.some((x) => x.lane.state === "Paused"), false, "IP1 was not paused");
  // Blind gate said so: gmail's complaint rate is null, never 0.
  assert.ok(history.get(`${IP1}/gmail`)!.every((x) => x.lane.complaintRate === null));
  assert.ok(history.get(`${IP1}/yahoo`)!.some((x) => x.lane.complaintRate === 0));

  // --- No lane ever attempted more than its day's quota (paused days: nothing sent after the pause).
  const attempted = new Map<string, number>();
  for (const e of events) {
    if (!e.source || !e.provider || !(e.type === "delivered" || e.type === "deferred" || (e.type === "bounced" && !e.async))) continue;
    const k = `${e.source}/${e.provider}|${Math.floor(Date.parse(e.slotAt ?? e.time) / PERIOD_MS)}`;
    attempted.set(k, (attempted.get(k) ?? 0) + e.rcpts.length);
  }
  let over = 0;
  let checked = 0;
  for (const [k, n] of attempted) {
    const [lane, period] = k.split("|");
    if (!lane!.endsWith("/gmail") && !lane!.endsWith("/microsoft") && !lane!.endsWith("/yahoo")) continue;
    const q = quotaOn(lane!, Number(period));
    if (q === undefined) continue; // before status existed
    checked++;
    if (n > q) {
      over++;
      t.diagnostic(`over quota: ${lane} period ${period}: ${n} > ${q}`);
    }
  }
  assert.ok(checked >= 6 * (DAYS - 5), `lane-days checked: ${checked}`);
  assert.equal(over, 0, "no lane exceeded its quota");

  // --- Events and metrics.
  const evs = await eventsFor(env, NS, POOL_NAME);
  for (const reason of ["Advanced", "Held", "SteppedBack", "Paused"]) assert.ok(evs.some((e) => e.reason === reason), `an Event ${reason}: ${[...new Set(evs.map((e) => e.reason))]}`);
  const metrics = await op.metrics();
  assert.match(metrics, new RegExp(`mailfleet_operator_lane_daily_quota\\{pool="${NS}/${POOL_NAME}",source_ip="${IP1.replaceAll(".", "\\.")}",provider="gmail"\\} 40`));
  assert.match(metrics, /mailfleet_operator_lane_state\{pool="mail\/outbound",source_ip="127\.0\.78\.1",provider="gmail",state="Healthy"\} 1/);
  assert.match(metrics, /mailfleet_operator_lane_sent_today\{/);
  assert.match(metrics, /mailfleet_operator_lane_warmup_stage\{/);
  assert.match(metrics, /mailfleet_operator_lane_warmup_held\{/);
});

/** An ARF report (RFC 5965) from yahoo about one delivered message, to the relay's inbound listener. */
async function sendArf(host: string, port: number, e: MailEvent, sourceIp: string, domain: string): Promise<string> {
  const b = "----=_arf_warmup";
  const rcpt = e.rcpts[0]!;
  const returnPath = verpAddress(e.qid, `bounces.${domain}`);
  const raw = Buffer.from([
    "From: FBL <fbl@feedback.yahoo.test>",
    `To: fbl@bounces.${domain}`,
    "Subject: complaint",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=feedback-report; boundary="${b}"`,
    "",
    `--${b}`,
    "Content-Type: text/plain",
    "",
    "This is an email abuse report.",
    "",
    `--${b}`,
    "Content-Type: message/feedback-report",
    "",
    "Feedback-Type: abuse",
    "User-Agent: yahoo-fbl/1.0",
    "Version: 1",
    `Original-Mail-From: <${returnPath}>`,
    `Original-Rcpt-To: <${rcpt}>`,
    `Source-IP: ${sourceIp}`,
    `Reported-Domain: ${domain}`,
    "",
    `--${b}`,
    "Content-Type: text/rfc822-headers",
    "",
    `Return-Path: <${returnPath}>`,
    `From: <app@${domain}>`,
    `To: <${rcpt}>`,
    "Subject: warm",
    "",
    `--${b}--`,
    "",
  ].join("\r\n"));
  const tr = nodemailer.createTransport({ host, port, ignoreTLS: true, localAddress: "127.0.77.3", name: "mx.yahoo.test" });
  try {
    return (await tr.sendMail({ envelope: { from: "fbl@feedback.yahoo.test", to: [`fbl@bounces.${domain}`] }, raw })).response;
  } catch (err) {
    return String((err as { response?: string }).response ?? (err as Error).message);
  } finally {
    tr.close();
  }
}
