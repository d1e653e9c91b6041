// The local control plane: real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.
// Checked through @kubernetes/client-node (what the operator uses) with the kubeconfigs it writes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { createServer, type Server } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as k8s from "@kubernetes/client-node";
import { startControlPlane, type ControlPlane } from "../env/controlplane.ts";
import { createCA, issueCert } from "../env/pki.ts";
import { pidAlive } from "../env/proc.ts";

async function eventually<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    await sleep(500);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

function status(e: unknown): number | undefined {
  return e instanceof k8s.ApiException ? e.code : undefined;
}

async function expectStatus(code: number, p: Promise<unknown>, what: string): Promise<k8s.ApiException<string>> {
  try {
    await p;
  } catch (e) {
    assert.equal(status(e), code, `${what}: expected HTTP ${code}, got ${String(e)}`);
    return e as k8s.ApiException<string>;
  }
  assert.fail(`${what}: expected HTTP ${code}, but it succeeded`);
}

/** Pids of processes whose command line mentions dir (what a leaked component would show). */
function processesUsing(dir: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "utf8").includes(dir) && pidAlive(Number(d))) out.push(Number(d));
    } catch { /* exited */ }
  }
  return out;
}

test("control plane with controllers, scheduler and kwok", { timeout: 1_800_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mailfleet-cp-"));
  let cp: ControlPlane | undefined;
  t.after(async () => {
    await cp?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  cp = await startControlPlane({ dir, withControllers: true, nodes: 2 });
  const kc = new k8s.KubeConfig();
  kc.loadFromString(cp.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);

  await t.test("kubeconfig file, version stamp, fake nodes", async () => {
    assert.equal(readFileSync(cp!.kubeconfigPath, "utf8"), cp!.kubeconfig);
    assert.match(cp!.server, /^https:\/\/127\.0\.0\.1:\d+$/);
    const version = (await cp!.request("GET", "/version")).json();
    assert.equal(version.gitVersion, "v1.36.3");
    const nodes = await core.listNode();
    assert.deepEqual(nodes.items.map((n) => n.metadata!.name).sort(), ["kwok-node-0", "kwok-node-1"]);
    for (const p of Object.values(cp!.processes)) assert.ok(pidAlive(p.pid), `${p.name} runs`);
    // Aggregated discovery is served.
    const r = await cp!.request("GET", "/apis");
    assert.equal(r.status, 200);
  });

  await t.test("a Deployment reaches Available on kwok nodes", async () => {
    await apps.createNamespacedDeployment({
      namespace: "default",
      body: {
        metadata: { name: "web" },
        spec: {
          replicas: 3,
          selector: { matchLabels: { app: "web" } },
          template: {
            metadata: { labels: { app: "web" } },
            spec: { containers: [{ name: "web", image: "example.invalid/web:1" }] },
          },
        },
      },
    });
    await eventually("Deployment web Available", async () => {
      const d = await apps.readNamespacedDeployment({ name: "web", namespace: "default" });
      return d.status?.conditions?.some((c) => c.type === "Available" && c.status === "True") && d.status?.availableReplicas === 3;
    });
    const pods = await core.listNamespacedPod({ namespace: "default", labelSelector: "app=web" });
    assert.equal(pods.items.length, 3);
    for (const p of pods.items) {
      assert.equal(p.status?.phase, "Running");
      assert.match(p.spec?.nodeName ?? "", /^kwok-node-\d$/);
      assert.ok(p.status?.podIP, "kwok gives a pod IP");
    }
  });

  await t.test("PDB and HPA controllers act on the Deployment", async () => {
    const policy = kc.makeApiClient(k8s.PolicyV1Api);
    await policy.createNamespacedPodDisruptionBudget({
      namespace: "default",
      body: { metadata: { name: "web" }, spec: { minAvailable: 2, selector: { matchLabels: { app: "web" } } } },
    });
    await eventually("PDB status", async () => {
      const pdb = await policy.readNamespacedPodDisruptionBudget({ name: "web", namespace: "default" });
      return pdb.status?.currentHealthy === 3 && pdb.status?.disruptionsAllowed === 1;
    });
    // No metrics API here, but the HPA controller still enforces minReplicas.
    const hpa = kc.makeApiClient(k8s.AutoscalingV2Api);
    await hpa.createNamespacedHorizontalPodAutoscaler({
      namespace: "default",
      body: {
        metadata: { name: "web" },
        spec: {
          scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name: "web" },
          minReplicas: 4,
          maxReplicas: 6,
          metrics: [{ type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: 80 } } }],
        },
      },
    });
    await eventually("HPA scales web to minReplicas", async () => {
      const d = await apps.readNamespacedDeployment({ name: "web", namespace: "default" });
      return d.spec?.replicas === 4 && d.status?.availableReplicas === 4;
    });
    await hpa.deleteNamespacedHorizontalPodAutoscaler({ name: "web", namespace: "default" });
    await policy.deleteNamespacedPodDisruptionBudget({ name: "web", namespace: "default" });
  });

  await t.test("ownerReference cascade: deleting a Deployment removes its ReplicaSets and Pods; a ConfigMap owner removes its child", async () => {
    await apps.deleteNamespacedDeployment({ name: "web", namespace: "default", propagationPolicy: "Background" });
    await eventually("ReplicaSets and Pods of web gone", async () => {
      const rs = await apps.listNamespacedReplicaSet({ namespace: "default", labelSelector: "app=web" });
      const pods = await core.listNamespacedPod({ namespace: "default", labelSelector: "app=web" });
      return rs.items.length === 0 && pods.items.length === 0;
    });
    const owner = await core.createNamespacedConfigMap({ namespace: "default", body: { metadata: { name: "owner" } } });
    await core.createNamespacedConfigMap({
      namespace: "default",
      body: {
        metadata: {
          name: "child",
          ownerReferences: [{ apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: owner.metadata!.uid!, blockOwnerDeletion: true }],
        },
      },
    });
    await core.deleteNamespacedConfigMap({ name: "owner", namespace: "default", propagationPolicy: "Foreground" });
    await eventually("child ConfigMap collected", async () => {
      try {
        await core.readNamespacedConfigMap({ name: "child", namespace: "default" });
        return false;
      } catch (e) {
        return status(e) === 404;
      }
    });
  });

  await t.test("a ServiceAccount token authenticates and RBAC allows only what is granted", async () => {
    const ns = "rbac-test";
    await core.createNamespace({ body: { metadata: { name: ns } } });
    await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: "reader" } } });
    await rbac.createNamespacedRole({
      namespace: ns,
      body: { metadata: { name: "cm-reader" }, rules: [{ apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list"] }] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: ns,
      body: {
        metadata: { name: "reader-cm" },
        roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "cm-reader" },
        subjects: [{ kind: "ServiceAccount", name: "reader", namespace: ns }],
      },
    });
    const tr = await core.createNamespacedServiceAccountToken({
      name: "reader", namespace: ns, body: { spec: { audiences: [], expirationSeconds: 3600 } },
    });
    const token = tr.status!.token!;
    const skc = new k8s.KubeConfig();
    skc.loadFromString(cp!.kubeconfigForToken(token, "reader"));
    const score = skc.makeApiClient(k8s.CoreV1Api);
    const review = await skc.makeApiClient(k8s.AuthenticationV1Api).createSelfSubjectReview({ body: {} });
    assert.equal(review.status?.userInfo?.username, `system:serviceaccount:${ns}:reader`);
    // kube-root-ca.crt is published into every namespace by the controller manager (root CA file).
    const rootCA = await eventually("kube-root-ca.crt", () => score.readNamespacedConfigMap({ name: "kube-root-ca.crt", namespace: ns }));
    assert.equal(rootCA.data?.["ca.crt"], cp!.caPem);
    await expectStatus(403, score.listNamespacedSecret({ namespace: ns }), "list secrets");
    await expectStatus(403, score.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: "x" } } }), "create configmap");
    await expectStatus(403, score.listNamespacedConfigMap({ namespace: "default" }), "list configmaps in another namespace");
    // The harness helper gives the same identity.
    const hkc = new k8s.KubeConfig();
    hkc.loadFromString(await cp!.kubeconfigForServiceAccount(ns, "reader"));
    const hreview = await hkc.makeApiClient(k8s.AuthenticationV1Api).createSelfSubjectReview({ body: {} });
    assert.equal(hreview.status?.userInfo?.username, `system:serviceaccount:${ns}:reader`);
    // A bad token is not authenticated at all.
    const bad = new k8s.KubeConfig();
    bad.loadFromString(cp!.kubeconfigForToken(token.slice(0, -4) + "AAAA"));
    await expectStatus(401, bad.makeApiClient(k8s.CoreV1Api).listNamespacedConfigMap({ namespace: ns }), "forged token");
    // A client-certificate user with no bindings is denied.
    const ukc = new k8s.KubeConfig();
    ukc.loadFromString(await cp!.kubeconfigForUser("nobody", ["mailfleet:testers"]));
    await expectStatus(403, ukc.makeApiClient(k8s.CoreV1Api).listNamespacedConfigMap({ namespace: ns }), "unbound certificate user");
  });

  await t.test("namespace deletion completes", async () => {
    await core.deleteNamespace({ name: "rbac-test" });
    await eventually("namespace rbac-test gone", async () => {
      try {
        await core.readNamespace({ name: "rbac-test" });
        return false;
      } catch (e) {
        return status(e) === 404;
      }
    });
  });

  await t.test("the apiserver calls a validating webhook served on 127.0.0.1", async () => {
    const ca = await createCA("webhook-test-ca");
    const cert = await issueCert(ca, { commonName: "webhook", ipAddresses: ["127.0.0.1"], server: true });
    let calls = 0;
    const server: Server = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        calls++;
        const review = JSON.parse(body);
        const deny = review.request.object?.metadata?.labels?.deny === "true";
        res.setHeader("Content-Type", "application/json");
        res.end(JSON.stringify({
          apiVersion: "admission.k8s.io/v1",
          kind: "AdmissionReview",
          response: { uid: review.request.uid, allowed: !deny, status: deny ? { code: 403, message: "denied by the test webhook" } : undefined },
        }));
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.after(() => server.close());
    const port = (server.address() as { port: number }).port;
    const adm = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
    await adm.createValidatingWebhookConfiguration({
      body: {
        metadata: { name: "test-webhook" },
        webhooks: [{
          name: "deny.test.mailfleet.io",
          clientConfig: { url: `https://127.0.0.1:${port}/validate`, caBundle: Buffer.from(ca.certPem).toString("base64") },
          rules: [{ apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["configmaps"] }],
          namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "default" } },
          admissionReviewVersions: ["v1"],
          sideEffects: "None",
          failurePolicy: "Fail",
          timeoutSeconds: 10,
        }],
      },
    });
    // Webhook configurations take effect asynchronously: retry until the webhook is consulted.
    const err = await eventually("webhook denies", async () => {
      try {
        await core.createNamespacedConfigMap({ namespace: "default", body: { metadata: { generateName: "denied-", labels: { deny: "true" } } } });
        return false;
      } catch (e) {
        return status(e) === 403 && String((e as k8s.ApiException<string>).body).includes("denied by the test webhook") ? e : false;
      }
    });
    assert.ok(err);
    await core.createNamespacedConfigMap({ namespace: "default", body: { metadata: { name: "allowed" } } });
    assert.ok(calls >= 2);
    await adm.deleteValidatingWebhookConfiguration({ name: "test-webhook" });
  });

  await t.test("CRDs from a folder are applied and Established", async () => {
    const crds = join(dir, "crds-in");
    mkdirSync(crds);
    writeFileSync(join(crds, "widgets.yaml"), [
      "apiVersion: apiextensions.k8s.io/v1",
      "kind: CustomResourceDefinition",
      "metadata: {name: widgets.test.mailfleet.io}",
      "spec:",
      "  group: test.mailfleet.io",
      "  scope: Namespaced",
      "  names: {plural: widgets, singular: widget, kind: Widget}",
      "  versions:",
      "  - name: v1",
      "    served: true",
      "    storage: true",
      "    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {size: {type: integer}}}}}}",
      "",
    ].join("\n"));
    assert.deepEqual(await cp!.applyCRDs(crds), ["widgets.test.mailfleet.io"]);
    const custom = kc.makeApiClient(k8s.CustomObjectsApi);
    await custom.createNamespacedCustomObject({
      group: "test.mailfleet.io", version: "v1", namespace: "default", plural: "widgets",
      body: { apiVersion: "test.mailfleet.io/v1", kind: "Widget", metadata: { name: "w" }, spec: { size: 3 } },
    });
    // Applying again is a no-op.
    assert.deepEqual(await cp!.applyCRDs(crds), ["widgets.test.mailfleet.io"]);
  });

  await t.test("stop() ends every component", async () => {
    const pids = Object.values(cp!.pids());
    assert.ok(pids.length >= 5);
    await cp!.stop();
    cp = undefined;
    for (const pid of pids) assert.equal(pidAlive(pid), false, `pid ${pid} gone`);
    assert.deepEqual(processesUsing(dir), []);
  });
});

test("a failed start names the component, shows its log and leaves nothing running", { timeout: 900_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mailfleet-cpfail-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(
    startControlPlane({ dir, apiserverArgs: ["--no-such-flag=1"] }),
    (e: Error) => {
      assert.match(e.message, /^kube-apiserver: exited/);
      assert.match(e.message, /no-such-flag/, "the log tail is in the message");
      return true;
    },
  );
  assert.deepEqual(processesUsing(dir), []);
});
