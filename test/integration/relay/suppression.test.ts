// The suppression list against a real nats-server: hashed keys, scopes, per-key expiry (server
// TTL and the value's expiresAt), idempotent concurrent adds, remove and list.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { startNats } from "../../env/nats.ts";
import { ensureStreams, serverFeatures } from "../../../relay/queue/streams.ts";
import { createLogger } from "../../../relay/runtime/logger.ts";
import { Suppressions, suppressionKey } from "../../../relay/suppression/index.ts";

test("suppression list in KV", { timeout: 300_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mf-supp-"));
  const nats = await startNats({ dir, nodes: 1 });
  const nc = await connect({ servers: nats.urls });
  t.after(async () => { await nc.close(); await nats.stop(); rmSync(dir, { recursive: true, force: true }); });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const features = serverFeatures(nc);
  const { suppressKv } = await ensureStreams(nc, js, jsm, { replicas: 1, features }, createLogger({ level: "error" }));
  const s = new Suppressions(suppressKv, { perKeyTtl: features.msgTtl });

  await t.test("keys are hashes; scopes are fleet-wide or per sending domain", async () => {
    await s.add({ scope: { global: true }, address: "Hard@Bounce.test", reason: "hard-bounce", detail: "550 5.1.1" });
    await s.add({ scope: { domain: "a.example" }, address: "comp@x.test", reason: "complaint" });
    assert.equal((await s.check("any.example", "hard@bounce.test"))?.reason, "hard-bounce");
    assert.equal((await s.check("a.example", "COMP@x.test"))?.scope, "domain");
    assert.equal(await s.check("b.example", "comp@x.test"), null);
    const keys: string[] = [];
    for await (const k of await suppressKv.keys()) keys.push(k);
    assert.ok(keys.every((k) => /^(h|d\.[0-9a-f]{64})\.[0-9a-f]{64}$/.test(k)), keys.join(" "));
    assert.ok(keys.includes(suppressionKey({ global: true }, "hard@bounce.test")));
  });

  await t.test("list and remove", async () => {
    assert.equal((await s.list({ domain: "a.example" })).length, 1);
    assert.equal((await s.list({ global: true })).length, 1);
    assert.equal((await s.list()).length, 2);
    assert.equal(await s.remove({ domain: "a.example" }, "comp@x.test"), true);
    assert.equal(await s.check("a.example", "comp@x.test"), null);
    assert.equal(await s.remove({ domain: "a.example" }, "comp@x.test"), false);
  });

  await t.test("entries expire (server TTL and the value's expiry), re-adding extends", async () => {
    await s.add({ scope: { domain: "a.example" }, address: "short@x.test", reason: "unsubscribe", ttlMs: 1000 });
    assert.ok(await s.check("a.example", "short@x.test"));
    await sleep(2500);
    assert.equal(await s.check("a.example", "short@x.test"), null);
    if (features.msgTtl) {
      const e = await suppressKv.get(suppressionKey({ domain: "a.example" }, "short@x.test"));
      assert.ok(!e || e.operation !== "PUT", "the server removed the key");
    }
    await s.add({ scope: { domain: "a.example" }, address: "re@x.test", reason: "complaint", ttlMs: 1000 });
    await s.add({ scope: { domain: "a.example" }, address: "re@x.test", reason: "complaint", ttlMs: 60_000 });
    await sleep(2000);
    assert.ok(await s.check("a.example", "re@x.test"), "the longer TTL replaced the shorter");
  });

  await t.test("concurrent adds of one address all succeed", async () => {
    const r = await Promise.allSettled(Array.from({ length: 30 }, () => s.add({ scope: { global: true }, address: "burst@x.test", reason: "hard-bounce" })));
    assert.deepEqual(r.filter((x) => x.status === "rejected"), []);
    assert.ok(await s.check("z.example", "burst@x.test"));
  });

});
