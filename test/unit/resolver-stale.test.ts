// Serve-stale during a DNS outage (relay/routing/resolver.ts, RFC 8767). Found by the faults
// benchmark: with the DNS server silent for two minutes, delivery nearly stopped (84 messages in
// 120 s instead of ~1,200), because every lookup of an expired name waited for a refresh that
// timed out before the stale answer was served. After a failed refresh the stale answer is now
// served at once for a recheck interval; one lookup per name tries DNS again after it.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MxResolver } from "../../relay/routing/resolver.ts";
import { DnsTemporaryError, type DnsAnswer, type DnsClient } from "../../relay/routing/dns.ts";

function fakeClient() {
  const state = { down: false, queries: 0 };
  const client = {
    async query(name: string, type: string): Promise<DnsAnswer> {
      state.queries++;
      if (state.down) throw new DnsTemporaryError("ETIMEOUT", `${name} ${type}: timed out`);
      if (type === "MX") return { rcode: "NOERROR", server: "x", authorities: [], answers: [{ name, type: "MX", ttl: 0, data: { preference: 10, exchange: `mx.${name}` } }] };
      return { rcode: "NOERROR", server: "x", authorities: [], answers: [{ name, type: "A", ttl: 0, data: "127.0.0.9" }] };
    },
  } as unknown as DnsClient;
  return { client, state };
}

describe("resolver: serve-stale while DNS fails", () => {
  it("after a failed refresh the stale answer is served without asking DNS again until the recheck interval", async () => {
    let now = 1_000_000;
    const { client, state } = fakeClient();
    const r = new MxResolver({ client, now: () => now });
    const want = { kind: "mx", hosts: [{ host: "mx.a.test", preference: 10 }] };
    assert.deepEqual(await r.route("a.test"), want);
    assert.deepEqual(await r.addresses("mx.a.test"), ["127.0.0.9"]);
    assert.equal(state.queries, 2);

    now += 60_000; // expired (TTL 0 is cached for the 10 s minimum)
    state.down = true;
    assert.deepEqual(await r.route("a.test"), want, "stale answer after the failed refresh");
    assert.deepEqual(await r.addresses("mx.a.test"), ["127.0.0.9"]);
    assert.equal(state.queries, 4);
    for (let i = 0; i < 10; i++) {
      now += 1000;
      assert.deepEqual(await r.route("a.test"), want);
      assert.deepEqual(await r.addresses("mx.a.test"), ["127.0.0.9"]);
    }
    assert.equal(state.queries, 4, "no lookup (and no timeout to wait for) during the recheck interval");

    now += 30_000;
    assert.deepEqual(await r.route("a.test"), want);
    assert.equal(state.queries, 5, "one lookup after the recheck interval");

    state.down = false;
    now += 31_000;
    assert.deepEqual(await r.route("a.test"), want);
    assert.equal(state.queries, 6, "fresh again once DNS answers");
  });

  it("stale answers end after staleMs: then the failure is the caller's", async () => {
    let now = 1_000_000;
    const { client, state } = fakeClient();
    const r = new MxResolver({ client, now: () => now, staleMs: 120_000 });
    await r.route("b.test");
    state.down = true;
    now += 200_000;
    await assert.rejects(r.route("b.test"), DnsTemporaryError);
  });
});
