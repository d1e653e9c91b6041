import assert from "node:assert/strict";
import { it } from "node:test";
import type { PoolPlan } from "../../api/plan.ts";
import { isLocalAddress, ownedAddresses } from "../../relay/delivery/service.ts";

const pool = {
  addresses: [{ address: "127.0.1.1", hostname: "a" }, { address: "127.0.1.2", hostname: "b", nodeName: "node-1" }, { address: "192.0.2.9", hostname: "c" }],
} as unknown as PoolPlan;

it("a relay owns what it is given, else pinned addresses of its node and the local ones", () => {
  assert.deepEqual([...ownedAddresses(pool, ["192.0.2.9"], "node-0")], ["192.0.2.9"]);
  assert.deepEqual([...ownedAddresses(pool, [], "node-0")].sort(), ["127.0.1.1"]);
  assert.deepEqual([...ownedAddresses(pool, [], "node-1")].sort(), ["127.0.1.1", "127.0.1.2"]);
  assert.equal(isLocalAddress("127.0.200.7"), true, "all of 127.0.0.0/8 is local");
  assert.equal(isLocalAddress("192.0.2.9"), false);
});
