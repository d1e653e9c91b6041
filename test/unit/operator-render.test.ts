// The relay workload an IPPool renders into, the admission decision, and operator-made certificates.
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { describe, it } from "node:test";
import { validateObject } from "../../api/validate.ts";
import type { IPPool, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { relayEnv } from "../../relay/config.ts";
import { createCA, issueServing, renewalReason, signedBy } from "../../operator/certs.ts";
import { addressSlug, type RenderConfig, renderPool, renderRelaySecret } from "../../operator/render/pool.ts";
import type { KubeObject } from "../../operator/runtime/types.ts";
import { review, type WebhookWorld } from "../../operator/webhook/review.ts";

const cfg: RenderConfig = {
  relayImage: "mailfleet/relay:test",
  natsUrls: ["nats://nats-0:4222", "nats://nats-1:4222"],
  streamReplicas: 3,
  relayEnv: { MAILFLEET_DELIVERY_PORT: "2525" },
  keda: false,
};

function pool(name: string, spec: Record<string, unknown>, created = "2026-01-01T00:00:00Z"): IPPool {
  return validateObject({
    apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool",
    metadata: { name, namespace: "mail", uid: `uid-${name}`, creationTimestamp: created }, spec,
  }) as IPPool;
}
function sd(name: string, spec: Record<string, unknown>, created = "2026-01-01T00:00:00Z"): SendingDomain {
  return validateObject({ apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: { name, namespace: "mail", uid: `uid-${name}`, creationTimestamp: created }, spec }) as SendingDomain;
}

const byKind = (objs: KubeObject[], kind: string) => objs.filter((o) => o.kind === kind);
const podSpec = (d: KubeObject) => (d.spec as any).template.spec;

/** The relay's environment as the kubelet would give it (fieldRefs resolved). */
function envOf(d: KubeObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of podSpec(d).containers[0].env as { name: string; value?: string; valueFrom?: any }[]) {
    out[e.name] = e.value ?? (e.valueFrom.fieldRef.fieldPath === "metadata.name" ? "relay-pod-0" : "node-a");
  }
  return out;
}

describe("relay workload rendering", () => {
  it("HostNetwork: one Deployment on the host network, one relay per node, host ports", () => {
    const p = pool("transactional", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com", nodeName: "node-a" }, { address: "192.0.2.2", hostname: "b.example.com", nodeName: "node-b" }], relay: { replicas: 2 } });
    const r = renderPool(p, cfg);
    const deps = byKind(r.objects, "Deployment");
    assert.equal(deps.length, 1);
    const d = deps[0]!;
    assert.equal(d.metadata.name, "transactional");
    const spec = podSpec(d);
    assert.equal(spec.hostNetwork, true);
    assert.equal(spec.dnsPolicy, "ClusterFirstWithHostNet");
    assert.equal(spec.automountServiceAccountToken, false);
    assert.equal(spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey, "kubernetes.io/hostname");
    assert.deepEqual(spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values, ["node-a", "node-b"]);
    assert.ok(spec.containers[0].ports.every((x: any) => x.hostPort === x.containerPort));
    assert.equal((d.spec as any).replicas, 2);
    assert.deepEqual(d.metadata.ownerReferences, [{ apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", name: "transactional", uid: "uid-transactional", controller: true, blockOwnerDeletion: true }]);
    assert.equal(envOf(d).MAILFLEET_ADDRESSES, undefined, "relays find their node's addresses");
    assert.deepEqual(r.workloads, [{ kind: "Deployment", name: "transactional" }]);
    assert.equal(r.selector, "mailfleet.io/pool=transactional,app.kubernetes.io/component=relay");
    assert.deepEqual(r.objects.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      "Deployment/transactional", "NetworkPolicy/transactional", "PodDisruptionBudget/transactional", "Service/transactional", "ServiceAccount/transactional-relay",
    ]);
  });

  it("PerAddress: one Deployment per address, labelled and annotated for an egress gateway", () => {
    const p = pool("marketing", { addresses: [{ address: "192.0.2.11", hostname: "m1.example.com" }, { address: "2001:db8::11", hostname: "m6.example.com" }], egress: { mode: "PerAddress" }, relay: { replicas: 1 } });
    const r = renderPool(p, cfg);
    const deps = byKind(r.objects, "Deployment");
    assert.deepEqual(deps.map((d) => d.metadata.name), ["marketing-192-0-2-11", "marketing-2001-db8--11"]);
    const d = deps[0]!;
    const tpl = (d.spec as any).template;
    assert.equal(tpl.metadata.labels["mailfleet.io/egress-address"], "192-0-2-11");
    assert.equal(tpl.metadata.annotations["mailfleet.io/egress-address"], "192.0.2.11");
    assert.equal((d.spec as any).selector.matchLabels["mailfleet.io/egress-address"], "192-0-2-11");
    assert.equal(tpl.spec.hostNetwork, undefined);
    assert.equal(envOf(d).MAILFLEET_ADDRESSES, "192.0.2.11");
    assert.equal(addressSlug("::1"), "0--1");
    assert.equal(addressSlug("fe80::"), "fe80--0");
  });

  it("writes exactly the relay's environment contract (relay/config.ts), which parses", () => {
    const p = pool("t", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }], egress: { mode: "PerAddress" }, relay: { submission: { port: 2587, maxMessageSize: "10Mi" }, inboundPort: 2525 } });
    const d = byKind(renderPool(p, { ...cfg, natsCredsSecret: "nats-creds" }).objects, "Deployment")[0]!;
    const env = envOf(d);
    const known = new Set(Object.keys(relayEnv.shape));
    for (const k of Object.keys(env)) assert.ok(known.has(k), `${k} is part of relay/config.ts`);
    const parsed = relayEnv.parse(env);
    assert.deepEqual(parsed.MAILFLEET_NATS_URL, ["nats://nats-0:4222", "nats://nats-1:4222"]);
    assert.equal(parsed.MAILFLEET_POOL, "mail/t");
    assert.equal(parsed.MAILFLEET_RELAY_ID, "relay-pod-0");
    assert.equal(parsed.MAILFLEET_SUBMISSION_PORT, 2587);
    assert.equal(parsed.MAILFLEET_INBOUND_PORT, 2525);
    assert.equal(parsed.MAILFLEET_MAX_MESSAGE_SIZE, 10 * 1024 * 1024);
    assert.equal(parsed.MAILFLEET_STREAM_REPLICAS, 3);
    assert.equal(parsed.MAILFLEET_DELIVERY_PORT, 2525, "--relay-env overrides");
    assert.equal(parsed.MAILFLEET_NATS_CREDS, "/etc/mailfleet/nats/nats.creds");
    const spec = podSpec(d);
    const mounts = spec.containers[0].volumeMounts.map((m: any) => m.mountPath);
    assert.ok(mounts.includes(parsed.MAILFLEET_SECRETS_DIR) && mounts.includes(parsed.MAILFLEET_TLS_DIR));
    assert.deepEqual(spec.volumes.map((v: any) => v.secret.secretName), ["t-relay", "t-submission-tls", "nats-creds"]);
  });

  it("autoscaling: an HPA on CPU, or a KEDA ScaledObject on queue lag when KEDA is there; replicas left to the autoscaler", () => {
    const spec = { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }], relay: { autoscaling: { minReplicas: 1, maxReplicas: 4, targetQueueDepth: 500 } } };
    const hpa = renderPool(pool("p", spec), cfg);
    const h = byKind(hpa.objects, "HorizontalPodAutoscaler")[0]!;
    assert.deepEqual((h.spec as any).scaleTargetRef, { apiVersion: "apps/v1", kind: "Deployment", name: "p" });
    assert.equal((h.spec as any).metrics[0].resource.target.averageUtilization, 70);
    assert.equal((byKind(hpa.objects, "Deployment")[0]!.spec as any).replicas, undefined);
    const keda = renderPool(pool("p", spec), { ...cfg, keda: true, natsMonitoringEndpoint: "nats:8222" });
    assert.equal(byKind(keda.objects, "HorizontalPodAutoscaler").length, 0);
    const so = byKind(keda.objects, "ScaledObject")[0]!;
    assert.equal((so.spec as any).triggers[0].type, "nats-jetstream");
    assert.equal((so.spec as any).triggers[0].metadata.lagThreshold, "500");
    assert.equal((so.spec as any).triggers[0].metadata.consumer, "route-mail_p");
  });

  it("StatefulSet pools get a headless Service", () => {
    const r = renderPool(pool("s", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }], relay: { workload: "StatefulSet" } }), cfg);
    assert.equal(byKind(r.objects, "StatefulSet")[0]!.metadata.name, "s");
    assert.equal((byKind(r.objects, "StatefulSet")[0]!.spec as any).serviceName, "s-relays");
    assert.ok(byKind(r.objects, "Service").some((s) => (s.spec as any).clusterIP === "None"));
  });

  it("the NetworkPolicy admits the relay ports and lets out SMTP, DNS and NATS only", () => {
    const np = byKind(renderPool(pool("n", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }] }), cfg).objects, "NetworkPolicy")[0]!;
    const eg = (np.spec as any).egress.flatMap((e: any) => e.ports.map((x: any) => `${x.protocol}/${x.port}`));
    assert.deepEqual(eg.sort(), ["TCP/25", "TCP/4222", "TCP/465", "TCP/53", "TCP/587", "UDP/53"]);
    assert.deepEqual((np.spec as any).ingress[0].ports.map((x: any) => x.port), [587, 25, 8080]);
  });

  it("security: fsGroup 65532 in every mode (the mounted keyring is root-owned 0440), seccomp, read-only root, no capabilities beyond binding low host ports", () => {
    const addresses = [{ address: "192.0.2.1", hostname: "a.example.com" }];
    const of = (spec: Record<string, unknown>) => {
      const d = byKind(renderPool(pool("sec", { addresses, ...spec }), cfg).objects, "Deployment")[0]!;
      return { pod: podSpec(d).securityContext, c: podSpec(d).containers[0].securityContext };
    };
    const nonRoot = { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: "RuntimeDefault" } };
    const dropAll = { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } };

    // PerAddress, ports 587/25: its own network namespace, where the sysctl lets 65532 bind them.
    const per = of({ egress: { mode: "PerAddress" } });
    assert.deepEqual(per.pod, { ...nonRoot, sysctls: [{ name: "net.ipv4.ip_unprivileged_port_start", value: "0" }] });
    assert.deepEqual(per.c, dropAll);
    // PerAddress on high ports: no sysctl needed.
    assert.deepEqual(of({ egress: { mode: "PerAddress" }, relay: { submission: { port: 2587 }, inboundPort: 2525 } }).pod, nonRoot);
    // HostNetwork on high ports: 65532 with nothing added.
    const hostHigh = of({ relay: { submission: { port: 2587 }, inboundPort: 2525 } });
    assert.deepEqual(hostHigh.pod, nonRoot);
    assert.deepEqual(hostHigh.c, dropAll);
    // HostNetwork on 587/25: uid 0 with NET_BIND_SERVICE only, still fsGroup 65532 and group 65532.
    const hostLow = of({});
    assert.deepEqual(hostLow.pod, { runAsNonRoot: false, runAsUser: 0, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: "RuntimeDefault" } });
    assert.deepEqual(hostLow.c, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"], add: ["NET_BIND_SERVICE"] } });
    // Every Secret volume is mounted read-only with a mode the fsGroup makes readable.
    const d = byKind(renderPool(pool("sec", { addresses, egress: { mode: "PerAddress" } }), { ...cfg, natsCredsSecret: "nats-creds" }).objects, "Deployment")[0]!;
    for (const v of podSpec(d).volumes) assert.equal(v.secret.defaultMode, 0o440, v.name);
    assert.ok(podSpec(d).containers[0].volumeMounts.every((m: any) => m.readOnly === true));
  });

  it("resources: the operator's default (--relay-resources) unless the IPPool sets its own, which replaces it whole", () => {
    const addresses = [{ address: "192.0.2.1", hostname: "a.example.com" }];
    const dflt = { requests: { cpu: "100m", memory: "256Mi" }, limits: { memory: "1Gi" } };
    const res = (spec: Record<string, unknown>, c: RenderConfig) => podSpec(byKind(renderPool(pool("r", { addresses, ...spec }), c).objects, "Deployment")[0]!).containers[0].resources;
    assert.equal(res({}, cfg), undefined, "no default, none set");
    assert.deepEqual(res({}, { ...cfg, relayResources: dflt }), dflt);
    const own = { limits: { cpu: "2", memory: "512Mi" } };
    assert.deepEqual(res({ relay: { resources: own } }, { ...cfg, relayResources: dflt }), own);
    assert.deepEqual(res({ relay: { resources: own } }, cfg), own);
  });

  it("the keyring Secret holds files by name, base64", () => {
    const s = renderRelaySecret(pool("k", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }] }), new Map([["dkim.example.com.s1.pem", Buffer.from("PEM").toString("base64")]]));
    assert.equal(s.metadata.name, "k-relay");
    assert.deepEqual(s.data, { "dkim.example.com.s1.pem": Buffer.from("PEM").toString("base64") });
  });
});

describe("admission review", () => {
  const t = (s: number) => new Date(Date.parse("2026-01-01T00:00:00Z") + s * 1000).toISOString();
  const a = pool("a", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }] }, t(0));
  const world: WebhookWorld = {
    pools: [a, pool("b", { addresses: [{ address: "192.0.2.2", hostname: "b.example.com" }], overflowPoolRef: { name: "a" } }, t(1))],
    domains: [sd("ex", { domain: "example.com", poolRef: { name: "a" } }, t(2))],
    schedules: [] as WarmupSchedule[],
  };
  const req = (operation: "CREATE" | "UPDATE" | "DELETE", kind: string, object?: unknown, oldObject?: unknown, name?: string) => ({
    uid: "1", kind: { group: "mailfleet.io", version: "v1alpha1", kind }, operation, namespace: "mail", name, object, oldObject,
  });
  const raw = (kind: string, name: string, spec: unknown) => ({ apiVersion: "mailfleet.io/v1alpha1", kind, metadata: { name, namespace: "mail" }, spec });

  it("refuses an address in two pools, naming the field", () => {
    const v = review(req("CREATE", "IPPool", raw("IPPool", "c", { addresses: [{ address: "192.0.2.9", hostname: "x.example.com" }, { address: "192.0.2.1", hostname: "y.example.com" }] })), world);
    assert.deepEqual(v, { allowed: false, message: "spec.addresses[1].address: address 192.0.2.1 already belongs to IPPool mail/a" });
  });

  it("refuses a domain declared twice and a missing pool", () => {
    const v = review(req("CREATE", "SendingDomain", raw("SendingDomain", "ex2", { domain: "example.com", poolRef: { name: "nope" } })), world);
    assert.equal(v.allowed, false);
    assert.match(v.message!, /spec\.domain: domain example\.com is already declared by SendingDomain mail\/ex/);
    assert.match(v.message!, /spec\.poolRef\.name: IPPool mail\/nope does not exist/);
  });

  it("refuses an overflow cycle and a missing schedule", () => {
    const v = review(req("UPDATE", "IPPool", raw("IPPool", "a", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }], overflowPoolRef: { name: "b" }, warmupScheduleRef: { name: "std" } }), raw("IPPool", "a", a.spec)), world);
    assert.equal(v.allowed, false);
    assert.match(v.message!, /spec\.overflowPoolRef\.name: overflow pools form a cycle/);
    assert.match(v.message!, /spec\.warmupScheduleRef\.name: WarmupSchedule mail\/std does not exist/);
  });

  it("allows edits of an object that already clashed, as long as they bring nothing new, and metadata-only updates", () => {
    const clash = raw("IPPool", "a", { addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }, { address: "192.0.2.2", hostname: "c.example.com" }] });
    const edited = raw("IPPool", "a", { addresses: [{ address: "192.0.2.1", hostname: "a2.example.com" }, { address: "192.0.2.2", hostname: "c.example.com" }] });
    assert.equal(review(req("UPDATE", "IPPool", edited, clash), world).allowed, true);
    const labelled = { ...clash, metadata: { ...clash.metadata, labels: { x: "y" } } };
    assert.equal(review(req("UPDATE", "IPPool", labelled, clash), world).allowed, true);
  });

  it("re-validates with the zod schemas", () => {
    const v = review(req("CREATE", "IPPool", raw("IPPool", "z", { addresses: [{ address: "999.1.1.1", hostname: "a.example.com" }] })), world);
    assert.deepEqual(v, { allowed: false, message: "spec.addresses[0].address: must be an IPv4 or IPv6 address" });
  });

  it("refuses deleting a pool still in use, unless its namespace is going away", () => {
    const v = review(req("DELETE", "IPPool", undefined, undefined, "a"), world);
    assert.equal(v.allowed, false);
    assert.match(v.message!, /IPPool mail\/a is still used by SendingDomain mail\/ex \(spec\.poolRef\.name\), IPPool mail\/b \(spec\.overflowPoolRef\.name\)/);
    assert.equal(review(req("DELETE", "IPPool", undefined, undefined, "a"), world, { namespaceTerminating: true }).allowed, true);
    assert.equal(review(req("DELETE", "IPPool", undefined, undefined, "b"), world).allowed, true);
  });
});

describe("operator certificates", () => {
  it("issues a serving certificate from its CA and knows when to renew it", async () => {
    const now = Date.now();
    const ca = await createCA("mailfleet-webhook-ca");
    const srv = await issueServing(["mailfleet-operator.mailfleet-system.svc", "127.0.0.1"], { ca });
    assert.ok(signedBy(srv.certPem, ca.certPem));
    assert.ok(new X509Certificate(srv.certPem).checkIP("127.0.0.1"));
    assert.equal(renewalReason(srv.certPem, ["127.0.0.1"], now), undefined);
    assert.equal(renewalReason(srv.certPem, ["10.0.0.1"], now), "does not name 10.0.0.1");
    assert.equal(renewalReason(srv.certPem, [], now + 300 * 86_400_000), "expiring");
    assert.equal(renewalReason(undefined, [], now), "absent");
    const self = await issueServing(["pool.example.com"]);
    assert.ok(signedBy(self.certPem, self.certPem), "self-signed");
  });
});
