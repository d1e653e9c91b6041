// The operator's command line. Pure: argv and environment in, a configuration or an error naming
// the flag out.
import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { isIP } from "node:net";
import { parseArgs } from "node:util";
import { parseDuration } from "../api/units.ts";
import { relayEnv } from "../relay/config.ts";

export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

export type OperatorConfig = {
  kubeconfig?: string;
  natsUrls: string[];
  natsCreds?: string;
  natsReplicas: number;
  namespaces: string[];
  operatorNamespace: string;
  leaderElect: boolean;
  leaseNamespace: string;
  leaseName: string;
  identity: string;
  metrics: { host: string; port: number };
  webhook: {
    port: number;
    host: string;
    urlHost?: string;
    serviceName: string;
    servicePort: number;
    configName: string;
    secretName: string;
    certManager?: string;
    /** The ValidatingWebhookConfiguration is the Helm chart's: set only its CA bundle. */
    configFromChart: boolean;
  };
  dnsServers: string[];
  dnsRecheckMs: number;
  dnsRecheckUnverifiedMs: number;
  resyncMs: number;
  workers: number;
  logLevel: "debug" | "info" | "warn" | "error";
  relay: {
    image: string;
    natsUrls: string[];
    natsCredsSecret?: string;
    env: Record<string, string>;
    natsMonitoringEndpoint?: string;
    /** Container resources of relays whose IPPool sets none. */
    resources?: Record<string, unknown>;
  };
};

/** Relay variables the operator sets from each pool or from its own flags: --relay-env may not. */
export const RELAY_ENV_FROM_OPERATOR = new Set([
  "MAILFLEET_NATS_URL", "MAILFLEET_NATS_CREDS", "MAILFLEET_POOL", "MAILFLEET_RELAY_ID", "MAILFLEET_NODE_NAME", "MAILFLEET_ADDRESSES",
  "MAILFLEET_SECRETS_DIR", "MAILFLEET_TLS_DIR", "MAILFLEET_SUBMISSION_PORT", "MAILFLEET_INBOUND_PORT", "MAILFLEET_HTTP_PORT", "MAILFLEET_MAX_MESSAGE_SIZE",
]);

export const USAGE = `usage: node operator/main.ts --nats <urls> [flags]

  --kubeconfig PATH            kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)
  --nats URLS                  NATS servers, comma-separated (the plan is published there)
  --nats-creds PATH            NATS credentials file
  --nats-replicas N            replicas of the plan bucket and of relay mail streams (1, 3 or 5; default 1)
  --namespace NS               watch only these namespaces (repeatable or comma-separated; default all)
  --operator-namespace NS      the operator's namespace (default: the service account's, else "default")
  --leader-elect BOOL          elect a leader on a Lease (default true)
  --lease-namespace NS         (default: the operator's namespace)
  --lease-name NAME            (default mailfleet-operator)
  --identity ID                this replica's identity (default <hostname>_<pid>)
  --metrics-port N             /metrics, /healthz, /readyz (default 9400; 0: off)
  --metrics-host ADDR          (default 0.0.0.0)
  --webhook-port N             admission webhook HTTPS port (default 9443; 0: no webhook)
  --webhook-host ADDR          address the webhook listens on (default 0.0.0.0)
  --webhook-url-host HOST      the API server calls https://HOST:PORT/validate (default 127.0.0.1 when
                               running outside a cluster; in a cluster: the Service below)
  --webhook-service NAME       Service in front of the webhook (default mailfleet-operator-webhook)
  --webhook-service-port N     (default 443)
  --webhook-config-name NAME   ValidatingWebhookConfiguration (default mailfleet-operator)
  --webhook-secret NAME        Secret with the webhook CA and certificate (default mailfleet-operator-webhook-tls)
  --webhook-cert-manager NS/N  let cert-manager inject the CA of this Certificate (its Secret: --webhook-secret)
  --webhook-config-from-chart BOOL  the configuration is the Helm chart's: only set its CA bundle, never
                               create or delete it (default false)
  --dns-servers LIST           DNS servers for record and PTR checks, host[:port] comma-separated (default: system)
  --dns-recheck DUR            re-check verified DNS this often (default 5m)
  --dns-recheck-unverified DUR re-check unverified DNS this often (default 30s)
  --resync DUR                 re-reconcile everything this often (default 10m)
  --workers N                  reconcile workers per controller (default 4)
  --relay-image IMAGE          relay image (default mailfleet/relay:0.1.0)
  --relay-nats URLS            NATS URLs for relays (default: --nats)
  --relay-nats-creds-secret S  Secret (key nats.creds) in each pool's namespace mounted into relays
  --relay-env KEY=VALUE        extra relay variable from relay/config.ts (repeatable)
  --relay-resources JSON       container resources of relays whose IPPool sets none, e.g.
                               '{"requests":{"cpu":"100m","memory":"256Mi"},"limits":{"memory":"1Gi"}}'
  --nats-monitoring-endpoint H host:port of NATS monitoring, for KEDA's nats-jetstream scaler
  --log-level LEVEL            debug, info, warn, error (default info)
`;

const BOOLEAN_FLAGS = ["--leader-elect", "--webhook-config-from-chart"];

function list(values: string[] | undefined): string[] {
  return (values ?? []).flatMap((v) => v.split(",")).map((s) => s.trim()).filter(Boolean);
}

function int(flag: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) throw new FlagError(`${flag} must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return Number(v);
}

function duration(flag: string, v: string | undefined, dflt: string): number {
  try {
    const ms = parseDuration(v ?? dflt);
    if (ms <= 0) throw new Error("must be positive");
    return ms;
  } catch {
    throw new FlagError(`${flag} must be a duration such as 30s, 10m or 1h, got ${JSON.stringify(v)}`);
  }
}

function bool(flag: string, v: string | undefined, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (/^(true|1|yes)$/i.test(v)) return true;
  if (/^(false|0|no)$/i.test(v)) return false;
  throw new FlagError(`${flag} must be true or false, got ${JSON.stringify(v)}`);
}

function dnsName(flag: string, v: string): string {
  if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v)) throw new FlagError(`${flag} must be a lower-case DNS label, got ${JSON.stringify(v)}`);
  return v;
}

/** A Kubernetes quantity: what the API server's resource.Quantity parses. */
const QUANTITY = /^[+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i|[mkMGTPE])?$/;

/**
 * A container's resources as JSON ({requests, limits, claims}): checked here so a typo fails the
 * operator's start with the key named, not every relay Deployment's apply later. An empty object
 * means none.
 */
function resources(flag: string, v: string): Record<string, unknown> | undefined {
  let r: unknown;
  try {
    r = JSON.parse(v);
  } catch (err) {
    throw new FlagError(`${flag} must be JSON such as {"requests":{"cpu":"100m","memory":"256Mi"}}: ${(err as Error).message}`);
  }
  if (!r || typeof r !== "object" || Array.isArray(r)) throw new FlagError(`${flag} must be a JSON object with requests and/or limits`);
  for (const [k, section] of Object.entries(r)) {
    if (k === "claims") continue;
    if (k !== "requests" && k !== "limits") throw new FlagError(`${flag}: unknown key ${JSON.stringify(k)} (requests, limits, claims)`);
    if (!section || typeof section !== "object" || Array.isArray(section)) throw new FlagError(`${flag}: ${k} must be an object of resource name to quantity`);
    for (const [name, q] of Object.entries(section)) {
      const str = typeof q === "number" ? String(q) : q;
      if (typeof str !== "string" || !QUANTITY.test(str)) throw new FlagError(`${flag}: ${k}.${name} must be a quantity such as 100m, 0.5 or 256Mi, got ${JSON.stringify(q)}`);
    }
  }
  return Object.keys(r).length ? r as Record<string, unknown> : undefined;
}

const SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

export function parseFlags(argv: string[], env: NodeJS.ProcessEnv = process.env): OperatorConfig {
  // A bare boolean flag means true (parseArgs' string options need a value).
  const args = argv.map((a, i) => (BOOLEAN_FLAGS.includes(a) && (argv[i + 1] === undefined || argv[i + 1]!.startsWith("--")) ? `${a}=true` : a));
  let values: Record<string, string | string[] | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      allowPositionals: false,
      strict: true,
      options: {
        kubeconfig: { type: "string" },
        nats: { type: "string" },
        "nats-creds": { type: "string" },
        "nats-replicas": { type: "string" },
        namespace: { type: "string", multiple: true },
        "operator-namespace": { type: "string" },
        "leader-elect": { type: "string" },
        "lease-namespace": { type: "string" },
        "lease-name": { type: "string" },
        identity: { type: "string" },
        "metrics-port": { type: "string" },
        "metrics-host": { type: "string" },
        "webhook-port": { type: "string" },
        "webhook-host": { type: "string" },
        "webhook-url-host": { type: "string" },
        "webhook-service": { type: "string" },
        "webhook-service-port": { type: "string" },
        "webhook-config-name": { type: "string" },
        "webhook-secret": { type: "string" },
        "webhook-cert-manager": { type: "string" },
        "webhook-config-from-chart": { type: "string" },
        "dns-servers": { type: "string" },
        "dns-recheck": { type: "string" },
        "dns-recheck-unverified": { type: "string" },
        resync: { type: "string" },
        workers: { type: "string" },
        "relay-image": { type: "string" },
        "relay-nats": { type: "string" },
        "relay-nats-creds-secret": { type: "string" },
        "relay-env": { type: "string", multiple: true },
        "relay-resources": { type: "string" },
        "nats-monitoring-endpoint": { type: "string" },
        "log-level": { type: "string" },
        help: { type: "boolean" },
      },
    }));
  } catch (err) {
    throw new FlagError(`${(err as Error).message.replace(/\. To specify.*$/s, "")}\n\n${USAGE}`);
  }
  const s = (k: string) => values[k] as string | undefined;
  if (values.help) throw new FlagError(USAGE);

  const natsUrls = list(s("nats") ? [s("nats")!] : []);
  if (!natsUrls.length) throw new FlagError("--nats is required: the NATS server URLs the fleet plan is published to, e.g. --nats nats://127.0.0.1:4222");
  for (const u of natsUrls) {
    if (!/^(nats|tls|ws|wss):\/\/[^\s]+$/.test(u) && !/^[^\s/:]+:\d+$/.test(u)) throw new FlagError(`--nats: ${JSON.stringify(u)} is not a NATS URL such as nats://host:4222`);
  }
  const natsCreds = s("nats-creds");
  if (natsCreds && !existsSync(natsCreds)) throw new FlagError(`--nats-creds: file ${natsCreds} does not exist`);
  const natsReplicas = int("--nats-replicas", s("nats-replicas"), 1, 1, 5);
  if (![1, 3, 5].includes(natsReplicas)) throw new FlagError(`--nats-replicas must be 1, 3 or 5, got ${natsReplicas}`);

  const inCluster = Boolean(env.KUBERNETES_SERVICE_HOST);
  let saNamespace: string | undefined;
  try {
    saNamespace = inCluster && existsSync(SA_NAMESPACE_FILE) ? readFileSync(SA_NAMESPACE_FILE, "utf8").trim() : undefined;
  } catch { /* not in a pod */ }
  const operatorNamespace = dnsName("--operator-namespace", s("operator-namespace") ?? env.POD_NAMESPACE ?? saNamespace ?? "default");
  const namespaces = list(values.namespace as string[] | undefined).map((n) => dnsName("--namespace", n));

  const kubeconfig = s("kubeconfig");
  if (kubeconfig !== undefined && !existsSync(kubeconfig)) throw new FlagError(`--kubeconfig: file ${kubeconfig} does not exist`);

  const webhookPort = int("--webhook-port", s("webhook-port"), 9443, 0, 65535);
  const urlHost = s("webhook-url-host") ?? (inCluster ? undefined : "127.0.0.1");
  if (urlHost !== undefined && !isIP(urlHost) && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(urlHost)) throw new FlagError(`--webhook-url-host must be an IP address or a host name, got ${JSON.stringify(urlHost)}`);
  const certManager = s("webhook-cert-manager");
  if (certManager !== undefined && !/^[a-z0-9-]+\/[a-z0-9.-]+$/.test(certManager)) throw new FlagError(`--webhook-cert-manager must be namespace/name of a Certificate, got ${JSON.stringify(certManager)}`);

  const dnsServers = list(s("dns-servers") ? [s("dns-servers")!] : []);
  for (const d of dnsServers) {
    const host = d.replace(/^\[(.*)\](:\d+)?$/, "$1").replace(/^([^:]+):\d+$/, "$1");
    if (!isIP(host)) throw new FlagError(`--dns-servers: ${JSON.stringify(d)} is not an IP address (with an optional :port)`);
  }

  const relayEnvOut: Record<string, string> = {};
  const known = new Set(Object.keys(relayEnv.shape));
  for (const kv of (values["relay-env"] as string[] | undefined) ?? []) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new FlagError(`--relay-env must be KEY=VALUE, got ${JSON.stringify(kv)}`);
    const k = kv.slice(0, eq);
    if (!known.has(k)) throw new FlagError(`--relay-env: ${k} is not a relay variable (relay/config.ts has ${[...known].filter((x) => !RELAY_ENV_FROM_OPERATOR.has(x)).join(", ")})`);
    if (RELAY_ENV_FROM_OPERATOR.has(k)) throw new FlagError(`--relay-env: ${k} is set by the operator from each IPPool or from its own flags`);
    relayEnvOut[k] = kv.slice(eq + 1);
  }
  const relayCheck = relayEnv.partial().safeParse(relayEnvOut);
  if (!relayCheck.success) throw new FlagError(`--relay-env: ${relayCheck.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`).join("; ")}`);

  const relayResources = s("relay-resources") !== undefined ? resources("--relay-resources", s("relay-resources")!) : undefined;

  const logLevel = s("log-level") ?? "info";
  if (!["debug", "info", "warn", "error"].includes(logLevel)) throw new FlagError(`--log-level must be debug, info, warn or error, got ${JSON.stringify(logLevel)}`);
  const identity = s("identity") ?? `${hostname()}_${process.pid}`;
  if (!identity || identity.length > 128) throw new FlagError("--identity must be 1 to 128 characters");

  return {
    ...(kubeconfig ? { kubeconfig } : {}),
    natsUrls,
    ...(natsCreds ? { natsCreds } : {}),
    natsReplicas,
    namespaces,
    operatorNamespace,
    leaderElect: bool("--leader-elect", s("leader-elect"), true),
    leaseNamespace: dnsName("--lease-namespace", s("lease-namespace") ?? operatorNamespace),
    leaseName: s("lease-name") ?? "mailfleet-operator",
    identity,
    metrics: { host: s("metrics-host") ?? "0.0.0.0", port: int("--metrics-port", s("metrics-port"), 9400, 0, 65535) },
    webhook: {
      port: webhookPort,
      host: s("webhook-host") ?? "0.0.0.0",
      ...(urlHost ? { urlHost } : {}),
      serviceName: dnsName("--webhook-service", s("webhook-service") ?? "mailfleet-operator-webhook"),
      servicePort: int("--webhook-service-port", s("webhook-service-port"), 443, 1, 65535),
      configName: s("webhook-config-name") ?? "mailfleet-operator",
      secretName: s("webhook-secret") ?? "mailfleet-operator-webhook-tls",
      ...(certManager ? { certManager } : {}),
      configFromChart: bool("--webhook-config-from-chart", s("webhook-config-from-chart"), false),
    },
    dnsServers,
    dnsRecheckMs: duration("--dns-recheck", s("dns-recheck"), "5m"),
    dnsRecheckUnverifiedMs: duration("--dns-recheck-unverified", s("dns-recheck-unverified"), "30s"),
    resyncMs: duration("--resync", s("resync"), "10m"),
    workers: int("--workers", s("workers"), 4, 1, 64),
    logLevel: logLevel as OperatorConfig["logLevel"],
    relay: {
      image: s("relay-image") ?? "mailfleet/relay:0.1.0",
      natsUrls: list(s("relay-nats") ? [s("relay-nats")!] : []).length ? list([s("relay-nats")!]) : natsUrls,
      ...(s("relay-nats-creds-secret") ? { natsCredsSecret: dnsName("--relay-nats-creds-secret", s("relay-nats-creds-secret")!) } : {}),
      env: relayEnvOut,
      ...(s("nats-monitoring-endpoint") ? { natsMonitoringEndpoint: s("nats-monitoring-endpoint")! } : {}),
      ...(relayResources ? { resources: relayResources } : {}),
    },
  };
}
