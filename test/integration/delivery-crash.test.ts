// The relay as its own process (`node relay/main.ts`) delivering a stream of mail: killed with
// SIGKILL mid-stream, a restarted relay delivers every message (some twice: at-least-once); sent
// SIGTERM, it drains (transactions in flight finish and are recorded) and exits 0, and the next
// relay delivers the rest with no message twice.
//
// The first two tests put envelopes into NATS the way acceptance stores them; the third goes end
// to end through the relay's SMTP submission: every message answered 250 before a SIGKILL is
// delivered after restart.
// Addresses: MX 127.0.73.1, source 127.0.73.10, relay listeners 127.0.72.1, DNS 127.0.53.73,
// submitting clients 127.0.75.0/24.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle } from "../env/peers/dns.ts";
import { startPostfix, type PostfixHandle } from "../env/peers/postfix.ts";
import { freePort, startProcess, type ManagedProcess } from "../env/proc.ts";
import { ensureStreams, serverFeatures } from "../../relay/queue/streams.ts";
import { createLogger } from "../../relay/runtime/logger.ts";
import { makePlan, message, publishPlan, submit, until, POOL } from "./delivery-harness.ts";
import nodemailer from "nodemailer";

const T = { timeout: 600_000 };
const HOST = "127.0.72.1";
const SOURCE = { address: "127.0.73.10", hostname: "out.crash.test" };
const ROOT = join(import.meta.dirname, "..", "..");

let base: string;
let nats: Nats;
let dns: DnsHandle;
let pf: PostfixHandle;
let nc: NatsConnection;

before(async () => {
  base = await mkdtemp(join(tmpdir(), "mailfleet-delivery-crash-"));
  await chmod(base, 0o755);
  nats = await startNats({ dir: join(base, "nats"), syncAlways: true });
  dns = await startDns({
    dir: join(base, "dns"),
    address: "127.0.53.73",
    records: [
      { type: "MX", name: "crash.test", value: "mx.crash.test" },
      { type: "A", name: "mx.crash.test", value: "127.0.73.1" },
    ],
  });
  pf = await startPostfix({ dir: join(base, "postfix"), domains: ["crash.test"], listeners: [{ address: "127.0.73.1", hostname: "mx.crash.test" }] });
  nc = await connect({ servers: nats.urls });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await ensureStreams(nc, js, jsm, { replicas: 1, features: serverFeatures(nc) }, createLogger({ level: "error" }));
  // 10 messages a second on one lane: a stream long enough to be cut in the middle.
  await publishPlan(nc, makePlan({
    providers: [{ name: "default", lane: { messageRate: { count: 10, periodMs: 1000 }, maxConnections: 2, messagesPerConnection: 25 } }],
    addresses: [SOURCE],
    networks: [{ cidr: "127.0.75.0/24", domains: ["sender.test"] }],
  }));
});

after(async () => {
  await nc?.close();
  await pf?.stop();
  await dns?.stop();
  await nats?.stop();
  if (base && !process.env.MAILFLEET_KEEP_STATE) await rm(base, { recursive: true, force: true });
});

let submissionPort = 0;

async function relayProcess(name: string): Promise<ManagedProcess> {
  submissionPort ||= await freePort(HOST);
  const proc = startProcess({
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
      MAILFLEET_ADDRESSES: SOURCE.address,
      MAILFLEET_DNS_SERVERS: dns.server,
      MAILFLEET_LISTEN_ADDRESS: HOST,
      MAILFLEET_INBOUND_PORT: "0",
      MAILFLEET_SUBMISSION_PORT: String(submissionPort),
      MAILFLEET_HTTP_PORT: String(await freePort(HOST)),
      MAILFLEET_SECRETS_DIR: join(base, "secrets"),
      MAILFLEET_TLS_DIR: join(base, "tls"),
      MAILFLEET_LOG_LEVEL: "info",
      // What a killed relay held comes back after AckWait: 15 s instead of a minute (the relay
      // extends it every 5 s while it works on a message, so a live relay loses nothing to it).
      MAILFLEET_DELIVERY_ACK_WAIT: "15s",
    },
  });
  return proc;
}

/** Delivered copies per subject ("crash <qid>"). */
async function copies(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of await pf.deliveredMessages()) {
    const s = /^Subject: (.*)$/m.exec(m.raw.toString("latin1"))?.[1]?.trim();
    if (s) out.set(s, (out.get(s) ?? 0) + 1);
  }
  return out;
}

async function stream(tag: string, n: number): Promise<string[]> {
  const js = jetstream(nc);
  const subjects: string[] = [];
  for (let i = 0; i < n; i++) {
    const s = await submit(js, { rcpts: [`${tag}${i}@crash.test`], subject: `${tag} ${i}` });
    subjects.push(`${tag} ${i}`);
    void s;
  }
  return subjects;
}

test("SIGKILL mid-stream: a restarted relay delivers every message", T, async () => {
  const subjects = await stream("kill", 120);
  const first = await relayProcess("relay-kill-1");
  try {
    await until("30 delivered", async () => [...(await copies()).keys()].filter((s) => s.startsWith("kill ")).length >= 30, 180_000);
    first.signal("SIGKILL");
    await first.exited;
  } finally {
    await first.stop();
  }
  const before = [...(await copies()).keys()].filter((s) => s.startsWith("kill ")).length;
  assert.ok(before < subjects.length, `killed mid-stream (${before} of ${subjects.length} delivered)`);
  const second = await relayProcess("relay-kill-2");
  try {
    // Envelopes the dead relay held come back after the consumer's AckWait (15 s here).
    await until("every message delivered", async () => {
      const c = await copies();
      return subjects.every((s) => (c.get(s) ?? 0) >= 1);
    }, 400_000);
    const c = await copies();
    const dup = subjects.filter((s) => (c.get(s) ?? 0) > 1).length;
    process.stdout.write(`# SIGKILL: ${before} delivered before the kill, ${subjects.length} after restart, ${dup} delivered twice\n`);
  } finally {
    second.signal("SIGTERM");
    await second.exited;
  }
});

test("SIGTERM: the relay drains and exits 0; the next one delivers the rest, none twice", T, async () => {
  const subjects = await stream("term", 80);
  const first = await relayProcess("relay-term-1");
  await until("20 delivered", async () => [...(await copies()).keys()].filter((s) => s.startsWith("term ")).length >= 20, 180_000);
  first.signal("SIGTERM");
  const code = await first.exited;
  assert.equal(code, 0, "drained and exited 0");
  const second = await relayProcess("relay-term-2");
  try {
    await until("every message delivered", async () => {
      const c = await copies();
      return subjects.every((s) => (c.get(s) ?? 0) >= 1);
    }, 300_000);
    // Nothing was abandoned mid-transaction, so nothing is sent twice.
    await new Promise((r) => setTimeout(r, 3000));
    const c = await copies();
    assert.deepEqual(subjects.filter((s) => (c.get(s) ?? 0) > 1), []);
  } finally {
    second.signal("SIGTERM");
    await second.exited;
  }
});

test("end to end: every message answered 250 by submission before a SIGKILL is delivered after restart", T, async () => {
  const accepted = new Set<string>();
  let stop = false;
  const first = await relayProcess("relay-e2e-1");
  await until("submission listening", async () => {
    const t = nodemailer.createTransport({ host: HOST, port: submissionPort, ignoreTLS: true, localAddress: "127.0.75.1" });
    try {
      return await t.verify();
    } catch {
      return false;
    } finally {
      t.close();
    }
  }, 60_000);
  // Four clients submitting one message after another (one connection each, reused) until stopped.
  const clients = Array.from({ length: 4 }, async (_, c) => {
    let n = 0;
    while (!stop) {
      const t = nodemailer.createTransport({ host: HOST, port: submissionPort, ignoreTLS: true, localAddress: `127.0.75.${10 + c}`, pool: true, maxConnections: 1, maxMessages: 1000 });
      try {
        while (!stop) {
          const subject = `e2e ${c}-${n++}`;
          const raw = message({ from: "app@sender.test", to: [`${c}-${n}@crash.test`], subject });
          const info = await t.sendMail({ envelope: { from: "app@sender.test", to: [`${c}-${n}@crash.test`] }, raw });
          if (/^250/.test(info.response)) accepted.add(subject);
        }
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      } finally {
        t.close();
      }
    }
  });
  try {
    await until("60 accepted and some delivered", async () => accepted.size >= 60 && [...(await copies()).keys()].some((s) => s.startsWith("e2e ")), 180_000);
    first.signal("SIGKILL");
    await first.exited;
  } finally {
    stop = true;
    await Promise.all(clients);
    await first.stop();
  }
  const before = [...(await copies()).keys()].filter((s) => accepted.has(s)).length;
  const second = await relayProcess("relay-e2e-2");
  try {
    await until("every 250'd message delivered", async () => {
      const c = await copies();
      return [...accepted].every((s) => (c.get(s) ?? 0) >= 1);
    }, 400_000);
    process.stdout.write(`# end to end: ${accepted.size} answered 250, ${before} delivered before the SIGKILL, all ${accepted.size} after restart\n`);
  } finally {
    second.signal("SIGTERM");
    await second.exited;
  }
});
