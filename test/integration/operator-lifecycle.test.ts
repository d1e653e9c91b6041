// The operator against a real kube-apiserver, NATS and dnsmasq: create, update and delete of each
// kind, with the expected children, status, Events and plan in KV; DNS verification through the
// configured resolver; DKIM rotation; pause; RBAC limited to operator/rbac.ts.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import type { DnsRecord } from "../env/peers/dns.ts";
import {
  type Env, condition, current, domain, eventsFor, eventually, ns, path, pool, provider, schedule, startEnv,
} from "./operator-env.ts";

const NS = "mail";
const DNS = "127.0.53.21";

test("operator lifecycle: providers, schedules, pools, domains", { timeout: 1_800_000 }, async (t) => {
  const env: Env = await startEnv({ name: "op-lifecycle", dnsAddress: DNS });
  t.after(() => env.stop());
  await env.apply(ns(NS));
  // KEDA's ScaledObject CRD (its schema reduced to what this test needs): the operator looks for it
  // at start and then autoscales on queue lag with ScaledObjects instead of HPAs.
  await env.apply({
    apiVersion: "apiextensions.k8s.io/v1", kind: "CustomResourceDefinition", metadata: { name: "scaledobjects.keda.sh" },
    spec: {
      group: "keda.sh", scope: "Namespaced", names: { plural: "scaledobjects", singular: "scaledobject", kind: "ScaledObject", listKind: "ScaledObjectList" },
      versions: [{ name: "v1alpha1", served: true, storage: true, schema: { openAPIV3Schema: { type: "object", "x-kubernetes-preserve-unknown-fields": true } } }],
    },
  });
  await eventually("KEDA CRD served", async () => (await env.get("/apis/keda.sh/v1alpha1"))?.resources?.length > 0);
  const op = await env.startOperator({ args: ["--resync", "1m", "--nats-monitoring-endpoint", "127.0.0.1:8222"] });

  await t.test("MailboxProvider and WarmupSchedule get status and conditions", async () => {
    await env.apply(provider("gmail", { match: { domains: ["gmail.com"], mxSuffixes: ["google.com"] }, shaping: { maxConnections: 3, messageRate: "600/min" } }));
    await env.apply(provider("default", {}));
    await env.apply(schedule(NS, "std", { period: "24h", stages: [{ day: 1, daily: 50 }, { day: 3, daily: 200 }, { day: 10, daily: 5000 }], providers: [{ provider: "gmail", stages: [{ day: 1, daily: 20 }, { day: 14, daily: 4000 }] }] }));
    const p = await eventually("provider gmail current", async () => {
      const o = await env.get(path.provider("gmail"));
      return current(o) && o;
    });
    assert.equal(condition(p, "Ready")!.status, "True");
    assert.equal(condition(p, "Accepted")!.status, "True");
    const s = await eventually("schedule std current", async () => {
      const o = await env.get(path.schedule(NS, "std"));
      return current(o) && o;
    });
    assert.equal(s.status.stages, 3);
    assert.equal(s.status.fullVolumeDay, 14, "the slowest curve (gmail's) sets the day");
    assert.equal(s.status.pools, 0);
  });

  await t.test("IPPool: relay workload, keyring, self-signed TLS, status", async () => {
    await env.apply(pool(NS, "transactional", {
      addresses: [{ address: "127.0.1.1", hostname: "mta1.example.test" }, { address: "127.0.1.2", hostname: "mta2.example.test" }],
      warmupScheduleRef: { name: "std" },
      relay: { replicas: 2 },
    }));
    const p = await eventually("pool transactional current", async () => {
      const o = await env.get(path.pool(NS, "transactional"));
      return current(o) && o;
    });
    assert.equal(condition(p, "Accepted")!.status, "True");
    // No controllers in this control plane: the Deployment never becomes available, and says so.
    assert.equal(condition(p, "WorkloadAvailable")!.status, "False");
    assert.equal(condition(p, "AddressesVerified")!.status, "False");
    assert.match(condition(p, "AddressesVerified")!.message, /127\.0\.1\.1 has no PTR record/);
    assert.equal(p.status.selector, "mailfleet.io/pool=transactional,app.kubernetes.io/component=relay");
    assert.deepEqual(p.metadata.finalizers, ["mailfleet.io/nats-cleanup"]);
    const d = await env.get(path.deployment(NS, "transactional"));
    assert.equal(d.spec.template.spec.hostNetwork, true);
    assert.equal(d.metadata.ownerReferences[0].uid, p.metadata.uid);
    for (const name of ["transactional-relay", "transactional-submission-tls"]) assert.ok(await env.get(path.secret(NS, name)), `Secret ${name}`);
    assert.ok(await env.get(`/api/v1/namespaces/${NS}/services/transactional`));
    assert.ok(await env.get(`/apis/policy/v1/namespaces/${NS}/poddisruptionbudgets/transactional`));
    assert.ok(await env.get(`/apis/networking.k8s.io/v1/namespaces/${NS}/networkpolicies/transactional`));
    const sa = await env.get(`/api/v1/namespaces/${NS}/serviceaccounts/transactional-relay`);
    assert.equal(sa.automountServiceAccountToken, false);
    const evs = await eventsFor(env, NS, "transactional");
    assert.ok(evs.some((e) => e.reason === "SelfSignedCertificate" && e.type === "Warning"), JSON.stringify(evs));
    // Schedule counts its pool.
    await eventually("schedule counts the pool", async () => (await env.get(path.schedule(NS, "std"))).status.pools === 1);
  });

  let domainUid = "";
  await t.test("SendingDomain: DKIM keys, DNS records to publish, plan in KV", async () => {
    await env.apply({ apiVersion: "v1", kind: "Secret", metadata: { name: "app-smtp", namespace: NS }, type: "kubernetes.io/basic-auth", stringData: { username: "app", password: "a-long-password" } });
    await env.apply(domain(NS, "example", {
      domain: "example.test", poolRef: { name: "transactional" },
      dmarc: { policy: "quarantine", rua: ["mailto:dmarc@example.test"] },
      senders: { credentials: [{ secretRef: { name: "app-smtp" } }], trustedNetworks: ["127.0.0.0/8"] },
    }));
    const d = await eventually("domain example current with two active keys", async () => {
      const o = await env.get(path.domain(NS, "example"));
      return current(o) && condition(o, "DKIMReady")?.status === "True" && o;
    });
    domainUid = d.metadata.uid;
    assert.deepEqual(d.status.dkim.map((k: any) => [k.keyType, k.state]).sort(), [["Ed25519", "Active"], ["RSA2048", "Active"]]);
    assert.equal(condition(d, "DNSVerified")!.status, "False");
    assert.equal(condition(d, "Ready")!.status, "False");
    assert.equal(condition(d, "Ready")!.reason, "RecordsNotPublished");
    assert.equal(d.status.recordsVerified, "0/7");
    await eventually("the unverified records on /metrics", async () => /^mailfleet_operator_domain_records_unverified\{sendingdomain="mail\/example",domain="example\.test"\} 7$/m.test(await op.metrics()));
    const names = d.status.dnsRecords.map((r: any) => `${r.purpose} ${r.type} ${r.name}`);
    assert.ok(names.includes("spf TXT example.test"));
    assert.ok(names.includes("dmarc TXT _dmarc.example.test"));
    assert.ok(names.includes("return-path-mx MX bounces.example.test"));
    assert.ok(names.includes("return-path-spf TXT bounces.example.test"));
    assert.equal(d.status.dnsRecords.find((r: any) => r.purpose === "spf").value, "v=spf1 ip4:127.0.1.1 ip4:127.0.1.2 ~all");
    // One Secret per key, owned by the domain; the private key only there.
    for (const k of d.status.dkim) {
      const s = await env.get(path.secret(NS, k.secretName));
      assert.equal(s.metadata.ownerReferences[0].uid, d.metadata.uid);
      const pemKey = k.keyType === "RSA2048" ? "rsa.pem" : "ed25519.pem";
      const pem = Buffer.from(s.data[pemKey], "base64").toString();
      const rec = d.status.dnsRecords.find((r: any) => r.selector === k.selector);
      const der = createPublicKey(pem).export({ type: "spki", format: "der" });
      const p = k.keyType === "RSA2048" ? der.toString("base64") : der.subarray(12).toString("base64");
      assert.ok(rec.value.endsWith(`p=${p}`), "the DNS record carries the key's public half");
      assert.ok(!JSON.stringify(d.status).includes("PRIVATE KEY"));
    }
    // The pool's keyring holds both keys under the names the plan uses.
    const plan = await eventually("plan with the domain", async () => {
      const p = await env.plan();
      return p?.domains.find((x) => x.domain === "example.test")?.dkim.length === 2 && p;
    });
    const pd = plan.domains.find((x) => x.domain === "example.test")!;
    const ring = await eventually("keyring has both keys", async () => {
      const s = await env.get(path.secret(NS, "transactional-relay"));
      return pd.dkim.every((k) => s?.data?.[k.keyName]) && s;
    });
    assert.equal(Object.keys(ring.data).length, 2);
    assert.equal(pd.pool, `${NS}/transactional`);
    assert.deepEqual(plan.submitters.credentials.map((c) => [c.username, c.domains]), [["app", ["example.test"]]]);
    assert.match(plan.submitters.credentials[0]!.hash, /^scrypt\$/);
    assert.ok(!JSON.stringify(plan).includes("a-long-password"));
    assert.ok(!op.log().includes("PRIVATE KEY"), "no key material in the operator's log");
    assert.ok(!op.log().includes("a-long-password"));
    const pool0 = plan.pools.find((p) => p.id === `${NS}/transactional`)!;
    assert.deepEqual(pool0.addresses.map((a) => a.address), ["127.0.1.1", "127.0.1.2"]);
    assert.ok(pool0.lanes.some((l) => l.provider === "gmail" && l.dailyQuota === 20), "the schedule's gmail curve");
  });

  await t.test("DNS published in dnsmasq: every record verifies, Ready becomes True", async () => {
    const d = await env.get(path.domain(NS, "example"));
    const records: DnsRecord[] = d.status.dnsRecords.map((r: any) =>
      r.type === "MX" ? { type: "MX", name: r.name, value: r.value, priority: r.priority } : { type: "TXT", name: r.name, value: r.value });
    records.push(
      { type: "A", name: "mta1.example.test", value: "127.0.1.1" }, { type: "PTR", name: "127.0.1.1", value: "mta1.example.test" },
      { type: "A", name: "mta2.example.test", value: "127.0.1.2" }, { type: "PTR", name: "127.0.1.2", value: "mta2.example.test" },
    );
    await env.dns.setRecords(records);
    const v = await eventually("domain Ready", async () => {
      const o = await env.get(path.domain(NS, "example"));
      return condition(o, "Ready")?.status === "True" && o;
    });
    assert.equal(v.status.recordsVerified, "7/7");
    assert.match(await op.metrics(), /^mailfleet_operator_domain_records_unverified\{sendingdomain="mail\/example",domain="example\.test"\} 0$/m);
    const p = await eventually("pool addresses verified", async () => {
      const o = await env.get(path.pool(NS, "transactional"));
      return condition(o, "AddressesVerified")?.status === "True" && o;
    });
    assert.deepEqual(p.status.addresses.map((a: any) => [a.address, a.forwardConfirmed, a.ptr]), [["127.0.1.1", true, ["mta1.example.test"]], ["127.0.1.2", true, ["mta2.example.test"]]]);
    const evs = await eventsFor(env, NS, "example");
    assert.ok(evs.some((e) => e.reason === "RecordsVerified" && e.type === "Normal"), JSON.stringify(evs));
    assert.ok(evs.some((e) => e.reason === "Ready"));
  });

  await t.test("update: a new address changes the Deployment, SPF and the plan within seconds", async () => {
    const before = (await env.plan())!.revision;
    await env.apply(pool(NS, "transactional", {
      addresses: [{ address: "127.0.1.1", hostname: "mta1.example.test" }, { address: "127.0.1.2", hostname: "mta2.example.test" }, { address: "127.0.1.3", hostname: "mta3.example.test" }],
      warmupScheduleRef: { name: "std" },
      relay: { replicas: 3 },
    }));
    await eventually("plan has the third address", async () => {
      const p = await env.plan();
      return p && p.revision !== before && p.pools.find((x) => x.name === "transactional")?.addresses.length === 3;
    }, 60_000);
    await eventually("deployment scaled to 3", async () => (await env.get(path.deployment(NS, "transactional"))).spec.replicas === 3);
    const d = await eventually("SPF lists the new address", async () => {
      const o = await env.get(path.domain(NS, "example"));
      // 127.0.1.2 and .3 make one /31 block.
      return o.status.dnsRecords.find((r: any) => r.purpose === "spf").value === "v=spf1 ip4:127.0.1.1 ip4:127.0.1.2/31 ~all" && o;
    });
    assert.equal(condition(d, "DNSVerified")!.status, "False", "the published SPF no longer covers every address");
    assert.match(condition(d, "DNSVerified")!.message, /does not authorise 127\.0\.1\.3/);
  });

  await t.test("drift: an edited Deployment and a deleted keyring are put back", async () => {
    await env.req("PATCH", `${path.deployment(NS, "transactional")}?fieldManager=someone&force=true`,
      { apiVersion: "apps/v1", kind: "Deployment", metadata: { name: "transactional", namespace: NS }, spec: { replicas: 7 } }, "application/apply-patch+yaml");
    await env.req("DELETE", path.secret(NS, "transactional-relay"));
    await eventually("replicas back to 3 and keyring back", async () => {
      const d = await env.get(path.deployment(NS, "transactional"));
      const s = await env.get(path.secret(NS, "transactional-relay"));
      return d.spec.replicas === 3 && s && Object.keys(s.data ?? {}).length === 2;
    }, 60_000);
  });

  await t.test("a user's own DKIM key replaces generated ones, which retire", async () => {
    const { privateKey } = generateKeyPairSync("ed25519");
    const pem = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
    await env.apply({ apiVersion: "v1", kind: "Secret", metadata: { name: "own-dkim", namespace: NS }, stringData: { "ed25519.pem": pem, "ed25519.selector": "brand1" } });
    await env.apply(domain(NS, "example", {
      domain: "example.test", poolRef: { name: "transactional" }, dkim: { secretRef: { name: "own-dkim" }, overlap: "10s" },
      dmarc: { policy: "quarantine", rua: ["mailto:dmarc@example.test"] },
      senders: { credentials: [{ secretRef: { name: "app-smtp" } }], trustedNetworks: ["127.0.0.0/8"] },
    }));
    const d = await eventually("own key active", async () => {
      const o = await env.get(path.domain(NS, "example"));
      return current(o) && o.status.dkim.some((k: any) => k.selector === "brand1" && k.state === "Active") && o;
    });
    assert.deepEqual(d.status.dkim.filter((k: any) => k.state !== "Active").map((k: any) => k.state), ["Retiring", "Retiring"]);
    const plan = await eventually("plan signs with brand1 only", async () => {
      const p = await env.plan();
      const pd = p?.domains.find((x) => x.domain === "example.test");
      return pd?.dkim.length === 1 && pd.dkim[0]!.selector === "brand1" && p;
    });
    void plan;
    // After the overlap the generated selectors leave status and their Secrets go.
    const after = await eventually("retired selectors removed", async () => {
      const o = await env.get(path.domain(NS, "example"));
      return o.status.dkim.length === 1 && o;
    }, 120_000);
    const secrets = await env.get(`${path.secret(NS)}?labelSelector=mailfleet.io/sendingdomain=example`);
    assert.equal(secrets.items.length, 0, "generated key Secrets deleted");
    assert.deepEqual(after.status.dnsRecords.filter((r: any) => r.purpose === "dkim").map((r: any) => r.selector), ["brand1"]);
  });

  await t.test("pause: changes are not applied while mailfleet.io/paused is true", async () => {
    await env.req("PATCH", `${path.pool(NS, "transactional")}`, { metadata: { annotations: { "mailfleet.io/paused": "true" } } }, "application/merge-patch+json");
    await eventually("ReconciliationPaused", async () => condition(await env.get(path.pool(NS, "transactional")), "ReconciliationPaused")?.status === "True");
    const rev = (await env.plan())!.revision;
    const p = await env.get(path.pool(NS, "transactional"));
    await env.req("PATCH", path.pool(NS, "transactional"), { spec: { relay: { replicas: 1 } } }, "application/merge-patch+json");
    await new Promise((r) => setTimeout(r, 5000));
    assert.equal((await env.get(path.deployment(NS, "transactional"))).spec.replicas, 3, "the paused pool's workload is left alone");
    assert.equal((await env.get(path.pool(NS, "transactional"))).status.observedGeneration, p.status.observedGeneration);
    assert.equal((await env.plan())!.revision, rev);
    await env.req("PATCH", path.pool(NS, "transactional"), { metadata: { annotations: { "mailfleet.io/paused": null } } }, "application/merge-patch+json");
    await eventually("resumed: replicas 1, condition gone", async () => {
      const o = await env.get(path.pool(NS, "transactional"));
      const d = await env.get(path.deployment(NS, "transactional"));
      return !condition(o, "ReconciliationPaused") && d.spec.replicas === 1 && current(o);
    });
  });

  await t.test("PerAddress pool: one Deployment per address; removing an address deletes its Deployment", async () => {
    await env.apply(pool(NS, "marketing", {
      addresses: [{ address: "127.0.1.11", hostname: "m11.example.test" }, { address: "127.0.1.12", hostname: "m12.example.test" }],
      egress: { mode: "PerAddress" }, overflowPoolRef: { name: "transactional" }, relay: { replicas: 1, autoscaling: { minReplicas: 1, maxReplicas: 3 } },
    }));
    for (const n of ["marketing-127-0-1-11", "marketing-127-0-1-12"]) {
      const d = await eventually(`Deployment ${n}`, () => env.get(path.deployment(NS, n)));
      assert.equal(d.spec.template.metadata.labels["mailfleet.io/egress-address"], n.slice("marketing-".length));
      assert.ok(await eventually(`HPA ${n}`, () => env.get(`/apis/autoscaling/v2/namespaces/${NS}/horizontalpodautoscalers/${n}`)));
    }
    await env.apply(pool(NS, "marketing", {
      addresses: [{ address: "127.0.1.11", hostname: "m11.example.test" }],
      egress: { mode: "PerAddress" }, overflowPoolRef: { name: "transactional" }, relay: { replicas: 1, autoscaling: { minReplicas: 1, maxReplicas: 3 } },
    }));
    await eventually("Deployment and HPA of the removed address deleted", async () =>
      !(await env.get(path.deployment(NS, "marketing-127-0-1-12"))) && !(await env.get(`/apis/autoscaling/v2/namespaces/${NS}/horizontalpodautoscalers/marketing-127-0-1-12`)));
    // Overflow: the domain's SPF now also lists the overflow pool's addresses? No: overflow goes the
    // other way (marketing's mail may leave through transactional), so transactional's keyring is unchanged.
    const plan = await eventually("plan with marketing", async () => {
      const p = await env.plan();
      return p?.pools.find((x) => x.name === "marketing")?.overflowPool === `${NS}/transactional` && p;
    });
    void plan;
  });

  await t.test("delete: a domain's Secrets go with it (owner references) and it leaves the plan", async () => {
    await env.req("DELETE", path.domain(NS, "example"));
    await eventually("plan without the domain", async () => {
      const p = await env.plan();
      return p && !p.domains.some((d) => d.domain === "example.test");
    });
    const secrets = await env.get(`${path.secret(NS)}?labelSelector=mailfleet.io/sendingdomain=example`);
    for (const s of secrets.items) assert.equal(s.metadata.ownerReferences[0].uid, domainUid, "garbage-collected with the domain (no GC in this control plane)");
    await eventually("keyring emptied", async () => Object.keys((await env.get(path.secret(NS, "transactional-relay"))).data ?? {}).length === 0);
  });

  await t.test("delete a pool: the finalizer runs and lets go; the pool leaves the plan", async () => {
    await env.req("DELETE", path.pool(NS, "marketing"));
    await eventually("pool gone", async () => !(await env.get(path.pool(NS, "marketing"))));
    await eventually("plan without marketing", async () => {
      const p = await env.plan();
      return p && !p.pools.some((x) => x.name === "marketing");
    });
  });

  await t.test("KEDA present: queue-lag autoscaling with a ScaledObject instead of an HPA", async () => {
    await env.apply(pool(NS, "bulk", {
      addresses: [{ address: "127.0.1.21", hostname: "b21.example.test" }],
      relay: { autoscaling: { minReplicas: 1, maxReplicas: 5, targetQueueDepth: 1000 } },
    }));
    const so = await eventually("ScaledObject bulk", () => env.get(`/apis/keda.sh/v1alpha1/namespaces/${NS}/scaledobjects/bulk`));
    assert.deepEqual(so.spec.scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: "bulk" });
    assert.equal(so.spec.triggers[0].type, "nats-jetstream");
    assert.equal(so.spec.triggers[0].metadata.natsServerMonitoringEndpoint, "127.0.0.1:8222");
    assert.equal(so.spec.triggers[0].metadata.lagThreshold, "1000");
    assert.equal(await env.get(`/apis/autoscaling/v2/namespaces/${NS}/horizontalpodautoscalers/bulk`), undefined);
    assert.equal((await env.get(path.deployment(NS, "bulk"))).spec.replicas, 1, "replicas left to the autoscaler (the API server's default)");
  });

  await t.test("one-click unsubscribe: the token key is made once in the pool's keyring Secret, kept, and nowhere else", async () => {
    await env.apply(domain(NS, "news", { domain: "news.example.test", poolRef: { name: "bulk" }, listUnsubscribe: { mode: "OneClick", url: "https://news.example.test/u/{token}" } }));
    const ring = await eventually("bulk's keyring has unsubscribe.key", async () => {
      const s = await env.get(path.secret(NS, "bulk-relay"));
      return s?.data?.["unsubscribe.key"] && s;
    });
    const key = ring.data["unsubscribe.key"] as string;
    assert.equal(Buffer.from(key, "base64").length, 32);
    assert.equal(ring.type, "Opaque");
    // The Deployment mounts that Secret (and nothing carries the key in the clear).
    const dep = await env.get(path.deployment(NS, "bulk"));
    assert.ok(dep.spec.template.spec.volumes.some((v: any) => v.secret?.secretName === "bulk-relay"));
    assert.ok(!JSON.stringify(dep).includes(key));
    const cms = await env.get(`/api/v1/namespaces/${NS}/configmaps`);
    assert.ok(!JSON.stringify(cms).includes(key), "in no ConfigMap");
    const plan = await eventually("plan with news.example.test", async () => {
      const p = await env.plan();
      return p?.domains.some((d) => d.domain === "news.example.test") && p;
    });
    assert.ok(!JSON.stringify(plan).includes(key), "not in the plan (NATS KV)");
    assert.ok(!op.log().includes(key), "not in the operator's log");
    // Kept: switching the domain to Mailto and back leaves the same key (links already sent stay valid).
    await env.apply(domain(NS, "news", { domain: "news.example.test", poolRef: { name: "bulk" }, listUnsubscribe: { mode: "Mailto", mailto: "unsub@news.example.test" } }));
    await eventually("plan with the Mailto domain", async () => (await env.plan())?.domains.find((d) => d.domain === "news.example.test")?.listUnsubscribe?.mode === "Mailto");
    await env.apply(domain(NS, "news", { domain: "news.example.test", poolRef: { name: "bulk" }, listUnsubscribe: { mode: "OneClick", url: "https://news.example.test/u/{token}" } }));
    await eventually("plan with the OneClick domain again", async () => (await env.plan())?.domains.find((d) => d.domain === "news.example.test")?.listUnsubscribe?.mode === "OneClick");
    await new Promise((r) => setTimeout(r, 12_000)); // past the keyring's 10 s update throttle
    assert.equal((await env.get(path.secret(NS, "bulk-relay"))).data["unsubscribe.key"], key);
    await env.req("DELETE", path.domain(NS, "news"));
  });

  await t.test("rotation: a new selector is published first and signs only once its record verifies; the old one retires after the overlap", async () => {
    await env.apply(domain(NS, "rot", { domain: "rot.example.test", poolRef: { name: "transactional" }, dkim: { keyTypes: ["Ed25519"], rotationPeriod: "20s", overlap: "15s" } }));
    const first = await eventually("first key active", async () => {
      const o = await env.get(path.domain(NS, "rot"));
      return o?.status?.dkim?.length === 1 && o.status.dkim[0].state === "Active" && o;
    });
    const old = first.status.dkim[0].selector as string;
    // After the rotation period: a new selector, Published, in DNS records but not signing.
    const pub = await eventually("new selector published", async () => {
      const o = await env.get(path.domain(NS, "rot"));
      return o.status.dkim.some((k: any) => k.state === "Published") && o;
    }, 120_000);
    const fresh = pub.status.dkim.find((k: any) => k.state === "Published").selector as string;
    assert.notEqual(fresh, old);
    assert.ok(pub.status.dnsRecords.some((r: any) => r.selector === fresh), "the new record is listed to publish");
    const planned = (await env.plan())!.domains.find((d) => d.domain === "rot.example.test")!;
    assert.deepEqual(planned.dkim.map((k) => k.selector), [old], "signing stays on the old key");
    // Still unpublished a while later: no switch.
    await new Promise((r) => setTimeout(r, 8000));
    assert.equal((await env.get(path.domain(NS, "rot"))).status.dkim.find((k: any) => k.selector === fresh).state, "Published");
    // Publish it: signing switches, the old selector retires and stays listed for the overlap.
    const rec = pub.status.dnsRecords.find((r: any) => r.selector === fresh);
    await env.dns.addRecords([{ type: "TXT", name: rec.name, value: rec.value }]);
    const switched = await eventually("new selector active", async () => {
      const o = await env.get(path.domain(NS, "rot"));
      return o.status.dkim.find((k: any) => k.selector === fresh)?.state === "Active" && o;
    }, 120_000);
    assert.equal(switched.status.dkim.find((k: any) => k.selector === old).state, "Retiring");
    assert.ok(switched.status.dnsRecords.some((r: any) => r.selector === old), "the retiring record stays published");
    await eventually("plan signs with the new key", async () => {
      const d = (await env.plan())?.domains.find((x) => x.domain === "rot.example.test");
      return d?.dkim.length === 1 && d.dkim[0]!.selector === fresh;
    });
    await eventually("old selector removed after the overlap, its Secret deleted", async () => {
      const o = await env.get(path.domain(NS, "rot"));
      return !o.status.dkim.some((k: any) => k.selector === old) && !(await env.get(path.secret(NS, `rot-dkim-${old}`)));
    }, 120_000);
    const evs = await eventsFor(env, NS, "rot");
    for (const r of ["DKIMSelectorPublished", "DKIMSelectorActive", "DKIMSelectorRetiring", "DKIMSelectorRemoved"]) assert.ok(evs.some((e) => e.reason === r), `${r} Event`);
    await env.req("DELETE", path.domain(NS, "rot"));
  });

  await t.test("metrics", async () => {
    const m = await op.metrics();
    for (const name of ["mailfleet_operator_reconcile_total", "mailfleet_operator_reconcile_duration_seconds_bucket", "mailfleet_operator_workqueue_depth",
      "mailfleet_operator_plan_revision_info", "mailfleet_operator_plan_published_timestamp_seconds", "mailfleet_operator_resources", "mailfleet_operator_leader 1", "mailfleet_operator_nats_connected 1"]) {
      assert.ok(m.includes(name), `${name} in /metrics`);
    }
    assert.match(m, /mailfleet_operator_reconcile_total\{controller="domain",result="(success|requeue)"\} \d+/);
  });
});
