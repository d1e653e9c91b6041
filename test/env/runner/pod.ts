// What the kubelet derives from a Pod before it starts a container, as pure functions over plain
// data: which container to run, its environment (literal values, fieldRef, secretKeyRef,
// configMapKeyRef, envFrom, $(VAR) expansion), the contents of its Secret/ConfigMap/downwardAPI
// volumes, its mounts, probes and restart policy. I/O (the API, the file system, processes) lives
// in runner.ts; these functions only read the objects they are given.
//
// Objects come from @kubernetes/client-node informers: a list yields its model classes (dates as
// Date), a watch yields plain JSON (dates as strings). Both have the same field names, so the
// functions below read either.
import type * as k8s from "@kubernetes/client-node";

/** A Pod the kubelet cannot start a container for yet (kubectl shows the reason as the status). */
export class ContainerConfigError extends Error {
  /** CreateContainerConfigError (env), ContainerCreating (volumes not mountable yet), ... */
  reason: string;
  constructor(reason: string, message: string) {
    super(message);
    this.reason = reason;
    this.name = "ContainerConfigError";
  }
}

/** Read access to the Secrets and ConfigMaps a Pod refers to (the informer caches). */
export interface ObjectLookup {
  secret(namespace: string, name: string): k8s.V1Secret | undefined;
  configMap(namespace: string, name: string): k8s.V1ConfigMap | undefined;
}

/** The container the runner plays: the one named `relay`, else the first. */
export function selectContainer(pod: k8s.V1Pod, name = "relay"): k8s.V1Container {
  const cs = pod.spec?.containers ?? [];
  const c = cs.find((x) => x.name === name) ?? cs[0];
  if (!c) throw new ContainerConfigError("CreateContainerConfigError", `pod ${podKey(pod)} has no containers`);
  return c;
}

export function podKey(pod: k8s.V1Pod): string {
  return `${pod.metadata?.namespace ?? ""}/${pod.metadata?.name ?? ""}`;
}

/** What the Pod's status does not say but the runner knows (the address its relay listens on). */
export interface PodFacts {
  /** Replaces status.podIP and status.podIPs in fieldRefs: where the relay is reachable here. */
  podIP?: string;
}

/** A fieldRef value (the downward API), as the kubelet resolves it; an error names the path. */
export function fieldRefValue(pod: k8s.V1Pod, fieldPath: string, facts: PodFacts = {}): string {
  const m = pod.metadata ?? {};
  const label = /^metadata\.labels\['(.+)'\]$/.exec(fieldPath);
  if (label) return m.labels?.[label[1]!] ?? "";
  const ann = /^metadata\.annotations\['(.+)'\]$/.exec(fieldPath);
  if (ann) return m.annotations?.[ann[1]!] ?? "";
  switch (fieldPath) {
    case "metadata.name": return m.name ?? "";
    case "metadata.namespace": return m.namespace ?? "";
    case "metadata.uid": return m.uid ?? "";
    case "metadata.labels": return formatMap(m.labels);
    case "metadata.annotations": return formatMap(m.annotations);
    case "spec.nodeName": return pod.spec?.nodeName ?? "";
    case "spec.serviceAccountName": return pod.spec?.serviceAccountName ?? "";
    case "status.hostIP": return pod.status?.hostIP ?? "";
    case "status.hostIPs": return (pod.status?.hostIPs ?? []).map((x) => x.ip).join(",");
    case "status.podIP": return facts.podIP ?? pod.status?.podIP ?? "";
    case "status.podIPs": return facts.podIP ?? (pod.status?.podIPs ?? []).map((x) => x.ip).join(",");
    default:
      throw new ContainerConfigError("CreateContainerConfigError", `unsupported fieldRef.fieldPath "${fieldPath}"`);
  }
}

/** The downward API's text form of labels/annotations: key="value" lines, sorted. */
function formatMap(m: Record<string, string> | undefined): string {
  return Object.keys(m ?? {}).sort().map((k) => `${k}=${JSON.stringify(m![k])}`).join("\n");
}

/** A resourceFieldRef value (limits/requests in the given divisor); the runner sets no limits. */
function resourceFieldValue(c: k8s.V1Container, ref: k8s.V1ResourceFieldSelector): string {
  const [kind, res] = ref.resource.split(".") as [string, string];
  const v = (kind === "limits" ? c.resources?.limits : c.resources?.requests)?.[res];
  // Without a limit the kubelet reports the node's allocatable; the fake node has no real figure.
  return v === undefined ? "0" : String(v);
}

/**
 * Kubelet's $(VAR) expansion (k8s.io/kubernetes third_party/forked/golang/expansion): $(NAME) of a
 * defined variable is replaced, $$ is a literal $, anything else stays as written.
 */
export function expand(input: string, vars: (name: string) => string | undefined): string {
  let out = "";
  for (let i = 0; i < input.length; i++) {
    const ch = input[i];
    if (ch !== "$" || i + 1 >= input.length) { out += ch; continue; }
    const next = input[i + 1];
    if (next === "$") { out += "$"; i++; continue; }
    if (next === "(") {
      const close = input.indexOf(")", i + 2);
      if (close < 0) { out += input.slice(i); break; }
      const name = input.slice(i + 2, close);
      const v = vars(name);
      out += v ?? `$(${name})`;
      i = close;
      continue;
    }
    out += ch;
  }
  return out;
}

function decode(b64: string): Buffer {
  return Buffer.from(b64, "base64");
}

function secretValue(lookup: ObjectLookup, ns: string, name: string, key: string, optional: boolean | undefined): string | undefined {
  const s = lookup.secret(ns, name);
  if (!s) {
    if (optional) return undefined;
    throw new ContainerConfigError("CreateContainerConfigError", `secret "${name}" not found`);
  }
  const v = s.data?.[key] !== undefined ? decode(s.data[key]!).toString("utf8") : s.stringData?.[key];
  if (v === undefined) {
    if (optional) return undefined;
    throw new ContainerConfigError("CreateContainerConfigError", `couldn't find key ${key} in Secret ${ns}/${name}`);
  }
  return v;
}

function configMapValue(lookup: ObjectLookup, ns: string, name: string, key: string, optional: boolean | undefined): string | undefined {
  const cm = lookup.configMap(ns, name);
  if (!cm) {
    if (optional) return undefined;
    throw new ContainerConfigError("CreateContainerConfigError", `configmap "${name}" not found`);
  }
  const v = cm.data?.[key];
  if (v === undefined) {
    if (optional) return undefined;
    throw new ContainerConfigError("CreateContainerConfigError", `couldn't find key ${key} in ConfigMap ${ns}/${name}`);
  }
  return v;
}

/**
 * The container's environment as the kubelet builds it: envFrom sources in order, then env entries
 * in order (later wins), each value expanded against the variables defined before it.
 */
export function resolveEnv(pod: k8s.V1Pod, c: k8s.V1Container, lookup: ObjectLookup, facts: PodFacts = {}): Record<string, string> {
  const ns = pod.metadata?.namespace ?? "default";
  const env: Record<string, string> = {};
  for (const src of c.envFrom ?? []) {
    const prefix = src.prefix ?? "";
    if (src.secretRef) {
      const s = lookup.secret(ns, src.secretRef.name!);
      if (!s) {
        if (src.secretRef.optional) continue;
        throw new ContainerConfigError("CreateContainerConfigError", `secret "${src.secretRef.name}" not found`);
      }
      for (const [k, v] of Object.entries(s.data ?? {})) env[prefix + k] = decode(v).toString("utf8");
    } else if (src.configMapRef) {
      const cm = lookup.configMap(ns, src.configMapRef.name!);
      if (!cm) {
        if (src.configMapRef.optional) continue;
        throw new ContainerConfigError("CreateContainerConfigError", `configmap "${src.configMapRef.name}" not found`);
      }
      for (const [k, v] of Object.entries(cm.data ?? {})) env[prefix + k] = v;
    }
  }
  for (const e of c.env ?? []) {
    let v: string | undefined;
    if (e.valueFrom) {
      const f = e.valueFrom;
      if (f.fieldRef) v = fieldRefValue(pod, f.fieldRef.fieldPath, facts);
      else if (f.secretKeyRef) v = secretValue(lookup, ns, f.secretKeyRef.name!, f.secretKeyRef.key, f.secretKeyRef.optional);
      else if (f.configMapKeyRef) v = configMapValue(lookup, ns, f.configMapKeyRef.name!, f.configMapKeyRef.key, f.configMapKeyRef.optional);
      else if (f.resourceFieldRef) v = resourceFieldValue(c, f.resourceFieldRef);
      else throw new ContainerConfigError("CreateContainerConfigError", `env ${e.name}: unsupported valueFrom ${JSON.stringify(f)}`);
      if (v === undefined) continue; // an optional reference that is absent: the variable is not set
    } else {
      v = expand(e.value ?? "", (name) => env[name]);
    }
    env[e.name] = v;
  }
  return env;
}

/** Command and arguments with $(VAR) expanded against the container's environment. */
export function resolveCommand(c: k8s.V1Container, env: Record<string, string>): { command?: string[]; args?: string[] } {
  const x = (s: string) => expand(s, (n) => env[n]);
  return { command: c.command?.map(x), args: c.args?.map(x) };
}

/** One file of a volume: its path inside the volume, contents and mode. */
export interface VolumeFile {
  data: Buffer;
  mode: number;
}

export type VolumeSource =
  /** Written by the atomic writer and refreshed when its sources change. */
  | { kind: "files"; files: Map<string, VolumeFile>; fsGroupApplies: boolean }
  | { kind: "emptyDir" }
  | { kind: "hostPath"; path: string };

function checkPath(volume: string, p: string): string {
  // Same rule as the kubelet's AtomicWriter: relative, no "..", no leading "..".
  if (p === "" || p.startsWith("/") || p.split("/").some((seg) => seg === "..") || p.startsWith("..")) {
    throw new ContainerConfigError("CreateContainerConfigError", `volume ${volume}: invalid path "${p}"`);
  }
  return p;
}

function keyedFiles(
  volume: string,
  data: Record<string, Buffer>,
  items: k8s.V1KeyToPath[] | undefined,
  defaultMode: number,
  what: string,
  optional: boolean | undefined,
  out: Map<string, VolumeFile>,
): void {
  if (!items?.length) {
    for (const [k, v] of Object.entries(data)) out.set(checkPath(volume, k), { data: v, mode: defaultMode });
    return;
  }
  for (const it of items) {
    const v = data[it.key];
    if (v === undefined) {
      if (optional) continue;
      throw new ContainerConfigError("ContainerCreating", `volume ${volume}: couldn't find key ${it.key} in ${what}`);
    }
    out.set(checkPath(volume, it.path), { data: v, mode: it.mode ?? defaultMode });
  }
}

function secretData(s: k8s.V1Secret): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(s.data ?? {})) out[k] = decode(v);
  return out;
}

function configMapData(cm: k8s.V1ConfigMap): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const [k, v] of Object.entries(cm.data ?? {})) out[k] = Buffer.from(v, "utf8");
  for (const [k, v] of Object.entries(cm.binaryData ?? {})) out[k] = decode(v);
  return out;
}

function secretFiles(volume: string, ns: string, src: k8s.V1SecretVolumeSource | k8s.V1SecretProjection, defaultMode: number, lookup: ObjectLookup, out: Map<string, VolumeFile>): void {
  const name = "secretName" in src ? src.secretName! : (src as k8s.V1SecretProjection).name!;
  const s = lookup.secret(ns, name);
  if (!s) {
    if (src.optional) return;
    // The kubelet's message while it retries the mount.
    throw new ContainerConfigError("ContainerCreating", `MountVolume.SetUp failed for volume "${volume}": secret "${name}" not found`);
  }
  keyedFiles(volume, secretData(s), src.items, defaultMode, `Secret ${ns}/${name}`, src.optional, out);
}

function configMapFiles(volume: string, ns: string, src: k8s.V1ConfigMapVolumeSource | k8s.V1ConfigMapProjection, defaultMode: number, lookup: ObjectLookup, out: Map<string, VolumeFile>): void {
  const cm = lookup.configMap(ns, src.name!);
  if (!cm) {
    if (src.optional) return;
    throw new ContainerConfigError("ContainerCreating", `MountVolume.SetUp failed for volume "${volume}": configmap "${src.name}" not found`);
  }
  keyedFiles(volume, configMapData(cm), src.items, defaultMode, `ConfigMap ${ns}/${src.name}`, src.optional, out);
}

function downwardFiles(volume: string, pod: k8s.V1Pod, items: k8s.V1DownwardAPIVolumeFile[] | undefined, defaultMode: number, facts: PodFacts, out: Map<string, VolumeFile>): void {
  const c = selectContainer(pod);
  for (const it of items ?? []) {
    const v = it.fieldRef ? fieldRefValue(pod, it.fieldRef.fieldPath, facts) : it.resourceFieldRef ? resourceFieldValue(c, it.resourceFieldRef) : "";
    out.set(checkPath(volume, it.path), { data: Buffer.from(v, "utf8"), mode: it.mode ?? defaultMode });
  }
}

/**
 * The contents of every volume of the Pod. Secret, ConfigMap, downwardAPI and projected volumes
 * become files; emptyDir a fresh folder; hostPath the host's path. A missing non-optional Secret
 * or ConfigMap throws (the kubelet keeps the Pod in ContainerCreating and retries); other volume
 * types throw with the volume named.
 */
export function volumeSources(pod: k8s.V1Pod, lookup: ObjectLookup, facts: PodFacts = {}): Map<string, VolumeSource> {
  const ns = pod.metadata?.namespace ?? "default";
  const out = new Map<string, VolumeSource>();
  for (const v of pod.spec?.volumes ?? []) {
    const files = new Map<string, VolumeFile>();
    if (v.secret) {
      secretFiles(v.name, ns, v.secret, v.secret.defaultMode ?? 0o644, lookup, files);
      out.set(v.name, { kind: "files", files, fsGroupApplies: true });
    } else if (v.configMap) {
      configMapFiles(v.name, ns, v.configMap, v.configMap.defaultMode ?? 0o644, lookup, files);
      out.set(v.name, { kind: "files", files, fsGroupApplies: true });
    } else if (v.downwardAPI) {
      downwardFiles(v.name, pod, v.downwardAPI.items, v.downwardAPI.defaultMode ?? 0o644, facts, files);
      out.set(v.name, { kind: "files", files, fsGroupApplies: true });
    } else if (v.projected) {
      const mode = v.projected.defaultMode ?? 0o644;
      for (const s of v.projected.sources ?? []) {
        if (s.secret) secretFiles(v.name, ns, s.secret, mode, lookup, files);
        else if (s.configMap) configMapFiles(v.name, ns, s.configMap, mode, lookup, files);
        else if (s.downwardAPI) downwardFiles(v.name, pod, s.downwardAPI.items, mode, facts, files);
        else throw new ContainerConfigError("CreateContainerConfigError", `volume ${v.name}: projected source ${Object.keys(s).join(",")} is not supported by the runner`);
      }
      out.set(v.name, { kind: "files", files, fsGroupApplies: true });
    } else if (v.emptyDir) {
      out.set(v.name, { kind: "emptyDir" });
    } else if (v.hostPath) {
      out.set(v.name, { kind: "hostPath", path: v.hostPath.path });
    } else {
      const type = Object.keys(v).filter((k) => k !== "name").join(",") || "(none)";
      throw new ContainerConfigError("CreateContainerConfigError", `volume ${v.name}: type ${type} is not supported by the runner`);
    }
  }
  return out;
}

export interface Mount {
  volume: string;
  mountPath: string;
  subPath?: string;
  readOnly: boolean;
}

export function mountsOf(c: k8s.V1Container): Mount[] {
  return (c.volumeMounts ?? []).map((m) => ({
    volume: m.name,
    mountPath: m.mountPath.replace(/\/+$/, "") || "/",
    ...(m.subPath ? { subPath: m.subPath } : {}),
    readOnly: m.readOnly ?? false,
  }));
}

/**
 * Process mode has no mount namespace: a path under a mount (MAILFLEET_SECRETS_DIR=/etc/mailfleet/
 * secrets) is rewritten to the folder that holds the volume on this machine. Only whole values that
 * are the mount path or lie under it are rewritten (longest mount first).
 */
export function rewriteMountPaths(env: Record<string, string>, mounts: Mount[], hostPathOf: (m: Mount) => string): Record<string, string> {
  const sorted = [...mounts].sort((a, b) => b.mountPath.length - a.mountPath.length);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) {
    const m = sorted.find((x) => v === x.mountPath || v.startsWith(`${x.mountPath}/`));
    out[k] = m ? hostPathOf(m) + v.slice(m.mountPath.length) : v;
  }
  return out;
}

export interface Probe {
  kind: "httpGet" | "tcpSocket" | "exec";
  /** httpGet */
  path?: string;
  scheme?: "HTTP" | "HTTPS";
  headers?: Record<string, string>;
  /** httpGet, tcpSocket: the port number (named ports resolved). */
  port?: number;
  /** httpGet, tcpSocket: an explicit host (default: the Pod's address, here its listen address). */
  host?: string;
  /** exec */
  command?: string[];
  initialDelayMs: number;
  periodMs: number;
  timeoutMs: number;
  successThreshold: number;
  failureThreshold: number;
  /** Probe-level terminationGracePeriodSeconds (liveness, startup). */
  terminationGracePeriodSeconds?: number;
}

/** A named or numbered container port as a number. */
export function resolvePort(c: k8s.V1Container, port: number | string): number {
  if (typeof port === "number") return port;
  if (/^\d+$/.test(port)) return Number(port);
  const p = (c.ports ?? []).find((x) => x.name === port);
  if (!p) throw new ContainerConfigError("CreateContainerConfigError", `probe port "${port}" is not a port of container ${c.name}`);
  return p.containerPort;
}

/** The container's probe with the API's defaults filled in; undefined when it has none. */
export function probeOf(c: k8s.V1Container, which: "readiness" | "liveness" | "startup"): Probe | undefined {
  const p = which === "readiness" ? c.readinessProbe : which === "liveness" ? c.livenessProbe : c.startupProbe;
  if (!p) return undefined;
  const common = {
    initialDelayMs: (p.initialDelaySeconds ?? 0) * 1000,
    periodMs: (p.periodSeconds ?? 10) * 1000,
    timeoutMs: (p.timeoutSeconds ?? 1) * 1000,
    successThreshold: p.successThreshold ?? 1,
    failureThreshold: p.failureThreshold ?? 3,
    ...(p.terminationGracePeriodSeconds !== undefined ? { terminationGracePeriodSeconds: p.terminationGracePeriodSeconds } : {}),
  };
  if (p.httpGet) {
    const headers: Record<string, string> = {};
    for (const h of p.httpGet.httpHeaders ?? []) headers[h.name] = h.value;
    return {
      kind: "httpGet", path: p.httpGet.path ?? "/", scheme: (p.httpGet.scheme as "HTTP" | "HTTPS" | undefined) ?? "HTTP", headers,
      port: resolvePort(c, p.httpGet.port), ...(p.httpGet.host ? { host: p.httpGet.host } : {}), ...common,
    };
  }
  if (p.tcpSocket) return { kind: "tcpSocket", port: resolvePort(c, p.tcpSocket.port), ...(p.tcpSocket.host ? { host: p.tcpSocket.host } : {}), ...common };
  if (p.exec) return { kind: "exec", command: p.exec.command ?? [], ...common };
  throw new ContainerConfigError("CreateContainerConfigError", `${which} probe of container ${c.name}: only httpGet, tcpSocket and exec are supported by the runner`);
}

/** Seconds the runner waits between SIGTERM and SIGKILL when the Pod goes away. */
export function gracePeriodSeconds(pod: k8s.V1Pod): number {
  const spec = pod.spec?.terminationGracePeriodSeconds ?? 30;
  // kwok's default pod-delete stage deletes with grace 0 on behalf of the kubelet, which would read
  // as "kill at once"; only a shorter, non-zero grace a user asked for (kubectl delete
  // --grace-period=N) overrides the spec.
  const asked = pod.metadata?.deletionGracePeriodSeconds;
  return asked !== undefined && asked !== null && asked > 0 ? Math.min(asked, spec) : spec;
}

/** Whether the kubelet restarts a container that exited with this code. */
export function shouldRestart(pod: k8s.V1Pod, exitCode: number): boolean {
  const policy = pod.spec?.restartPolicy ?? "Always";
  return policy === "Always" || (policy === "OnFailure" && exitCode !== 0);
}

/** The user, group and supplementary fsGroup the container runs with (container settings win). */
export function securityOf(pod: k8s.V1Pod, c: k8s.V1Container): { runAsUser?: number; runAsGroup?: number; fsGroup?: number; readOnlyRootFilesystem: boolean } {
  const ps = pod.spec?.securityContext ?? {};
  const cs = c.securityContext ?? {};
  const runAsUser = cs.runAsUser ?? ps.runAsUser;
  const runAsGroup = cs.runAsGroup ?? ps.runAsGroup;
  return {
    ...(runAsUser !== undefined ? { runAsUser } : {}),
    ...(runAsGroup !== undefined ? { runAsGroup } : {}),
    ...(ps.fsGroup !== undefined ? { fsGroup: ps.fsGroup } : {}),
    readOnlyRootFilesystem: cs.readOnlyRootFilesystem ?? false,
  };
}

/** A relay's ports, from its environment (relay/config.ts names and defaults) or its named ports. */
export function relayPorts(c: k8s.V1Container, env: Record<string, string>): { http?: number; submission?: number; inbound?: number } {
  const named = (n: string) => (c.ports ?? []).find((p) => p.name === n)?.containerPort;
  const num = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined);
  const out: { http?: number; submission?: number; inbound?: number } = {};
  const http = num(env.MAILFLEET_HTTP_PORT) ?? named("http");
  const submission = num(env.MAILFLEET_SUBMISSION_PORT) ?? named("submission");
  const inbound = num(env.MAILFLEET_INBOUND_PORT) ?? named("inbound");
  if (http !== undefined) out.http = http;
  if (submission !== undefined) out.submission = submission;
  if (inbound !== undefined) out.inbound = inbound;
  return out;
}

/** Every TCP port the container listens on (declared ports and relay ports), for conflict checks. */
export function listenPorts(c: k8s.V1Container, env: Record<string, string>): number[] {
  const s = new Set<number>();
  for (const p of c.ports ?? []) if ((p.protocol ?? "TCP") === "TCP") s.add(p.containerPort);
  for (const p of Object.values(relayPorts(c, env))) if (p) s.add(p);
  return [...s].sort((a, b) => a - b);
}
