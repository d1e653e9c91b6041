// Durability of acceptance: no NATS, no 250 (452 4.3.1); a relay killed with SIGKILL mid-stream
// loses no message it answered 250 for (checked after NATS itself was killed and restarted too);
// SIGTERM drains (new connections 421 4.3.2, the transaction in flight still gets its 250); a
// 3-node cluster with R3 streams keeps every acknowledged message when the stream leader dies.
// Addresses: relay 127.0.50.1, clients 127.0.51.0/24.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { STREAM_BODY, STREAM_QUEUE } from "../../../relay/queue/topology.ts";
import { domainPlan, eventually, makeDkimKeys, makePlan, startRelayFixture, startRelayProcess, type RelayFixture } from "./fixture.ts";
import { message, qidOf, RawSmtp } from "./smtp-client.ts";

const HOST = "127.0.50.1";
const CLIENT = "127.0.51.3";

async function setup(t: Parameters<typeof startRelayFixture>[0], o: { nodes?: 1 | 3; replicas?: number } = {}): Promise<RelayFixture> {
  const keys = makeDkimKeys("example.com", ["rsa"]);
  const plan = await makePlan({ domains: [domainPlan("example.com", {}, keys)], networks: [{ cidr: "127.0.51.0/24", domains: ["example.com"] }] });
  return startRelayFixture(t, { host: HOST, plan, keys, ...o });
}

/** Clients sending one message after another until stopped; every queue id answered 250. */
function load(host: string, port: number, clients: number) {
  const acked = new Set<string>();
  const replies = new Map<number, number>();
  let stop = false;
  const runs = Array.from({ length: clients }, async (_, i) => {
    let n = 0;
    while (!stop) {
      let c: RawSmtp | undefined;
      try {
        c = await RawSmtp.open(host, port, `127.0.51.${10 + i}`);
        if ((await c.reply()).code !== 220) throw new Error("no greeting");
        await c.cmd("EHLO load.test");
        while (!stop) {
          const r = await c.send("news@example.com", [`u${i}-${n}@gmail.test`], message({ from: "news@example.com", body: `message ${i}-${n}\r\n${"x".repeat(2000)}\r\n` }));
          n++;
          replies.set(r.code, (replies.get(r.code) ?? 0) + 1);
          if (r.code === 250) acked.add(qidOf(r));
          else break;
        }
      } catch {
        await sleep(50);
      } finally {
        c?.quit().catch(() => {});
      }
    }
  });
  return { acked, replies, async stop() { stop = true; await Promise.all(runs); } };
}

async function storedIds(f: RelayFixture): Promise<Set<string>> {
  return new Set((await f.envelopes()).map((e) => e.id));
}

test("no NATS: 452 4.3.1 at MAIL FROM and for a message in DATA; service resumes with NATS", { timeout: 300_000 }, async (t) => {
  const f = await setup(t);
  const c = await RawSmtp.open(HOST, f.submission.port, CLIENT);
  await c.reply();
  await c.cmd("EHLO x.test");
  assert.equal((await c.cmd("MAIL FROM:<news@example.com>")).code, 250);
  assert.equal((await c.cmd("RCPT TO:<a@gmail.test>")).code, 250);
  assert.equal((await c.cmd("DATA")).code, 354);
  c.write(message({ from: "news@example.com" }));
  await f.nats.kill(0);
  c.write("\r\n.\r\n");
  const r = await c.reply(60_000);
  assert.match(r.lines[0]!, /^452 4\.3\.1 /, r.text);
  const m = await c.cmd("MAIL FROM:<news@example.com>");
  assert.match(m.lines[0]!, /^452 4\.3\.1 /);
  await f.nats.restart(0);
  await eventually("accepting again", async () => (await c.cmd("RSET")) && (await c.send("news@example.com", ["b@gmail.test"], message({ from: "news@example.com" }))).code === 250);
  await c.quit();
});

test("relay killed with SIGKILL mid-stream: every message that got 250 is in JetStream (also after a NATS kill -9 and restart)", { timeout: 600_000 }, async (t) => {
  const f = await setup(t);
  const relay = await startRelayProcess(t, f, { name: "victim" });
  const l = load(HOST, relay.submissionPort, 8);
  await eventually("some messages accepted", async () => l.acked.size >= 150, 300_000);
  relay.proc.signal("SIGKILL");
  await relay.proc.exited;
  await l.stop();
  const acked = new Set(l.acked);
  assert.ok(acked.size >= 150);
  const check = async () => {
    const stored = await storedIds(f);
    const missing = [...acked].filter((q) => !stored.has(q));
    assert.deepEqual(missing, [], `acknowledged but not stored: ${missing.length} of ${acked.size}`);
    for (const q of [...acked].slice(0, 20)) {
      const env = (await f.envelopes()).find((e) => e.id === q)!;
      assert.ok((await f.body(env)).length > 2000);
    }
  };
  await check();
  // The store survives the server dying too (sync_interval: always: on disk before the PubAck).
  await f.nats.kill(0);
  await f.nats.restart(0);
  await eventually("streams back", async () => (await f.jsm.streams.info(STREAM_QUEUE)).state.messages >= acked.size);
  await check();
});

test("SIGTERM drains: new connections get 421 4.3.2, the transaction in flight still gets its 250", { timeout: 300_000 }, async (t) => {
  const f = await setup(t);
  const relay = await startRelayProcess(t, f, { name: "drainer" });
  const a = await RawSmtp.open(HOST, relay.submissionPort, CLIENT);
  await a.reply();
  await a.cmd("EHLO a.test");
  await a.cmd("MAIL FROM:<news@example.com>");
  await a.cmd("RCPT TO:<inflight@gmail.test>");
  assert.equal((await a.cmd("DATA")).code, 354);
  a.write(message({ from: "news@example.com" }));
  relay.proc.signal("SIGTERM");
  await sleep(500);
  const b = await RawSmtp.open(HOST, relay.submissionPort, "127.0.51.4");
  const greet = await b.reply();
  assert.match(greet.lines[0]!, /^421 4\.3\.2 /, greet.text);
  await b.quit();
  a.write("\r\n.\r\n");
  const r = await a.reply();
  assert.equal(r.code, 250, r.text);
  assert.ok((await storedIds(f)).has(qidOf(r)));
  await a.quit();
  assert.equal(await relay.proc.exited, 0);
});

test("3-node cluster, R3 streams: every acknowledged message survives the stream leader's death", { timeout: 900_000 }, async (t) => {
  const f = await setup(t, { nodes: 3, replicas: 3 });
  const info = await f.jsm.streams.info(STREAM_QUEUE);
  assert.equal(info.config.num_replicas, 3);
  assert.equal((await f.jsm.streams.info(STREAM_BODY)).config.num_replicas, 3);
  const l = load(HOST, f.submission.port, 6);
  await eventually("messages accepted", async () => l.acked.size >= 60, 300_000);
  const leader = (await f.jsm.streams.info(STREAM_QUEUE)).cluster?.leader;
  const idx = f.nats.servers.findIndex((s) => s.name === leader);
  assert.ok(idx >= 0, `leader ${leader}`);
  await f.nats.kill(idx);
  const before = l.acked.size;
  await eventually("accepting again after the leader died", async () => l.acked.size >= before + 60, 300_000);
  await l.stop();
  await f.nats.restart(idx);
  const stored = await storedIds(f);
  const missing = [...l.acked].filter((q) => !stored.has(q));
  assert.deepEqual(missing, [], `${missing.length} of ${l.acked.size} missing`);
  // The restarted node catches up: it holds every message too.
  await eventually("replica caught up", async () => {
    const jsz = await f.nats.monitor(idx, "/jsz?streams=true");
    const s = jsz.account_details?.[0]?.stream_detail?.find((x: { name: string }) => x.name === STREAM_QUEUE);
    return s && s.state.messages >= l.acked.size;
  }, 120_000);
});
