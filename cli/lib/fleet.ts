// Where the fleet is and the connections to it. Kubernetes: --kubeconfig, else $KUBECONFIG, else
// the local fleet `mailfleet local up` started (its state file), else in-cluster or ~/.kube/config,
// as kubectl resolves them. NATS: --nats, else $MAILFLEET_NATS_URL, else the local fleet's, else the
// URL the operator in the cluster was given (reachable from inside the cluster, or through a
// port-forward the error message spells out).
//
// Kubernetes requests go through the operator's KubeClient: @kubernetes/client-node's KubeConfig for
// the connection and credentials (files, exec plugins, OIDC, in-cluster), plus a request timeout,
// which client-node's typed APIs lack (an unreachable server would hang the command).
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
// Libraries are imported when first needed (client-node alone takes most of a second to load), so
// usage errors and commands that need only one of the two answer quickly.
import type { KubeConfig } from "@kubernetes/client-node";
import type { NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { ApiError, KubeClient } from "../../operator/runtime/kube.ts";
import type { Plan } from "../../api/plan.ts";
import { localStatus, PROJECT_ROOT, type LocalState } from "../../test/env/local-state.ts";
import type { Common } from "./flags.ts";

export interface Target {
  /** How the cluster was found, for messages. */
  kubeSource: "--kubeconfig" | "KUBECONFIG" | "local fleet" | "in-cluster" | "~/.kube/config";
  kubeconfigPath?: string;
  context?: string;
  local?: LocalState;
  natsUrls?: string[];
  natsSource?: "--nats" | "MAILFLEET_NATS_URL" | "local fleet";
  natsCreds?: string;
  /** A local fleet state directory that exists but does not run (for the error when nothing else is configured). */
  localDown?: string;
}

/** The local fleet's state directories to look in, most specific first. */
function stateDirs(flag: string | undefined, env: NodeJS.ProcessEnv): string[] {
  if (flag) return [resolve(flag)];
  if (env.MAILFLEET_STATE_DIR) return [resolve(env.MAILFLEET_STATE_DIR)];
  // .fleet: where `npm start` runs its fleet (it writes the same state file).
  return [...new Set([resolve(".local"), join(PROJECT_ROOT, ".local"), join(PROJECT_ROOT, ".fleet")])];
}

/** A running local fleet (its API server alive), or why none was found. */
export function findLocalFleet(stateDirFlag?: string, env: NodeJS.ProcessEnv = process.env): { state?: LocalState; down?: string } {
  let down: string | undefined;
  for (const dir of stateDirs(stateDirFlag, env)) {
    const { state, alive } = localStatus(dir);
    if (state && alive["kube-apiserver"]) return { state };
    if (existsSync(join(dir, "local.json"))) down ??= dir;
  }
  return down ? { down } : {};
}

export function resolveTarget(c: Common, env: NodeJS.ProcessEnv = process.env): Target {
  const t: Target = { kubeSource: "~/.kube/config" };
  if (c.context) t.context = c.context;
  const natsEnv = env.MAILFLEET_NATS_URL?.trim();
  const explicitKube = !!c.kubeconfig || !!env.KUBECONFIG;
  const local = explicitKube && !c.stateDir ? {} : findLocalFleet(c.stateDir, env);
  if (c.stateDir && !local.state) throw new Error(`no local fleet runs in ${resolve(c.stateDir)} (start one with \`mailfleet local up --state-dir ${c.stateDir}\`)`);
  if (c.kubeconfig) {
    t.kubeSource = "--kubeconfig";
    t.kubeconfigPath = resolve(c.kubeconfig);
  } else if (env.KUBECONFIG) {
    t.kubeSource = "KUBECONFIG";
    t.kubeconfigPath = env.KUBECONFIG;
  } else if (local.state && !(c.nats && !c.stateDir)) {
    t.kubeSource = "local fleet";
    t.kubeconfigPath = local.state.kubeconfig;
    t.local = local.state;
  } else if (env.KUBERNETES_SERVICE_HOST && !existsSync(join(homedir(), ".kube", "config"))) {
    // As kubectl: ~/.kube/config first, then the Pod's service account.
    t.kubeSource = "in-cluster";
  } else {
    t.kubeconfigPath = join(homedir(), ".kube", "config");
    if (local.down) t.localDown = local.down;
  }
  // The local fleet's NATS goes with the local fleet's cluster (also when its kubeconfig was named).
  const localForNats = t.local ?? (t.kubeconfigPath ? matchLocalKubeconfig(t.kubeconfigPath, c.stateDir, env) : undefined);
  if (c.nats) {
    t.natsUrls = splitUrls(c.nats);
    t.natsSource = "--nats";
  } else if (natsEnv) {
    t.natsUrls = splitUrls(natsEnv);
    t.natsSource = "MAILFLEET_NATS_URL";
  } else if (localForNats) {
    t.natsUrls = localForNats.natsUrls?.length ? localForNats.natsUrls : splitUrls(localForNats.nats);
    t.natsSource = "local fleet";
  }
  const creds = c.natsCreds ?? env.MAILFLEET_NATS_CREDS;
  if (creds) t.natsCreds = creds;
  return t;
}

/** The running local fleet whose kubeconfig this is (a --kubeconfig naming the local fleet's file). */
function matchLocalKubeconfig(path: string, stateDir: string | undefined, env: NodeJS.ProcessEnv): LocalState | undefined {
  const { state } = findLocalFleet(stateDir, env);
  return state && resolve(state.kubeconfig) === resolve(path) ? state : undefined;
}

function splitUrls(s: string): string[] {
  return s.split(",").map((u) => u.trim()).filter(Boolean);
}

function reasonOf(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string }; code?: string };
  if (err.name === "TimeoutError" || err.name === "AbortError") return "no answer within 10s";
  const cause = err.cause;
  if (cause?.code) return `${cause.code}${cause.message && !cause.message.includes(cause.code) ? ` (${cause.message})` : ""}`;
  return err.message;
}

export interface NatsHandle {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
}

/** The fleet: a Kubernetes client and a NATS connection, each made on first use and checked. */
export class Fleet {
  readonly target: Target;
  #kc?: KubeConfig;
  #kube?: Promise<KubeClient>;
  #nats?: Promise<NatsHandle>;
  #plan?: Promise<Plan | undefined>;

  constructor(target: Target) {
    this.target = target;
  }

  static fromFlags(c: Common): Fleet {
    return new Fleet(resolveTarget(c));
  }

  async kubeConfig(): Promise<KubeConfig> {
    if (this.#kc) return this.#kc;
    const t = this.target;
    const { KubeConfig } = await import("@kubernetes/client-node");
    const kc = new KubeConfig();
    if (t.kubeSource === "in-cluster") {
      kc.loadFromCluster();
    } else if (t.kubeSource === "KUBECONFIG") {
      for (const p of t.kubeconfigPath!.split(process.platform === "win32" ? ";" : ":").filter(Boolean)) {
        if (!existsSync(p)) throw new Error(`KUBECONFIG names ${p}, which does not exist`);
      }
      kc.loadFromDefault();
    } else {
      const path = t.kubeconfigPath!;
      if (!existsSync(path)) {
        if (t.kubeSource === "~/.kube/config") {
          throw new Error(
            "no cluster configured: pass --kubeconfig, set KUBECONFIG, or start the local fleet with `mailfleet local up`" +
              (t.localDown ? ` (the local fleet in ${t.localDown} is not running)` : ""),
          );
        }
        throw new Error(`kubeconfig ${path} does not exist (${t.kubeSource})`);
      }
      try {
        kc.loadFromFile(path);
      } catch (e) {
        throw new Error(`kubeconfig ${path} cannot be read: ${(e as Error).message}`);
      }
    }
    if (t.context) {
      if (!kc.getContexts().some((x) => x.name === t.context)) {
        throw new Error(`context "${t.context}" is not in the kubeconfig (contexts: ${kc.getContexts().map((x) => x.name).join(", ") || "none"})`);
      }
      kc.setCurrentContext(t.context);
    }
    this.#kc = kc;
    return kc;
  }

  /** The API server's URL (for messages), once the kubeconfig was read. */
  server(): string {
    return this.#kc?.getCurrentCluster()?.server ?? `(the cluster of ${this.target.kubeSource})`;
  }

  where(): string {
    const t = this.target;
    return `${this.server()} (${t.kubeSource}${t.kubeconfigPath && t.kubeSource !== "KUBECONFIG" ? ` ${t.kubeconfigPath}` : ""}${t.context ? `, context ${t.context}` : ""})`;
  }

  /** A Kubernetes client, after checking that the API server answers. */
  kube(): Promise<KubeClient> {
    this.#kube ??= (async () => {
      const kc = await this.kubeConfig();
      if (!kc.getCurrentCluster()) throw new Error(`the kubeconfig has no current cluster (${this.target.kubeSource})`);
      const client = new KubeClient(kc, { userAgent: "mailfleet-cli" });
      try {
        await client.request("GET", "/version", { timeoutMs: 10_000 });
      } catch (e) {
        if (e instanceof ApiError && (e.code === 401 || e.code === 403)) {
          throw new Error(`the cluster at ${this.where()} refused our credentials: ${e.message}`);
        }
        if (e instanceof ApiError) return client; // it answered; /version may be restricted
        throw new Error(`no cluster reachable at ${this.where()}: ${reasonOf(e)}`);
      }
      return client;
    })();
    return this.#kube;
  }

  /** A NATS connection with JetStream, after checking that a server answers. */
  nats(): Promise<NatsHandle> {
    this.#nats ??= (async () => {
      const t = this.target;
      let urls = t.natsUrls;
      if (!urls?.length) urls = await this.#discoverNats();
      const { connect, credsAuthenticator } = await import("@nats-io/transport-node");
      const { jetstream, jetstreamManager } = await import("@nats-io/jetstream");
      let nc: NatsConnection;
      try {
        nc = await connect({
          servers: urls,
          name: "mailfleet-cli",
          timeout: 5000,
          maxReconnectAttempts: 3,
          reconnectTimeWait: 500,
          noAsyncTraces: true,
          ...(t.natsCreds ? { authenticator: credsAuthenticator(readCreds(t.natsCreds)) } : {}),
        });
      } catch (e) {
        throw new Error(`no NATS reachable at ${urls.join(",")}${t.natsSource ? ` (${t.natsSource})` : ""}: ${(e as Error).message}`);
      }
      return { nc, js: jetstream(nc), jsm: await jetstreamManager(nc, { checkAPI: false }) };
    })();
    return this.#nats;
  }

  async #discoverNats(): Promise<string[]> {
    // The operator's --nats flag names the fleet's NATS; from outside the cluster that name
    // usually does not resolve, so say how to reach it.
    let found: string | undefined;
    try {
      const kube = await this.kube();
      const list = await kube.request<{ items: { metadata: { namespace: string; name: string }; spec: { template: { spec: { containers: { args?: string[] }[] } } } }[] }>(
        "GET", "/apis/apps/v1/deployments", { query: { labelSelector: "app.kubernetes.io/name=mailfleet" }, timeoutMs: 10_000 },
      );
      for (const d of list.items) {
        for (const c of d.spec.template.spec.containers) {
          const a = (c.args ?? []).find((x) => x.startsWith("--nats="));
          if (a) found = a.slice("--nats=".length);
        }
      }
    } catch {
      /* no cluster or no permission: the generic message below */
    }
    if (found && process.env.KUBERNETES_SERVICE_HOST) return splitUrls(found);
    const hint = found
      ? `the operator uses ${found}; from outside the cluster run e.g. \`kubectl port-forward -n nats svc/nats 4222:4222\` and pass --nats nats://127.0.0.1:4222`
      : "pass --nats URL or set MAILFLEET_NATS_URL";
    throw new Error(`no NATS URL known for ${this.where()}: ${hint}`);
  }

  /** The fleet plan in KV, or undefined when the operator has published none yet. */
  plan(): Promise<Plan | undefined> {
    this.#plan ??= (async () => {
      const { PLAN_BUCKET, PLAN_KEY } = await import("../../api/plan.ts");
      const kv = await this.kv(PLAN_BUCKET, { optional: true });
      if (!kv) return undefined;
      const e = await kv.get(PLAN_KEY);
      if (!e || e.operation !== "PUT" || e.length === 0) return undefined;
      const { decodePlanValue } = await import("../../relay/plan/decode.ts");
      return decodePlanValue(e.value);
    })();
    return this.#plan;
  }

  /** The plan as it is now (not the one read earlier by this process). */
  freshPlan(): Promise<Plan | undefined> {
    this.#plan = undefined;
    return this.plan();
  }

  /** Opens a KV bucket; undefined (optional) or an error naming it when it does not exist. */
  async kv(bucket: string, o: { optional?: boolean; why?: string } = {}): Promise<KV | undefined> {
    const { js } = await this.nats();
    const { Kvm } = await import("@nats-io/kv");
    const kv = await new Kvm(js).open(bucket);
    try {
      await kv.status();
    } catch (e) {
      if (/stream not found|bucket not found|not found/i.test((e as Error).message)) {
        if (o.optional) return undefined;
        throw new Error(`NATS has no KV bucket ${bucket}${o.why ? `: ${o.why}` : ""}`);
      }
      throw e;
    }
    return kv;
  }

  async close(): Promise<void> {
    const k = this.#kube;
    const n = this.#nats;
    this.#kube = undefined;
    this.#nats = undefined;
    await Promise.allSettled([
      k?.then((c) => c.close()),
      n?.then((h) => h.nc.close()),
    ]);
  }
}

function readCreds(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new Error(`NATS credentials ${path} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Runs `fn` with a fleet and closes its connections afterwards. */
export async function withFleet<T>(c: Common, fn: (fleet: Fleet) => Promise<T>): Promise<T> {
  const fleet = Fleet.fromFlags(c);
  try {
    return await fn(fleet);
  } finally {
    await fleet.close();
  }
}
