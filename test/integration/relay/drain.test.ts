// SIGTERM drains a relay within its grace period even while clients hold idle keep-alive HTTP
// connections to it, as Prometheus (scraping /metrics), kubelet probes and applications using the
// injection API do. Found by the local fleet's scale-down test: relays exited 1 on their 25 s hard
// stop because the HTTP listener waited for such connections (keep-alive timeout 60 s).
// Addresses: relay 127.0.43.1.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Agent, request } from "node:http";
import { makePlan, domainPlan, startRelayFixture, startRelayProcess } from "./fixture.ts";

const HOST = "127.0.43.1";

test("SIGTERM with idle keep-alive HTTP clients: the relay drains and exits 0", { timeout: 300_000 }, async (t) => {
  const plan = await makePlan({ domains: [domainPlan("example.com")], networks: [{ cidr: "127.0.0.0/8", domains: ["example.com"] }] });
  const f = await startRelayFixture(t, { host: HOST, plan });
  const r = await startRelayProcess(t, f, { name: "drain-relay" });
  // A scraper's connection: one request, then the socket stays open, idle.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  const status = await new Promise<number>((resolve, reject) => {
    const req = request({ host: HOST, port: r.httpPort, path: "/metrics", agent }, (res) => { res.resume(); res.on("end", () => resolve(res.statusCode ?? 0)); });
    req.on("error", reject);
    req.end();
  });
  assert.equal(status, 200);
  const t0 = Date.now();
  r.proc.signal("SIGTERM");
  const code = await r.proc.exited;
  const ms = Date.now() - t0;
  assert.equal(code, 0, `the relay exited ${code} after ${ms} ms (its hard stop is 25 s)`);
});
