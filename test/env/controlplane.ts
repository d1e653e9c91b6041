// A local Kubernetes control plane made of real processes on loopback, like controller-runtime's
// envtest, plus (optionally) kube-controller-manager, kube-scheduler and kwok so that Deployments get
// ReplicaSets and Pods that become Running/Ready on fake nodes, and garbage collection, namespace
// deletion, HPA and PDB controllers work.
//
//   const cp = await startControlPlane({ dir, withControllers: true, nodes: 1 });
//   ... cp.kubeconfigPath / cp.kubeconfig ...
//   await cp.stop();
//
// Binaries come from test/env/tools.ts (built on first use). The state directory holds the PKI,
// etcd's data, kubeconfigs, one log per component and ports.json; starting again in the same
// directory reuses the PKI and etcd data (so tokens and objects survive a restart).
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { request as httpRequest } from "node:http";
import { join, resolve } from "node:path";
import { parseAllDocuments, stringify } from "yaml";
import { ensureTools, toolPath, toolDir, TOOLS } from "./tools.ts";
import { createCA, loadCA, issueCert, createSigningKey, type CertificateAuthority } from "./pki.ts";
import { startProcess, waitFor, freePorts, portFree, childEnv, StartError, type ManagedProcess } from "./proc.ts";

export interface ControlPlaneOptions {
  /** State directory (created if missing). */
  dir: string;
  /** Also run kube-controller-manager, kube-scheduler and kwok. */
  withControllers?: boolean;
  /** Fake nodes managed by kwok (default 1 with controllers, 0 without; > 0 starts kwok). */
  nodes?: number;
  /** Keep the processes running after this Node process exits (for `mailfleet local up`). */
  detach?: boolean;
  /** Apply every CRD in this folder and wait until Established. */
  crdsDir?: string;
  /** Per-step start-up timeout (default 120 s: a cold apiserver on 2 busy cores is slow). */
  timeoutMs?: number;
  /** Extra kube-apiserver flags (e.g. --feature-gates=...). */
  apiserverArgs?: string[];
  /**
   * kwok's config (Stage objects) instead of the default fast stages (defaultKwokStagesPath()):
   * e.g. to leave Pods of a runner-managed workload to the runner instead of making them Ready.
   */
  kwokConfig?: string;
}

/** The default kwok stages: nodes initialise and heartbeat; Pods become Ready at once; deletions finish. */
export function defaultKwokStagesPath(): string {
  return join(toolDir(TOOLS.kwok!), "stages.yaml");
}

export interface ControlPlane {
  dir: string;
  kubeconfigPath: string;
  /** The admin kubeconfig (user system:masters) as YAML text. */
  kubeconfig: string;
  /** https://127.0.0.1:<port> */
  server: string;
  /** PEM of the cluster CA (also the apiserver's serving CA). */
  caPem: string;
  /** Process per component: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok. */
  processes: Record<string, ManagedProcess>;
  pids(): Record<string, number>;
  /** Raw request as admin; body objects are sent as JSON. Resolves for any status. */
  request(method: string, path: string, body?: unknown, contentType?: string): Promise<KubeResponse>;
  /** Applies every CustomResourceDefinition in a folder (server-side apply) and waits until served. */
  applyCRDs(dir: string, timeoutMs?: number): Promise<string[]>;
  /** Kubeconfig text for a bearer token (e.g. a ServiceAccount's TokenRequest token). */
  kubeconfigForToken(token: string, user?: string): string;
  /** TokenRequest for an existing ServiceAccount, as kubeconfig text (for least-privilege tests). */
  kubeconfigForServiceAccount(namespace: string, name: string, expirationSeconds?: number): Promise<string>;
  /** Kubeconfig text for a client certificate user (CN=user, O=groups) signed by the cluster CA. */
  kubeconfigForUser(user: string, groups?: string[]): Promise<string>;
  /** Names of the fake nodes. */
  nodes: string[];
  stop(): Promise<void>;
}

export interface KubeResponse {
  status: number;
  body: string;
  json<T = any>(): T;
}

interface Ports {
  etcdClient: number;
  etcdPeer: number;
  apiserver: number;
  controllerManager: number;
  scheduler: number;
  kwok: number;
}

const SERVICE_CIDR = "10.96.0.0/16";
const SERVICE_IP = "10.96.0.1";
const POD_CIDR = "10.244.0.1/16";
const NODE_IP = "10.240.0.1";
const FIELD_MANAGER = "mailfleet-testenv";

interface Pki {
  ca: CertificateAuthority;
  dir: string;
}

function pkiPath(dir: string, name: string): string {
  return join(dir, "pki", name);
}

async function ensurePki(dir: string): Promise<Pki> {
  const pki = join(dir, "pki");
  mkdirSync(pki, { recursive: true, mode: 0o700 });
  const w = (name: string, text: string) => writeFileSync(join(pki, name), text, { mode: 0o600 });
  const has = (name: string) => existsSync(join(pki, name));
  let ca: CertificateAuthority;
  if (has("ca.crt") && has("ca.key")) {
    ca = await loadCA(readFileSync(join(pki, "ca.crt"), "utf8"), readFileSync(join(pki, "ca.key"), "utf8"));
  } else {
    ca = await createCA("mailfleet-local-ca");
    w("ca.crt", ca.certPem);
    w("ca.key", ca.keyPem);
  }
  const pair = async (name: string, make: () => Promise<{ certPem: string; keyPem: string }>) => {
    if (has(`${name}.crt`) && has(`${name}.key`)) return;
    const c = await make();
    w(`${name}.crt`, c.certPem);
    w(`${name}.key`, c.keyPem);
  };
  await pair("apiserver", () => issueCert(ca, {
    commonName: "kube-apiserver",
    dnsNames: ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
    ipAddresses: ["127.0.0.1", "::1", SERVICE_IP],
    server: true,
  }));
  // Client identities; the bootstrap RBAC policy binds these user names.
  await pair("admin", () => issueCert(ca, { commonName: "mailfleet-admin", organizations: ["system:masters"], client: true }));
  await pair("kube-controller-manager", () => issueCert(ca, { commonName: "system:kube-controller-manager", client: true }));
  await pair("kube-scheduler", () => issueCert(ca, { commonName: "system:kube-scheduler", client: true }));
  await pair("kwok", () => issueCert(ca, { commonName: "kwok", organizations: ["system:masters"], client: true }));
  // Aggregation layer: the apiserver proxies to aggregated API servers as front-proxy-client.
  let fp: CertificateAuthority;
  if (has("front-proxy-ca.crt") && has("front-proxy-ca.key")) {
    fp = await loadCA(readFileSync(join(pki, "front-proxy-ca.crt"), "utf8"), readFileSync(join(pki, "front-proxy-ca.key"), "utf8"));
  } else {
    fp = await createCA("mailfleet-front-proxy-ca");
    w("front-proxy-ca.crt", fp.certPem);
    w("front-proxy-ca.key", fp.keyPem);
  }
  await pair("front-proxy-client", () => issueCert(fp, { commonName: "front-proxy-client", client: true }));
  if (!has("sa.key")) {
    const sa = createSigningKey();
    w("sa.key", sa.privatePem);
    w("sa.pub", sa.publicPem);
  }
  return { ca, dir: pki };
}

function kubeconfigText(o: { server: string; caPem: string; user: string; certPem?: string; keyPem?: string; token?: string }): string {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  const user: Record<string, string> = {};
  if (o.certPem && o.keyPem) {
    user["client-certificate-data"] = b64(o.certPem);
    user["client-key-data"] = b64(o.keyPem);
  }
  if (o.token) user.token = o.token;
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "mailfleet-local", cluster: { server: o.server, "certificate-authority-data": b64(o.caPem) } }],
    users: [{ name: o.user, user }],
    contexts: [{ name: "mailfleet-local", context: { cluster: "mailfleet-local", user: o.user, namespace: "default" } }],
    "current-context": "mailfleet-local",
  });
}

async function choosePorts(dir: string): Promise<Ports> {
  // Reuse the previous ports when free: etcd keeps its peer URL in its data directory.
  const file = join(dir, "ports.json");
  const keys: (keyof Ports)[] = ["etcdClient", "etcdPeer", "apiserver", "controllerManager", "scheduler", "kwok"];
  let old: Partial<Ports> = {};
  try { old = JSON.parse(readFileSync(file, "utf8")) as Partial<Ports>; } catch { /* first start */ }
  const fresh = await freePorts(keys.length);
  const used = new Set<number>();
  const ports = {} as Ports;
  for (const [i, k] of keys.entries()) {
    const prev = old[k];
    let p = prev && !used.has(prev) && (await portFree(prev)) ? prev : fresh[i]!;
    while (used.has(p)) p = (await freePorts(1))[0]!;
    used.add(p);
    ports[k] = p;
  }
  writeFileSync(file, JSON.stringify(ports, null, 2) + "\n");
  return ports;
}

/** A request with TLS client credentials; never throws for HTTP statuses. */
function rawRequest(
  url: string,
  o: { method?: string; ca?: string; cert?: string; key?: string; token?: string; body?: string; contentType?: string; insecure?: boolean; timeoutMs?: number },
): Promise<KubeResponse> {
  return new Promise((resolvePromise, reject) => {
    const u = new URL(url);
    const headers: Record<string, string> = { Accept: "application/json" };
    if (o.body !== undefined) headers["Content-Type"] = o.contentType ?? "application/json";
    if (o.token) headers.Authorization = `Bearer ${o.token}`;
    const opts = {
      method: o.method ?? "GET",
      headers,
      ca: o.ca,
      cert: o.cert,
      key: o.key,
      rejectUnauthorized: !o.insecure,
      timeout: o.timeoutMs ?? 15_000,
      agent: false as const,
    };
    const req = (u.protocol === "https:" ? httpsRequest : httpRequest)(u, opts, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        resolvePromise({ status: res.statusCode ?? 0, body, json: () => JSON.parse(body) });
      });
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`timeout requesting ${url}`)));
    req.on("error", reject);
    if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}

export async function startControlPlane(opts: ControlPlaneOptions): Promise<ControlPlane> {
  const dir = resolve(opts.dir);
  const withControllers = opts.withControllers ?? false;
  const nodeCount = opts.nodes ?? (withControllers ? 1 : 0);
  const timeoutMs = opts.timeoutMs ?? 120_000;
  mkdirSync(join(dir, "logs"), { recursive: true });
  await ensureTools(["kubernetes", "etcd", ...(nodeCount > 0 ? ["kwok"] : [])]);

  const pki = await ensurePki(dir);
  const p = (name: string) => pkiPath(dir, name);
  const read = (name: string) => readFileSync(p(name), "utf8");
  const ports = await choosePorts(dir);
  const server = `https://127.0.0.1:${ports.apiserver}`;
  const caPem = pki.ca.certPem;
  const admin = { cert: read("admin.crt"), key: read("admin.key") };

  const writeKubeconfig = (file: string, user: string, certName: string) => {
    const text = kubeconfigText({ server, caPem, user, certPem: read(`${certName}.crt`), keyPem: read(`${certName}.key`) });
    writeFileSync(file, text, { mode: 0o600 });
    return text;
  };
  const kubeconfigPath = join(dir, "kubeconfig");
  const kubeconfig = writeKubeconfig(kubeconfigPath, "admin", "admin");
  mkdirSync(join(dir, "kubeconfigs"), { recursive: true });

  const processes: Record<string, ManagedProcess> = {};
  const order: ManagedProcess[] = [];
  const start = (name: string, command: string, args: string[]) => {
    const proc = startProcess({ name, command, args, logFile: join(dir, "logs", `${name}.log`), detach: opts.detach, env: childEnv({ HOME: dir }) });
    processes[name] = proc;
    order.push(proc);
    return proc;
  };
  const stop = async () => {
    // Reverse start order: clients before the apiserver, the apiserver before etcd.
    for (const proc of [...order].reverse()) await proc.stop();
  };

  const request = (method: string, path: string, body?: unknown, contentType?: string) =>
    rawRequest(server + path, {
      method, ca: caPem, cert: admin.cert, key: admin.key, contentType,
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });

  try {
    // etcd
    const etcd = start("etcd", toolPath("etcd"), [
      "--name=mailfleet",
      `--data-dir=${join(dir, "etcd")}`,
      `--listen-client-urls=http://127.0.0.1:${ports.etcdClient}`,
      `--advertise-client-urls=http://127.0.0.1:${ports.etcdClient}`,
      `--listen-peer-urls=http://127.0.0.1:${ports.etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${ports.etcdPeer}`,
      `--initial-cluster=mailfleet=http://127.0.0.1:${ports.etcdPeer}`,
      "--unsafe-no-fsync=true", // tests only: durability of the test cluster does not matter
      "--quota-backend-bytes=4294967296",
      "--log-level=warn",
    ]);
    await waitFor("etcd /health", async () => {
      const r = await rawRequest(`http://127.0.0.1:${ports.etcdClient}/health`, { timeoutMs: 3000 });
      return r.status === 200 && /"health":"true"/.test(r.body);
    }, { timeoutMs, watch: [etcd], component: "etcd", logFile: etcd.logFile });

    // kube-apiserver
    const apiserver = start("kube-apiserver", toolPath("kube-apiserver"), [
      `--etcd-servers=http://127.0.0.1:${ports.etcdClient}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${ports.apiserver}`,
      `--cert-dir=${join(dir, "pki", "apiserver-generated")}`,
      `--tls-cert-file=${p("apiserver.crt")}`,
      `--tls-private-key-file=${p("apiserver.key")}`,
      `--client-ca-file=${p("ca.crt")}`,
      "--authorization-mode=Node,RBAC",
      "--enable-admission-plugins=NodeRestriction",
      "--allow-privileged=true",
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${p("sa.pub")}`,
      `--service-account-signing-key-file=${p("sa.key")}`,
      // Aggregation layer (APIService backends) and its request-header authentication.
      `--requestheader-client-ca-file=${p("front-proxy-ca.crt")}`,
      "--requestheader-allowed-names=front-proxy-client",
      "--requestheader-username-headers=X-Remote-User",
      "--requestheader-group-headers=X-Remote-Group",
      "--requestheader-extra-headers-prefix=X-Remote-Extra-",
      `--proxy-client-cert-file=${p("front-proxy-client.crt")}`,
      `--proxy-client-key-file=${p("front-proxy-client.key")}`,
      // No kube-proxy here: reach aggregated servers and webhooks by endpoint, not by ClusterIP.
      "--enable-aggregator-routing=true",
      // The `kubernetes` Service cannot have 127.0.0.1 as an endpoint (loopback is invalid there).
      "--endpoint-reconciler-type=none",
      "--profiling=false",
      ...(opts.apiserverArgs ?? []),
    ]);
    await waitFor("kube-apiserver /readyz", async () => (await request("GET", "/readyz")).status === 200,
      { timeoutMs, watch: [etcd, apiserver], component: "kube-apiserver", logFile: apiserver.logFile });
    await waitFor("namespace default", async () => (await request("GET", "/api/v1/namespaces/default")).status === 200,
      { timeoutMs, watch: [apiserver], component: "kube-apiserver", logFile: apiserver.logFile });

    if (withControllers) {
      const kcmKubeconfig = join(dir, "kubeconfigs", "kube-controller-manager.kubeconfig");
      writeKubeconfig(kcmKubeconfig, "system:kube-controller-manager", "kube-controller-manager");
      const kcm = start("kube-controller-manager", toolPath("kube-controller-manager"), [
        `--kubeconfig=${kcmKubeconfig}`,
        `--authentication-kubeconfig=${kcmKubeconfig}`,
        `--authorization-kubeconfig=${kcmKubeconfig}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${ports.controllerManager}`,
        `--cert-dir=${join(dir, "pki", "kcm-generated")}`,
        `--service-account-private-key-file=${p("sa.key")}`,
        `--root-ca-file=${p("ca.crt")}`,
        `--cluster-signing-cert-file=${p("ca.crt")}`,
        `--cluster-signing-key-file=${p("ca.key")}`,
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        "--use-service-account-credentials=true", // each controller under its own RBAC role, as in a real cluster
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--leader-elect=false", // one instance; a restart need not wait for a lease to expire
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--concurrent-deployment-syncs=10",
        "--horizontal-pod-autoscaler-sync-period=5s",
      ]);
      const schedKubeconfig = join(dir, "kubeconfigs", "kube-scheduler.kubeconfig");
      writeKubeconfig(schedKubeconfig, "system:kube-scheduler", "kube-scheduler");
      const sched = start("kube-scheduler", toolPath("kube-scheduler"), [
        `--kubeconfig=${schedKubeconfig}`,
        `--authentication-kubeconfig=${schedKubeconfig}`,
        `--authorization-kubeconfig=${schedKubeconfig}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${ports.scheduler}`,
        `--cert-dir=${join(dir, "pki", "scheduler-generated")}`,
        "--leader-elect=false",
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
      ]);
      for (const [proc, port] of [[kcm, ports.controllerManager], [sched, ports.scheduler]] as const) {
        await waitFor(`${proc.name} /healthz`, async () => {
          const r = await rawRequest(`https://127.0.0.1:${port}/healthz`, { insecure: true, timeoutMs: 3000 });
          return r.status === 200;
        }, { timeoutMs, watch: [apiserver, proc], component: proc.name, logFile: proc.logFile });
      }
    }

    const nodes: string[] = [];
    if (nodeCount > 0) {
      const kwokKubeconfig = join(dir, "kubeconfigs", "kwok.kubeconfig");
      writeKubeconfig(kwokKubeconfig, "kwok", "kwok");
      const kwok = start("kwok", toolPath("kwok"), [
        `--kubeconfig=${kwokKubeconfig}`,
        `--config=${opts.kwokConfig ?? defaultKwokStagesPath()}`,
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        `--cidr=${POD_CIDR}`,
        `--node-ip=${NODE_IP}`,
        `--server-address=127.0.0.1:${ports.kwok}`,
        "--node-lease-duration-seconds=40",
      ]);
      await waitFor("kwok /healthz", async () => {
        const r = await rawRequest(`http://127.0.0.1:${ports.kwok}/healthz`, { timeoutMs: 3000 });
        return r.status === 200;
      }, { timeoutMs, watch: [apiserver, kwok], component: "kwok", logFile: kwok.logFile });
      for (let i = 0; i < nodeCount; i++) {
        const name = `kwok-node-${i}`;
        nodes.push(name);
        const r = await request("PATCH", `/api/v1/nodes/${name}?fieldManager=${FIELD_MANAGER}&force=true`, fakeNode(name), "application/apply-patch+yaml");
        if (r.status >= 300) throw new StartError("kwok", `creating node ${name} failed: ${r.status} ${r.body}`);
      }
      for (const name of nodes) {
        await waitFor(`node ${name} Ready`, async () => {
          const r = await request("GET", `/api/v1/nodes/${name}`);
          if (r.status !== 200) return false;
          const conds = (r.json().status?.conditions ?? []) as { type: string; status: string }[];
          return conds.some((c) => c.type === "Ready" && c.status === "True");
        }, { timeoutMs, watch: [kwok], component: "kwok", logFile: kwok.logFile });
      }
    }

    if (withControllers) {
      const kcm = processes["kube-controller-manager"]!;
      await waitFor("ServiceAccount default/default", async () => (await request("GET", "/api/v1/namespaces/default/serviceaccounts/default")).status === 200,
        { timeoutMs, watch: [kcm], component: "kube-controller-manager", logFile: kcm.logFile });
    }

    const cp: ControlPlane = {
      dir,
      kubeconfigPath,
      kubeconfig,
      server,
      caPem,
      processes,
      nodes,
      pids: () => Object.fromEntries(Object.entries(processes).map(([k, v]) => [k, v.pid])),
      request,
      applyCRDs: (crds, t) => applyCRDs(request, crds, t ?? timeoutMs),
      kubeconfigForToken: (token, user = "token-user") => kubeconfigText({ server, caPem, user, token }),
      kubeconfigForServiceAccount: async (namespace, name, expirationSeconds = 3600) => {
        const r = await request("POST", `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`, {
          apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: { expirationSeconds },
        });
        if (r.status !== 201 && r.status !== 200) throw new Error(`TokenRequest for ServiceAccount ${namespace}/${name} failed: ${r.status} ${r.body}`);
        return kubeconfigText({ server, caPem, user: `system:serviceaccount:${namespace}:${name}`, token: r.json().status.token });
      },
      kubeconfigForUser: async (user, groups = []) => {
        const c = await issueCert(pki.ca, { commonName: user, organizations: groups, client: true });
        return kubeconfigText({ server, caPem, user, certPem: c.certPem, keyPem: c.keyPem });
      },
      stop,
    };
    if (opts.crdsDir) await cp.applyCRDs(opts.crdsDir);
    return cp;
  } catch (e) {
    await stop();
    throw e;
  }
}

function fakeNode(name: string) {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name,
      annotations: { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
      labels: {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node-role.kubernetes.io/agent": "",
        type: "kwok",
      },
    },
    spec: {},
    status: {
      allocatable: { cpu: "32", memory: "256Gi", pods: "110", "ephemeral-storage": "1Ti" },
      capacity: { cpu: "32", memory: "256Gi", pods: "110", "ephemeral-storage": "1Ti" },
      nodeInfo: {
        architecture: "amd64",
        operatingSystem: "linux",
        kubeletVersion: "fake",
        kubeProxyVersion: "fake",
      },
    },
  };
}

type Requester = (method: string, path: string, body?: unknown, contentType?: string) => Promise<KubeResponse>;

interface CrdDoc {
  kind?: string;
  metadata?: { name?: string };
  spec?: { group?: string; names?: { plural?: string }; versions?: { name: string; served?: boolean }[] };
}

/** Reads every CRD document in a folder (*.yaml, *.yml, *.json); other kinds are an error naming the file. */
export function readCRDs(dir: string): { file: string; doc: CrdDoc }[] {
  const out: { file: string; doc: CrdDoc }[] = [];
  const files = readdirSync(dir).filter((f) => /\.(ya?ml|json)$/.test(f)).sort();
  for (const f of files) {
    const file = join(dir, f);
    for (const d of parseAllDocuments(readFileSync(file, "utf8"))) {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
      const doc = d.toJS() as CrdDoc | null;
      if (!doc) continue;
      if (doc.kind !== "CustomResourceDefinition" || !doc.metadata?.name) {
        throw new Error(`${file}: expected only CustomResourceDefinition documents, found kind ${doc.kind ?? "(none)"}`);
      }
      out.push({ file, doc });
    }
  }
  return out;
}

async function applyCRDs(request: Requester, dir: string, timeoutMs: number): Promise<string[]> {
  const crds = readCRDs(dir);
  for (const { file, doc } of crds) {
    const r = await request("PATCH",
      `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${doc.metadata!.name}?fieldManager=${FIELD_MANAGER}&force=true`,
      doc, "application/apply-patch+yaml");
    if (r.status >= 300) throw new Error(`applying CRD ${doc.metadata!.name} from ${file} failed: ${r.status} ${r.body}`);
  }
  for (const { doc } of crds) {
    const name = doc.metadata!.name!;
    await waitFor(`CRD ${name} Established`, async () => {
      const r = await request("GET", `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
      if (r.status !== 200) return false;
      const conds = (r.json().status?.conditions ?? []) as { type: string; status: string }[];
      const ok = (t: string) => conds.some((c) => c.type === t && c.status === "True");
      return ok("Established") && ok("NamesAccepted");
    }, { timeoutMs, component: "kube-apiserver" });
    // Like envtest: Established can precede discovery; clients that map kinds need discovery.
    for (const v of doc.spec?.versions ?? []) {
      if (v.served === false) continue;
      await waitFor(`discovery of ${name} ${v.name}`, async () => {
        const r = await request("GET", `/apis/${doc.spec!.group}/${v.name}`);
        return r.status === 200 && (r.json().resources as { name: string }[]).some((res) => res.name === doc.spec!.names!.plural);
      }, { timeoutMs, component: "kube-apiserver" });
    }
  }
  return crds.map((c) => c.doc.metadata!.name!);
}

/** Applies CRDs from a folder to any cluster given its admin kubeconfig file (what `local up` uses). */
export async function applyCRDsWithKubeconfig(kubeconfigPath: string, dir: string, timeoutMs = 60_000): Promise<string[]> {
  const { server, ca, cert, key, token } = credentialsFromKubeconfig(readFileSync(kubeconfigPath, "utf8"));
  const request: Requester = (method, path, body, contentType) =>
    rawRequest(server + path, { method, ca, cert, key, token, contentType, body: body === undefined ? undefined : JSON.stringify(body) });
  return applyCRDs(request, dir, timeoutMs);
}

export function credentialsFromKubeconfig(text: string): { server: string; ca?: string; cert?: string; key?: string; token?: string } {
  const kc = parseAllDocuments(text)[0]!.toJS() as any;
  const ctx = kc.contexts.find((c: any) => c.name === kc["current-context"])?.context ?? kc.contexts[0].context;
  const cluster = kc.clusters.find((c: any) => c.name === ctx.cluster).cluster;
  const user = kc.users.find((u: any) => u.name === ctx.user)?.user ?? {};
  const d = (s?: string) => (s ? Buffer.from(s, "base64").toString("utf8") : undefined);
  return { server: cluster.server, ca: d(cluster["certificate-authority-data"]), cert: d(user["client-certificate-data"]), key: d(user["client-key-data"]), token: user.token };
}
