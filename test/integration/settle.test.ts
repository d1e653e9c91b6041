// Confirmed acks against a real 3-node nats-server cluster whose consumer leader is SIGKILLed: a
// plain ack sent before a new leader is elected is dropped and the message comes back after
// AckWait (the fault delivery's settle step exists for); an ack confirmed with confirmAck is
// asked again until the new leader takes it, and the message never comes back.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { AckPolicy, jetstream, jetstreamManager, type JsMsg } from "@nats-io/jetstream";
import { startNats, type Nats } from "../env/nats.ts";
import { confirmAck } from "../../relay/delivery/settle.ts";

const ACK_WAIT_MS = 4000;
let base: string;
let nats: Nats;
const conns: NatsConnection[] = [];

before(async () => {
  base = await mkdtemp(join(tmpdir(), "mailfleet-settle-"));
  nats = await startNats({ dir: join(base, "nats"), nodes: 3 });
});

after(async () => {
  for (const c of conns) await c.close().catch(() => {});
  await nats?.stop();
  if (base) await rm(base, { recursive: true, force: true });
});

async function fetchAll(nc: NatsConnection, max: number, expires: number, ack = false): Promise<JsMsg[]> {
  const c = await jetstream(nc).consumers.get("SETTLE", "relays");
  const got: JsMsg[] = [];
  for await (const m of await c.fetch({ max_messages: max, expires })) {
    if (ack) await m.ackAck();
    got.push(m);
    if (got.length === max) break;
  }
  return got;
}

test("an ack confirmed across a consumer leader's death is not lost; a plain one is", { timeout: 180_000 }, async () => {
  const setup = await connect({ servers: nats.urls });
  conns.push(setup);
  const jsm = await jetstreamManager(setup);
  await jsm.streams.add({ name: "SETTLE", subjects: ["settle.>"], num_replicas: 3 });
  await jsm.consumers.add("SETTLE", { durable_name: "relays", ack_policy: AckPolicy.Explicit, ack_wait: ACK_WAIT_MS * 1_000_000 });
  const leader = (await jsm.consumers.info("SETTLE", "relays")).cluster?.leader;
  const other = nats.servers.find((s) => s.name !== leader)!;
  assert.ok(leader && other, `consumer leader ${leader}`);

  // The relay's connection stays on a server that lives; the leader's death cuts its acks' path.
  const nc = await connect({ servers: [other.url], ignoreClusterUpdates: true, maxReconnectAttempts: -1 });
  conns.push(nc);
  const js = jetstream(nc);
  await js.publish("settle.a", "plain");
  await js.publish("settle.b", "confirmed");
  // The new consumer's interest reaches the other servers shortly after it is created: until then
  // a fetch there is answered "no responders".
  let first: JsMsg[] = [];
  for (const t0 = Date.now(); !first.length; ) {
    try {
      first = await fetchAll(nc, 2, 5000);
    } catch (err) {
      if (Date.now() - t0 > 30_000) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  const [plain, confirmed] = first;
  assert.deepEqual([plain?.string(), confirmed?.string()], ["plain", "confirmed"]);

  await nats.kill(nats.servers.findIndex((s) => s.name === leader));
  plain!.ack();
  const started = Date.now();
  assert.equal(await confirmAck(nc, confirmed!, { forMs: 60_000, timeoutMs: 1000 }), true, "confirmed once a new leader answered");
  const newLeader = (await jsm.consumers.info("SETTLE", "relays")).cluster?.leader;
  assert.notEqual(newLeader, leader);

  // Past AckWait under the new leader: only what was not acked comes back (acked now, so once).
  const back = await fetchAll(nc, 2, ACK_WAIT_MS * 3, true);
  assert.deepEqual(back.map((m) => m.string()), ["plain"], `redelivered (confirmAck took ${Date.now() - started} ms)`);
});
