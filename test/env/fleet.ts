// The local fleet, everything real, in one process: what `npm start` runs in the foreground, and
// what the fleet, fault and soak tests and benchmarks start.
//
//   control plane    etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (2 nodes)
//   NATS             a 3-node JetStream cluster (mail streams and the plan bucket on 3 replicas)
//   operator         operator/main.ts with the chart's flags and RBAC, DNS checks against our DNS,
//                    relays told (--relay-env) to resolve MX there and deliver to port 25
//   relays           the runner (runner/) plays the kubelet for the relay Pods the operator makes
//   receivers        one Postfix instance, one smtpd listener per provider MX host on its own
//                    loopback address, with anvil limits a little above the provider's lane limits
//                    (a shaper that overshoots a lane meets the real 450/421 replies)
//   DNS              dnsmasq: MX of the recipient domains, A/PTR of the pool addresses, and the
//                    records the operator lists in SendingDomain status (re-published when they
//                    change, so new DKIM selectors verify and rotation proceeds)
//   Prometheus       scraping relays and operator with jobs made from the chart's PodMonitors
//
// `startFleet()` returns a handle with everything tests poke at (kill a NATS node, restart the
// operator, stop a receiver, make DNS fail, scale a pool); `main()` is `npm start`.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseAllDocuments, stringify } from "yaml";
import { renderChart, renderRules, PROJECT_ROOT, type K8sObject } from "./chart.ts";
import { defaultKwokStagesPath, startControlPlane, type ControlPlane } from "./controlplane.ts";
import { startNats, type Nats } from "./nats.ts";
import { startDns, type DnsHandle, type DnsRecord } from "./peers/dns.ts";
import { startPostfix, type PostfixHandle, type PostfixListener } from "./peers/postfix.ts";
import { prometheusBinaries, startPrometheus, type PrometheusHandle, type ScrapeConfig } from "./peers/prometheus.ts";
import { allProcs } from "./peers/common.ts";
import { podMonitorRelabelings, podTargets } from "./podmonitor.ts";
import { childEnv, freePorts, logTail, startProcess, type ManagedProcess } from "./proc.ts";
import { writeRunnerKwokStages } from "./runner/kwok-stages.ts";
import { LISTEN_ADDRESS_ANNOTATION, startRunner, type RelayInfo, type Runner } from "./runner/runner.ts";
import { toolPath } from "./tools.ts";
import { stateFile, type LocalState } from "./local-state.ts";

export { PROJECT_ROOT };

/** The release and namespace the chart's objects (RBAC, monitors) are rendered for. */
export const FLEET_NAMESPACE = "mailfleet";
const RELEASE = "mf";

/** A provider's MX host as a Postfix listener, and the recipient domains whose MX it is. */
export interface Receiver {
  /** The receiver's name (the provider's, or what it stands for). */
  name: string;
  /** The MailboxProvider its domains roll up to. */
  provider: string;
  /** The MX host name (the suffix decides the provider by MX rollup, where domains do not). */
  mx: string;
  /** Last octet of the listener address 127.0.<net>.<octet>. */
  octet: number;
  /** Recipient domains: the first is matched by the provider's domains list (or not at all for
   * default), the others reach the provider only through MX rollup. */
  domains: string[];
  tls: boolean;
  /** The provider's lane limits (examples/00-providers.yaml); anvil is set a little above. */
  lane: { messagesPerMinute: number; connections: number };
}

export const RECEIVERS: Receiver[] = [
  { name: "google", provider: "google", mx: "gmail-smtp-in.l.google.com", octet: 1, domains: ["gmail.com", "startup.test"], tls: true, lane: { messagesPerMinute: 600, connections: 5 } },
  { name: "microsoft", provider: "microsoft", mx: "contoso-test.mail.protection.outlook.com", octet: 2, domains: ["outlook.com", "contoso.test"], tls: false, lane: { messagesPerMinute: 600, connections: 5 } },
  { name: "yahoo", provider: "yahoo", mx: "mta5.am0.yahoodns.net", octet: 3, domains: ["yahoo.com"], tls: false, lane: { messagesPerMinute: 600, connections: 10 } },
  { name: "default", provider: "default", mx: "mx.example.net", octet: 4, domains: ["example.net"], tls: false, lane: { messagesPerMinute: 120, connections: 3 } },
  // A company's own server, slow to answer when a fault test says so (setEndOfDataDelay).
  { name: "slow", provider: "default", mx: "mx.slow.test", octet: 5, domains: ["slow.test"], tls: false, lane: { messagesPerMinute: 120, connections: 3 } },
];

export interface FleetOptions {
  /** State directory (created; a temporary one by default). */
  dir?: string;
  /** Receivers listen on 127.0.<net>.x, DNS on 127.0.53.<net>: a number per concurrent fleet. */
  net?: number;
  natsNodes?: 1 | 3;
  /** kwok nodes: the examples' HostNetwork pool wants one per replica. */
  nodes?: number;
  /** Apply examples/ (default true), or only the example objects this keeps. */
  examples?: boolean | ((o: K8sObject) => boolean);
  /** More recipient domains, each with its MX at one of the receivers (by name). */
  extraDomains?: { domain: string; receiver: string }[];
  /** Start Prometheus (default true). */
  prometheus?: boolean;
  /** Extra operator flags. */
  operatorArgs?: string[];
  /** Extra relay variables (through the operator's --relay-env). */
  relayEnv?: Record<string, string>;
  /** Restart back-off of the runner (kubelet default: 10 s doubling). */
  runnerBackoff?: { initialMs?: number; maxMs?: number };
  log?: (line: string) => void;
}

export interface Fleet {
  dir: string;
  net: number;
  cp: ControlPlane;
  nats: Nats;
  dns: DnsHandle;
  postfix: PostfixHandle;
  prom?: PrometheusHandle;
  runner: Runner;
  operator(): ManagedProcess;
  /** Address of a receiver (or its name): 127.0.<net>.<octet>. */
  receiverAddress(r: Receiver | string): string;
  /** Relays running now (state running), optionally of one pool ("mail/transactional"). */
  relays(pool?: string): RelayInfo[];
  /** Waits until every relay Pod of the pools runs and is ready, and at least `min` per pool. */
  waitForRelays(pools: Record<string, number>, timeoutMs?: number): Promise<RelayInfo[]>;
  /** Server-side apply of one object. */
  apply(o: K8sObject): Promise<void>;
  /** JSON merge patch of an object by API path. */
  patch(path: string, body: unknown, contentType?: string): Promise<any>;
  get(path: string): Promise<any>;
  /** Stops the operator (SIGTERM) and starts it again with the same flags. */
  restartOperator(): Promise<void>;
  /** DNS outage: dnsmasq stops answering ('timeout') or refuses; record sync pauses meanwhile. */
  dnsFail(on: boolean, mode?: "timeout" | "refused"): Promise<void>;
  /** Publishes the DNS records now (normally every 3 s when they change). */
  syncDns(): Promise<void>;
  /** Every process group this fleet started (relays included), for checks that nothing is left. */
  groups(): Set<number>;
  stop(): Promise<void>;
}

/** What cannot start, said plainly, before anything starts. */
export async function preflight(o: { prometheus?: boolean } = {}): Promise<string[]> {
  const missing: string[] = [];
  const tools: string[] = [];
  for (const t of ["kube-apiserver", "etcd", "kwok", "helm", "nats-server"]) {
    try { toolPath(t); } catch { tools.push(t); }
  }
  if (tools.length) missing.push(`tools not built (${tools.join(", ")}): run npm run tools (the first build takes tens of minutes)`);
  const debian: [string, string][] = [["/usr/sbin/postfix", "postfix"], ["/usr/sbin/dnsmasq", "dnsmasq-base"]];
  for (const [bin, pkg] of debian) if (!existsSync(bin)) missing.push(`${pkg} not installed (${bin}): run bash test/env/install-debian.sh`);
  if (o.prometheus !== false) {
    try { await prometheusBinaries(); } catch (e) { missing.push(`${(e as Error).message.split("\n")[0]}: run bash test/env/install-debian.sh`); }
  }
  if (process.getuid?.() !== 0) missing.push("not root: Postfix on port 25 and the relays' source addresses need root");
  return missing;
}

/** Plural and scope of the kinds the fleet applies. */
const KINDS: Record<string, { plural: string; cluster?: boolean }> = {
  Namespace: { plural: "namespaces", cluster: true },
  Secret: { plural: "secrets" },
  ServiceAccount: { plural: "serviceaccounts" },
  ClusterRole: { plural: "clusterroles", cluster: true },
  ClusterRoleBinding: { plural: "clusterrolebindings", cluster: true },
  Role: { plural: "roles" },
  RoleBinding: { plural: "rolebindings" },
  MailboxProvider: { plural: "mailboxproviders", cluster: true },
  WarmupSchedule: { plural: "warmupschedules" },
  IPPool: { plural: "ippools" },
  SendingDomain: { plural: "sendingdomains" },
};

export function apiPath(o: { apiVersion: string; kind: string; metadata: { name: string; namespace?: string } }): string {
  const k = KINDS[o.kind];
  if (!k) throw new Error(`apply: kind ${o.kind} is not one the fleet knows (${Object.keys(KINDS).join(", ")})`);
  const [group, version] = o.apiVersion.includes("/") ? o.apiVersion.split("/") : ["", o.apiVersion];
  const base = group ? `/apis/${group}/${version}` : `/api/${version}`;
  return `${base}${k.cluster ? "" : `/namespaces/${o.metadata.namespace ?? "default"}`}/${k.plural}/${o.metadata.name}`;
}

/** The examples/ manifests in file order. HostNetwork pools get each address pinned to a kwok node
 * (spec.addresses[].nodeName), as a cluster with fixed node addresses would have them: here every
 * 127.x address is on every "node", so nothing else could tell relays which addresses are theirs. */
export function exampleObjects(nodes: string[]): K8sObject[] {
  const dir = join(PROJECT_ROOT, "examples");
  const out: K8sObject[] = [];
  for (const f of readdirSync(dir).filter((x) => /\.ya?ml$/.test(x)).sort()) {
    for (const d of parseAllDocuments(readFileSync(join(dir, f), "utf8"))) {
      const o = d.toJS() as K8sObject | null;
      if (!o) continue;
      if (o.kind === "IPPool" && o.spec.egress?.mode === "HostNetwork") {
        o.spec.addresses = o.spec.addresses.map((a: any, i: number) => ({ ...a, nodeName: a.nodeName ?? nodes[i % nodes.length] }));
      }
      out.push(o);
    }
  }
  return out;
}

export async function startFleet(o: FleetOptions = {}): Promise<Fleet> {
  const log = o.log ?? ((l: string) => process.stderr.write(`fleet: ${l}\n`));
  const net = o.net ?? 40;
  const dnsAddress = `127.0.53.${net}`;
  const dir = resolve(o.dir ?? mkdtempSync(join(tmpdir(), "mf-fleet-")));
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755); // Postfix's delivery agent (nobody) walks down to the inbox
  for (const x of o.extraDomains ?? []) if (!RECEIVERS.some((r) => r.name === x.receiver)) throw new Error(`extraDomains: no receiver named ${x.receiver} (${RECEIVERS.map((r) => r.name).join(", ")})`);
  const missing = await preflight({ prometheus: o.prometheus });
  if (missing.length) throw new Error(`the local fleet cannot start:\n  - ${missing.join("\n  - ")}`);

  const groups = new Set<number>();
  const stops: (() => Promise<unknown>)[] = [];
  const receiverAddress = (r: Receiver | string) => {
    const rec = typeof r === "string" ? RECEIVERS.find((x) => x.name === r) : r;
    if (!rec) throw new Error(`no receiver named ${String(r)} (${RECEIVERS.map((x) => x.name).join(", ")})`);
    return `127.0.${net}.${rec.octet}`;
  };
  let stopped = false;
  const stopAll = async () => {
    stopped = true;
    for (const s of stops.reverse()) await s().catch((e) => log(`stop: ${(e as Error).message}`));
    stops.length = 0;
  };

  try {
    log(`state in ${dir}`);
    const kwokConfig = writeRunnerKwokStages(join(dir, "kwok-stages.yaml"), defaultKwokStagesPath());
    log("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)");
    const cp = await startControlPlane({ dir: join(dir, "kube"), withControllers: true, nodes: o.nodes ?? 2, crdsDir: join(PROJECT_ROOT, "crds"), kwokConfig });
    stops.push(() => cp.stop());
    for (const pid of Object.values(cp.pids())) groups.add(pid);
    log(`control plane at ${cp.server}, nodes ${cp.nodes.join(", ")}`);

    const natsNodes = o.natsNodes ?? 3;
    log(`starting NATS (${natsNodes} node${natsNodes > 1 ? "s" : ""})`);
    const nats = await startNats({ dir: join(dir, "nats"), nodes: natsNodes });
    stops.push(() => nats.stop());
    for (const pid of Object.values(nats.pids())) groups.add(pid);

    log(`starting Postfix receivers on 127.0.${net}.x and dnsmasq on ${dnsAddress}`);
    const postfix = await startPostfix({
      dir: join(dir, "postfix"),
      domains: [...RECEIVERS.flatMap((r) => r.domains), ...(o.extraDomains ?? []).map((x) => x.domain)],
      listeners: RECEIVERS.map((r): PostfixListener => ({
        address: receiverAddress(r),
        hostname: r.mx,
        tlsOffered: r.tls,
        limits: {
          messageRatePerUnit: Math.ceil(r.lane.messagesPerMinute * 1.1),
          connectionCountLimit: r.lane.connections * 2,
          rateTimeUnit: "60s",
        },
        rejectRecipients: [
          { pattern: /^unknown-/, reply: "550 5.1.1 The email account that you tried to reach does not exist" },
          { pattern: /^busy-/, reply: "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered" },
        ],
      })),
    });
    stops.push(() => postfix.stop());
    // master runs in its own session: its pid is the group of every Postfix daemon.
    try { groups.add(Number(readFileSync(join(postfix.dir, "queue", "pid", "master.pid"), "utf8").trim())); } catch { /* no pid file: the dir check below still applies */ }
    const dns = await startDns({ dir: join(dir, "dns"), address: dnsAddress, records: [] });
    stops.push(() => dns.stop());

    // The operator as the chart runs it: the chart's RBAC (its ServiceAccount's token) and flags,
    // plus what differs out of a cluster (ports, webhook URL, DNS, NATS).
    const chart = await renderChart({ release: RELEASE, namespace: FLEET_NAMESPACE, set: ["monitoring.podMonitor.enabled=true"] });
    const apply = async (obj: K8sObject) => {
      const r = await cp.request("PATCH", `${apiPath(obj)}?fieldManager=mailfleet-fleet&force=true`, JSON.stringify(obj), "application/apply-patch+yaml");
      if (r.status !== 200 && r.status !== 201) throw new Error(`apply ${obj.kind} ${obj.metadata.namespace ? `${obj.metadata.namespace}/` : ""}${obj.metadata.name}: ${r.status} ${r.body}`);
    };
    await apply({ apiVersion: "v1", kind: "Namespace", metadata: { name: FLEET_NAMESPACE } });
    const isProviderHook = (x: K8sObject) => x.metadata.name.endsWith("-providers");
    for (const x of chart.filter((c) => ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].includes(c.kind) && !isProviderHook(c))) await apply(x);
    const sa = chart.find((x) => x.kind === "ServiceAccount" && !isProviderHook(x))!.metadata.name;
    const operatorKubeconfig = join(dir, "operator.kubeconfig");
    writeFileSync(operatorKubeconfig, await cp.kubeconfigForServiceAccount(FLEET_NAMESPACE, sa, 48 * 3600));
    const [metricsPort, webhookPort] = await freePorts(2);
    const deployment = chart.find((x) => x.kind === "Deployment")!;
    const chartArgs = (deployment.spec.template.spec.containers[0].args as string[])
      .map((a) => a.replace("$(POD_NAME)", `${RELEASE}-mailfleet-local`))
      .filter((a) => !/^--(nats|nats-replicas|metrics-port|metrics-host|webhook-port|relay-image|dns-servers)=/.test(a));
    const relayEnv = { MAILFLEET_DNS_SERVERS: dnsAddress, MAILFLEET_DELIVERY_PORT: "25", ...(o.relayEnv ?? {}) };
    const operatorArgs = [
      join(PROJECT_ROOT, "operator", "main.ts"), ...chartArgs,
      `--kubeconfig=${operatorKubeconfig}`, `--nats=${nats.urls.join(",")}`, `--nats-replicas=${natsNodes}`,
      `--metrics-port=${metricsPort}`, "--metrics-host=127.0.0.1", `--webhook-port=${webhookPort}`, "--webhook-url-host=127.0.0.1",
      `--dns-servers=${dnsAddress}`, "--dns-recheck-unverified=5s", "--relay-image=localhost/mailfleet-relay:dev",
      ...Object.entries(relayEnv).map(([k, v]) => `--relay-env=${k}=${v}`),
      ...(o.operatorArgs ?? []),
    ];
    let operator: ManagedProcess;
    const startOperator = async () => {
      operator = startProcess({ name: "operator", command: process.execPath, cwd: PROJECT_ROOT, logFile: join(dir, "logs", "operator.log"), env: childEnv(), args: operatorArgs });
      groups.add(operator.pid);
      await Promise.race([operator.exited, sleep(3000)]);
      if (operator.exitCode() !== undefined) throw new Error(`the operator exited (${operator.exitCode()}) right after start:\n${logTail(operator.logFile, 30)}`);
    };
    log("starting the operator");
    await startOperator();
    stops.push(() => operator.stop(30_000));

    log("starting the relay runner (it runs a relay for every relay Pod on the kwok nodes)");
    const runner = await startRunner({
      kubeconfig: cp.kubeconfigPath, stateDir: join(dir, "runner"),
      ...(o.runnerBackoff ? { backoff: o.runnerBackoff } : {}),
      log: (l) => { try { writeFileSync(join(dir, "logs", "runner.log"), `${new Date().toISOString()} ${l}\n`, { flag: "a" }); } catch { /* stopping */ } },
    });
    stops.push(() => runner.stop()); // first to stop (reverse order): relays drain while NATS is up
    const relayGroups = setInterval(() => { for (const r of runner.relays()) if (r.pid) groups.add(r.pid); }, 500);
    stops.push(async () => clearInterval(relayGroups));

    // DNS: the test zones plus what the operator asks for, re-published when that changes.
    let dnsFailing = false;
    let lastRecords = "";
    const records = async (): Promise<DnsRecord[]> => {
      const out: DnsRecord[] = (o.extraDomains ?? []).map((x) => ({ type: "MX" as const, name: x.domain, value: RECEIVERS.find((r) => r.name === x.receiver)!.mx, priority: 10 }));
      for (const r of RECEIVERS) {
        out.push({ type: "A", name: r.mx, value: receiverAddress(r) });
        for (const d of r.domains) out.push({ type: "MX", name: d, value: r.mx, priority: 10 });
      }
      const pools = (await cp.request("GET", "/apis/mailfleet.io/v1alpha1/ippools")).json().items ?? [];
      for (const p of pools) for (const a of p.spec.addresses ?? []) out.push({ type: "A", name: a.hostname, value: a.address });
      const sds = (await cp.request("GET", "/apis/mailfleet.io/v1alpha1/sendingdomains")).json().items ?? [];
      for (const sd of sds) {
        for (const r of sd.status?.dnsRecords ?? []) {
          if (r.type === "MX") out.push({ type: "MX", name: r.name, value: r.value, priority: r.priority ?? 10 });
          else if (r.type === "TXT") out.push({ type: "TXT", name: r.name, value: r.value });
          else if (r.type === "CNAME") out.push({ type: "CNAME", name: r.name, value: r.value });
        }
      }
      // One record per (type, name, value): two domains of one pool ask for the same A/MX.
      const seen = new Set<string>();
      return out.filter((r) => { const k = `${r.type} ${r.name} ${r.value}`; if (seen.has(k)) return false; seen.add(k); return true; });
    };
    const syncDns = async () => {
      if (dnsFailing || stopped) return;
      const next = await records();
      const text = JSON.stringify(next);
      if (text === lastRecords) return;
      await dns.setRecords(next);
      lastRecords = text;
    };
    await syncDns();
    let syncing = false;
    const dnsTimer = setInterval(() => {
      if (syncing) return;
      syncing = true;
      syncDns().catch((e) => log(`DNS sync: ${(e as Error).message}`)).finally(() => { syncing = false; });
    }, 3000);
    stops.push(async () => clearInterval(dnsTimer));

    if (o.examples !== false) {
      log("applying examples/");
      const keep = typeof o.examples === "function" ? o.examples : () => true;
      for (const x of exampleObjects(cp.nodes).filter(keep)) await apply(x);
    }

    let prom: PrometheusHandle | undefined;
    if (o.prometheus !== false) {
      // Scrape jobs from the chart's PodMonitors (prometheus-operator's relabelings). Debian's
      // Prometheus has no kubernetes_sd: pod targets go to a file_sd file every 2 s instead.
      const monitors = chart.filter((x) => x.kind === "PodMonitor");
      const relayPm = monitors.find((m) => m.metadata.name.endsWith("-relays"))!;
      const operatorPm = monitors.find((m) => m.metadata.name.endsWith("-operator"))!;
      const sdFile = join(dir, "prometheus-pods.json");
      let prev = "";
      const writeTargets = async () => {
        const pods = (await cp.request("GET", "/api/v1/pods")).json().items;
        const next = JSON.stringify(podTargets(pods), null, 1);
        if (next !== prev) { writeFileSync(sdFile, next); prev = next; }
      };
      await writeTargets();
      const sdTimer = setInterval(() => { writeTargets().catch(() => {}); }, 2000);
      stops.push(async () => clearInterval(sdTimer));
      const rulesFile = join(dir, "mailfleet-rules.yaml");
      writeFileSync(rulesFile, stringify(await renderRules(), { lineWidth: 0 }));
      const scrape: ScrapeConfig[] = [
        {
          job_name: `podMonitor/${relayPm.metadata.namespace}/${relayPm.metadata.name}/0`,
          metrics_path: relayPm.spec.podMetricsEndpoints[0].path ?? "/metrics",
          file_sd_configs: [{ files: [sdFile], refresh_interval: "2s" }],
          relabel_configs: podMonitorRelabelings(relayPm, { addressFromAnnotation: LISTEN_ADDRESS_ANNOTATION }),
        },
        {
          // The operator runs as a process: a static target with the labels its PodMonitor gives.
          job_name: `podMonitor/${operatorPm.metadata.namespace}/${operatorPm.metadata.name}/0`,
          metrics_path: "/metrics",
          static_configs: [{ targets: [`127.0.0.1:${metricsPort}`], labels: { job: "mailfleet", namespace: FLEET_NAMESPACE, pod: `${RELEASE}-mailfleet-local`, container: "operator", endpoint: "metrics" } }],
        },
      ];
      prom = await startPrometheus({ dir: join(dir, "prometheus"), scrapeInterval: "5s", ruleFiles: [rulesFile], scrapeConfigs: scrape });
      stops.push(() => prom!.stop());
      log(`Prometheus at ${prom.url}`);
    }

    const relays = (pool?: string) => runner.relays().filter((r) => r.state === "running" && !r.terminating && (!pool || r.env.MAILFLEET_POOL === pool));
    const fleet: Fleet = {
      dir, net, cp, nats, dns, postfix, runner,
      ...(prom ? { prom } : {}),
      operator: () => operator,
      receiverAddress,
      relays,
      async waitForRelays(pools, timeoutMs = 300_000) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const ready = runner.relays().filter((r) => r.state === "running" && r.ready && !r.terminating);
          const ok = Object.entries(pools).every(([p, n]) => ready.filter((r) => r.env.MAILFLEET_POOL === p).length >= n);
          if (ok) return ready;
          if (operator.exitCode() !== undefined) throw new Error(`the operator exited (${operator.exitCode()}):\n${logTail(operator.logFile, 30)}`);
          if (Date.now() > deadline) {
            throw new Error(`timed out waiting for relays ${JSON.stringify(pools)}; runner sees ${JSON.stringify(runner.relays().map((r) => [r.env.MAILFLEET_POOL, r.pod, r.state, r.ready, r.reason, r.message]))}\noperator log:\n${logTail(operator.logFile, 20)}`);
          }
          await sleep(1000);
        }
      },
      apply,
      async patch(path, body, contentType = "application/merge-patch+json") {
        const r = await cp.request("PATCH", path, JSON.stringify(body), contentType);
        if (r.status >= 300) throw new Error(`PATCH ${path}: ${r.status} ${r.body}`);
        return r.json();
      },
      async get(path) {
        const r = await cp.request("GET", path);
        if (r.status >= 300) throw new Error(`GET ${path}: ${r.status} ${r.body}`);
        return r.json();
      },
      async restartOperator() {
        await operator.stop(30_000);
        await startOperator();
      },
      async dnsFail(on, mode = "timeout") {
        dnsFailing = on;
        await dns.fail(on, mode);
        if (!on) await syncDns();
      },
      syncDns,
      groups: () => groups,
      stop: stopAll,
    };
    return fleet;
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/** Processes left of the given process groups, or whose command line names dir. */
export function leftovers(groups: Set<number>, dir: string): { pid: number; comm: string }[] {
  const out: { pid: number; comm: string }[] = [];
  for (const p of allProcs()) {
    if (p.pid === process.pid) continue;
    let hit = groups.has(p.pgid);
    if (!hit) {
      try { hit = readFileSync(`/proc/${p.pid}/cmdline`, "utf8").includes(dir); } catch { /* gone */ }
    }
    if (hit) out.push({ pid: p.pid, comm: p.comm });
  }
  return out;
}

export function removeDir(dir: string): void {
  if (!process.env.MAILFLEET_KEEP_STATE) rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// npm start: the fleet in the foreground with a steady workload and a live status until Ctrl-C.
// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const { Fleet: CliFleet } = await import("../../cli/lib/fleet.ts");
  const { statusReport, statusText } = await import("../../cli/commands/status.ts");
  const { table, age } = await import("../../cli/lib/output.ts");
  const { Ledger, Workload, percentile } = await import("./workload.ts");
  const { killAllNow } = await import("./proc.ts");

  const dir = resolve(process.env.MAILFLEET_FLEET_DIR ?? join(PROJECT_ROOT, ".fleet"));
  const rate = Number(process.env.MAILFLEET_WORKLOAD_RATE ?? 4);
  const missing = await preflight();
  if (missing.length) {
    process.stderr.write(`npm start: the local fleet cannot start:\n  - ${missing.join("\n  - ")}\n`);
    return 1;
  }
  // One run per folder: a second `npm start` would pull the first one's state from under it.
  const pidFile = `${dir}.pid`;
  try {
    const pid = Number(readFileSync(pidFile, "utf8"));
    if (pid && pid !== process.pid && existsSync(`/proc/${pid}`) && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("fleet.ts")) {
      process.stderr.write(`npm start: the local fleet already runs in ${dir} (pid ${pid}); stop it with Ctrl-C there, or set MAILFLEET_FLEET_DIR for a second one\n`);
      return 1;
    }
  } catch { /* no pid file */ }
  writeFileSync(pidFile, String(process.pid));
  process.on("exit", () => { try { if (readFileSync(pidFile, "utf8") === String(process.pid)) rmSync(pidFile); } catch { /* gone */ } });
  // A fresh cluster every time: the state of an earlier run (kept for a look at its logs) goes.
  if (existsSync(dir)) {
    if (!existsSync(join(dir, "kube")) && readdirSync(dir).length) {
      process.stderr.write(`npm start: ${dir} exists and is not a fleet state directory; set MAILFLEET_FLEET_DIR elsewhere\n`);
      return 1;
    }
    rmSync(dir, { recursive: true, force: true });
  }
  const started = Date.now();
  const fleet = await startFleet({ dir, log: (l) => process.stderr.write(`fleet: ${l}\n`) });
  // The CLI finds a running fleet by its state file (as after `mailfleet local up`), so
  // `npx mailfleet status` works beside `npm start` without flags.
  const cpPids = fleet.cp.pids();
  const state: LocalState = {
    version: 1, stateDir: dir, kubeconfig: fleet.cp.kubeconfigPath, server: fleet.cp.server,
    nats: fleet.nats.urls.join(","), natsUrls: fleet.nats.urls, natsMonitor: fleet.nats.servers.map((s) => s.monitorUrl),
    pids: { "kube-apiserver": cpPids["kube-apiserver"]!, fleet: process.pid },
    commands: { "kube-apiserver": "kube-apiserver", fleet: "node" }, crds: [],
    operator: { started: true }, logs: join(dir, "logs"), startedAt: new Date(started).toISOString(),
  };
  writeFileSync(stateFile(dir), JSON.stringify(state, null, 2));

  let stopping = false;
  const ledger = new Ledger(join(fleet.postfix.dir, "inbox"));
  let workload: InstanceType<typeof Workload> | undefined;
  const cli = new CliFleet({ kubeSource: "--kubeconfig", kubeconfigPath: fleet.cp.kubeconfigPath, natsUrls: fleet.nats.urls, natsSource: "--nats" });
  let timer: NodeJS.Timeout | undefined;
  const shutdown = async (why: string) => {
    if (stopping) return;
    stopping = true;
    clearTimeout(timer);
    process.stderr.write(`\nnpm start: ${why}: stopping the workload, relays (drain), operator, Prometheus, receivers, DNS, NATS and the control plane\n`);
    await workload?.stop().catch(() => {});
    await ledger.stop().catch(() => {});
    await cli.close().catch(() => {});
    await fleet.stop();
    const left = leftovers(fleet.groups(), dir);
    if (left.length) {
      process.stderr.write(`npm start: still running after stop: ${left.map((p) => `${p.comm} (${p.pid})`).join(", ")}; killing them\n`);
      for (const p of left) { try { process.kill(p.pid, "SIGKILL"); } catch { /* gone */ } }
    } else {
      process.stderr.write(`npm start: stopped; no process of the fleet is left (checked ${fleet.groups().size} process groups). State and logs kept in ${dir}\n`);
    }
  };
  // Ctrl-C stops gracefully (relays drain); the launchers' own handlers would SIGKILL at once, so
  // they are replaced here; their exit hooks stay as the safety net. A second Ctrl-C kills now.
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.removeAllListeners(sig);
    process.on(sig, () => {
      if (stopping) { killAllNow(); process.exit(130); }
      shutdown(`${sig}`).then(() => process.exit(0), (e) => { process.stderr.write(`${(e as Error).stack}\n`); process.exit(1); });
    });
  }

  process.stderr.write("fleet: waiting for the relays of both pools (the operator renders them, the runner starts them)\n");
  await fleet.waitForRelays({ "mail/transactional": 2, "mail/marketing": 1 });
  await ledger.start(fleet.nats.urls);
  workload = new Workload({
    relays: (pool) => fleet.relays(pool).filter((r) => r.ready),
    ledger, rate, concurrency: 8, bounceRatio: 0.05, deferRatio: 0.02,
    recipientDomains: RECEIVERS.filter((r) => r.name !== "slow").flatMap((r) => r.domains),
  }).start();

  const rateOf = (now: number, prev: { t: number; n: number } | undefined, n: number) => (prev && now > prev.t ? ((n - prev.n) * 1000) / (now - prev.t) : 0);
  let prev: { t: number; accepted: number; delivered: number } | undefined;
  const tty = process.stdout.isTTY;
  const draw = async () => {
    const now = Date.now();
    const w = workload!.stats;
    const delivered = ledger.counts.delivered ?? 0;
    const acc = rateOf(now, prev && { t: prev.t, n: prev.accepted }, w.accepted);
    const del = rateOf(now, prev && { t: prev.t, n: prev.delivered }, delivered);
    prev = { t: now, accepted: w.accepted, delivered };
    const out: string[] = [];
    out.push(`mailfleet local fleet: up ${age(now - started)}, Ctrl-C stops everything   (${new Date(now).toISOString()})`);
    out.push(`  kubectl --kubeconfig ${fleet.cp.kubeconfigPath} get ippools,sendingdomains -A`);
    out.push(`  npx mailfleet status${dir === join(PROJECT_ROOT, ".fleet") ? "" : ` --state-dir ${dir}`}   (also: queue, lane, warmup <pool>, dns <domain>)`);
    out.push(`  NATS ${fleet.nats.urls.join(",")}  DNS ${fleet.dns.server}  Prometheus ${fleet.prom?.url ?? "-"}  logs ${join(dir, "logs")} ${join(dir, "runner", "logs")}`);
    out.push(`  receivers: ${RECEIVERS.map((r) => `${r.name} ${fleet.receiverAddress(r)} (${r.domains.join(", ")})`).join("; ")}`);
    out.push("");
    out.push(table(["relay", "pool", "node", "listen", "state", "ready", "restarts"], fleet.runner.relays().map((r) => [
      r.pod, r.env.MAILFLEET_POOL, r.node, r.listenAddress, r.terminating ? "terminating" : r.reason ?? r.state, r.ready, r.restarts,
    ])));
    out.push("");
    out.push(`workload  ${rate}/s offered: accepted ${w.accepted} (${acc.toFixed(1)}/s; smtp auth ${w.byChannel["smtp-auth"]}, smtp trusted ${w.byChannel["smtp-trusted"]}, http ${w.byChannel.http})` +
      `, refused ${w.refused}, retries ${w.retries}, gave up ${w.failed}, p99 accept ${percentile(w.latencies, 99).toFixed(0)} ms`);
    const r = ledger.report();
    out.push(`outcomes  delivered ${delivered} (${del.toFixed(1)}/s), deferred ${ledger.counts.deferred ?? 0}, bounced ${ledger.counts.bounced ?? 0}, expired ${ledger.counts.expired ?? 0}; ` +
      `recipients waiting for an outcome ${ledger.pending()} of ${r.acceptedRecipients}; arrived at receivers ${r.arrivals} (${r.duplicates} twice)`);
    if (fleet.prom) {
      try {
        const q = await fleet.prom.query("sum by (pool, provider) (rate(mailfleet_delivered_total[1m])) or sum by (pool, provider) (rate(mailfleet_deferred_total[1m])) * 0");
        const d = await fleet.prom.query("sum by (pool, provider) (rate(mailfleet_deferred_total[1m]))");
        const rows = q.map((s) => {
          const def = d.find((x) => x.metric.pool === s.metric.pool && x.metric.provider === s.metric.provider);
          return [s.metric.pool, s.metric.provider, Number(s.value?.[1] ?? 0).toFixed(2), Number(def?.value?.[1] ?? 0).toFixed(2)];
        }).sort((a, b) => `${a[0]}${a[1]}`.localeCompare(`${b[0]}${b[1]}`));
        if (rows.length) { out.push(""); out.push(table(["pool", "provider", "delivered/s (1m)", "deferred/s (1m)"], rows)); }
      } catch { /* Prometheus has no samples yet */ }
    }
    try {
      const rep = await statusReport(cli);
      out.push("");
      out.push(statusText(rep));
      for (const x of rep.warnings) out.push(`warning: ${x}`);
    } catch (e) {
      out.push(`status: ${(e as Error).message}`);
    }
    if (w.errors.length) out.push("", `last workload error: ${w.errors[w.errors.length - 1]}`);
    if (stopping) return;
    process.stdout.write((tty ? "\x1b[H\x1b[2J" : "\n") + out.join("\n") + "\n");
  };
  const loop = async () => {
    await draw().catch((e) => process.stderr.write(`status: ${(e as Error).message}\n`));
    if (!stopping) timer = setTimeout(loop, Number(process.env.MAILFLEET_STATUS_INTERVAL_MS ?? 5000));
  };
  await loop();
  await new Promise(() => {}); // until a signal
  return 0;
}

if (import.meta.main) {
  main().then((code) => { if (code) process.exit(code); }, (e) => {
    process.stderr.write(`npm start: ${(e as Error).message}\n`);
    process.exit(1);
  });
}
