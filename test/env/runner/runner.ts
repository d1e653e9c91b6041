// The relay runner: the kubelet's part for relay Pods on kwok's fake nodes. kwok makes Pods look
// Running but runs nothing; for every relay Pod bound to a fake node this starts one relay (a
// process `node relay/main.ts`, or a podman container of the relay image on the host network) with
// the Pod's environment, arguments and volumes, keeps its Secret volumes current in place, restarts
// it when it exits (restartPolicy, kubelet back-off), probes it, reports it in the Pod's status, and
// stops it (SIGTERM, SIGKILL after the grace period) when the Pod goes away.
//
//   const runner = await startRunner({ kubeconfig, stateDir });
//   runner.relays()   // [{ pod, namespace, pid, listenAddress, httpPort, ready, restarts, ... }]
//   await runner.stop();
//
// README.md in this folder has the decisions (addresses, readiness, deletion, paths) and why.
import { existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import { createHash } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as k8s from "@kubernetes/client-node";
import { pidAlive, stopGroup } from "../proc.ts";
import { AddressPool, portFreeOn } from "./addresses.ts";
import { writeAtomic } from "./atomic-writer.ts";
import { removeLeftoverContainers, runPodman, runProcess, type Exit, type RunHandle } from "./container.ts";
import { RUNNER_POD_LABEL } from "./kwok-stages.ts";
import {
  ContainerConfigError, gracePeriodSeconds, listenPorts, mountsOf, podKey, probeOf, relayPorts, resolveCommand, resolveEnv,
  rewriteMountPaths, securityOf, selectContainer, shouldRestart, volumeSources, type Mount, type ObjectLookup, type Probe,
} from "./pod.ts";

/** The Pod annotation that records a relay's listen address (kept across runner restarts). */
export const LISTEN_ADDRESS_ANNOTATION = "runner.mailfleet.io/listen-address";
/** The default range of listen addresses (no other part of the test environment uses it). */
export const DEFAULT_ADDRESS_RANGE = "127.0.200.0/22";
const FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node";
const FIELD_MANAGER = "mailfleet-runner";
/** node:24-slim's PATH (the relay image's base). */
const IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** The project root: the image's WORKDIR (/app) holds the same layout. */
export const PROJECT_ROOT = resolve(import.meta.dirname, "..", "..", "..");

export interface RunnerOptions {
  /** A kubeconfig file, or kubeconfig YAML text. */
  kubeconfig: string;
  /** Per-Pod folders (volumes), logs and relays.json. */
  stateDir: string;
  /** 'process' (default): `node relay/main.ts`; 'podman': a container of the relay image. */
  mode?: "process" | "podman";
  /** podman: the image to run instead of the Pod's (which names a registry nothing can pull from). */
  image?: string;
  /** Pods to run (default app.kubernetes.io/name=mailfleet-relay, what operator/render/pool.ts sets). */
  labelSelector?: string;
  /** Nodes whose Pods to run (default: every node kwok manages, annotated kwok.x-k8s.io/node=fake). */
  nodes?: string[];
  /** Listen addresses to hand out (default 127.0.200.0/22). */
  addressRange?: string;
  /** The variable that carries the listen address (relay/config.ts). */
  listenAddressEnv?: string;
  /** process mode: the image's ENTRYPOINT (default ["node", "relay/main.ts"]); "node" is Node 24. */
  entrypoint?: string[];
  /** process mode: the working folder, the image's WORKDIR (default: the project root). */
  cwd?: string;
  /** Restart back-off (kubelet: 10 s doubling to 5 min, reset after 10 min without a crash). */
  backoff?: { initialMs?: number; maxMs?: number; resetAfterMs?: number };
  /** Run liveness probes (default true: a relay that fails them is restarted, as on a node). */
  liveness?: boolean;
  /** How often every Pod is checked again besides watch events (volumes, status); default 2000 ms. */
  resyncMs?: number;
  log?: (line: string) => void;
}

export interface RelayExit {
  exitCode: number;
  signal?: string;
  reason: string;
  startedAt: string;
  finishedAt: string;
}

export interface RelayInfo {
  pod: string;
  namespace: string;
  uid: string;
  node: string;
  container: string;
  mode: "process" | "podman";
  /** The relay's process (inside the container for podman); undefined while it is not running. */
  pid?: number;
  /** process://<pid> or podman://<name> (also in the Pod's containerStatuses[].containerID). */
  containerID?: string;
  listenAddress?: string;
  httpPort?: number;
  submissionPort?: number;
  inboundPort?: number;
  state: "waiting" | "running" | "terminated";
  /** waiting: ContainerCreating, CreateContainerConfigError, CrashLoopBackOff, ... */
  reason?: string;
  message?: string;
  /** The readiness probe's verdict (no probe: running). */
  ready: boolean;
  restarts: number;
  startedAt?: string;
  lastExit?: RelayExit;
  terminating: boolean;
  /** The environment and argv of the current (or last) run. */
  env: Record<string, string>;
  argv: string[];
  /** Per-Pod folder; volumes under volumes/<name>. */
  dir: string;
  volumes: Record<string, string>;
  logFile: string;
}

/** A run of a relay that has ended: how it ended and what the runner did to end it. */
export interface EndedRun {
  pod: string;
  namespace: string;
  uid: string;
  pid?: number;
  containerID: string;
  listenAddress?: string;
  exitCode: number;
  signal?: string;
  /** Why it ended: "exited" (on its own, or killed by someone else), "the Pod is being deleted", ... */
  why: string;
  /** Signals the runner sent, in order (SIGTERM first; SIGKILL only after the grace period). */
  signalsSent: string[];
  startedAt: string;
  finishedAt: string;
}

export interface Runner {
  stateDir: string;
  /** relays.json: relays() as JSON, rewritten on every change (for tools outside this process). */
  registryFile: string;
  /** Relays of the Pods the runner plays now (including terminating ones until their relay exits). */
  relays(): RelayInfo[];
  /** Every run that has ended, oldest first (the last 1000). */
  ended(): EndedRun[];
  stop(): Promise<void>;
}

interface RegistryFile {
  version: 1;
  runnerPid: number;
  mode: "process" | "podman";
  addressRange: string;
  relays: (RelayInfo & { pidStart?: string })[];
}

function loadKubeConfig(kubeconfig: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  if (/\n/.test(kubeconfig) && /apiVersion:|clusters:/.test(kubeconfig)) kc.loadFromString(kubeconfig);
  else kc.loadFromFile(kubeconfig);
  return kc;
}

/** The kernel's start time of a process (field 22 of /proc/<pid>/stat): tells a reused pid apart. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function nodeBinary(): string {
  const local = join(PROJECT_ROOT, "node_modules", ".bin", "node");
  try {
    return realpathSync(local);
  } catch {
    return process.execPath;
  }
}

function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + "\n");
  renameSync(tmp, file);
}

/** An informer (client-node ListWatch) that restarts itself after errors, with back-off. */
function informer<T extends k8s.KubernetesObject>(
  kc: k8s.KubeConfig, path: string, list: () => Promise<k8s.KubernetesListObject<T>>, labelSelector: string | undefined,
  log: (l: string) => void, isStopped: () => boolean,
): k8s.ListWatch<T> {
  const inf = new k8s.ListWatch<T>(path, new k8s.Watch(kc), list, false, labelSelector);
  let delay = 1000;
  inf.on("connect", () => { delay = 1000; });
  inf.on("error", (err: unknown) => {
    if (isStopped()) return;
    log(`watch ${path} failed (${(err as Error)?.message ?? String(err)}); restarting in ${delay} ms`);
    // client-node does not restart after errors other than 410 Gone and timeouts.
    setTimeout(() => { if (!isStopped()) inf.start().catch(() => {}); }, delay).unref();
    delay = Math.min(delay * 2, 30_000);
  });
  return inf;
}

export async function startRunner(o: RunnerOptions): Promise<Runner> {
  const mode = o.mode ?? "process";
  if (mode !== "process" && mode !== "podman") throw new Error(`mode: expected 'process' or 'podman', got "${String(mode)}"`);
  const stateDir = resolve(o.stateDir);
  mkdirSync(join(stateDir, "pods"), { recursive: true });
  mkdirSync(join(stateDir, "logs"), { recursive: true });
  const registryFile = join(stateDir, "relays.json");
  const log = o.log ?? ((l: string) => process.stderr.write(`runner: ${l}\n`));
  const labelSelector = o.labelSelector ?? `${RUNNER_POD_LABEL.key}=${RUNNER_POD_LABEL.value}`;
  const addressRange = o.addressRange ?? DEFAULT_ADDRESS_RANGE;
  const addresses = new AddressPool(addressRange);
  const backoff = { initialMs: o.backoff?.initialMs ?? 10_000, maxMs: o.backoff?.maxMs ?? 300_000, resetAfterMs: o.backoff?.resetAfterMs ?? 600_000 };
  const resyncMs = o.resyncMs ?? 2000;
  const runnerLabel = runnerLabelFor(stateDir);

  await cleanUpLeftovers(stateDir, mode, log);

  const kc = loadKubeConfig(o.kubeconfig);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  let stopped = false;
  const isStopped = () => stopped;

  const nodes = informer<k8s.V1Node>(kc, "/api/v1/nodes", () => core.listNode(), undefined, log, isStopped);
  const secrets = informer<k8s.V1Secret>(kc, "/api/v1/secrets", () => core.listSecretForAllNamespaces(), undefined, log, isStopped);
  const configMaps = informer<k8s.V1ConfigMap>(kc, "/api/v1/configmaps", () => core.listConfigMapForAllNamespaces(), undefined, log, isStopped);
  const pods = informer<k8s.V1Pod>(kc, "/api/v1/pods", () => core.listPodForAllNamespaces({ labelSelector }), labelSelector, log, isStopped);
  const lookup: ObjectLookup = {
    secret: (ns, name) => secrets.get(name, ns),
    configMap: (ns, name) => configMaps.get(name, ns),
  };

  const isFakeNode = (name: string | undefined): boolean => {
    if (!name) return false;
    if (o.nodes) return o.nodes.includes(name);
    return nodes.get(name)?.metadata?.annotations?.[FAKE_NODE_ANNOTATION] === "fake";
  };

  const relays = new Map<string, PodRelay>();
  const ended: EndedRun[] = [];
  const done = new Set<string>();
  let registryTimer: NodeJS.Timeout | undefined;
  let registryText = "";
  const writeRegistry = () => {
    registryTimer ??= setTimeout(() => {
      registryTimer = undefined;
      const file: RegistryFile = {
        version: 1, runnerPid: process.pid, mode, addressRange,
        relays: [...relays.values()].map((r) => {
          const info = r.info();
          return { ...info, ...(info.pid ? { pidStart: processStart(info.pid) } : {}) };
        }),
      };
      const text = JSON.stringify(file);
      if (text === registryText) return;
      registryText = text;
      try { writeJsonAtomic(registryFile, file); } catch (e) { log(`writing ${registryFile}: ${(e as Error).message}`); }
    }, 50);
  };

  const ctx: RunnerContext = {
    mode, image: o.image, stateDir, core, lookup, addresses, backoff, log, runnerLabel,
    listenAddressEnv: o.listenAddressEnv ?? "MAILFLEET_LISTEN_ADDRESS",
    entrypoint: o.entrypoint ?? ["node", "relay/main.ts"],
    cwd: o.cwd ?? PROJECT_ROOT,
    liveness: o.liveness ?? true,
    changed: writeRegistry,
    forget: (uid) => {
      relays.delete(uid);
      done.add(uid);
      if (done.size > 10_000) done.delete(done.values().next().value!);
      writeRegistry();
    },
    ended: (r) => {
      ended.push(r);
      if (ended.length > 1000) ended.shift();
    },
    isStopped,
  };

  const consider = (pod: k8s.V1Pod) => {
    if (stopped) return;
    const uid = pod.metadata?.uid;
    if (!uid) return;
    const existing = relays.get(uid);
    if (existing) {
      existing.update(pod);
      return;
    }
    if (!isFakeNode(pod.spec?.nodeName)) return;
    const phase = pod.status?.phase;
    if (phase === "Succeeded" || phase === "Failed") return;
    // A Pod whose relay we already stopped, seen again before the watch reports it gone.
    if (done.has(uid)) return;
    const r = new PodRelay(ctx, pod);
    relays.set(uid, r);
    r.kick();
  };
  const gone = (pod: k8s.V1Pod) => relays.get(pod.metadata?.uid ?? "")?.deleted();
  pods.on("add", consider);
  pods.on("update", consider);
  pods.on("delete", gone);
  const kickNamespace = (obj: k8s.KubernetesObject) => {
    for (const r of relays.values()) if (r.namespace === obj.metadata?.namespace) r.kick();
  };
  for (const inf of [secrets, configMaps] as k8s.ListWatch<k8s.KubernetesObject>[]) {
    inf.on("add", kickNamespace);
    inf.on("update", kickNamespace);
    inf.on("delete", kickNamespace);
  }
  // A node becoming known (or kwok-managed) can make cached Pods ours.
  nodes.on("add", () => { for (const p of pods.list()) consider(p); });

  // Exit hook: a runner that dies without stop() leaves no relay behind (SIGKILL, synchronous).
  const exitHook = () => { for (const r of relays.values()) r.killNow(); };
  process.on("exit", exitHook);

  try {
    await nodes.start();
    await secrets.start();
    await configMaps.start();
    await pods.start();
  } catch (e) {
    stopped = true;
    process.off("exit", exitHook);
    for (const inf of [nodes, secrets, configMaps, pods]) await inf.stop().catch(() => {});
    throw new Error(`runner: cannot watch the cluster: ${(e as Error).message}`);
  }

  // Level-triggered: every Pod again on a timer, and Pods the watch lost are treated as deleted.
  const resync = setInterval(() => {
    if (stopped) return;
    const seen = new Set<string>();
    for (const p of pods.list()) {
      seen.add(p.metadata?.uid ?? "");
      consider(p);
    }
    for (const [uid, r] of relays) {
      if (!seen.has(uid)) r.deleted();
      else r.kick();
    }
  }, resyncMs);
  resync.unref?.();
  for (const p of pods.list()) consider(p);
  log(`watching Pods (${labelSelector}) on ${o.nodes ? o.nodes.join(", ") : "kwok's fake nodes"}; mode ${mode}; listen addresses from ${addressRange}`);

  return {
    stateDir,
    registryFile,
    relays: () => [...relays.values()].map((r) => r.info()),
    ended: () => [...ended],
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(resync);
      for (const inf of [pods, secrets, configMaps, nodes]) await inf.stop().catch(() => {});
      await Promise.all([...relays.values()].map((r) => r.shutdown()));
      relays.clear();
      if (registryTimer) clearTimeout(registryTimer);
      registryTimer = undefined;
      writeJsonAtomic(registryFile, { version: 1, runnerPid: process.pid, mode, addressRange, relays: [] } satisfies RegistryFile);
      process.off("exit", exitHook);
    },
  };
}

/**
 * Stops relays a runner left running when it was killed (recorded in relays.json; a pid counts only
 * if its process start time matches, so a reused pid is never signalled) and removes its podman
 * containers. For `mailfleet local down` and for a runner starting in the same state folder.
 */
export async function stopLeftoverRelays(stateDir: string, log: (l: string) => void = () => {}): Promise<number> {
  const dir = resolve(stateDir);
  let old: RegistryFile | undefined;
  try { old = JSON.parse(readFileSync(join(dir, "relays.json"), "utf8")) as RegistryFile; } catch { /* none */ }
  let n = 0;
  for (const r of old?.relays ?? []) {
    if (!r.pid || !r.pidStart || r.mode !== "process") continue;
    if (pidAlive(r.pid) && processStart(r.pid) === r.pidStart) {
      log(`stopping relay ${r.namespace}/${r.pod} (pid ${r.pid}) left by a previous runner`);
      await stopGroup(r.pid, 10_000);
      n++;
    }
  }
  if (old?.mode === "podman") {
    for (const name of await removeLeftoverContainers(runnerLabelFor(dir))) {
      log(`removed container ${name} left by a previous runner`);
      n++;
    }
  }
  return n;
}

function runnerLabelFor(stateDir: string): string {
  return `io.mailfleet.runner.state=${createHash("sha256").update(stateDir).digest("hex").slice(0, 16)}`;
}

async function cleanUpLeftovers(stateDir: string, mode: string, log: (l: string) => void): Promise<void> {
  await stopLeftoverRelays(stateDir, log);
  if (mode === "podman") {
    for (const n of await removeLeftoverContainers(runnerLabelFor(stateDir))) log(`removed container ${n} left by a previous runner`);
  }
  // Volumes of Pods from before (Secrets must not linger on disk); logs stay for post-mortems.
  rmSync(join(stateDir, "pods"), { recursive: true, force: true });
  mkdirSync(join(stateDir, "pods"), { recursive: true });
}

interface RunnerContext {
  mode: "process" | "podman";
  image?: string;
  stateDir: string;
  core: k8s.CoreV1Api;
  lookup: ObjectLookup;
  addresses: AddressPool;
  backoff: { initialMs: number; maxMs: number; resetAfterMs: number };
  log: (l: string) => void;
  runnerLabel: string;
  listenAddressEnv: string;
  entrypoint: string[];
  cwd: string;
  liveness: boolean;
  changed(): void;
  forget(uid: string): void;
  ended(r: EndedRun): void;
  isStopped(): boolean;
}

const strategicMerge = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.StrategicMergePatch);
const mergePatch = k8s.setHeaderOptions("Content-Type", k8s.PatchStrategy.MergePatch);

function apiStatus(e: unknown): number | undefined {
  return e instanceof k8s.ApiException ? e.code : undefined;
}

/** What one probe loop has concluded. */
interface ProbeState {
  successes: number;
  failures: number;
  ok: boolean;
}

/** One relay Pod: its volumes, its relay's runs, probes and status. */
class PodRelay {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  private pod: k8s.V1Pod;
  private readonly ctx: RunnerContext;
  private readonly dir: string;
  private readonly logFile: string;
  private readonly containerName: string;
  private gone = false;
  private finished = false;
  private run: RunHandle | undefined;
  private runSeq = 0;
  private restarts = 0;
  private lastExit: RelayExit | undefined;
  private backoffEntry: { delayMs: number; lastUpdate: number } | undefined;
  private notBefore = 0;
  private waiting: { reason: string; message?: string } = { reason: "ContainerCreating" };
  private address: string | undefined;
  private env: Record<string, string> = {};
  private argv: string[] = [];
  private volumeDirs: Record<string, string> = {};
  private startup: ProbeState | undefined;
  private readiness: ProbeState | undefined;
  private probeStop: AbortController | undefined;
  private syncing: Promise<void> | undefined;
  private again = false;
  private wake: NodeJS.Timeout | undefined;
  private lastPatch = { sig: "", at: 0 };
  private stopping: Promise<void> | undefined;
  /** Why the runner is ending the current run, and the signals it sent. */
  private stopWhy: string | undefined;
  private signalsSent: string[] = [];

  constructor(ctx: RunnerContext, pod: k8s.V1Pod) {
    this.ctx = ctx;
    this.pod = pod;
    this.uid = pod.metadata!.uid!;
    this.namespace = pod.metadata!.namespace ?? "default";
    this.name = pod.metadata!.name!;
    this.containerName = (() => { try { return selectContainer(pod).name; } catch { return "relay"; } })();
    this.dir = join(ctx.stateDir, "pods", this.uid);
    this.logFile = join(ctx.stateDir, "logs", `${this.namespace}_${this.name}_${this.uid.slice(0, 8)}.log`);
  }

  update(pod: k8s.V1Pod): void {
    this.pod = pod;
    this.kick();
  }

  deleted(): void {
    this.gone = true;
    this.kick();
  }

  /** Schedules a sync; syncs never overlap, and a kick during one runs another after it. */
  kick(): void {
    if (this.finished) return;
    if (this.syncing) {
      this.again = true;
      return;
    }
    this.syncing = (async () => {
      do {
        this.again = false;
        try {
          await this.sync();
        } catch (e) {
          this.ctx.log(`${this.key()}: ${(e as Error).stack ?? String(e)}`);
        }
      } while (this.again && !this.finished);
      this.syncing = undefined;
    })();
  }

  key(): string {
    return `${this.namespace}/${this.name}`;
  }

  private container(): k8s.V1Container {
    return selectContainer(this.pod, this.containerName);
  }

  private async sync(): Promise<void> {
    if (this.finished || this.ctx.isStopped()) return;
    if (this.gone || this.pod.metadata?.deletionTimestamp) {
      await this.terminate(gracePeriodSeconds(this.pod), "the Pod is being deleted");
      await this.finalDelete();
      this.cleanUp();
      return;
    }
    let container: k8s.V1Container;
    try {
      container = this.container();
      this.materializeVolumes(container);
    } catch (e) {
      if (!(e instanceof ContainerConfigError)) throw e;
      // A running relay keeps its files (the kubelet retries the refresh); one not started waits.
      if (!this.run) this.setWaiting(e.reason, e.message);
      else this.ctx.log(`${this.key()}: volumes not refreshed: ${e.message}`);
      await this.reportStatus();
      return;
    }
    if (this.run) {
      await this.reportStatus();
      return;
    }
    if (this.lastExit && !shouldRestart(this.pod, this.lastExit.exitCode)) {
      await this.reportStatus();
      return;
    }
    const wait = this.notBefore - Date.now();
    if (wait > 0) {
      this.setWaiting("CrashLoopBackOff", `back-off ${Math.round((this.backoffEntry?.delayMs ?? 0) / 1000)}s restarting failed container=${this.containerName} pod=${this.name}_${this.namespace}(${this.uid})`);
      this.wakeIn(wait);
      await this.reportStatus();
      return;
    }
    await this.start(container);
    await this.reportStatus();
  }

  private wakeIn(ms: number): void {
    if (this.wake) clearTimeout(this.wake);
    this.wake = setTimeout(() => { this.wake = undefined; this.kick(); }, ms);
    this.wake.unref?.();
  }

  private setWaiting(reason: string, message?: string): void {
    const changed = this.waiting.reason !== reason || this.waiting.message !== message;
    this.waiting = { reason, ...(message ? { message } : {}) };
    if (changed) {
      if (reason !== "CrashLoopBackOff") this.ctx.log(`${this.key()}: ${reason}${message ? `: ${message}` : ""}`);
      this.ctx.changed();
    }
  }

  private volumeDir(name: string): string {
    return join(this.dir, "volumes", name);
  }

  /** Writes every volume (atomically; only what changed), as the kubelet's volume manager does. */
  private materializeVolumes(container: k8s.V1Container): void {
    const sources = volumeSources(this.pod, this.ctx.lookup, { podIP: this.address });
    const fsGroup = securityOf(this.pod, container).fsGroup;
    const dirs: Record<string, string> = {};
    for (const [name, src] of sources) {
      if (src.kind === "files") {
        const dir = this.volumeDir(name);
        if (writeAtomic(dir, src.files, { gid: src.fsGroupApplies ? fsGroup : undefined }) && this.run) {
          this.ctx.log(`${this.key()}: volume ${name} updated in place`);
        }
        dirs[name] = dir;
      } else if (src.kind === "emptyDir") {
        const dir = this.volumeDir(name);
        if (!existsSync(dir)) {
          mkdirSync(dir, { recursive: true });
          chmodSync(dir, 0o777); // the kubelet's emptyDir is world-writable
        }
        dirs[name] = dir;
      } else {
        dirs[name] = src.path;
      }
    }
    this.volumeDirs = dirs;
  }

  private hostPathOf(m: Mount): string {
    const base = this.volumeDirs[m.volume];
    if (!base) throw new ContainerConfigError("CreateContainerConfigError", `volumeMount ${m.mountPath}: no volume named ${m.volume}`);
    return m.subPath ? join(base, m.subPath) : base;
  }

  private async ensureAddress(container: k8s.V1Container, podEnv: Record<string, string>): Promise<string> {
    const ports = listenPorts(container, podEnv);
    const preferred = this.pod.metadata?.annotations?.[LISTEN_ADDRESS_ANNOTATION];
    const free = async (a: string) => {
      for (const p of ports) if (!(await portFreeOn(a, p))) return false;
      return true;
    };
    const mine = this.ctx.addresses.addressOf(this.uid);
    const address = mine ?? await this.ctx.addresses.allocate(this.uid, { preferred, free });
    if (preferred !== address) {
      try {
        await this.ctx.core.patchNamespacedPod(
          { name: this.name, namespace: this.namespace, body: { metadata: { annotations: { [LISTEN_ADDRESS_ANNOTATION]: address } } }, fieldManager: FIELD_MANAGER },
          mergePatch,
        );
      } catch (e) {
        if (apiStatus(e) !== 404) throw e;
      }
    }
    if (this.address !== address) {
      this.address = address;
      this.ctx.changed();
    }
    return address;
  }

  private async start(container: k8s.V1Container): Promise<void> {
    let env: Record<string, string>;
    let argv: string[];
    let mounts: Mount[];
    try {
      // The listen address first: status.podIP in fieldRefs is where the relay is reachable here.
      const preliminary = resolveEnv(this.pod, container, this.ctx.lookup, {});
      const address = await this.ensureAddress(container, preliminary);
      env = resolveEnv(this.pod, container, this.ctx.lookup, { podIP: address });
      env[this.ctx.listenAddressEnv] = address;
      mounts = mountsOf(container);
      for (const m of mounts) this.hostPathOf(m); // every mount has its volume
      const cmd = resolveCommand(container, env);
      argv = [...(cmd.command ?? (this.ctx.mode === "process" ? this.ctx.entrypoint : [])), ...(cmd.args ?? [])];
    } catch (e) {
      if (!(e instanceof ContainerConfigError)) throw e;
      this.setWaiting(e.reason, e.message);
      this.wakeIn(5000);
      return;
    }
    this.runSeq++;
    const name = `${this.namespace}_${this.name}`;
    let run: RunHandle;
    if (this.ctx.mode === "process") {
      const runEnv = { ...rewriteMountPaths(env, mounts, (m) => this.hostPathOf(m)) };
      const full = argv.map((a, i) => (i === 0 && a === "node" ? nodeBinary() : a));
      // The image's environment (node:24-slim's PATH, the Dockerfile's NODE_ENV), then the Pod's;
      // nothing from the runner's own environment leaks in but Node's compile cache folder (set by
      // npm test), which only makes the relay start faster (about half the CPU of loading modules).
      const compileCache: Record<string, string> = process.env.NODE_COMPILE_CACHE ? { NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE } : {};
      const processEnv: Record<string, string> = { PATH: `${dirname(nodeBinary())}:${IMAGE_PATH}`, NODE_ENV: "production", ...compileCache, ...runEnv };
      this.env = processEnv;
      this.argv = full;
      run = runProcess({ name, argv: full, env: processEnv, cwd: this.ctx.cwd, logFile: this.logFile });
    } else {
      const sec = securityOf(this.pod, container);
      const csc = container.securityContext ?? {};
      const sysctls = this.pod.spec?.securityContext?.sysctls ?? [];
      const capAdd = [...(csc.capabilities?.add ?? [])];
      // On the host network a Pod's own sysctls cannot apply; the one the renderer sets (unprivileged
      // ports from 0) means "may bind 25 and 587": the capability gives the same.
      if (sysctls.some((s) => s.name === "net.ipv4.ip_unprivileged_port_start" && Number(s.value) <= 25) && !capAdd.includes("NET_BIND_SERVICE")) capAdd.push("NET_BIND_SERVICE");
      const cname = `mf-${this.namespace}-${this.name}`.replace(/[^a-zA-Z0-9_.-]/g, "-").slice(0, 50) + `-${this.uid.slice(0, 8)}-${this.runSeq}`;
      const image = this.ctx.image ?? container.image ?? "";
      this.env = env;
      this.argv = argv;
      run = runPodman({
        name: cname, image,
        ...(container.command ? { entrypoint: resolveCommand(container, env).command! } : {}),
        args: resolveCommand(container, env).args ?? [],
        env,
        volumes: mounts.map((m) => `${this.hostPathOf(m)}:${m.mountPath}${m.readOnly ? ":ro" : ""}`),
        ...(sec.runAsUser !== undefined ? { user: `${sec.runAsUser}${sec.runAsGroup !== undefined ? `:${sec.runAsGroup}` : ""}` } : {}),
        ...(sec.fsGroup !== undefined ? { groupAdd: [sec.fsGroup] } : {}),
        readOnly: sec.readOnlyRootFilesystem,
        capDrop: csc.capabilities?.drop ?? [],
        capAdd,
        noNewPrivileges: csc.allowPrivilegeEscalation === false,
        labels: { [this.ctx.runnerLabel.split("=")[0]!]: this.ctx.runnerLabel.split("=")[1]!, "io.mailfleet.runner.pod": `${this.namespace}.${this.name}` },
        logFile: this.logFile,
      });
    }
    this.run = run;
    if (this.lastExit) this.restarts++;
    this.waiting = { reason: "" };
    this.ctx.log(`${this.key()}: started ${run.id} on ${this.address}${this.restarts ? ` (restart ${this.restarts})` : ""}`);
    this.ctx.changed();
    void run.exited.then((exit) => this.onExit(run, exit));
    this.startProbes(run, container);
  }

  private onExit(run: RunHandle, exit: Exit): void {
    if (this.run !== run) return;
    this.run = undefined;
    this.probeStop?.abort();
    this.readiness = undefined;
    this.startup = undefined;
    const ranMs = exit.finishedAt.getTime() - run.startedAt.getTime();
    this.lastExit = {
      exitCode: exit.exitCode,
      ...(exit.signal ? { signal: exit.signal } : {}),
      reason: exit.exitCode === 0 ? "Completed" : "Error",
      startedAt: seconds(run.startedAt),
      finishedAt: seconds(exit.finishedAt),
    };
    // The kubelet's back-off: the first restart at once, then 10 s, 20 s, ... up to 5 min; a
    // container that ran longer than the reset period starts over.
    const now = Date.now();
    if (this.backoffEntry && (ranMs > this.ctx.backoff.resetAfterMs || now - this.backoffEntry.lastUpdate > this.ctx.backoff.resetAfterMs)) this.backoffEntry = undefined;
    if (!this.backoffEntry) {
      this.backoffEntry = { delayMs: this.ctx.backoff.initialMs, lastUpdate: now };
      this.notBefore = now;
    } else {
      this.notBefore = now + this.backoffEntry.delayMs;
      this.backoffEntry = { delayMs: Math.min(this.backoffEntry.delayMs * 2, this.ctx.backoff.maxMs), lastUpdate: now };
    }
    this.ctx.log(`${this.key()}: ${run.id} exited (${exit.signal ?? `code ${exit.exitCode}`}) after ${Math.round(ranMs / 1000)} s`);
    const pid = run.pid();
    this.ctx.ended({
      pod: this.name, namespace: this.namespace, uid: this.uid, ...(pid ? { pid } : {}), containerID: run.id,
      ...(this.address ? { listenAddress: this.address } : {}),
      exitCode: exit.exitCode, ...(exit.signal ? { signal: exit.signal } : {}),
      why: this.stopWhy ?? "exited", signalsSent: this.signalsSent,
      startedAt: run.startedAt.toISOString(), finishedAt: exit.finishedAt.toISOString(),
    });
    this.stopWhy = undefined;
    this.signalsSent = [];
    this.ctx.changed();
    this.kick();
  }

  /** SIGTERM, then SIGKILL after the grace period; resolves once the relay has exited. */
  private async terminate(graceSeconds: number, why: string): Promise<void> {
    const run = this.run;
    if (!run) return;
    if (this.stopping) return this.stopping;
    this.stopping = (async () => {
      this.ctx.log(`${this.key()}: stopping ${run.id} (${why}; grace ${graceSeconds} s)`);
      this.probeStop?.abort();
      this.stopWhy = why;
      this.signalsSent.push("SIGTERM");
      await run.signal("SIGTERM");
      const t = sleep(graceSeconds * 1000).then(() => "timeout" as const);
      if ((await Promise.race([run.exited, t])) === "timeout") {
        this.ctx.log(`${this.key()}: ${run.id} still running after ${graceSeconds} s: SIGKILL`);
        this.signalsSent.push("SIGKILL");
        await run.signal("SIGKILL");
        await run.exited;
      }
      // Members of the process group that outlived the leader.
      run.killNow();
      // onExit has run (it is chained on the same promise, before us).
      await sleep(0);
    })();
    try {
      await this.stopping;
    } finally {
      this.stopping = undefined;
    }
  }

  /** The kubelet's last word on a terminating Pod: delete it with grace 0 once the relay is gone. */
  private async finalDelete(): Promise<void> {
    if (this.gone) return;
    try {
      await this.ctx.core.deleteNamespacedPod({
        name: this.name, namespace: this.namespace, gracePeriodSeconds: 0,
        body: { gracePeriodSeconds: 0, preconditions: { uid: this.uid } },
      });
    } catch (e) {
      const s = apiStatus(e);
      if (s !== 404 && s !== 409) this.ctx.log(`${this.key()}: final delete failed: ${(e as Error).message}`);
    }
  }

  private cleanUp(): void {
    this.finished = true;
    if (this.wake) clearTimeout(this.wake);
    this.ctx.addresses.release(this.uid);
    rmSync(this.dir, { recursive: true, force: true });
    this.ctx.log(`${this.key()}: gone`);
    this.ctx.forget(this.uid);
  }

  /** For stop(): the relay stops as on Pod deletion; the Pod stays and shows the container gone. */
  async shutdown(): Promise<void> {
    if (this.wake) clearTimeout(this.wake);
    await this.terminate(gracePeriodSeconds(this.pod), "the runner is stopping");
    this.finished = true;
    if (this.syncing) await this.syncing.catch(() => {});
    if (!this.gone && !this.pod.metadata?.deletionTimestamp) {
      this.waiting = { reason: "RunnerStopped", message: "the mailfleet runner stopped" };
      await Promise.race([this.reportStatus(true), sleep(5000)]).catch(() => {});
    }
    this.ctx.addresses.release(this.uid);
    rmSync(this.dir, { recursive: true, force: true });
  }

  killNow(): void {
    this.run?.killNow();
  }

  // --- probes -----------------------------------------------------------------------------------

  private startProbes(run: RunHandle, container: k8s.V1Container): void {
    const stop = new AbortController();
    this.probeStop = stop;
    let startup: Probe | undefined;
    let readiness: Probe | undefined;
    let liveness: Probe | undefined;
    try {
      startup = probeOf(container, "startup");
      readiness = probeOf(container, "readiness");
      liveness = this.ctx.liveness ? probeOf(container, "liveness") : undefined;
    } catch (e) {
      this.ctx.log(`${this.key()}: probes ignored: ${(e as Error).message}`);
    }
    this.startup = startup ? { successes: 0, failures: 0, ok: false } : undefined;
    this.readiness = readiness ? { successes: 0, failures: 0, ok: false } : undefined;
    const loop = async (p: Probe, state: ProbeState, onChange: (ok: boolean) => void, gate?: () => boolean) => {
      await abortableSleep(p.initialDelayMs, stop.signal);
      while (!stop.signal.aborted && run.running()) {
        if (!gate || gate()) {
          const ok = await this.probe(run, p);
          if (stop.signal.aborted) return;
          if (ok) { state.successes++; state.failures = 0; } else { state.failures++; state.successes = 0; }
          const next = ok ? (state.ok || state.successes >= p.successThreshold) : (state.ok && state.failures < p.failureThreshold);
          if (next !== state.ok) {
            state.ok = next;
            onChange(next);
          } else if (!ok && state.failures >= p.failureThreshold) {
            onChange(false);
          }
        }
        await abortableSleep(p.periodMs, stop.signal);
      }
    };
    const startupDone = () => !this.startup || this.startup.ok;
    if (startup && this.startup) {
      const st = this.startup;
      void loop(startup, st, (ok) => {
        if (ok) { this.ctx.changed(); this.kick(); }
        else if (st.failures >= startup.failureThreshold) void this.failedProbe(run, "Startup", startup);
      }, () => !st.ok);
    }
    if (readiness && this.readiness) {
      void loop(readiness, this.readiness, () => { this.ctx.changed(); this.kick(); }, startupDone);
    }
    if (liveness) {
      const st: ProbeState = { successes: 0, failures: 0, ok: true };
      void loop(liveness, st, (ok) => { if (!ok) void this.failedProbe(run, "Liveness", liveness); }, startupDone);
    }
  }

  private async failedProbe(run: RunHandle, which: string, p: Probe): Promise<void> {
    if (this.run !== run || this.stopping) return;
    const grace = p.terminationGracePeriodSeconds ?? gracePeriodSeconds(this.pod);
    this.ctx.log(`${this.key()}: ${which} probe failed ${p.failureThreshold} times: restarting`);
    await this.terminate(grace, `${which.toLowerCase()} probe failed`);
  }

  private probe(run: RunHandle, p: Probe): Promise<boolean> {
    const host = p.host ?? this.address ?? "127.0.0.1";
    if (p.kind === "exec") return run.exec(p.command ?? [], p.timeoutMs).then((c) => c === 0);
    if (p.kind === "tcpSocket") {
      return new Promise((resolve) => {
        const s = connect({ host, port: p.port!, timeout: p.timeoutMs });
        s.once("connect", () => { s.destroy(); resolve(true); });
        s.once("timeout", () => { s.destroy(); resolve(false); });
        s.once("error", () => resolve(false));
      });
    }
    return new Promise((resolve) => {
      const req = (p.scheme === "HTTPS" ? httpsRequest : httpRequest)({
        host, port: p.port, path: p.path, method: "GET", timeout: p.timeoutMs, agent: false,
        headers: { "User-Agent": "kube-probe/1.36", Accept: "*/*", ...p.headers },
        ...(p.scheme === "HTTPS" ? { rejectUnauthorized: false } : {}), // the kubelet does not verify probe certificates
      }, (res) => {
        res.resume();
        const code = res.statusCode ?? 0;
        resolve(code >= 200 && code < 400);
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", () => resolve(false));
      req.end();
    });
  }

  // --- status -----------------------------------------------------------------------------------

  private ready(): boolean {
    if (!this.run) return false;
    if (this.startup && !this.startup.ok) return false;
    return this.readiness ? this.readiness.ok : true;
  }

  info(): RelayInfo {
    const c = (() => { try { return this.container(); } catch { return undefined; } })();
    const ports = c ? relayPorts(c, this.env) : {};
    const run = this.run;
    const state: RelayInfo["state"] = run ? "running" : this.lastExit && !shouldRestart(this.pod, this.lastExit.exitCode) ? "terminated" : "waiting";
    const pid = run?.pid();
    return {
      pod: this.name,
      namespace: this.namespace,
      uid: this.uid,
      node: this.pod.spec?.nodeName ?? "",
      container: this.containerName,
      mode: this.ctx.mode,
      ...(pid ? { pid } : {}),
      ...(run ? { containerID: run.id } : {}),
      ...(this.address ? { listenAddress: this.address } : {}),
      ...(ports.http !== undefined ? { httpPort: ports.http } : {}),
      ...(ports.submission !== undefined ? { submissionPort: ports.submission } : {}),
      ...(ports.inbound !== undefined ? { inboundPort: ports.inbound } : {}),
      state,
      ...(state === "waiting" && this.waiting.reason ? { reason: this.waiting.reason } : {}),
      ...(state === "waiting" && this.waiting.message ? { message: this.waiting.message } : {}),
      ready: this.ready(),
      restarts: this.restarts,
      ...(run ? { startedAt: run.startedAt.toISOString() } : {}),
      ...(this.lastExit ? { lastExit: this.lastExit } : {}),
      terminating: this.gone || Boolean(this.pod.metadata?.deletionTimestamp),
      env: { ...this.env },
      argv: [...this.argv],
      dir: this.dir,
      volumes: { ...this.volumeDirs },
      logFile: this.logFile,
    };
  }

  /** The container's status as the kubelet writes it. */
  private containerStatus(c: k8s.V1Container): k8s.V1ContainerStatus {
    const run = this.run;
    const terminal = !run && this.lastExit !== undefined && !shouldRestart(this.pod, this.lastExit.exitCode);
    const last: k8s.V1ContainerState = this.lastExit
      ? { terminated: { exitCode: this.lastExit.exitCode, ...(this.lastExit.signal ? { signal: signalNumber(this.lastExit.signal) } : {}), reason: this.lastExit.reason, startedAt: this.lastExit.startedAt as unknown as Date, finishedAt: this.lastExit.finishedAt as unknown as Date } }
      : {};
    let state: k8s.V1ContainerState;
    if (run) state = { running: { startedAt: seconds(run.startedAt) as unknown as Date } };
    else if (terminal) state = last;
    else state = { waiting: { reason: this.waiting.reason || "ContainerCreating", ...(this.waiting.message ? { message: this.waiting.message } : {}) } };
    return {
      name: c.name,
      image: c.image ?? "",
      imageID: "",
      ...(run ? { containerID: run.id } : {}),
      ready: this.ready(),
      started: Boolean(run) && (!this.startup || this.startup.ok),
      restartCount: this.restarts,
      state,
      lastState: terminal ? {} : last,
    };
  }

  /**
   * Ready, ContainersReady and containerStatuses from what the runner knows. Only once kwok has
   * moved the Pod out of Pending (its one pod-start stage has been applied), so that kwok's patch
   * cannot land after ours. Level-triggered: compared with the cached Pod, patched when different.
   */
  private async reportStatus(force = false): Promise<void> {
    this.ctx.changed();
    const pod = this.pod;
    if (!force && (pod.status?.phase === undefined || pod.status.phase === "Pending")) return;
    if (!force && (this.gone || pod.metadata?.deletionTimestamp)) return;
    let c: k8s.V1Container;
    try { c = this.container(); } catch { return; }
    const ours = this.containerStatus(c);
    const cachedStatuses = pod.status?.containerStatuses ?? [];
    // Other containers (sidecars) run nowhere; they keep whatever kwok said about them.
    const statuses = (pod.spec?.containers ?? []).map((x) => x.name === c.name ? ours
      : cachedStatuses.find((s) => s.name === x.name) ?? { name: x.name, image: x.image ?? "", imageID: "", ready: false, restartCount: 0, state: { waiting: { reason: "ContainerCreating" } } });
    const unready = statuses.filter((s) => !s.ready).map((s) => s.name);
    const allReady = unready.length === 0;
    const phase = ours.state?.terminated ? (ours.state.terminated.exitCode === 0 ? "Succeeded" : "Failed") : undefined;

    // What matters, from our view and from the cached Pod (timestamps at the API's precision).
    const view = (ready: boolean, s: k8s.V1ContainerStatus | undefined, ph: string | undefined) => JSON.stringify({
      ready,
      s: s && {
        ready: s.ready, started: s.started ?? false, restartCount: s.restartCount, containerID: s.containerID ?? "",
        state: Object.keys(s.state ?? {}).sort(), waiting: s.state?.waiting?.reason ?? "", message: s.state?.waiting?.message ?? "",
        startedAt: s.state?.running?.startedAt ? seconds(s.state.running.startedAt) : "",
        lastExit: s.lastState?.terminated?.exitCode ?? null,
      },
      ph: ph ?? "",
    });
    const cond = (type: string) => (pod.status?.conditions ?? []).find((x) => x.type === type);
    const want = view(allReady, ours, phase);
    const have = view(cond("Ready")?.status === "True" && cond("ContainersReady")?.status === "True", cachedStatuses.find((s) => s.name === c.name), phase ? pod.status?.phase : undefined);
    if (!force && want === have) return;
    // The cache lags our own patch: do not repeat an identical patch within a few seconds.
    if (!force && want === this.lastPatch.sig && Date.now() - this.lastPatch.at < 5000) return;
    this.lastPatch = { sig: want, at: Date.now() };
    const condition = (type: string) => {
      const old = cond(type);
      const status = allReady ? "True" : "False";
      return {
        type, status,
        lastProbeTime: null,
        lastTransitionTime: old?.status === status && old.lastTransitionTime ? seconds(old.lastTransitionTime) : seconds(new Date()),
        // null removes a field in a strategic merge patch: a True condition carries no reason.
        ...(allReady ? { reason: null, message: null } : { reason: "ContainersNotReady", message: `containers with unready status: [${unready.join(" ")}]` }),
      };
    };
    const body = { status: { conditions: [condition("ContainersReady"), condition("Ready")], containerStatuses: statuses, ...(phase ? { phase } : {}) } };
    try {
      await this.ctx.core.patchNamespacedPodStatus({ name: this.name, namespace: this.namespace, body, fieldManager: FIELD_MANAGER }, strategicMerge);
    } catch (e) {
      if (apiStatus(e) === 404) return;
      this.lastPatch = { sig: "", at: 0 };
      this.ctx.log(`${this.key()}: status not written: ${(e as Error).message.slice(0, 300)}`);
    }
  }
}

/** RFC 3339 at the API's precision (seconds), from a Date or the string a watch gives. */
function seconds(t: Date | string): string {
  return new Date(t).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function signalNumber(sig: string): number | undefined {
  const n = ({ SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGSEGV: 11, SIGABRT: 6 } as Record<string, number>)[sig];
  return n;
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    t.unref?.();
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
