// Availability: two replicas (only the leader writes, as the audit log shows), failover when the
// leader dies, graceful shutdown releasing the Lease, a restart in the middle of reconciling a
// burst, and a conflicting writer (409s are retried, never fatal).
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { DnsRecord } from "../env/peers/dns.ts";
import {
  OPERATOR_NS, OPERATOR_USER, type Env, type OperatorProcess, condition, current, domain, eventually, ns, path, pool, provider, startEnv,
} from "./operator-env.ts";

const NS = "ha";
const LEASE = `/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NS}/leases/mailfleet-operator`;

const writesBy = (env: Env, since: string, identity: string) =>
  env.audit({ since, user: OPERATOR_USER }).filter((e) => e.userAgent?.includes(`(${identity})`));

async function allCurrent(env: Env, n: number): Promise<boolean> {
  const ds = (await env.get(path.domain(NS))).items;
  return ds.length === n && ds.every((d: any) => current(d) && d.status.dkim?.length === 2);
}

test("two replicas, failover, restart mid-reconcile, a conflicting writer", { timeout: 2_400_000 }, async (t) => {
  const env: Env = await startEnv({ name: "op-ha", dnsAddress: "127.0.53.24" });
  t.after(() => env.stop());
  await env.apply(ns(NS));
  await env.apply(provider("default", {}));
  await env.apply(pool(NS, "p", { addresses: [{ address: "127.0.6.1", hostname: "p1.ha.test" }, { address: "127.0.6.2", hostname: "p2.ha.test" }] }));
  for (let i = 0; i < 5; i++) await env.apply(domain(NS, `d${i}`, { domain: `d${i}.ha.test`, poolRef: { name: "p" } }));

  const t0 = new Date().toISOString();
  const a = await env.startOperator({ identity: "op-a" });
  const b = await env.startOperator({ identity: "op-b" });
  let leader: OperatorProcess = a;
  let standby: OperatorProcess = b;

  await t.test("only the leader writes", async () => {
    await eventually("converged", () => allCurrent(env, 5));
    const lease = await env.get(LEASE);
    if (lease.spec.holderIdentity === "op-b") [leader, standby] = [b, a];
    assert.equal(lease.spec.holderIdentity, leader.identity);
    await env.apply(domain(NS, "d5", { domain: "d5.ha.test", poolRef: { name: "p" } }));
    await eventually("converged with d5", () => allCurrent(env, 6));
    await sleep(3000);
    const lw = writesBy(env, t0, leader.identity);
    const sw = writesBy(env, t0, standby.identity);
    t.diagnostic(`writes since start: leader ${lw.length}, standby ${sw.length}`);
    assert.ok(lw.length > 20, "the leader wrote keys, status, children, Events and the Lease");
    assert.deepEqual(sw.map((e) => `${e.verb} ${e.objectRef?.resource}/${e.objectRef?.name}`), [], "the standby wrote nothing (not even the Lease)");
    assert.match(await standby.metrics(), /mailfleet_operator_leader 0/);
    assert.match(await leader.metrics(), /mailfleet_operator_leader 1/);
  });

  await t.test("the standby takes over when the leader dies, and converges", async () => {
    const killedAt = new Date().toISOString();
    await leader.kill();
    await eventually("standby leads", async () => (await env.get(LEASE)).spec.holderIdentity === standby.identity, 60_000);
    await env.apply(domain(NS, "d6", { domain: "d6.ha.test", poolRef: { name: "p" } }));
    await eventually("converged with d6", () => allCurrent(env, 7));
    assert.ok(writesBy(env, killedAt, standby.identity).some((e) => e.objectRef?.resource === "sendingdomains"), "the new leader writes");
    [leader, standby] = [standby, leader];
  });

  await t.test("graceful shutdown releases the Lease; the next replica leads at once", async () => {
    await leader.stop();
    assert.equal(leader.proc.exitCode(), 0, "exit 0 after SIGTERM");
    const lease = await env.get(LEASE);
    assert.ok(!lease.spec.holderIdentity, `released: ${JSON.stringify(lease.spec)}`);
    assert.match(leader.log(), /released the leader Lease/);
    const c = await env.startOperator({ identity: "op-c" });
    await eventually("op-c leads", async () => (await env.get(LEASE)).spec.holderIdentity === "op-c", 30_000);
    leader = c;
  });

  await t.test("killed in the middle of a burst, a new operator converges without duplicate or orphaned keys", async () => {
    const burst = Array.from({ length: 30 }, (_, i) => domain(NS, `b${i}`, { domain: `b${i}.ha.test`, poolRef: { name: "p" } }));
    await Promise.all(burst.map((d) => env.apply(d)));
    // Wait until it is visibly working (some keys made, not all), then SIGKILL it.
    await eventually("operator mid-burst", async () => {
      const s = await env.get(`${path.secret(NS)}?labelSelector=mailfleet.io/sendingdomain`);
      return s.items.length > 14 && s.items.length < 74;
    }, 120_000, 100);
    await leader.kill();
    const d = await env.startOperator({ identity: "op-d" });
    leader = d;
    await eventually("converged after the restart", () => allCurrent(env, 37), 300_000);
    const domains = (await env.get(path.domain(NS))).items;
    const secrets = (await env.get(`${path.secret(NS)}?labelSelector=mailfleet.io/sendingdomain`)).items;
    const referenced = new Set(domains.flatMap((x: any) => x.status.dkim.map((k: any) => k.secretName)));
    assert.equal(secrets.length, referenced.size, "one Secret per listed key: none duplicated, none orphaned");
    for (const s of secrets) assert.ok(referenced.has(s.metadata.name), `${s.metadata.name} is listed in its domain's status`);
    const plan = await eventually("plan has every domain with two keys", async () => {
      const p = await env.plan();
      return p?.domains.length === 37 && p.domains.every((x) => x.dkim.length === 2) && p;
    });
    assert.equal(plan.domains.length, 37);
  });

  await t.test("a conflicting writer: 409s are retried, the operator keeps running and converges", async () => {
    const since = new Date().toISOString();
    let stop = false;
    let writes = 0;
    // Another client keeps updating the same objects (labels, so every update bumps resourceVersion)
    // and fights over the relay Deployment's replicas.
    const writer = (async () => {
      while (!stop) {
        await Promise.all((await env.get(path.domain(NS))).items.map((x: any) =>
          env.req("PATCH", path.domain(NS, x.metadata.name), { metadata: { labels: { poke: String(writes) } } }, "application/merge-patch+json")));
        await env.req("PATCH", `${path.deployment(NS, "p")}?fieldManager=fighter&force=true`, { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "p", namespace: NS }, spec: { replicas: 9 } }, "application/apply-patch+yaml");
        writes++;
      }
    })();
    // Meanwhile the operator has status to write: records get published, one domain at a time.
    const recs: DnsRecord[] = [];
    for (const x of (await env.get(path.domain(NS))).items.slice(0, 12)) {
      for (const r of x.status.dnsRecords) recs.push(r.type === "MX" ? { type: "MX", name: r.name, value: r.value, priority: r.priority } : { type: "TXT", name: r.name, value: r.value });
      await env.dns.setRecords(recs);
      await sleep(1500);
    }
    await sleep(10_000);
    stop = true;
    await writer;
    assert.equal(leader.proc.exitCode(), undefined, "the operator is still running");
    const conflicts = env.audit({ since, user: OPERATOR_USER }).filter((e) => e.responseStatus?.code === 409);
    t.diagnostic(`the writer made ${writes} rounds; the operator met ${conflicts.length} conflicts (409)`);
    await eventually("converged: replicas restored, published domains verified", async () => {
      const dep = await env.get(path.deployment(NS, "p"));
      const ds = (await env.get(path.domain(NS))).items;
      const verified = ds.filter((x: any) => condition(x, "DNSVerified")?.status === "True").length;
      return dep.spec.replicas === 2 && ds.every(current) && verified >= 12;
    }, 120_000);
    const m = await leader.metrics();
    const errs = /mailfleet_operator_reconcile_total\{controller="domain",result="error"\} (\d+)/.exec(m)?.[1];
    t.diagnostic(`domain reconciles: ${(/mailfleet_operator_reconcile_total\{controller="domain",result="conflict"\} (\d+)/.exec(m)?.[1]) ?? 0} ended in a conflict, ${errs ?? 0} in another error`);
    assert.equal(errs ?? "0", "0", "no reconcile failed for another reason");
  });
});
