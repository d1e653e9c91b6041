// The quiet check: with nothing changing (no mail, no edits), a minute passes with no write from
// the operator but its Lease renewals, counted in the kube-apiserver's audit log. An apply that
// changes nothing would still be a write, so this also proves compare-before-apply works; and the
// DNS re-checks (every 5 s here while records are unverified) must not write unchanged status.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { OPERATOR_USER, type Env, current, domain, eventually, ns, path, pool, provider, schedule, startEnv } from "./operator-env.ts";

const NS = "quiet";

export function describeWrites(events: { verb: string; objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string } }[]): string[] {
  return events.map((e) => `${e.verb} ${e.objectRef?.resource}${e.objectRef?.subresource ? `/${e.objectRef.subresource}` : ""} ${e.objectRef?.namespace ?? ""}/${e.objectRef?.name ?? ""}`);
}

test("quiet: no writes but Lease renewals in a minute of steady state", { timeout: 1_200_000 }, async (t) => {
  const env: Env = await startEnv({ name: "op-quiet", dnsAddress: "127.0.53.22" });
  t.after(() => env.stop());
  await env.apply(ns(NS));
  await env.startOperator();
  await env.apply(provider("default", {}));
  await env.apply(provider("yahoo", { match: { domains: ["yahoo.com"] }, responseRules: [{ name: "ts04", match: { text: "TS04" }, action: "SuspendLane", duration: "1h" }] }));
  await env.apply(schedule(NS, "std", { stages: [{ day: 1, daily: 100 }, { day: 5, daily: 1000 }] }));
  await env.apply(pool(NS, "a", { addresses: [{ address: "127.0.3.1", hostname: "a1.quiet.test" }], warmupScheduleRef: { name: "std" } }));
  await env.apply(pool(NS, "b", { addresses: [{ address: "127.0.3.2", hostname: "b1.quiet.test" }, { address: "127.0.3.3", hostname: "b2.quiet.test" }], egress: { mode: "PerAddress" }, overflowPoolRef: { name: "a" }, relay: { autoscaling: { minReplicas: 1, maxReplicas: 2 } } }));
  await env.apply({ apiVersion: "v1", kind: "Secret", metadata: { name: "creds", namespace: NS }, type: "kubernetes.io/basic-auth", stringData: { username: "u", password: "p-123456789" } });
  await env.apply({ apiVersion: "v1", kind: "Secret", metadata: { name: "hook", namespace: NS }, stringData: { key: "s3cret" } });
  for (const [name, p] of [["one", "a"], ["two", "b"], ["three", "b"]]) {
    await env.apply(domain(NS, name, {
      domain: `${name}.quiet.test`, poolRef: { name: p },
      senders: { credentials: [{ secretRef: { name: "creds" } }] },
      webhooks: [{ name: "events", url: "https://hooks.quiet.test/x", secretRef: { name: "hook", key: "key" } }],
    }));
  }
  // Converged: every object current, keys made, plan published.
  await eventually("everything current", async () => {
    const objs = [
      ...(await env.get(path.domain(NS))).items, ...(await env.get(path.pool(NS))).items,
      ...(await env.get(path.schedule(NS))).items, ...(await env.get(path.provider())).items,
    ];
    return objs.length === 8 && objs.every(current) && objs.filter((o: any) => o.kind === "SendingDomain").every((o: any) => o.status.dkim?.length === 2);
  });
  await eventually("plan has the three domains", async () => (await env.plan())?.domains.length === 3);
  // Let the last Events and status writes land and any requeues run once more.
  await sleep(15_000);

  const start = new Date().toISOString();
  await sleep(60_000);
  const writes = env.audit({ since: start, user: OPERATOR_USER });
  const leases = writes.filter((e) => e.objectRef?.resource === "leases");
  const others = writes.filter((e) => e.objectRef?.resource !== "leases");
  t.diagnostic(`operator writes in the quiet minute: ${leases.length} Lease renewals, ${others.length} others`);
  assert.deepEqual(describeWrites(others), [], "no writes but Lease renewals");
  assert.ok(leases.length >= 20, `the Lease is renewed (${leases.length} renewals)`);
  assert.ok(leases.every((e) => e.verb === "update"), "renewals are updates");
});
