// The informer's watch loop against a client whose watch bodies behave as undici's do: destroying a
// body that is still being read emits an abort error. A watch that ends in an ERROR event (the API
// server's 429 "storage is (re)initializing" right after start) must be retried, not crash the
// operator through readline's re-emitted 'error' (the fleet e2e saw the operator exit 1 on it).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { Informer } from "../../operator/runtime/informer.ts";
import { type KubeClient, RESOURCES } from "../../operator/runtime/kube.ts";
import { makeLogger } from "../../operator/runtime/log.ts";

test("a watch ending in an ERROR event is retried; destroying its body does not crash the process", async () => {
  let watches = 0;
  const client = {
    request: async () => ({ metadata: { resourceVersion: "1" }, items: [] }),
    openWatch: async () => {
      watches++;
      return new Readable({
        read() {
          this.push('{"type":"ERROR","object":{"code":429,"message":"storage is (re)initializing"}}\n');
        },
        destroy(err, cb) {
          cb(err ?? Object.assign(new Error("Request aborted"), { name: "AbortError" }));
        },
      });
    },
  } as unknown as KubeClient;
  const crashes: unknown[] = [];
  const onCrash = (e: unknown) => crashes.push(e);
  process.on("uncaughtException", onCrash);
  const inf = new Informer(client, RESOURCES.IPPool, makeLogger({ level: "error", write: () => {} }));
  try {
    inf.start();
    for (let i = 0; i < 100 && watches < 3; i++) await sleep(50);
    await inf.stop();
    await sleep(50);
  } finally {
    process.off("uncaughtException", onCrash);
  }
  assert.ok(watches >= 3, `the watch was opened again after each error (${watches} watches)`);
  assert.deepEqual(crashes.map(String), []);
});
