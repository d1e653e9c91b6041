// e2e: the operator with kube-controller-manager, kube-scheduler and kwok nodes. The relay
// Deployments of both egress modes get ReplicaSets and Pods that run on (fake) nodes, reach
// Available, and the pool's WorkloadAvailable condition and replica counts say so; deleting the
// pool garbage-collects its children.
import assert from "node:assert/strict";
import { test } from "node:test";
import { type Env, condition, eventually, ns, path, pool, provider, startEnv } from "../integration/operator-env.ts";

const NS = "e2e";

test("relay workloads reach Available on kwok nodes", { timeout: 2_400_000 }, async (t) => {
  const env: Env = await startEnv({ name: "op-e2e", dnsAddress: "127.0.53.25", withControllers: true, nodes: 2 });
  t.after(() => env.stop());
  await env.apply(ns(NS));
  await env.startOperator();
  await env.apply(provider("default", {}));

  await t.test("HostNetwork: one relay per node, Available", async () => {
    await env.apply(pool(NS, "host", { addresses: [{ address: "127.0.7.1", hostname: "h1.e2e.test" }, { address: "127.0.7.2", hostname: "h2.e2e.test" }], relay: { replicas: 2 } }));
    const p = await eventually("pool host WorkloadAvailable", async () => {
      const o = await env.get(path.pool(NS, "host"));
      return condition(o, "WorkloadAvailable")?.status === "True" && o;
    }, 300_000);
    assert.equal(p.status.replicas, 2);
    assert.equal(p.status.readyReplicas, 2);
    assert.match(condition(p, "WorkloadAvailable")!.message, /2 relay\(s\) ready/);
    const pods = (await env.get(`/api/v1/namespaces/${NS}/pods?labelSelector=mailfleet.io/pool=host`)).items;
    assert.equal(pods.length, 2);
    assert.equal(new Set(pods.map((x: any) => x.spec.nodeName)).size, 2, "anti-affinity: one relay per node");
    for (const pod of pods) {
      assert.equal(pod.status.phase, "Running");
      assert.equal(pod.spec.hostNetwork, true);
      const env0 = Object.fromEntries(pod.spec.containers[0].env.map((e: any) => [e.name, e.value ?? e.valueFrom?.fieldRef?.fieldPath]));
      assert.equal(env0.MAILFLEET_POOL, `${NS}/host`);
      assert.equal(env0.MAILFLEET_RELAY_ID, "metadata.name");
    }
    assert.equal(condition(p, "Ready")!.status, "False", "Ready also needs the addresses' reverse DNS");
  });

  await t.test("PerAddress: a Deployment per address, each Available", async () => {
    await env.apply(pool(NS, "per", { addresses: [{ address: "127.0.7.11", hostname: "p11.e2e.test" }, { address: "127.0.7.12", hostname: "p12.e2e.test" }], egress: { mode: "PerAddress" }, relay: { replicas: 1 } }));
    const p = await eventually("pool per WorkloadAvailable", async () => {
      const o = await env.get(path.pool(NS, "per"));
      return condition(o, "WorkloadAvailable")?.status === "True" && o;
    }, 300_000);
    assert.equal(p.status.readyReplicas, 2);
    for (const name of ["per-127-0-7-11", "per-127-0-7-12"]) {
      const d = await env.get(path.deployment(NS, name));
      assert.equal(d.status.conditions.find((c: any) => c.type === "Available").status, "True");
    }
    const pods = (await env.get(`/api/v1/namespaces/${NS}/pods?labelSelector=mailfleet.io/pool=per`)).items;
    assert.deepEqual(pods.map((x: any) => x.metadata.annotations["mailfleet.io/egress-address"]).sort(), ["127.0.7.11", "127.0.7.12"]);
  });

  await t.test("scaling to zero and back is reported", async () => {
    await env.req("PATCH", path.pool(NS, "per"), { spec: { relay: { replicas: 0 } } }, "application/merge-patch+json");
    await eventually("0 relays", async () => (await env.get(path.pool(NS, "per"))).status.replicas === 0, 120_000);
    await env.req("PATCH", path.pool(NS, "per"), { spec: { relay: { replicas: 2 } } }, "application/merge-patch+json");
    await eventually("4 relays ready", async () => {
      const o = await env.get(path.pool(NS, "per"));
      return o.status.readyReplicas === 4 && condition(o, "WorkloadAvailable")?.status === "True";
    }, 300_000);
  });

  await t.test("deleting a pool garbage-collects its children", async () => {
    await env.req("DELETE", path.pool(NS, "per"));
    await eventually("Deployments, Pods and Secrets of the pool gone", async () => {
      const deps = (await env.get(`${path.deployment(NS)}?labelSelector=mailfleet.io/pool=per`)).items;
      const pods = (await env.get(`/api/v1/namespaces/${NS}/pods?labelSelector=mailfleet.io/pool=per`)).items;
      const secrets = (await env.get(`${path.secret(NS)}?labelSelector=mailfleet.io/pool=per`)).items;
      return deps.length === 0 && pods.length === 0 && secrets.length === 0;
    }, 300_000);
  });
});
