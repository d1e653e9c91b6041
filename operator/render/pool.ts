// An IPPool's relay workload as Kubernetes objects: a pure function of the pool and the operator's
// configuration. Two egress modes (ARCHITECTURE.md section 5):
//
//  - HostNetwork: one Deployment (or StatefulSet) for the pool on the node's network; each relay
//    binds the pool addresses its node carries. One relay per node (anti-affinity, host ports).
//  - PerAddress: one Deployment per address, its pods labelled and annotated with the address so an
//    egress gateway can map their traffic to it; MAILFLEET_ADDRESSES names the one address.
//
// Keys reach relays through the pool's keyring Secret (<pool>-relay), mounted read-only at
// MAILFLEET_SECRETS_DIR and kept current by the operator; the kubelet refreshes mounted Secrets
// in place, without a restart. We chose this over relays reading Secrets through the API because
// relays then need no Kubernetes credentials at all (automountServiceAccountToken: false): a
// compromised relay cannot read anything, and a thousand relays put no load on the API server.
import type { IPPool } from "../../api/v1alpha1/index.ts";
import { consumers, STREAM_QUEUE } from "../../relay/queue/topology.ts";
import {
  COMPONENT_LABEL, EGRESS_ADDRESS, type KubeObject, MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL, ownerRef,
} from "../runtime/types.ts";

export const SECRETS_DIR = "/etc/mailfleet/secrets";
export const TLS_DIR = "/etc/mailfleet/tls";
export const NATS_CREDS_DIR = "/etc/mailfleet/nats";
export const HTTP_PORT = 8080;
export const RELAY_NAME = "mailfleet-relay";

export type RenderConfig = {
  relayImage: string;
  /** NATS URLs the relays use. */
  natsUrls: string[];
  /** A Secret in the pool's namespace holding nats.creds for the relays (optional). */
  natsCredsSecret?: string;
  streamReplicas: number;
  /** Extra relay variables (validated against relay/config.ts by the operator's flags). */
  relayEnv: Record<string, string>;
  /** KEDA's ScaledObject CRD is installed. */
  keda: boolean;
  /** host:port of a NATS monitoring endpoint, for KEDA's nats-jetstream scaler. */
  natsMonitoringEndpoint?: string;
  /** Container resources of relays whose IPPool sets none (the chart's relay.resources). */
  relayResources?: Record<string, unknown>;
};

export type PoolRender = {
  /** Namespace and the objects to apply. */
  objects: KubeObject[];
  /** Names of the workloads (for status). */
  workloads: { kind: "Deployment" | "StatefulSet"; name: string; address?: string }[];
  /** The label selector of every relay pod of the pool (status.selector). */
  selector: string;
};

/** An address as a name or label value: dots and colons become dashes (never leading or trailing). */
export function addressSlug(address: string): string {
  let s = address.toLowerCase().replaceAll(".", "-").replaceAll(":", "-");
  if (s.startsWith("-")) s = `0${s}`;
  if (s.endsWith("-")) s = `${s}0`;
  return s;
}

export function relaySecretName(pool: string): string {
  return `${pool}-relay`;
}
export function selfSignedTlsName(pool: string): string {
  return `${pool}-submission-tls`;
}
export function serviceAccountName(pool: string): string {
  return `${pool}-relay`;
}
export function perAddressName(pool: string, address: string): string {
  return `${pool}-${addressSlug(address)}`;
}

export function poolLabels(pool: string): Record<string, string> {
  return {
    "app.kubernetes.io/name": RELAY_NAME,
    "app.kubernetes.io/instance": pool,
    [COMPONENT_LABEL]: "relay",
    [MANAGED_BY_LABEL]: MANAGED_BY,
    [POOL_LABEL]: pool,
  };
}

function meta(pool: IPPool, name: string, extra: Record<string, string> = {}) {
  return {
    name,
    namespace: pool.metadata.namespace,
    labels: { ...poolLabels(pool.metadata.name), ...extra },
    ownerReferences: [ownerRef(pool as unknown as KubeObject)],
  };
}

function relayEnv(pool: IPPool, cfg: RenderConfig, address: string | undefined) {
  const s = pool.spec.relay;
  const env: { name: string; value?: string; valueFrom?: unknown }[] = [
    { name: "MAILFLEET_NATS_URL", value: cfg.natsUrls.join(",") },
    ...(cfg.natsCredsSecret ? [{ name: "MAILFLEET_NATS_CREDS", value: `${NATS_CREDS_DIR}/nats.creds` }] : []),
    { name: "MAILFLEET_POOL", value: `${pool.metadata.namespace}/${pool.metadata.name}` },
    { name: "MAILFLEET_RELAY_ID", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } } },
    { name: "MAILFLEET_NODE_NAME", valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: "spec.nodeName" } } },
    ...(address ? [{ name: "MAILFLEET_ADDRESSES", value: address }] : []),
    { name: "MAILFLEET_SECRETS_DIR", value: SECRETS_DIR },
    { name: "MAILFLEET_TLS_DIR", value: TLS_DIR },
    { name: "MAILFLEET_SUBMISSION_PORT", value: String(s.submission.port) },
    { name: "MAILFLEET_INBOUND_PORT", value: String(s.inboundPort) },
    { name: "MAILFLEET_HTTP_PORT", value: String(HTTP_PORT) },
    { name: "MAILFLEET_MAX_MESSAGE_SIZE", value: String(s.submission.maxMessageSize) },
    { name: "MAILFLEET_STREAM_REPLICAS", value: String(cfg.streamReplicas) },
  ];
  for (const [name, value] of Object.entries(cfg.relayEnv).sort(([a], [b]) => a.localeCompare(b))) {
    const i = env.findIndex((e) => e.name === name);
    if (i >= 0) env[i] = { name, value };
    else env.push({ name, value });
  }
  return env;
}

/** The relay image's user (relay/Dockerfile USER). */
export const RELAY_UID = 65532;

/**
 * Pod and container security contexts. fsGroup always: the kubelet then makes the mounted Secrets
 * (keyring, TLS, NATS credentials; mode 0440, owned by root) group-owned by it, so the relay's user
 * can read them. Without it a relay on a real node cannot read its own DKIM keys.
 *
 * Ports below 1024: a PerAddress pod has its own network namespace, where the (safe, namespaced)
 * sysctl lets an unprivileged user bind them. On the host network no Pod sysctl can apply, and a
 * capability added to a non-root container is not effective (Kubernetes sets no ambient
 * capabilities; file capabilities are off with allowPrivilegeEscalation: false), so such a relay runs
 * as uid 0 with NET_BIND_SERVICE as its only capability (no DAC_OVERRIDE: it still reads the keyring
 * as the owner/fsGroup allows). A host-network pool whose ports are all 1024 or above runs as 65532.
 */
export function securityContexts(pool: IPPool): { pod: Record<string, unknown>; container: Record<string, unknown> } {
  const s = pool.spec.relay;
  const host = pool.spec.egress.mode === "HostNetwork";
  const lowPorts = s.submission.port < 1024 || s.inboundPort < 1024;
  const asRoot = host && lowPorts;
  const base = { runAsUser: asRoot ? 0 : RELAY_UID, runAsGroup: RELAY_UID, fsGroup: RELAY_UID, seccompProfile: { type: "RuntimeDefault" } };
  return {
    pod: {
      runAsNonRoot: !asRoot,
      ...base,
      ...(!host && lowPorts ? { sysctls: [{ name: "net.ipv4.ip_unprivileged_port_start", value: "0" }] } : {}),
    },
    container: {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: asRoot ? { drop: ["ALL"], add: ["NET_BIND_SERVICE"] } : { drop: ["ALL"] },
    },
  };
}

function podTemplate(pool: IPPool, cfg: RenderConfig, labels: Record<string, string>, address: string | undefined) {
  const s = pool.spec.relay;
  const name = pool.metadata.name;
  const host = pool.spec.egress.mode === "HostNetwork";
  const ports = [
    { name: "submission", containerPort: s.submission.port, protocol: "TCP" },
    { name: "inbound", containerPort: s.inboundPort, protocol: "TCP" },
    { name: "http", containerPort: HTTP_PORT, protocol: "TCP" },
  ].map((p) => (host ? { ...p, hostPort: p.containerPort } : p));
  const nodeNames = [...new Set(pool.spec.addresses.map((a) => a.nodeName).filter((n): n is string => Boolean(n)))].sort();
  const poolSelector = { matchLabels: { [POOL_LABEL]: name } };
  const affinity: Record<string, unknown> = host
    ? {
      // Two relays of a pool on one node would bind the same addresses and ports.
      podAntiAffinity: { requiredDuringSchedulingIgnoredDuringExecution: [{ labelSelector: poolSelector, topologyKey: "kubernetes.io/hostname" }] },
      // Addresses pinned to nodes: only those nodes carry them.
      ...(nodeNames.length && nodeNames.length === pool.spec.addresses.length
        ? { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: "kubernetes.io/hostname", operator: "In", values: nodeNames }] }] } } }
        : {}),
    }
    : {
      podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { labelSelector: poolSelector, topologyKey: "kubernetes.io/hostname" } }] },
    };
  const volumes: Record<string, unknown>[] = [
    { name: "secrets", secret: { secretName: relaySecretName(name), defaultMode: 0o440 } },
    { name: "tls", secret: { secretName: pool.spec.relay.submission.tlsSecretRef?.name ?? selfSignedTlsName(name), defaultMode: 0o440 } },
  ];
  const mounts: Record<string, unknown>[] = [
    { name: "secrets", mountPath: SECRETS_DIR, readOnly: true },
    { name: "tls", mountPath: TLS_DIR, readOnly: true },
  ];
  if (cfg.natsCredsSecret) {
    volumes.push({ name: "nats", secret: { secretName: cfg.natsCredsSecret, defaultMode: 0o440 } });
    mounts.push({ name: "nats", mountPath: NATS_CREDS_DIR, readOnly: true });
  }
  const sec = securityContexts(pool);
  return {
    metadata: {
      labels,
      ...(address ? { annotations: { [EGRESS_ADDRESS]: address } } : {}),
    },
    spec: {
      serviceAccountName: serviceAccountName(name),
      // Relays need no Kubernetes API: keys come from the mounted keyring, the plan from NATS.
      automountServiceAccountToken: false,
      ...(host ? { hostNetwork: true, dnsPolicy: "ClusterFirstWithHostNet" } : {}),
      terminationGracePeriodSeconds: s.terminationGracePeriodSeconds,
      ...(s.nodeSelector ? { nodeSelector: s.nodeSelector } : {}),
      ...(s.tolerations?.length ? { tolerations: s.tolerations } : {}),
      affinity,
      securityContext: sec.pod,
      containers: [{
        name: "relay",
        image: s.image ?? cfg.relayImage,
        env: relayEnv(pool, cfg, address),
        ports,
        readinessProbe: { httpGet: { path: "/readyz", port: "http" }, periodSeconds: 5, failureThreshold: 3 },
        livenessProbe: { httpGet: { path: "/healthz", port: "http" }, periodSeconds: 10, failureThreshold: 6 },
        ...(s.resources ?? cfg.relayResources ? { resources: s.resources ?? cfg.relayResources } : {}),
        volumeMounts: mounts,
        securityContext: sec.container,
      }],
      volumes,
    },
  };
}

function workload(
  pool: IPPool, cfg: RenderConfig, name: string, address: string | undefined,
): KubeObject {
  const s = pool.spec.relay;
  const host = pool.spec.egress.mode === "HostNetwork";
  const selectorLabels: Record<string, string> = {
    [POOL_LABEL]: pool.metadata.name,
    [COMPONENT_LABEL]: "relay",
    ...(address ? { [EGRESS_ADDRESS]: addressSlug(address) } : {}),
  };
  const labels = { ...poolLabels(pool.metadata.name), ...selectorLabels };
  const kind = s.workload;
  const spec: Record<string, unknown> = {
    // Autoscaled pools leave replicas to the autoscaler: sending it would undo every scale.
    ...(s.autoscaling ? {} : { replicas: s.replicas }),
    selector: { matchLabels: selectorLabels },
    template: podTemplate(pool, cfg, labels, address),
  };
  if (kind === "Deployment") {
    spec.strategy = host
      // Host ports and one relay per node: a surge pod would have nowhere to go.
      ? { type: "RollingUpdate", rollingUpdate: { maxSurge: 0, maxUnavailable: 1 } }
      : { type: "RollingUpdate", rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } };
  } else {
    spec.serviceName = `${pool.metadata.name}-relays`;
    spec.podManagementPolicy = "Parallel";
  }
  return { apiVersion: "apps/v1", kind, metadata: meta(pool, name, address ? { [EGRESS_ADDRESS]: addressSlug(address) } : {}), spec };
}

function autoscaler(pool: IPPool, cfg: RenderConfig, target: { kind: string; name: string }): KubeObject | undefined {
  const a = pool.spec.relay.autoscaling;
  if (!a) return undefined;
  if (cfg.keda && a.targetQueueDepth && cfg.natsMonitoringEndpoint) {
    const poolId = `${pool.metadata.namespace}/${pool.metadata.name}`;
    return {
      apiVersion: "keda.sh/v1alpha1",
      kind: "ScaledObject",
      metadata: meta(pool, target.name),
      spec: {
        scaleTargetRef: { apiVersion: "apps/v1", kind: target.kind, name: target.name },
        minReplicaCount: a.minReplicas,
        maxReplicaCount: a.maxReplicas,
        triggers: [
          {
            type: "nats-jetstream",
            metadata: {
              natsServerMonitoringEndpoint: cfg.natsMonitoringEndpoint,
              account: "$G",
              stream: STREAM_QUEUE,
              consumer: consumers.route(poolId),
              lagThreshold: String(a.targetQueueDepth),
            },
          },
          { type: "cpu", metricType: "Utilization", metadata: { value: String(a.targetCPUUtilizationPercentage) } },
        ],
      },
    };
  }
  return {
    apiVersion: "autoscaling/v2",
    kind: "HorizontalPodAutoscaler",
    metadata: meta(pool, target.name),
    spec: {
      scaleTargetRef: { apiVersion: "apps/v1", kind: target.kind, name: target.name },
      minReplicas: a.minReplicas,
      maxReplicas: a.maxReplicas,
      metrics: [{ type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: a.targetCPUUtilizationPercentage } } }],
    },
  };
}

export function renderPool(pool: IPPool, cfg: RenderConfig): PoolRender {
  const name = pool.metadata.name;
  const s = pool.spec.relay;
  const objects: KubeObject[] = [];
  objects.push({ apiVersion: "v1", kind: "ServiceAccount", metadata: meta(pool, serviceAccountName(name)), automountServiceAccountToken: false });

  const servicePorts = [
    { name: "submission", port: s.submission.port, targetPort: "submission", protocol: "TCP" },
    { name: "inbound", port: s.inboundPort, targetPort: "inbound", protocol: "TCP" },
    { name: "http", port: HTTP_PORT, targetPort: "http", protocol: "TCP" },
  ];
  const podSelector = { [POOL_LABEL]: name, [COMPONENT_LABEL]: "relay" };
  objects.push({ apiVersion: "v1", kind: "Service", metadata: meta(pool, name), spec: { selector: podSelector, ports: servicePorts } });
  if (s.workload === "StatefulSet") {
    objects.push({
      apiVersion: "v1", kind: "Service", metadata: meta(pool, `${name}-relays`),
      spec: { clusterIP: "None", publishNotReadyAddresses: true, selector: podSelector, ports: servicePorts },
    });
  }

  const workloads: PoolRender["workloads"] = [];
  const targets = pool.spec.egress.mode === "HostNetwork"
    ? [{ name, address: undefined as string | undefined }]
    : [...pool.spec.addresses].sort((a, b) => a.address.localeCompare(b.address)).map((a) => ({ name: perAddressName(name, a.address), address: a.address }));
  for (const t of targets) {
    objects.push(workload(pool, cfg, t.name, t.address));
    workloads.push({ kind: s.workload, name: t.name, ...(t.address ? { address: t.address } : {}) });
    const as = autoscaler(pool, cfg, { kind: s.workload, name: t.name });
    if (as) objects.push(as);
  }

  objects.push({
    apiVersion: "policy/v1",
    kind: "PodDisruptionBudget",
    metadata: meta(pool, name),
    // One relay of the pool drained at a time; with PerAddress that keeps all but one address sending.
    spec: { maxUnavailable: 1, selector: { matchLabels: podSelector } },
  });

  objects.push({
    apiVersion: "networking.k8s.io/v1",
    kind: "NetworkPolicy",
    metadata: meta(pool, name),
    // (Pods on the host network are outside NetworkPolicy's reach; the policy still documents intent.)
    spec: {
      podSelector: { matchLabels: podSelector },
      policyTypes: ["Ingress", "Egress"],
      ingress: [{
        ports: [
          { protocol: "TCP", port: s.submission.port },
          { protocol: "TCP", port: s.inboundPort },
          { protocol: "TCP", port: HTTP_PORT },
        ],
      }],
      egress: [
        { ports: [25, 465, 587].map((port) => ({ protocol: "TCP", port })) },
        { ports: [{ protocol: "UDP", port: 53 }, { protocol: "TCP", port: 53 }] },
        { ports: [{ protocol: "TCP", port: 4222 }] },
      ],
    },
  });
  return { objects, workloads, selector: `${POOL_LABEL}=${name},${COMPONENT_LABEL}=relay` };
}

/**
 * The pool's keyring Secret: DKIM keys and webhook secrets as files (names from
 * operator/plan/compile.ts). Values are base64 already (copied from the Secrets that hold them).
 */
export function renderRelaySecret(pool: IPPool, files: Map<string, string>): KubeObject {
  const data: Record<string, string> = {};
  for (const k of [...files.keys()].sort()) data[k] = files.get(k)!;
  return { apiVersion: "v1", kind: "Secret", metadata: meta(pool, relaySecretName(pool.metadata.name)), type: "Opaque", data };
}
