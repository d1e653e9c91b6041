// What the operator's integration tests share: a local control plane (test/env) with an audit log
// of every write, NATS, dnsmasq, the operator's least-privilege identity (a ServiceAccount bound to
// the rules in operator/rbac.ts), and operator processes started as `node operator/main.ts`.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { PLAN_BUCKET, PLAN_KEY, type Plan } from "../../api/plan.ts";
import { clusterRules, namespaceRules } from "../../operator/rbac.ts";
import { decodePlan } from "../../operator/plan/store.ts";
import { type ControlPlane, type KubeResponse, startControlPlane } from "../env/controlplane.ts";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle, type DnsRecord } from "../env/peers/dns.ts";
import { childEnv, freePorts, logTail, startProcess, type ManagedProcess } from "../env/proc.ts";
import { PROJECT_ROOT } from "../env/local-state.ts";

export const OPERATOR_NS = "mailfleet-system";
export const OPERATOR_SA = "mailfleet-operator";
export const OPERATOR_USER = `system:serviceaccount:${OPERATOR_NS}:${OPERATOR_SA}`;

const AUDIT_POLICY = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
`;

export type AuditEvent = {
  verb: string;
  user: { username: string };
  userAgent?: string;
  objectRef?: { resource?: string; namespace?: string; name?: string; subresource?: string; apiGroup?: string };
  responseStatus?: { code?: number };
  stageTimestamp: string;
  requestURI: string;
};

export type OperatorProcess = {
  proc: ManagedProcess;
  identity: string;
  metricsPort: number;
  webhookPort: number;
  logFile: string;
  log(): string;
  metrics(): Promise<string>;
  stop(): Promise<void>;
  kill(): Promise<void>;
};

export type Env = {
  dir: string;
  cp: ControlPlane;
  nats: Nats;
  dns: DnsHandle;
  /** Kubeconfig file of the operator's ServiceAccount. */
  operatorKubeconfig: string;
  auditLog: string;
  req(method: string, path: string, body?: unknown, contentType?: string): Promise<KubeResponse>;
  /** Server-side apply as the test user ("tester" field manager). */
  apply(obj: any): Promise<any>;
  get(path: string): Promise<any | undefined>;
  /** Writes recorded in the audit log since `since` (ISO time), optionally by one user. */
  audit(o?: { since?: string; user?: string }): AuditEvent[];
  /** cgroup: a cgroup (v1 memory) directory to start the operator in, as a container would. */
  startOperator(o?: { identity?: string; args?: string[]; webhook?: boolean; nodeArgs?: string[]; cgroup?: string }): Promise<OperatorProcess>;
  plan(): Promise<Plan | null>;
  stop(): Promise<void>;
};

export async function eventually<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 180_000, everyMs = 500): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false && v !== null) return v;
      last = undefined;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

export function condition(obj: any, type: string): { status: string; reason: string; message: string; observedGeneration?: number } | undefined {
  return obj?.status?.conditions?.find((c: any) => c.type === type);
}

/** Status is current: observedGeneration is the generation and Ready is known. */
export function current(obj: any): boolean {
  const r = condition(obj, "Ready");
  return Boolean(obj?.status && obj.status.observedGeneration === obj.metadata.generation && r && r.status !== "Unknown");
}

export async function startEnv(o: { name: string; withControllers?: boolean; nodes?: number; dnsAddress: string; dnsRecords?: DnsRecord[] }): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), `mailfleet-${o.name}-`));
  const auditPolicy = join(dir, "audit-policy.yaml");
  const auditLog = join(dir, "audit.log");
  writeFileSync(auditPolicy, AUDIT_POLICY);
  const cp = await startControlPlane({
    dir: join(dir, "kube"),
    withControllers: o.withControllers ?? false,
    nodes: o.nodes ?? (o.withControllers ? 1 : 0),
    crdsDir: join(PROJECT_ROOT, "crds"),
    apiserverArgs: [`--audit-policy-file=${auditPolicy}`, `--audit-log-path=${auditLog}`, "--audit-log-maxsize=0"],
  });
  // What started is stopped when a later part cannot start (an address in use), or its processes
  // would keep the test file alive until the runner's timeout.
  let nats: Awaited<ReturnType<typeof startNats>> | undefined;
  let dns: Awaited<ReturnType<typeof startDns>>;
  try {
    nats = await startNats({ dir: join(dir, "nats"), nodes: 1 });
    dns = await startDns({ dir: join(dir, "dns"), address: o.dnsAddress, records: o.dnsRecords ?? [] });
  } catch (err) {
    await nats?.stop().catch(() => {});
    await cp.stop().catch(() => {});
    throw err;
  }
  const req = (method: string, path: string, body?: unknown, contentType?: string) => cp.request(method, path, body, contentType);
  const must = async (r: Promise<KubeResponse>, what: string) => {
    const res = await r;
    if (res.status >= 300) throw new Error(`${what}: ${res.status} ${res.body}`);
    return res.body ? res.json() : undefined;
  };
  const apply = (obj: any) => {
    const group = obj.apiVersion.includes("/") ? `/apis/${obj.apiVersion}` : `/api/${obj.apiVersion}`;
    const plural = PLURALS[obj.kind];
    if (!plural) throw new Error(`no plural for ${obj.kind}`);
    const ns = obj.metadata.namespace ? `/namespaces/${obj.metadata.namespace}` : "";
    return must(req("PATCH", `${group}${ns}/${plural}/${obj.metadata.name}?fieldManager=tester&force=true`, obj, "application/apply-patch+yaml"), `apply ${obj.kind} ${obj.metadata.name}`);
  };
  const get = async (path: string) => {
    const r = await req("GET", path);
    if (r.status === 404) return undefined;
    if (r.status >= 300) throw new Error(`GET ${path}: ${r.status} ${r.body}`);
    return r.json();
  };

  // The operator's identity: a ServiceAccount bound to exactly the rules in operator/rbac.ts.
  await apply({ apiVersion: "v1", kind: "Namespace", metadata: { name: OPERATOR_NS } });
  await apply({ apiVersion: "v1", kind: "ServiceAccount", metadata: { name: OPERATOR_SA, namespace: OPERATOR_NS } });
  const strip = (rules: any[]) => rules.map(({ why: _w, ...r }) => r);
  await apply({ apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", metadata: { name: "mailfleet-operator" }, rules: strip(clusterRules({ webhookConfigName: "mailfleet-operator" })) });
  await apply({
    apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRoleBinding", metadata: { name: "mailfleet-operator" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "mailfleet-operator" },
    subjects: [{ kind: "ServiceAccount", name: OPERATOR_SA, namespace: OPERATOR_NS }],
  });
  await apply({ apiVersion: "rbac.authorization.k8s.io/v1", kind: "Role", metadata: { name: "mailfleet-operator", namespace: OPERATOR_NS }, rules: strip(namespaceRules({ leaseName: "mailfleet-operator" })) });
  await apply({
    apiVersion: "rbac.authorization.k8s.io/v1", kind: "RoleBinding", metadata: { name: "mailfleet-operator", namespace: OPERATOR_NS },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "mailfleet-operator" },
    subjects: [{ kind: "ServiceAccount", name: OPERATOR_SA, namespace: OPERATOR_NS }],
  });
  const tr = await must(req("POST", `/api/v1/namespaces/${OPERATOR_NS}/serviceaccounts/${OPERATOR_SA}/token`, {
    apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: { expirationSeconds: 86_400 },
  }), "TokenRequest");
  const operatorKubeconfig = join(dir, "operator.kubeconfig");
  writeFileSync(operatorKubeconfig, cp.kubeconfigForToken(tr.status.token, OPERATOR_USER), { mode: 0o600 });

  const started: OperatorProcess[] = [];
  let nc: NatsConnection | undefined;
  const env: Env = {
    dir, cp, nats, dns, operatorKubeconfig, auditLog, req, apply, get,
    audit: (a = {}) => {
      if (!existsSync(auditLog)) return [];
      const out: AuditEvent[] = [];
      for (const line of readFileSync(auditLog, "utf8").split("\n")) {
        if (!line) continue;
        const e = JSON.parse(line) as AuditEvent;
        if (a.since && e.stageTimestamp < a.since) continue;
        if (a.user && e.user?.username !== a.user) continue;
        out.push(e);
      }
      return out;
    },
    async startOperator(so = {}) {
      const identity = so.identity ?? `op-${started.length}`;
      const [metricsPort, webhookPort] = await freePorts(2);
      const logFile = join(dir, "logs", `operator-${identity}.log`);
      mkdirSync(join(dir, "logs"), { recursive: true });
      const args = [
        ...(so.nodeArgs ?? []),
        join(PROJECT_ROOT, "operator", "main.ts"),
        "--kubeconfig", operatorKubeconfig,
        "--nats", nats.urls.join(","),
        "--operator-namespace", OPERATOR_NS,
        "--identity", identity,
        "--metrics-host", "127.0.0.1",
        "--metrics-port", String(metricsPort),
        "--webhook-host", "127.0.0.1",
        "--webhook-port", so.webhook === false ? "0" : String(webhookPort),
        "--webhook-url-host", "127.0.0.1",
        "--dns-servers", dns.server,
        "--dns-recheck-unverified", "5s",
        "--log-level", "debug",
        ...(so.args ?? []),
      ];
      // In a cgroup from the first instruction on: Node sizes its heap from the cgroup's limit at start.
      const proc = so.cgroup
        ? startProcess({ name: `operator ${identity}`, command: "/bin/sh", args: ["-c", `echo $$ > ${so.cgroup}/cgroup.procs && exec "$0" "$@"`, process.execPath, ...args], logFile, cwd: PROJECT_ROOT, env: childEnv() })
        : startProcess({ name: `operator ${identity}`, command: process.execPath, args, logFile, cwd: PROJECT_ROOT, env: childEnv() });
      const op: OperatorProcess = {
        proc, identity, metricsPort, webhookPort, logFile,
        log: () => readFileSync(logFile, "utf8"),
        metrics: async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(),
        stop: () => proc.stop(30_000),
        kill: async () => {
          proc.signal("SIGKILL");
          await proc.exited;
        },
      };
      started.push(op);
      await eventually(`operator ${identity} ready`, async () => {
        if (proc.exitCode() !== undefined) throw new Error(`operator exited (${proc.exitCode()}):\n${logTail(logFile, 40)}`);
        const r = await fetch(`http://127.0.0.1:${metricsPort}/readyz`).catch(() => undefined);
        return r?.status === 200;
      }, 120_000);
      return op;
    },
    async plan() {
      nc ??= await connect({ servers: nats.urls });
      const kv = await new Kvm(nc).open(PLAN_BUCKET);
      const e = await kv.get(PLAN_KEY).catch(() => null);
      return e?.value?.length ? decodePlan(e.value) : null;
    },
    async stop() {
      for (const op of started) await op.stop().catch(() => {});
      await nc?.close().catch(() => {});
      await dns.stop().catch(() => {});
      await nats.stop().catch(() => {});
      await cp.stop().catch(() => {});
      if (!process.env.MAILFLEET_KEEP_STATE) rmSync(dir, { recursive: true, force: true });
      else process.stderr.write(`state kept in ${dir}\n`);
    },
  };
  return env;
}

export const PLURALS: Record<string, string> = {
  Namespace: "namespaces", ServiceAccount: "serviceaccounts", Secret: "secrets", ClusterRole: "clusterroles", ClusterRoleBinding: "clusterrolebindings",
  Role: "roles", RoleBinding: "rolebindings", IPPool: "ippools", SendingDomain: "sendingdomains", WarmupSchedule: "warmupschedules",
  MailboxProvider: "mailboxproviders", Deployment: "deployments", Service: "services", CustomResourceDefinition: "customresourcedefinitions",
};

export const path = {
  domain: (ns: string, name = "") => `/apis/mailfleet.io/v1alpha1/namespaces/${ns}/sendingdomains${name ? `/${name}` : ""}`,
  pool: (ns: string, name = "") => `/apis/mailfleet.io/v1alpha1/namespaces/${ns}/ippools${name ? `/${name}` : ""}`,
  schedule: (ns: string, name = "") => `/apis/mailfleet.io/v1alpha1/namespaces/${ns}/warmupschedules${name ? `/${name}` : ""}`,
  provider: (name = "") => `/apis/mailfleet.io/v1alpha1/mailboxproviders${name ? `/${name}` : ""}`,
  secret: (ns: string, name = "") => `/api/v1/namespaces/${ns}/secrets${name ? `/${name}` : ""}`,
  deployment: (ns: string, name = "") => `/apis/apps/v1/namespaces/${ns}/deployments${name ? `/${name}` : ""}`,
  events: (ns: string) => `/apis/events.k8s.io/v1/namespaces/${ns}/events`,
};

export function ns(name: string) {
  return { apiVersion: "v1", kind: "Namespace", metadata: { name } };
}
export function pool(namespace: string, name: string, spec: Record<string, unknown>) {
  return { apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name, namespace }, spec };
}
export function domain(namespace: string, name: string, spec: Record<string, unknown>) {
  return { apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: { name, namespace }, spec };
}
export function schedule(namespace: string, name: string, spec: Record<string, unknown>) {
  return { apiVersion: "mailfleet.io/v1alpha1", kind: "WarmupSchedule", metadata: { name, namespace }, spec };
}
export function provider(name: string, spec: Record<string, unknown>) {
  return { apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: { name }, spec };
}

/** Events about one object (events.k8s.io/v1). */
export async function eventsFor(env: Env, namespace: string, name: string): Promise<{ reason: string; type: string; note: string }[]> {
  const list = await env.get(path.events(namespace));
  return (list?.items ?? []).filter((e: any) => e.regarding?.name === name).map((e: any) => ({ reason: e.reason, type: e.type, note: e.note }));
}
