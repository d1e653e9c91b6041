// IPv6 egress against real components: a lane whose source address is IPv6 (::1, the only IPv6
// address a loopback-only machine has) reaches its MX hosts' AAAA addresses, including a domain
// whose only address is an AAAA record (implicit MX); an IPv4 lane reaches the A addresses, and a
// host with no address of its family is a clear deferral, not a socket error. Postfix listens on
// ::1 and on 127.0.86.1; dnsmasq serves the zone.
//
// Addresses: relay sources ::1 and 127.0.86.2, MX 127.0.86.1 and ::1, DNS 127.0.53.86.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle } from "../env/peers/dns.ts";
import { startPostfix, type PostfixHandle } from "../env/peers/postfix.ts";
import { loadRelayConfig } from "../../relay/config.ts";
import { startRelay, type Relay } from "../../relay/main.ts";
import { PlanWatcher } from "../../relay/plan/watcher.ts";
import { RouteStage } from "../../relay/routing/stage.ts";
import { Delivery } from "../../relay/delivery/service.ts";
import { Router, useRouter } from "../../relay/routing/router.ts";
import { createLogger } from "../../relay/runtime/logger.ts";
import { eventLog, makePlan, publishPlan, submit, until, type PlanSpec } from "./delivery-harness.ts";

const T = { timeout: 180_000 };
const OUT6 = { address: "::1", hostname: "out6.sender.test" };
const OUT4 = { address: "127.0.86.2", hostname: "out4.sender.test" };

let base: string;
let nats: Nats;
let dns: DnsHandle;
let pf: PostfixHandle;
let relay: Relay;
let events: Awaited<ReturnType<typeof eventLog>>;

async function applyPlan(spec: Omit<PlanSpec, "providers">): Promise<void> {
  const plan = makePlan({ providers: [], delivery: { retryBaseMs: 1000, retryMaxMs: 2000 }, ...spec });
  await publishPlan(relay.ctx.nc, plan);
  await until("plan applied", () => relay.ctx.plan()?.revision === plan.revision, 30_000);
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), "mailfleet-ipv6-"));
  await chmod(base, 0o755);
  nats = await startNats({ dir: join(base, "nats") });
  dns = await startDns({
    dir: join(base, "dns"), address: "127.0.53.86",
    records: [
      // Dual-stack MX, and a domain with no MX whose only address is IPv6.
      { type: "MX", name: "dual.test", value: "mx.dual.test" },
      { type: "A", name: "mx.dual.test", value: "127.0.86.1" },
      { type: "AAAA", name: "mx.dual.test", value: "::1" },
      { type: "AAAA", name: "v6only.test", value: "::1" },
    ],
  });
  pf = await startPostfix({
    dir: join(base, "postfix"),
    domains: ["dual.test", "v6only.test"],
    listeners: [{ address: "::1", hostname: "mx6.dual.test" }, { address: "127.0.86.1", hostname: "mx4.dual.test" }],
  });
  const config = loadRelayConfig({
    MAILFLEET_SECRETS_DIR: join(base, "no-secrets"),
    MAILFLEET_TLS_DIR: join(base, "no-tls"),
    MAILFLEET_NATS_URL: nats.urls.join(","),
    MAILFLEET_POOL: "mail/outbound",
    MAILFLEET_RELAY_ID: "relay-ipv6",
    MAILFLEET_ADDRESSES: `${OUT6.address},${OUT4.address}`,
    MAILFLEET_DNS_SERVERS: dns.server,
    MAILFLEET_LOG_LEVEL: process.env.MAILFLEET_TEST_LOG ? "debug" : "warn",
  });
  const router = new Router({ servers: [dns.server], minTtlMs: 1000 });
  useRouter({ config }, router);
  relay = await startRelay({
    config,
    log: createLogger({ level: config.MAILFLEET_LOG_LEVEL }),
    components: [new PlanWatcher(), new RouteStage({ router }), new Delivery({ router, idleMs: 2000 })],
  });
  events = await eventLog(relay.ctx.nc);
});

after(async () => {
  events?.stop();
  await relay?.shutdown();
  await pf?.stop();
  await dns?.stop();
  await nats?.stop();
  if (base && !process.env.MAILFLEET_KEEP_STATE) await rm(base, { recursive: true, force: true });
});

test("an IPv6 lane delivers to the MX's AAAA address, and to a domain whose only address is AAAA", T, async () => {
  await applyPlan({ addresses: [OUT6] });
  for (const rcpt of ["a@dual.test", "b@v6only.test"]) {
    const s = await submit(relay.ctx.js, { rcpts: [rcpt] });
    const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", `${rcpt} delivered`, 60_000);
    assert.equal(e.source, "::1", "sent from the IPv6 lane");
    const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === rcpt, timeoutMs: 30_000 });
    assert.equal(m!.clientIp, "::1", "the receiver saw an IPv6 client");
    assert.equal(m!.receivedBy, "mx6.dual.test", "over the IPv6 listener");
    assert.equal(m!.helo, OUT6.hostname);
  }
});

test("an IPv4 lane uses the A address; a host with no A record is a deferral that names it", T, async () => {
  await applyPlan({ addresses: [OUT4] });
  const s = await submit(relay.ctx.js, { rcpts: ["c@dual.test"] });
  const e = await events.waitFor((x) => x.qid === s.qid && x.type === "delivered", "delivered over IPv4", 60_000);
  assert.equal(e.source, OUT4.address);
  const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === "c@dual.test", timeoutMs: 30_000 });
  assert.equal(m!.clientIp, OUT4.address);
  assert.equal(m!.receivedBy, "mx4.dual.test");

  const v6 = await submit(relay.ctx.js, { rcpts: ["d@v6only.test"] });
  const d = await events.waitFor((x) => x.qid === v6.qid && x.type === "deferred", "deferred", 60_000);
  assert.match(JSON.stringify(d), /451 4\.4\.3 MX host v6only\.test has no A record \(lane source 127\.0\.86\.2\)/);

  // The same message goes out once the pool has an IPv6 address again: nothing was lost.
  await applyPlan({ addresses: [OUT4, OUT6] });
  await events.waitFor((x) => x.qid === v6.qid && x.type === "delivered", "delivered after the IPv6 lane came", 60_000);
  await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === "d@v6only.test", timeoutMs: 30_000 });
});
