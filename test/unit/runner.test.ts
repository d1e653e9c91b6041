// The relay runner's pure parts (test/env/runner): how a Pod becomes an environment, files and
// probes; the kubelet-style atomic volume writer; listen-address allocation; kwok's stages.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import type * as k8s from "@kubernetes/client-node";
import { validateObject } from "../../api/validate.ts";
import type { IPPool } from "../../api/v1alpha1/index.ts";
import { renderPool } from "../../operator/render/pool.ts";
import { loadRelayConfig } from "../../relay/config.ts";
import { AddressPool, parseRange, portFreeOn } from "../env/runner/addresses.ts";
import { currentVersion, writeAtomic } from "../env/runner/atomic-writer.ts";
import { runnerKwokStagesText } from "../env/runner/kwok-stages.ts";
import {
  ContainerConfigError, expand, gracePeriodSeconds, listenPorts, mountsOf, probeOf, relayPorts, resolveCommand, resolveEnv,
  rewriteMountPaths, securityOf, selectContainer, shouldRestart, volumeSources, type ObjectLookup,
} from "../env/runner/pod.ts";

const b64 = (s: string) => Buffer.from(s).toString("base64");

function lookupOf(secrets: k8s.V1Secret[] = [], configMaps: k8s.V1ConfigMap[] = []): ObjectLookup {
  const find = <T extends { metadata?: { name?: string; namespace?: string } }>(list: T[], ns: string, name: string) =>
    list.find((o) => o.metadata?.name === name && (o.metadata?.namespace ?? "mail") === ns);
  return { secret: (ns, name) => find(secrets, ns, name), configMap: (ns, name) => find(configMaps, ns, name) };
}

function pod(spec: Partial<k8s.V1PodSpec>, meta: Partial<k8s.V1ObjectMeta> = {}, status: k8s.V1PodStatus = {}): k8s.V1Pod {
  return {
    metadata: { name: "relay-0", namespace: "mail", uid: "u-1", labels: { app: "relay" }, annotations: { "a.b/c": "d" }, ...meta },
    spec: { containers: [{ name: "relay", image: "img" }], nodeName: "kwok-node-0", ...spec },
    status: { podIP: "10.244.0.5", hostIP: "10.240.0.1", ...status },
  };
}

const expectConfigError = (fn: () => unknown, reason: string, message: RegExp) => {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ContainerConfigError, `expected ContainerConfigError, got ${String(e)}`);
    assert.equal(e.reason, reason);
    assert.match(e.message, message);
    return true;
  });
};

describe("runner: the Pod's environment", () => {
  it("literal values, fieldRefs, secretKeyRef, configMapKeyRef, envFrom with prefix, later entries win", () => {
    const p = pod({
      serviceAccountName: "sa",
      containers: [{
        name: "relay", image: "img",
        envFrom: [{ configMapRef: { name: "cm" }, prefix: "CM_" }, { secretRef: { name: "s" } }],
        env: [
          { name: "A", value: "1" },
          { name: "NAME", valueFrom: { fieldRef: { fieldPath: "metadata.name" } } },
          { name: "NS", valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } } },
          { name: "NODE", valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } } },
          { name: "POD_IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
          { name: "HOST_IP", valueFrom: { fieldRef: { fieldPath: "status.hostIP" } } },
          { name: "LABEL", valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
          { name: "ANN", valueFrom: { fieldRef: { fieldPath: "metadata.annotations['a.b/c']" } } },
          { name: "SA", valueFrom: { fieldRef: { fieldPath: "spec.serviceAccountName" } } },
          { name: "PASS", valueFrom: { secretKeyRef: { name: "s", key: "password" } } },
          { name: "LEVEL", valueFrom: { configMapKeyRef: { name: "cm", key: "level" } } },
          { name: "GONE", valueFrom: { secretKeyRef: { name: "nope", key: "k", optional: true } } },
          { name: "A", value: "2" },
        ],
      }],
    });
    const env = resolveEnv(p, selectContainer(p), lookupOf(
      [{ metadata: { name: "s", namespace: "mail" }, data: { password: b64("hunter2"), TOKEN: b64("t") } }],
      [{ metadata: { name: "cm", namespace: "mail" }, data: { level: "debug" } }],
    ), { podIP: "127.0.200.7" });
    assert.deepEqual(env, {
      CM_level: "debug", password: "hunter2", TOKEN: "t",
      A: "2", NAME: "relay-0", NS: "mail", NODE: "kwok-node-0", POD_IP: "127.0.200.7", HOST_IP: "10.240.0.1",
      LABEL: "relay", ANN: "d", SA: "sa", PASS: "hunter2", LEVEL: "debug",
    });
    // Without the runner's fact, status.podIP is what the Pod's status says.
    const p2 = pod({ containers: [{ name: "relay", env: [{ name: "IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } }] }] });
    assert.deepEqual(resolveEnv(p2, selectContainer(p2), lookupOf()), { IP: "10.244.0.5" });
  });

  it("$(VAR) expansion against earlier variables, $$ escapes, unknown references stay", () => {
    assert.equal(expand("a-$(X)-$(Y)-$$(X)-$-$(", (n) => (n === "X" ? "x" : undefined)), "a-x-$(Y)-$(X)-$-$(");
    const p = pod({ containers: [{ name: "relay", env: [{ name: "HOST", value: "h" }, { name: "URL", value: "nats://$(HOST):4222" }, { name: "LATER", value: "$(AFTER)" }, { name: "AFTER", value: "z" }], args: ["--url=$(URL)"] }] });
    const env = resolveEnv(p, selectContainer(p), lookupOf());
    assert.equal(env.URL, "nats://h:4222");
    assert.equal(env.LATER, "$(AFTER)", "only variables defined before are expanded");
    assert.deepEqual(resolveCommand(selectContainer(p), env), { command: undefined, args: ["--url=nats://h:4222"] });
  });

  it("a missing Secret, key or ConfigMap is a CreateContainerConfigError naming it", () => {
    const p = (env: k8s.V1EnvVar[]) => pod({ containers: [{ name: "relay", env }] });
    const secretRef = (name: string, key: string) => [{ name: "X", valueFrom: { secretKeyRef: { name, key } } }];
    const lk = lookupOf([{ metadata: { name: "s" }, data: { a: b64("1") } }]);
    const n = p(secretRef("nope", "a"));
    expectConfigError(() => resolveEnv(n, selectContainer(n), lk), "CreateContainerConfigError", /secret "nope" not found/);
    const q = p(secretRef("s", "b"));
    expectConfigError(() => resolveEnv(q, selectContainer(q), lk), "CreateContainerConfigError", /couldn't find key b in Secret mail\/s/);
    const r = p([{ name: "X", valueFrom: { configMapKeyRef: { name: "cm", key: "k" } } }]);
    expectConfigError(() => resolveEnv(r, selectContainer(r), lk), "CreateContainerConfigError", /configmap "cm" not found/);
    const f = p([{ name: "X", valueFrom: { fieldRef: { fieldPath: "spec.bogus" } } }]);
    expectConfigError(() => resolveEnv(f, selectContainer(f), lk), "CreateContainerConfigError", /spec\.bogus/);
  });

  it("the operator's relay Pod template resolves to an environment relay/config.ts accepts", () => {
    const ippool = validateObject({
      apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool",
      metadata: { name: "tx", namespace: "mail", uid: "uid-tx" },
      spec: { addresses: [{ address: "127.0.1.21", hostname: "mta21.example.com" }], egress: { mode: "PerAddress" } },
    }) as IPPool;
    const r = renderPool(ippool, { relayImage: "img", natsUrls: ["nats://127.0.0.1:4222"], streamReplicas: 1, relayEnv: {}, keda: false });
    const dep = r.objects.find((o) => o.kind === "Deployment")!;
    const template = (dep.spec as any).template;
    const p: k8s.V1Pod = { metadata: { ...template.metadata, name: "tx-127-0-1-21-abc", namespace: "mail", uid: "u" }, spec: { ...template.spec, nodeName: "kwok-node-0" } };
    const c = selectContainer(p);
    const env = resolveEnv(p, c, lookupOf());
    const mounts = mountsOf(c);
    const rewritten = rewriteMountPaths({ ...env, MAILFLEET_LISTEN_ADDRESS: "127.0.200.1" }, mounts, (m) => `/state/pods/u/volumes/${m.volume}`);
    const cfg = loadRelayConfig(rewritten);
    assert.equal(cfg.MAILFLEET_RELAY_ID, "tx-127-0-1-21-abc");
    assert.equal(cfg.MAILFLEET_NODE_NAME, "kwok-node-0");
    assert.deepEqual(cfg.MAILFLEET_ADDRESSES, ["127.0.1.21"]);
    assert.equal(cfg.MAILFLEET_SECRETS_DIR, "/state/pods/u/volumes/secrets");
    assert.equal(cfg.MAILFLEET_TLS_DIR, "/state/pods/u/volumes/tls");
    assert.equal(cfg.MAILFLEET_LISTEN_ADDRESS, "127.0.200.1");
    assert.deepEqual(relayPorts(c, env), { http: 8080, submission: 587, inbound: 25 });
    assert.deepEqual(listenPorts(c, env), [25, 587, 8080]);
    assert.deepEqual(probeOf(c, "readiness"), {
      kind: "httpGet", path: "/readyz", scheme: "HTTP", headers: {}, port: 8080,
      initialDelayMs: 0, periodMs: 5000, timeoutMs: 1000, successThreshold: 1, failureThreshold: 3,
    });
    assert.equal(probeOf(c, "liveness")?.path, "/healthz");
    assert.equal(probeOf(c, "startup"), undefined);
    assert.deepEqual(securityOf(p, c), { runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, readOnlyRootFilesystem: true });
    assert.equal(gracePeriodSeconds(p), 60);
  });
});

describe("runner: volumes, mounts, probes, lifecycle rules", () => {
  it("Secret and ConfigMap volumes: all keys or listed items, modes, optional sources, projected", () => {
    const p = pod({
      volumes: [
        { name: "keys", secret: { secretName: "s", defaultMode: 0o440 } },
        { name: "picked", secret: { secretName: "s", items: [{ key: "a", path: "dir/a.pem", mode: 0o400 }] } },
        { name: "cfg", configMap: { name: "cm" } },
        { name: "maybe", secret: { secretName: "absent", optional: true } },
        { name: "both", projected: { sources: [{ secret: { name: "s", items: [{ key: "b", path: "b" }] } }, { configMap: { name: "cm" } }, { downwardAPI: { items: [{ path: "name", fieldRef: { fieldPath: "metadata.name" } }] } }] } },
        { name: "scratch", emptyDir: {} },
      ],
    });
    const v = volumeSources(p, lookupOf(
      [{ metadata: { name: "s" }, data: { a: b64("A"), b: b64("B") } }],
      [{ metadata: { name: "cm" }, data: { "x.yaml": "x: 1" }, binaryData: { bin: b64("\u0001") } }],
    ));
    const files = (name: string) => {
      const s = v.get(name)!;
      assert.equal(s.kind, "files");
      return Object.fromEntries([...(s as { files: Map<string, { data: Buffer; mode: number }> }).files].map(([k, f]) => [k, [f.data.toString(), f.mode.toString(8)]]));
    };
    assert.deepEqual(files("keys"), { a: ["A", "440"], b: ["B", "440"] });
    assert.deepEqual(files("picked"), { "dir/a.pem": ["A", "400"] });
    assert.deepEqual(files("cfg"), { "x.yaml": ["x: 1", "644"], bin: ["\u0001", "644"] });
    assert.deepEqual(files("maybe"), {});
    assert.deepEqual(files("both"), { b: ["B", "644"], "x.yaml": ["x: 1", "644"], bin: ["\u0001", "644"], name: ["relay-0", "644"] });
    assert.deepEqual(v.get("scratch"), { kind: "emptyDir" });
  });

  it("a missing Secret keeps the Pod in ContainerCreating; unsupported volumes and bad paths are named", () => {
    expectConfigError(() => volumeSources(pod({ volumes: [{ name: "keys", secret: { secretName: "s" } }] }), lookupOf()), "ContainerCreating", /volume "keys": secret "s" not found/);
    expectConfigError(() => volumeSources(pod({ volumes: [{ name: "keys", secret: { secretName: "s", items: [{ key: "z", path: "z" }] } }] }), lookupOf([{ metadata: { name: "s" }, data: {} }])), "ContainerCreating", /couldn't find key z/);
    expectConfigError(() => volumeSources(pod({ volumes: [{ name: "data", persistentVolumeClaim: { claimName: "c" } }] }), lookupOf()), "CreateContainerConfigError", /volume data: type persistentVolumeClaim is not supported/);
    expectConfigError(() => volumeSources(pod({ volumes: [{ name: "k", secret: { secretName: "s", items: [{ key: "a", path: "../a" }] } }] }), lookupOf([{ metadata: { name: "s" }, data: { a: b64("A") } }])), "CreateContainerConfigError", /invalid path "\.\.\/a"/);
  });

  it("process mode rewrites paths under mounts (longest mount first), nothing else", () => {
    const mounts = mountsOf({ name: "c", volumeMounts: [{ name: "a", mountPath: "/etc/x" }, { name: "b", mountPath: "/etc/x/y/" }, { name: "f", mountPath: "/etc/f.pem", subPath: "f.pem" }] });
    const out = rewriteMountPaths({ A: "/etc/x", B: "/etc/x/y/z", C: "/etc/xy", D: "plain /etc/x", E: "/etc/f.pem" }, mounts, (m) => `/h/${m.volume}${m.subPath ? `/${m.subPath}` : ""}`);
    assert.deepEqual(out, { A: "/h/a", B: "/h/b/z", C: "/etc/xy", D: "plain /etc/x", E: "/h/f/f.pem" });
  });

  it("probes: named ports, defaults; unknown port named; restart policy; grace period", () => {
    const c: k8s.V1Container = {
      name: "relay", ports: [{ name: "http", containerPort: 9000 }],
      livenessProbe: { tcpSocket: { port: "http" }, periodSeconds: 2, terminationGracePeriodSeconds: 3 },
      startupProbe: { exec: { command: ["true"] } },
      readinessProbe: { httpGet: { path: "/r", port: "metrics" } },
    };
    assert.deepEqual(probeOf(c, "liveness"), { kind: "tcpSocket", port: 9000, initialDelayMs: 0, periodMs: 2000, timeoutMs: 1000, successThreshold: 1, failureThreshold: 3, terminationGracePeriodSeconds: 3 });
    assert.equal(probeOf(c, "startup")?.kind, "exec");
    expectConfigError(() => probeOf(c, "readiness"), "CreateContainerConfigError", /probe port "metrics"/);
    assert.equal(shouldRestart(pod({}), 0), true);
    assert.equal(shouldRestart(pod({ restartPolicy: "OnFailure" }), 0), false);
    assert.equal(shouldRestart(pod({ restartPolicy: "OnFailure" }), 1), true);
    assert.equal(shouldRestart(pod({ restartPolicy: "Never" }), 1), false);
    assert.equal(gracePeriodSeconds(pod({})), 30);
    assert.equal(gracePeriodSeconds(pod({ terminationGracePeriodSeconds: 60 }, { deletionGracePeriodSeconds: 0 })), 60, "kwok's grace-0 delete is not the user's");
    assert.equal(gracePeriodSeconds(pod({ terminationGracePeriodSeconds: 60 }, { deletionGracePeriodSeconds: 5 })), 5);
    assert.equal(selectContainer(pod({ containers: [{ name: "sidecar" }, { name: "relay" }] })).name, "relay");
    assert.equal(selectContainer(pod({ containers: [{ name: "only" }] })).name, "only");
  });
});

describe("runner: the atomic volume writer", () => {
  const file = (data: string, mode = 0o440) => ({ data: Buffer.from(data), mode });

  it("writes a version folder, swaps ..data, links each key, and skips unchanged payloads", (t) => {
    const dir = mkdtempSync(join(tmpdir(), "mf-atomic-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    assert.equal(writeAtomic(dir, new Map([["a.pem", file("A1")], ["sub/b", file("B1", 0o400)]])), true);
    const v1 = currentVersion(dir)!;
    assert.match(v1, /^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\./);
    assert.equal(readlinkSync(join(dir, "a.pem")), "..data/a.pem");
    assert.equal(readlinkSync(join(dir, "sub")), "..data/sub");
    assert.equal(readFileSync(join(dir, "a.pem"), "utf8"), "A1");
    assert.equal(readFileSync(join(dir, "sub", "b"), "utf8"), "B1");
    assert.equal(statSync(join(dir, "a.pem")).mode & 0o777, 0o440);
    assert.equal(statSync(join(dir, "sub", "b")).mode & 0o777, 0o400);

    assert.equal(writeAtomic(dir, new Map([["a.pem", file("A1")], ["sub/b", file("B1", 0o400)]])), false, "same payload: no new version");
    assert.equal(currentVersion(dir), v1);

    // An open descriptor keeps reading the old version; the path shows the new one.
    assert.equal(writeAtomic(dir, new Map([["a.pem", file("A2")], ["c", file("C")]])), true);
    const v2 = currentVersion(dir)!;
    assert.notEqual(v2, v1);
    assert.equal(readFileSync(join(dir, "a.pem"), "utf8"), "A2");
    assert.equal(readFileSync(join(dir, "c"), "utf8"), "C");
    assert.throws(() => lstatSync(join(dir, "sub")), /ENOENT/, "a key that left the payload loses its link");
    assert.deepEqual(readdirSync(dir).sort(), [v2, "..data", "a.pem", "c"].sort(), "the old version is removed");
  });

  it("with an fsGroup, files are group-owned by it and group-readable", (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root to chown");
    const dir = mkdtempSync(join(tmpdir(), "mf-atomic-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeAtomic(dir, new Map([["k", file("K", 0o400)]]), { gid: 65532 });
    const st = statSync(join(dir, "k"));
    assert.equal(st.gid, 65532);
    assert.equal(st.mode & 0o777, 0o440);
    assert.equal(writeAtomic(dir, new Map([["k", file("K", 0o400)]]), { gid: 65532 }), false);
  });

  it("recovers a folder where a crash left a stale ..data_tmp", (t) => {
    const dir = mkdtempSync(join(tmpdir(), "mf-atomic-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "..data_tmp"), "junk");
    assert.equal(writeAtomic(dir, new Map([["a", file("A")]])), true);
    assert.equal(readFileSync(join(dir, "a"), "utf8"), "A");
    assert.ok(!readdirSync(dir).includes("..data_tmp"));
  });
});

describe("runner: listen addresses", () => {
  it("parses ranges inside 127.0.0.0/8 only", () => {
    assert.deepEqual(parseRange("127.0.200.0/22"), { first: ((127 << 24) >>> 0) + (200 << 8), last: ((127 << 24) >>> 0) + (203 << 8) + 255 });
    assert.throws(() => parseRange("10.0.0.0/8"), /must lie in 127\.0\.0\.0\/8/);
    assert.throws(() => parseRange("127.0.0.1"), /not an IPv4 CIDR/);
  });

  it("lowest free first, the Pod's recorded address kept, released on request, busy ones skipped", async () => {
    const pool = new AddressPool("127.0.200.0/30");
    assert.equal(await pool.allocate("a"), "127.0.200.1");
    assert.equal(await pool.allocate("a"), "127.0.200.1", "same owner, same address");
    assert.equal(await pool.allocate("b", { preferred: "127.0.200.1" }), "127.0.200.2", "a held address is not handed out twice");
    assert.equal(await pool.allocate("c"), "127.0.200.3");
    await assert.rejects(pool.allocate("d"), /no free listen address left in 127\.0\.200\.0\/30/);
    pool.release("a");
    assert.equal(await pool.allocate("d"), "127.0.200.1");
    const big = new AddressPool("127.0.200.0/24");
    assert.equal(await big.allocate("x", { preferred: "127.0.200.77" }), "127.0.200.77");
    assert.equal(await big.allocate("y", { preferred: "127.0.9.1" }), "127.0.200.1", "a preference outside the range is ignored");
    assert.equal(await big.allocate("z", { free: async (a) => a !== "127.0.200.2" }), "127.0.200.3");
  });

  it("portFreeOn sees a listener on that address only", async (t) => {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.203.9", r));
    t.after(() => s.close());
    const port = (s.address() as { port: number }).port;
    assert.equal(await portFreeOn("127.0.203.9", port), false);
    assert.equal(await portFreeOn("127.0.203.10", port), true);
  });
});

describe("runner: kwok stages", () => {
  it("leaves the runner's Pods out of pod-ready and pod-delete and adds its own start stage", () => {
    const defaults = [
      "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: pod-ready}\nspec:\n  resourceRef: {apiGroup: v1, kind: Pod}\n  selector:\n    matchExpressions:\n    - {key: .status.phase, operator: In, values: [Pending]}\n  next: {statusTemplate: 'phase: Running'}\n",
      "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: pod-delete}\nspec:\n  resourceRef: {apiGroup: v1, kind: Pod}\n  selector:\n    matchExpressions:\n    - {key: .metadata.deletionTimestamp, operator: Exists}\n  next: {delete: true}\n",
      "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: node-initialize}\nspec:\n  resourceRef: {apiGroup: v1, kind: Node}\n  next: {statusTemplate: 'phase: Running'}\n",
    ].join("---\n");
    const docs = parseAllDocuments(runnerKwokStagesText(defaults)).map((d) => d.toJS());
    const byName = Object.fromEntries(docs.map((d) => [d.metadata.name, d]));
    const notOurs = { key: '.metadata.labels["app.kubernetes.io/name"]', operator: "NotIn", values: ["mailfleet-relay"] };
    assert.deepEqual(byName["pod-ready"].spec.selector.matchExpressions.at(-1), notOurs);
    assert.deepEqual(byName["pod-delete"].spec.selector.matchExpressions.at(-1), notOurs);
    assert.equal(byName["node-initialize"].spec.selector, undefined);
    const start = byName["mailfleet-runner-pod-start"];
    assert.deepEqual(start.spec.selector.matchExpressions[0], { ...notOurs, operator: "In" });
    assert.match(start.spec.next.statusTemplate, /type: Ready[\s\S]*/);
    assert.match(start.spec.next.statusTemplate, /reason: ContainerCreating/);
    assert.throws(() => runnerKwokStagesText(defaults.split("---\n")[2]!), /no Stage named pod-ready/);
  });
});
