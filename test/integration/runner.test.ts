// The relay runner on a real control plane (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kwok with the runner's stages) and a real nats-server: the operator's relay
// Deployment (operator/render/pool.ts, applied as the operator would) becomes real
// `node relay/main.ts` processes with the Pod's environment and Secret files; Secret updates land in
// place; scaling adds relays on distinct loopback addresses; scale-down and deletion stop them with
// SIGTERM first (SIGKILL only after the grace period); a killed relay is restarted.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { spawnSync } from "node:child_process";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as k8s from "@kubernetes/client-node";
import { validateObject } from "../../api/validate.ts";
import type { IPPool } from "../../api/v1alpha1/index.ts";
import { renderPool, relaySecretName, selfSignedTlsName } from "../../operator/render/pool.ts";
import { defaultKwokStagesPath, startControlPlane, type ControlPlane } from "../env/controlplane.ts";
import { startNats, type Nats } from "../env/nats.ts";
import { pidAlive } from "../env/proc.ts";
import { buildImage, ensureBaseImage, imageExists, podmanArgs } from "../env/images.ts";
import { writeRunnerKwokStages } from "../env/runner/kwok-stages.ts";
import { LISTEN_ADDRESS_ANNOTATION, startRunner, type RelayInfo, type Runner } from "../env/runner/runner.ts";

const root = resolve(import.meta.dirname, "..", "..");

async function eventually<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    await sleep(250);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

function environ(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean)) {
    const i = kv.indexOf("=");
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
}

/** Pids of live processes whose environment mentions text (a leaked relay would show). */
function processesWithEnv(text: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/environ`, "utf8").includes(text) && pidAlive(Number(d))) out.push(Number(d));
    } catch { /* exited */ }
  }
  return out;
}

/** Whether the relay's current run (the log after the runner's last start header) logged "relay started". */
function relayStarted(logFile: string): boolean {
  const text = readFileSync(logFile, "utf8");
  return /"msg":"relay started"/.test(text.slice(text.lastIndexOf("\n=== ")));
}

const b64 = (s: string) => Buffer.from(s).toString("base64");
const merge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);

test("relay runner: kwok Pods of the operator's relay Deployment become relay processes", { timeout: 1_800_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "mailfleet-runner-"));
  let cp: ControlPlane | undefined;
  let nats: Nats | undefined;
  let runner: Runner | undefined;
  const runnerLog: string[] = [];
  t.after(async () => {
    if (process.env.RUNNER_LOG) process.stderr.write(runnerLog.join("\n") + "\n");
    await runner?.stop();
    await nats?.stop();
    await cp?.stop();
    if (process.env.KEEP_STATE) process.stderr.write(`state kept in ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  });

  const kwokConfig = writeRunnerKwokStages(join(dir, "kwok-stages.yaml"), defaultKwokStagesPath());
  cp = await startControlPlane({ dir: join(dir, "kube"), withControllers: true, nodes: 1, crdsDir: join(root, "crds"), kwokConfig });
  nats = await startNats({ dir: join(dir, "nats"), nodes: 1 });
  const kc = new k8s.KubeConfig();
  kc.loadFromString(cp.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const objects = k8s.KubernetesObjectApi.makeApiClient(kc);

  // The pool as a user writes it; its relay workload as the operator renders it.
  await core.createNamespace({ body: { metadata: { name: "mail" } } });
  const spec = {
    addresses: [{ address: "127.0.1.21", hostname: "mta21.example.com" }],
    egress: { mode: "PerAddress" },
    relay: { replicas: 1, terminationGracePeriodSeconds: 8 },
  };
  const created = await objects.create({ apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "tx", namespace: "mail" }, spec } as k8s.KubernetesObject);
  const pool = validateObject({ apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "tx", namespace: "mail", uid: created.metadata!.uid }, spec }) as IPPool;
  const rendered = renderPool(pool, { relayImage: "localhost/mailfleet-relay:dev", natsUrls: nats.urls, streamReplicas: 1, relayEnv: {}, keda: false });
  const deployment = rendered.workloads[0]!.name;
  // The TLS Secret now, the keyring later: the relay must wait for it.
  await core.createNamespacedSecret({ namespace: "mail", body: { metadata: { name: selfSignedTlsName("tx") }, type: "kubernetes.io/tls", data: { "tls.crt": b64("CERT"), "tls.key": b64("KEY") } } });
  for (const o of rendered.objects) await objects.create(o as k8s.KubernetesObject);

  const stateDir = join(dir, "runner");
  runner = await startRunner({ kubeconfig: cp.kubeconfigPath, stateDir, log: (l) => runnerLog.push(l) });
  const r = runner;
  const running = (n: number) => () => {
    const list = r.relays().filter((x) => x.state === "running" && x.pid && !x.terminating);
    return list.length === n ? list : undefined;
  };
  const pods = async () => (await core.listNamespacedPod({ namespace: "mail", labelSelector: rendered.selector })).items;

  let first: RelayInfo;
  await t.test("a Pod whose Secret is missing waits in ContainerCreating, then starts when it appears", async () => {
    const waiting = await eventually("the relay waiting for its keyring Secret", () => r.relays().find((x) => x.reason === "ContainerCreating" && /secret "tx-relay" not found/.test(x.message ?? "")));
    assert.equal(waiting.pid, undefined);
    await eventually("the Pod's container shown waiting in ContainerCreating", async () => {
      const p = (await pods())[0];
      const s = p?.status?.containerStatuses?.[0];
      return s?.state?.waiting?.reason === "ContainerCreating" && /tx-relay/.test(s.state.waiting.message ?? "") && p!.status!.conditions!.find((c) => c.type === "Ready")!.status === "False";
    });
    await core.createNamespacedSecret({ namespace: "mail", body: { metadata: { name: relaySecretName("tx") }, data: { "dkim.example.com.s1.pem": b64("KEY-1") } } });
    [first] = await eventually("one relay running", running(1));
  });

  await t.test("the relay runs `node relay/main.ts` with the Pod's environment and Secret files", async () => {
    const pid = first.pid!;
    const argv = cmdline(pid);
    assert.match(argv[0]!, /node$/);
    assert.deepEqual(argv.slice(1), ["relay/main.ts"]);
    assert.equal(readlinkSync(`/proc/${pid}/cwd`), root);
    const [p] = await pods();
    const env = environ(pid);
    const mf = Object.fromEntries(Object.entries(env).filter(([k]) => k.startsWith("MAILFLEET_")));
    const secretsDir = first.volumes.secrets!;
    assert.deepEqual(mf, {
      MAILFLEET_NATS_URL: nats!.urls.join(","),
      MAILFLEET_POOL: "mail/tx",
      MAILFLEET_RELAY_ID: p!.metadata!.name, // fieldRef metadata.name
      MAILFLEET_NODE_NAME: "kwok-node-0", // fieldRef spec.nodeName
      MAILFLEET_ADDRESSES: "127.0.1.21", // as the operator rendered it
      MAILFLEET_SECRETS_DIR: secretsDir, // the mount path, where the volume is on this machine
      MAILFLEET_TLS_DIR: first.volumes.tls!,
      MAILFLEET_SUBMISSION_PORT: "587",
      MAILFLEET_INBOUND_PORT: "25",
      MAILFLEET_HTTP_PORT: "8080",
      MAILFLEET_MAX_MESSAGE_SIZE: "25Mi",
      MAILFLEET_STREAM_REPLICAS: "1",
      MAILFLEET_LISTEN_ADDRESS: first.listenAddress!,
    });
    assert.match(first.listenAddress!, /^127\.0\.20[0-3]\.\d+$/);
    assert.equal(first.httpPort, 8080);
    assert.equal(p!.metadata!.annotations![LISTEN_ADDRESS_ANNOTATION], first.listenAddress);
    // The keyring as the kubelet lays it out: ..data -> version folder, key -> ..data/key, mode and fsGroup.
    assert.equal(readlinkSync(join(secretsDir, "dkim.example.com.s1.pem")), "..data/dkim.example.com.s1.pem");
    assert.equal(readFileSync(join(secretsDir, "dkim.example.com.s1.pem"), "utf8"), "KEY-1");
    const st = statSync(join(secretsDir, "dkim.example.com.s1.pem"));
    assert.equal(st.mode & 0o777, 0o440);
    assert.equal(st.gid, 65532, "fsGroup of the Pod");
    assert.equal(readFileSync(join(first.volumes.tls!, "tls.crt"), "utf8"), "CERT");
    // It really runs: connected to NATS and started (its own log line).
    await eventually("the relay's 'relay started' log line", () => relayStarted(first.logFile));
    // The Pod's status says so; Ready follows the relay's /readyz (probed on its listen address).
    await eventually("the Pod's container status running with the relay's pid", async () => {
      const s = (await pods())[0]?.status?.containerStatuses?.[0];
      return s?.state?.running && s.containerID === `process://${pid}` && s.restartCount === 0 && s.started === true;
    });
    const readyz = await fetch(`http://${first.listenAddress}:8080/readyz`).then((res) => res.ok, () => false);
    await eventually(`the Pod's Ready condition ${readyz ? "True" : "False"} as /readyz answers`, async () => {
      const p2 = (await pods())[0]!;
      return p2.status!.conditions!.find((c) => c.type === "Ready")!.status === (readyz ? "True" : "False") && r.relays()[0]!.ready === readyz;
    });
  });

  await t.test("a Secret update changes the files in place; the relay keeps running (same pid)", async () => {
    const secretsDir = first.volumes.secrets!;
    const before = readlinkSync(join(secretsDir, "..data"));
    await core.patchNamespacedSecret({ name: relaySecretName("tx"), namespace: "mail", body: { data: { "dkim.example.com.s1.pem": b64("KEY-2"), "dkim.example.com.s2.pem": b64("KEY-S2") } } }, merge);
    await eventually("the new key contents in the mounted folder", () => {
      try {
        return readFileSync(join(secretsDir, "dkim.example.com.s1.pem"), "utf8") === "KEY-2" && readFileSync(join(secretsDir, "dkim.example.com.s2.pem"), "utf8") === "KEY-S2";
      } catch {
        return false;
      }
    });
    assert.notEqual(readlinkSync(join(secretsDir, "..data")), before, "a new version folder behind ..data");
    const now = r.relays()[0]!;
    assert.equal(now.pid, first.pid);
    assert.equal(now.restarts, 0);
    assert.ok(pidAlive(first.pid!));
  });

  await t.test("a killed relay is restarted while its Pod exists", async () => {
    process.kill(first.pid!, "SIGKILL");
    const [again] = await eventually("a new relay process for the same Pod", () => {
      const x = running(1)();
      return x && x[0]!.pid !== first.pid ? x : undefined;
    });
    assert.equal(again!.uid, first.uid);
    assert.equal(again!.restarts, 1);
    assert.equal(again!.listenAddress, first.listenAddress, "the Pod keeps its address");
    assert.equal(environ(again!.pid!).MAILFLEET_LISTEN_ADDRESS, first.listenAddress);
    const end = r.ended().find((e) => e.pid === first.pid)!;
    assert.equal(end.signal, "SIGKILL");
    assert.equal(end.exitCode, 137);
    assert.equal(end.why, "exited");
    assert.deepEqual(end.signalsSent, []);
    await eventually("restartCount 1 and the last state in the Pod's status", async () => {
      const s = (await pods())[0]?.status?.containerStatuses?.[0];
      return s?.restartCount === 1 && s.lastState?.terminated?.exitCode === 137 && s.containerID === `process://${again!.pid}`;
    });
    first = again!;
  });

  await t.test("scaled to 2: two relays on distinct listen addresses", async () => {
    await apps.patchNamespacedDeploymentScale({ name: deployment, namespace: "mail", body: { spec: { replicas: 2 } } }, merge);
    const two = await eventually("two relays running", running(2));
    const addrs = two.map((x) => x.listenAddress!);
    assert.equal(new Set(addrs).size, 2, `distinct addresses: ${addrs.join(", ")}`);
    for (const x of two) {
      const env = environ(x.pid!);
      assert.equal(env.MAILFLEET_LISTEN_ADDRESS, x.listenAddress);
      assert.equal(env.MAILFLEET_RELAY_ID, x.pod);
      assert.equal(env.MAILFLEET_ADDRESSES, "127.0.1.21", "source addresses stay as the operator rendered them");
    }
    const annotated = (await pods()).map((p) => p.metadata!.annotations![LISTEN_ADDRESS_ANNOTATION]).sort();
    assert.deepEqual(annotated, [...addrs].sort());
    // relay/main.ts handles SIGTERM once it has started; before that SIGTERM just ends it (143).
    await eventually("both relays started", () => two.every((x) => relayStarted(x.logFile)));
  });

  await t.test("scaled to 0: each relay gets SIGTERM, drains and exits 0", async () => {
    const before = r.relays().map((x) => ({ pid: x.pid!, log: x.logFile }));
    await apps.patchNamespacedDeploymentScale({ name: deployment, namespace: "mail", body: { spec: { replicas: 0 } } }, merge);
    await eventually("no relays left", () => r.relays().length === 0);
    await eventually("no relay Pods left", async () => (await pods()).length === 0);
    for (const b of before) {
      assert.ok(!pidAlive(b.pid), `relay ${b.pid} has exited`);
      const end = r.ended().find((e) => e.pid === b.pid)!;
      assert.deepEqual(end.signalsSent, ["SIGTERM"], "SIGTERM, and no SIGKILL needed");
      assert.equal(end.exitCode, 0, "the relay drained and exited 0");
      assert.equal(end.why, "the Pod is being deleted");
      assert.match(readFileSync(b.log, "utf8"), /"msg":"draining","reason":"SIGTERM"/);
    }
  });

  await t.test("a relay that does not exit on SIGTERM is killed after the grace period; its Pod stays Terminating until then", async () => {
    await apps.patchNamespacedDeploymentScale({ name: deployment, namespace: "mail", body: { spec: { replicas: 1 } } }, merge);
    const [one] = await eventually("one relay running", running(1));
    process.kill(one!.pid!, "SIGSTOP"); // a stopped process cannot act on SIGTERM
    t.after(() => { try { process.kill(one!.pid!, "SIGCONT"); } catch { /* gone */ } });
    await apps.patchNamespacedDeploymentScale({ name: deployment, namespace: "mail", body: { spec: { replicas: 0 } } }, merge);
    await eventually("the Pod Terminating while its relay is still there", async () => {
      const p = (await pods()).find((x) => x.metadata!.uid === one!.uid);
      return p?.metadata?.deletionTimestamp && pidAlive(one!.pid!);
    });
    await eventually("the relay killed and its Pod gone", async () => !pidAlive(one!.pid!) && (await pods()).length === 0, 120_000);
    const end = r.ended().find((e) => e.pid === one!.pid)!;
    assert.deepEqual(end.signalsSent, ["SIGTERM", "SIGKILL"]);
    assert.equal(end.signal, "SIGKILL");
  });

  await t.test("deleting the pool stops its relays; stop() leaves nothing behind", async () => {
    await apps.patchNamespacedDeploymentScale({ name: deployment, namespace: "mail", body: { spec: { replicas: 2 } } }, merge);
    const two = await eventually("two relays running", running(2));
    await eventually("both relays started", () => two.every((x) => relayStarted(x.logFile)));
    await objects.delete({ apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "tx", namespace: "mail" } } as k8s.KubernetesObject);
    // The garbage collector removes the Deployment, its ReplicaSet and Pods (ownerReferences).
    await eventually("relays stopped after the pool's deletion", () => r.relays().length === 0 && two.every((x) => !pidAlive(x.pid!)));
    for (const x of two) assert.equal(r.ended().find((e) => e.pid === x.pid)!.signalsSent[0], "SIGTERM");
    // A fresh Deployment again, then stop() with relays running.
    for (const o of rendered.objects) {
      const copy = structuredClone(o) as k8s.KubernetesObject;
      delete copy.metadata!.ownerReferences;
      await objects.create(copy);
    }
    const again = await eventually("relays of the recreated Deployment running", running(1));
    await r.stop();
    assert.ok(!pidAlive(again[0]!.pid!), "stop() stopped the relay");
    assert.deepEqual(processesWithEnv(stateDir), [], "no process started by the runner is left");
    assert.deepEqual(readdirSync(join(stateDir, "pods")), [], "no Pod folders (Secrets) left on disk");
    const registry = JSON.parse(readFileSync(r.registryFile, "utf8"));
    assert.deepEqual(registry.relays, []);
    await eventually("the stopped relay's Pod shown not running and not Ready", async () => {
      const p = (await pods())[0];
      return p?.status?.containerStatuses?.[0]?.state?.waiting?.reason === "RunnerStopped" && p.status.conditions!.find((c) => c.type === "Ready")!.status === "False";
    });
    assert.ok(existsSync(again[0]!.logFile), "logs stay for post-mortems");
  });

  await t.test("podman mode: the relay image runs the same Pod, with its mounts, user and fsGroup", async (st) => {
    if (spawnSync("sh", ["-c", "command -v podman && command -v buildah"]).status !== 0) return st.skip("podman/buildah not installed (test/env/install-debian.sh)");
    // The relay image of this tree (test/env/images.ts); an existing one if building fails here.
    let image = "localhost/mailfleet-relay:dev";
    try {
      image = (await buildImage("relay", { base: (await ensureBaseImage()).image })).image;
    } catch (e) {
      // The image is a precondition here (test/env/images.ts and its tests own building it).
      const why = (e as Error).message.split("\n").slice(0, 3).join(" ");
      if (!(await imageExists(image))) return st.skip(`no relay image: building it failed: ${why}`);
      st.diagnostic(`building the relay image failed; running the existing ${image}: ${why}`);
    }
    const podmanState = join(dir, "runner-podman");
    const pr = await startRunner({ kubeconfig: cp!.kubeconfigPath, stateDir: podmanState, mode: "podman", image, log: (l) => runnerLog.push(`[podman] ${l}`) });
    st.after(() => pr.stop());
    const [one] = await eventually("a relay container running with a known pid", () => {
      const x = pr.relays().filter((y) => y.state === "running" && y.pid);
      return x.length === 1 ? x : undefined;
    }, 300_000);
    const name = one!.containerID!.replace(/^podman:\/\//, "");
    const env = environ(one!.pid!);
    assert.equal(env.MAILFLEET_SECRETS_DIR, "/etc/mailfleet/secrets", "in a container the mount path is the path");
    assert.equal(env.MAILFLEET_LISTEN_ADDRESS, one!.listenAddress);
    assert.equal(env.MAILFLEET_RELAY_ID, one!.pod);
    const inside = () => {
      const r2 = spawnSync("podman", podmanArgs("exec", name, "node", "-e",
        "process.stdout.write(process.getuid() + ' ' + process.getgroups().join(',') + ' ' + require('fs').readFileSync('/etc/mailfleet/secrets/dkim.example.com.s1.pem', 'utf8'))"), { encoding: "utf8", timeout: 60_000 });
      assert.equal(r2.status, 0, r2.stderr);
      return r2.stdout.split(" ");
    };
    const [uid, groups, key] = inside();
    assert.equal(uid, "65532", "runAsUser");
    assert.ok(groups!.split(",").includes("65532"), `fsGroup among the groups: ${groups}`);
    assert.equal(key, "KEY-2", "the keyring is readable by the relay's user");
    await core.patchNamespacedSecret({ name: relaySecretName("tx"), namespace: "mail", body: { data: { "dkim.example.com.s1.pem": b64("KEY-3") } } }, merge);
    await eventually("the updated key inside the container", () => inside()[2] === "KEY-3");
    assert.equal(pr.relays()[0]!.pid, one!.pid, "same container process");
    await eventually("the relay in the container started", () => relayStarted(one!.logFile), 120_000);
    await pr.stop();
    assert.ok(!pidAlive(one!.pid!));
    const left = spawnSync("podman", podmanArgs("ps", "--all", "--format", "{{.Names}}"), { encoding: "utf8" }).stdout.split("\n").filter((n) => n === name);
    assert.deepEqual(left, [], "the container is removed");
    const end = pr.ended().find((e) => e.containerID === one!.containerID)!;
    assert.equal(end.signalsSent[0], "SIGTERM");
  });
});
