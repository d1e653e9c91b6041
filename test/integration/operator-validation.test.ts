// Bad input. (1) Invalid manifests are refused by the real API server (the CRD schema and its CEL
// rules) with the field named. (2) What only other objects reveal is refused by the operator's
// admission webhook. (3) With the webhook off (bypassed), the same problems are reported in a
// condition and a Warning Event, the newer object does not take effect, and nothing already
// running is disturbed.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { isDeepStrictEqual } from "node:util";
import {
  type Env, condition, current, domain, eventsFor, eventually, ns, path, pool, provider, schedule, startEnv,
} from "./operator-env.ts";

const NS = "val";

type Case = { name: string; field: RegExp; create?: any; update?: { before: any; after: any } };

const P = (spec: Record<string, unknown>, name = "bad") => pool(NS, name, { addresses: [{ address: "127.0.5.1", hostname: "p1.val.test" }], ...spec });
const D = (spec: Record<string, unknown>, name = "bad") => domain(NS, name, { domain: "bad.val.test", poolRef: { name: "p" }, ...spec });
const S = (stages: unknown, name = "bad") => schedule(NS, name, { stages });
const M = (spec: Record<string, unknown>, name = "bad") => provider(name, { match: { domains: ["bad.test"] }, ...spec });

const CASES: Case[] = [
  { name: "an address that is no IP", field: /spec\.addresses\[0\]\.address/, create: pool(NS, "bad", { addresses: [{ address: "999.1.2.3", hostname: "p1.val.test" }] }) },
  { name: "an EHLO name that is no DNS name", field: /spec\.addresses\[0\]\.hostname/, create: pool(NS, "bad", { addresses: [{ address: "127.0.5.1", hostname: "Not_A Host" }] }) },
  { name: "no addresses", field: /spec\.addresses/, create: pool(NS, "bad", { addresses: [] }) },
  { name: "a malformed address message rate", field: /spec\.addresses\[0\]\.limits\.messageRate/, create: pool(NS, "bad", { addresses: [{ address: "127.0.5.1", hostname: "p1.val.test", limits: { messageRate: "lots" } }] }) },
  { name: "an address connection limit of 0", field: /spec\.addresses\[0\]\.limits\.maxConnections/, create: pool(NS, "bad", { addresses: [{ address: "127.0.5.1", hostname: "p1.val.test", limits: { maxConnections: 0 } }] }) },
  { name: "negative replicas", field: /spec\.relay\.replicas/, create: P({ relay: { replicas: -1 } }) },
  { name: "replicas of the wrong type", field: /spec\.relay\.replicas/, create: P({ relay: { replicas: "two" } }) },
  { name: "an unknown egress mode", field: /spec\.egress\.mode/, create: P({ egress: { mode: "Tunnel" } }) },
  { name: "autoscaling min above max", field: /spec\.relay\.autoscaling\.minReplicas/, create: P({ relay: { autoscaling: { minReplicas: 5, maxReplicas: 2 } } }) },
  { name: "egress.mode changed (immutable)", field: /spec\.egress/, update: { before: P({ egress: { mode: "HostNetwork" } }, "imm1"), after: P({ egress: { mode: "PerAddress" } }, "imm1") } },
  { name: "relay.workload changed (immutable)", field: /spec\.relay\.workload/, update: { before: P({ relay: { workload: "Deployment" } }, "imm2"), after: P({ relay: { workload: "StatefulSet" } }, "imm2") } },
  { name: "a malformed CIDR", field: /spec\.senders\.trustedNetworks\[0\]/, create: D({ senders: { trustedNetworks: ["10.0.0.0/33"] } }) },
  { name: "a CIDR that is no network", field: /spec\.senders\.trustedNetworks\[0\]/, create: D({ senders: { trustedNetworks: ["example.com/8"] } }) },
  { name: "an unknown DKIM key type", field: /spec\.dkim\.keyTypes\[0\]/, create: D({ dkim: { keyTypes: ["DSA"] } }) },
  { name: "a malformed rotation period", field: /spec\.dkim\.rotationPeriod/, create: D({ dkim: { rotationPeriod: "90 days" } }) },
  { name: "OneClick unsubscribe without a URL", field: /spec\.listUnsubscribe\.url/, create: D({ listUnsubscribe: { mode: "OneClick" } }) },
  { name: "a malformed submission rate", field: /spec\.senders\.rateLimit/, create: D({ senders: { rateLimit: "fast" } }) },
  { name: "no poolRef", field: /spec\.poolRef/, create: domain(NS, "bad", { domain: "bad.val.test" }) },
  { name: "the domain changed (immutable)", field: /spec\.domain/, update: { before: D({}, "imm3"), after: D({ domain: "other.val.test" }, "imm3") } },
  { name: "a schedule whose stages shrink", field: /spec\.stages/, create: S([{ day: 1, daily: 500 }, { day: 5, daily: 100 }]) },
  { name: "stages out of order", field: /spec\.stages/, create: S([{ day: 5, daily: 100 }, { day: 1, daily: 500 }]) },
  { name: "a negative daily volume", field: /spec\.stages\[0\]\.daily/, create: S([{ day: 1, daily: -5 }]) },
  { name: "a malformed message rate", field: /spec\.shaping\.messageRate/, create: M({ shaping: { messageRate: "lots" } }) },
  { name: "SlowDown without a factor", field: /spec\.responseRules\[0\]\.factor/, create: M({ responseRules: [{ name: "r", match: { code: "421" }, action: "SlowDown", duration: "1h" }] }) },
  { name: "a reply code that is none", field: /spec\.responseRules\[0\]\.match\.code/, create: M({ responseRules: [{ name: "r", match: { code: "999" }, action: "Bounce" }] }) },
  { name: "a provider that matches nothing", field: /spec\.match/, create: provider("nothing", { match: { domains: [], mxSuffixes: [] } }) },
  { name: "a TLS mode that does not exist", field: /spec\.shaping\.tls/, create: M({ shaping: { tls: "Sometimes" } }) },
];

function pathOf(o: any): string {
  if (o.kind === "IPPool") return path.pool(NS);
  if (o.kind === "SendingDomain") return path.domain(NS);
  if (o.kind === "WarmupSchedule") return path.schedule(NS);
  return path.provider();
}

test("bad input", { timeout: 1_800_000 }, async (t) => {
  const env: Env = await startEnv({ name: "op-validation", dnsAddress: "127.0.53.23" });
  t.after(() => env.stop());
  await env.apply(ns(NS));

  await t.test(`${CASES.length} invalid manifests are refused by the API server, naming the field`, async () => {
    assert.ok(CASES.length >= 15);
    for (const c of CASES) {
      let res;
      if (c.create) {
        res = await env.req("POST", pathOf(c.create), c.create);
      } else {
        const created = await env.req("POST", pathOf(c.update!.before), c.update!.before);
        assert.equal(created.status, 201, `${c.name}: setup: ${created.body}`);
        const cur = created.json();
        res = await env.req("PUT", `${pathOf(cur)}/${cur.metadata.name}`, { ...c.update!.after, metadata: { ...c.update!.after.metadata, resourceVersion: cur.metadata.resourceVersion } });
      }
      assert.equal(res.status, 422, `${c.name}: expected 422, got ${res.status} ${res.body}`);
      const msg = res.json().message as string;
      assert.match(msg, c.field, `${c.name}: the error names the field: ${msg}`);
      t.diagnostic(`${c.name}: ${msg.slice(0, 200)}`);
    }
    for (const p of [path.pool(NS, "imm1"), path.pool(NS, "imm2"), path.domain(NS, "imm3")]) await env.req("DELETE", p);
  });

  const op = await env.startOperator();
  await eventually("webhook registered with its CA", async () => {
    const w = await env.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/mailfleet-operator");
    return w?.webhooks?.[0]?.clientConfig?.caBundle && w;
  });
  await env.apply(schedule(NS, "std", { stages: [{ day: 1, daily: 10 }] }));
  await env.apply(pool(NS, "a", { addresses: [{ address: "127.0.5.1", hostname: "a1.val.test" }], warmupScheduleRef: { name: "std" } }));
  await env.apply(pool(NS, "a2", { addresses: [{ address: "127.0.5.2", hostname: "a2.val.test" }], overflowPoolRef: { name: "a" } }));
  await env.apply(domain(NS, "d1", { domain: "d1.val.test", poolRef: { name: "a" } }));

  const refused = async (what: string, method: string, p: string, body: unknown, field: RegExp, contentType?: string) => {
    // The webhook sees objects once the operator's caches have them.
    const res = await eventually(`${what} refused`, async () => {
      const r = await env.req(method, p, body, contentType);
      return r.status >= 400 ? r : (await env.req("DELETE", typeof (body as any)?.metadata?.name === "string" ? `${p}/${(body as any).metadata.name}` : p), false);
    }, 60_000);
    const msg = res.json().message as string;
    assert.match(msg, /admission webhook "validate\.mailfleet\.io" denied the request/, `${what}: ${msg}`);
    assert.match(msg, field, `${what}: names the field: ${msg}`);
    t.diagnostic(`${what}: ${msg}`);
  };

  await t.test("the webhook refuses what only other objects reveal, naming the field", async () => {
    await refused("an address in two pools", "POST", path.pool(NS), pool(NS, "b", { addresses: [{ address: "127.0.5.9", hostname: "b9.val.test" }, { address: "127.0.5.1", hostname: "b1.val.test" }] }),
      /spec\.addresses\[1\]\.address: address 127\.0\.5\.1 already belongs to IPPool val\/a/);
    await refused("a domain declared twice", "POST", path.domain(NS), domain(NS, "d2", { domain: "d1.val.test", poolRef: { name: "a" } }),
      /spec\.domain: domain d1\.val\.test is already declared by SendingDomain val\/d1/);
    await refused("a missing pool", "POST", path.domain(NS), domain(NS, "d3", { domain: "d3.val.test", poolRef: { name: "nope" } }), /spec\.poolRef\.name: IPPool val\/nope does not exist/);
    await refused("a missing schedule", "POST", path.pool(NS), pool(NS, "c", { addresses: [{ address: "127.0.5.3", hostname: "c.val.test" }], warmupScheduleRef: { name: "nope" } }),
      /spec\.warmupScheduleRef\.name: WarmupSchedule val\/nope does not exist/);
    await refused("a missing overflow pool", "POST", path.pool(NS), pool(NS, "c", { addresses: [{ address: "127.0.5.3", hostname: "c.val.test" }], overflowPoolRef: { name: "nope" } }),
      /spec\.overflowPoolRef\.name: overflow IPPool val\/nope does not exist/);
    await refused("an overflow cycle", "PATCH", path.pool(NS, "a"), { spec: { overflowPoolRef: { name: "a2" } } }, /spec\.overflowPoolRef\.name: overflow pools form a cycle/, "application/merge-patch+json");
    await refused("deleting a pool still in use", "DELETE", path.pool(NS, "a"), undefined, /IPPool val\/a is still used by SendingDomain val\/d1 \(spec\.poolRef\.name\)/);
    await refused("deleting a schedule still in use", "DELETE", path.schedule(NS, "std"), undefined, /WarmupSchedule val\/std is still used by IPPool val\/a \(spec\.warmupScheduleRef\.name\)/);
    // A valid change still goes through.
    const ok = await env.req("PATCH", path.pool(NS, "a2"), { spec: { relay: { replicas: 1 } } }, "application/merge-patch+json");
    assert.equal(ok.status, 200, ok.body);
    // So does an address limit, which the API server keeps (not pruned) and the plan carries, converted.
    const limited = await env.req("PATCH", path.pool(NS, "a2"), { spec: { addresses: [{ address: "127.0.5.2", hostname: "a2.val.test", limits: { messageRate: "600/h", maxConnections: 4 } }] } }, "application/merge-patch+json");
    assert.equal(limited.status, 200, limited.body);
    assert.deepEqual(limited.json().spec.addresses[0].limits, { messageRate: "600/h", maxConnections: 4 });
    await eventually("a2's address limits in the plan", async () => {
      const limits = (await env.plan())?.pools.find((p) => p.name === "a2")?.addresses[0]?.limits;
      return isDeepStrictEqual(limits, { messageRate: { count: 600, periodMs: 3_600_000 }, maxConnections: 4 });
    });
  });

  await t.test("with the webhook off, the same problems become a condition and an Event; the newer object does not take effect; nothing running is disturbed", async () => {
    await op.stop();
    const op2 = await env.startOperator({ identity: "no-webhook", webhook: false });
    t.after(() => op2.stop());
    await eventually("webhook configuration removed", async () => !(await env.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/mailfleet-operator")));
    // What runs now.
    await eventually("pools and domain current", async () => (await Promise.all([path.pool(NS, "a"), path.pool(NS, "a2"), path.domain(NS, "d1")].map((p) => env.get(p)))).every(current));
    // Every key of d1 made and in the plan first: an RSA key still generating (slow on a busy
    // machine) would otherwise change the plan during the test and look like a disturbance.
    const d1 = await eventually("d1's keys active", async () => {
      const o = await env.get(path.domain(NS, "d1"));
      return condition(o, "DKIMReady")?.status === "True" && o;
    }, 180_000);
    const active = (d1.status.dkim as { state: string }[]).filter((k) => k.state === "Active").length;
    // And the warm-up engine's day for pool a (its schedule's quotas, until the day ends) in the
    // plan: the engine's first decision after the operator restart would otherwise change a's entry.
    const planBefore = await eventually("plan with d1's active keys and a's warm-up day", async () => {
      const p = await env.plan();
      return p?.domains.find((d) => d.domain === "d1.val.test")?.dkim.length === active && p.pools.find((x) => x.name === "a")?.warmup?.quotaUntil !== undefined && p;
    }, 180_000);
    const depA = await env.get(path.deployment(NS, "a"));
    const depA2 = await env.get(path.deployment(NS, "a2"));
    const entryA = planBefore.pools.find((p) => p.name === "a");
    const entryA2 = planBefore.pools.find((p) => p.name === "a2");
    const entryD1 = planBefore.domains.find((d) => d.domain === "d1.val.test");
    assert.ok(entryA && entryA2 && entryD1);

    // 1. A new pool claiming a running pool's address.
    const created = await env.req("POST", path.pool(NS), pool(NS, "thief", { addresses: [{ address: "127.0.5.1", hostname: "t.val.test" }] }));
    assert.equal(created.status, 201, created.body);
    // 2. A running pool updated to claim another's address.
    await env.req("PATCH", path.pool(NS, "a2"), { spec: { addresses: [{ address: "127.0.5.2", hostname: "a2.val.test" }, { address: "127.0.5.1", hostname: "x.val.test" }], relay: { replicas: 4 } } }, "application/merge-patch+json");
    // 3. A second declaration of a domain.
    assert.equal((await env.req("POST", path.domain(NS), domain(NS, "d1-again", { domain: "d1.val.test", poolRef: { name: "a" } }))).status, 201);
    // 4. A domain on a pool that does not exist.
    assert.equal((await env.req("POST", path.domain(NS), domain(NS, "orphan", { domain: "orphan.val.test", poolRef: { name: "nope" } }))).status, 201);

    const thief = await eventually("thief not accepted", async () => {
      const o = await env.get(path.pool(NS, "thief"));
      return condition(o, "Accepted")?.status === "False" && current(o) && o;
    });
    assert.equal(condition(thief, "Accepted")!.reason, "AddressConflict");
    assert.match(condition(thief, "Accepted")!.message, /spec\.addresses\[0\]\.address: address 127\.0\.5\.1 already belongs to IPPool val\/a/);
    const a2 = await eventually("a2 update not accepted", async () => {
      const o = await env.get(path.pool(NS, "a2"));
      return condition(o, "Accepted")?.status === "False" && o.status.observedGeneration === o.metadata.generation && o;
    });
    assert.match(condition(a2, "Accepted")!.message, /spec\.addresses\[1\]\.address/);
    const dup = await eventually("duplicate domain not accepted", async () => {
      const o = await env.get(path.domain(NS, "d1-again"));
      return condition(o, "Accepted")?.status === "False" && o;
    });
    assert.equal(condition(dup, "Accepted")!.reason, "DomainConflict");
    assert.equal(dup.status.dkim, undefined, "no keys made for an object that does not take effect");
    const orphan = await eventually("orphan domain not accepted", async () => {
      const o = await env.get(path.domain(NS, "orphan"));
      return condition(o, "Accepted")?.reason === "MissingReference" && o;
    });
    assert.match(condition(orphan, "Accepted")!.message, /spec\.poolRef\.name: IPPool val\/nope does not exist/);

    for (const [name, reason] of [["thief", "AddressConflict"], ["a2", "AddressConflict"]] as const) {
      const evs = await eventually(`Warning Event on ${name}`, async () => {
        const e = await eventsFor(env, NS, name);
        return e.some((x) => x.type === "Warning" && x.reason === reason) && e;
      });
      assert.ok(evs.some((e) => /spec\.addresses\[\d\]\.address/.test(e.note)));
    }
    assert.ok((await eventsFor(env, NS, "d1-again")).some((e) => e.type === "Warning" && e.reason === "DomainConflict"));

    // Nothing disturbed: no workload for the thief, the running ones untouched, the plan's entries kept.
    await sleep(5000);
    assert.equal(await env.get(path.deployment(NS, "thief")), undefined);
    assert.equal((await env.get(path.deployment(NS, "a"))).metadata.resourceVersion, depA.metadata.resourceVersion);
    assert.equal((await env.get(path.deployment(NS, "a2"))).metadata.resourceVersion, depA2.metadata.resourceVersion, "a2's bad update (replicas 4) not applied");
    const planAfter = (await env.plan())!;
    assert.deepEqual(planAfter.pools.find((p) => p.name === "a"), entryA);
    assert.deepEqual(planAfter.pools.find((p) => p.name === "a2"), entryA2, "a2 keeps its last good entry");
    assert.equal(planAfter.pools.some((p) => p.name === "thief"), false);
    assert.deepEqual(planAfter.domains.filter((d) => d.domain === "d1.val.test"), [entryD1]);
    assert.equal(planAfter.domains.some((d) => d.domain === "orphan.val.test"), false);

    // Fixing the clash lets the newer object take effect.
    await env.req("DELETE", path.pool(NS, "thief"));
    await env.req("PATCH", path.pool(NS, "a2"), { spec: { addresses: [{ address: "127.0.5.2", hostname: "a2.val.test" }, { address: "127.0.5.4", hostname: "x.val.test" }] } }, "application/merge-patch+json");
    await eventually("a2 accepted again, its update applied", async () => {
      const o = await env.get(path.pool(NS, "a2"));
      const d = await env.get(path.deployment(NS, "a2"));
      return condition(o, "Accepted")?.status === "True" && d.spec.replicas === 4;
    });
  });
});
