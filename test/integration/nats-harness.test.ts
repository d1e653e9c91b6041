// The NATS harness: a single JetStream node and a 3-node cluster whose R3 stream stays writable after
// its leader is killed, and catches up when the node comes back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNats } from "../env/nats.ts";
import { pidAlive } from "../env/proc.ts";

async function eventually<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

test("single node: JetStream with sync_interval always, monitoring endpoints", { timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mailfleet-nats1-"));
  const nats = await startNats({ dir, nodes: 1, syncAlways: true });
  t.after(async () => { await nats.stop(); rmSync(dir, { recursive: true, force: true }); });
  assert.equal(nats.urls.length, 1);
  assert.match(nats.urls[0]!, /^nats:\/\/127\.0\.0\.1:\d+$/);

  const nc = await connect({ servers: nats.urls });
  t.after(() => nc.close());
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: "ONE", subjects: ["one.>"] });
  const js = jetstream(nc);
  for (let i = 0; i < 10; i++) await js.publish(`one.${i}`, `m${i}`);
  const info = await jsm.streams.info("ONE");
  assert.equal(info.state.messages, 10);

  const varz = await nats.monitor(0, "/varz");
  assert.equal(varz.server_name, "n0");
  assert.equal(varz.jetstream?.config?.sync_always, true, `varz.jetstream.config: ${JSON.stringify(varz.jetstream?.config)}`);
  const jsz = await nats.monitor(0, "/jsz?streams=true");
  assert.equal(jsz.streams, 1);
  const connz = await nats.monitor(0, "/connz");
  assert.ok(connz.num_connections >= 1);
  const subsz = await nats.monitor(0, "/subsz");
  assert.ok(typeof subsz.num_subscriptions === "number");
});

test("3-node cluster: an R3 stream stays writable after its leader is killed, and the node catches up", { timeout: 600_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mailfleet-nats3-"));
  const nats = await startNats({ dir, nodes: 3 });
  t.after(async () => { await nats.stop(); rmSync(dir, { recursive: true, force: true }); });
  assert.equal(nats.urls.length, 3);
  assert.equal(new Set(nats.servers.flatMap((s) => [s.port, s.clusterPort, s.monitorPort])).size, 9, "distinct ports");

  const nc = await connect({ servers: nats.urls, reconnectTimeWait: 250, maxReconnectAttempts: -1 });
  t.after(() => nc.close());
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: "R3", subjects: ["r3.>"], num_replicas: 3 });
  const js = jetstream(nc, { timeout: 5000 });
  for (let i = 0; i < 20; i++) await js.publish(`r3.${i}`, `before-${i}`);

  const leaderName = (await jsm.streams.info("R3")).cluster?.leader;
  const victim = nats.servers.findIndex((s) => s.name === leaderName);
  assert.ok(victim >= 0, `stream leader ${leaderName} is one of ours`);
  const pid = nats.servers[victim]!.process!.pid;
  await nats.kill(victim);
  assert.equal(pidAlive(pid), false, "killed node is gone");

  // Writable again once the two survivors elect a new leader.
  for (let i = 0; i < 20; i++) {
    await eventually(`publish after-${i}`, async () => (await js.publish(`r3.after.${i}`, `after-${i}`)).seq > 0);
  }
  const info = await eventually("stream info from the survivors", async () => {
    const si = await jsm.streams.info("R3");
    return si.cluster?.leader && si.cluster.leader !== leaderName ? si : undefined;
  });
  assert.equal(info.state.messages, 40);

  await nats.restart(victim);
  assert.notEqual(nats.servers[victim]!.process!.pid, pid);
  // The restarted node reports the stream with every message once it has caught up.
  await eventually("restarted node caught up", async () => {
    const jsz = await nats.monitor(victim, "/jsz?streams=true");
    const stream = jsz.account_details?.flatMap((a: any) => a.stream_detail ?? []).find((s: any) => s.name === "R3");
    return stream?.state?.messages === 40;
  }, 120_000);
});
