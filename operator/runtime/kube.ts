// The operator's Kubernetes client: @kubernetes/client-node's KubeConfig (kubeconfig files,
// in-cluster service account, exec and OIDC auth) for where and who, and one long-lived undici
// connection pool for the requests themselves.
//
// Hand-written on purpose: client-node 2.0's request path builds a new undici Agent (a new TLS
// connection pool) for every API call and every watch reconnect, its typed APIs deserialize into
// class instances (costly at thousands of objects), and its generic object API needs a discovery
// round trip to map kinds to resources. The operator talks to a fixed set of resources, so a table
// of them and raw JSON over one keep-alive pool is both leaner and easier to reason about.
import type { KubeConfig } from "@kubernetes/client-node";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Agent, request as undiciRequest } from "undici";
import type { KubeObject } from "./types.ts";
import { FIELD_MANAGER } from "./types.ts";

export type Resource = { group: string; version: string; plural: string; kind: string; namespaced: boolean };

/** Every resource the operator reads or writes. */
export const RESOURCES = {
  SendingDomain: { group: "mailfleet.io", version: "v1alpha1", plural: "sendingdomains", kind: "SendingDomain", namespaced: true },
  IPPool: { group: "mailfleet.io", version: "v1alpha1", plural: "ippools", kind: "IPPool", namespaced: true },
  WarmupSchedule: { group: "mailfleet.io", version: "v1alpha1", plural: "warmupschedules", kind: "WarmupSchedule", namespaced: true },
  MailboxProvider: { group: "mailfleet.io", version: "v1alpha1", plural: "mailboxproviders", kind: "MailboxProvider", namespaced: false },
  Secret: { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
  Service: { group: "", version: "v1", plural: "services", kind: "Service", namespaced: true },
  ServiceAccount: { group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true },
  Namespace: { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false },
  Deployment: { group: "apps", version: "v1", plural: "deployments", kind: "Deployment", namespaced: true },
  StatefulSet: { group: "apps", version: "v1", plural: "statefulsets", kind: "StatefulSet", namespaced: true },
  PodDisruptionBudget: { group: "policy", version: "v1", plural: "poddisruptionbudgets", kind: "PodDisruptionBudget", namespaced: true },
  HorizontalPodAutoscaler: { group: "autoscaling", version: "v2", plural: "horizontalpodautoscalers", kind: "HorizontalPodAutoscaler", namespaced: true },
  NetworkPolicy: { group: "networking.k8s.io", version: "v1", plural: "networkpolicies", kind: "NetworkPolicy", namespaced: true },
  ScaledObject: { group: "keda.sh", version: "v1alpha1", plural: "scaledobjects", kind: "ScaledObject", namespaced: true },
  Lease: { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true },
  Event: { group: "events.k8s.io", version: "v1", plural: "events", kind: "Event", namespaced: true },
  ValidatingWebhookConfiguration: {
    group: "admissionregistration.k8s.io", version: "v1", plural: "validatingwebhookconfigurations", kind: "ValidatingWebhookConfiguration", namespaced: false,
  },
  CustomResourceDefinition: { group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false },
} as const satisfies Record<string, Resource>;

export type ResourceName = keyof typeof RESOURCES;

export function apiVersionOf(r: Resource): string {
  return r.group ? `${r.group}/${r.version}` : r.version;
}

export function resourceForKind(kind: string): Resource {
  const r = (RESOURCES as Record<string, Resource>)[kind];
  if (!r) throw new Error(`unknown kind ${kind}`);
  return r;
}

/** The URL path of a collection (namespace undefined: all namespaces) or of one object. */
export function pathOf(r: Resource, namespace?: string, name?: string, sub?: string): string {
  const base = r.group ? `/apis/${r.group}/${r.version}` : `/api/${r.version}`;
  const ns = r.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : "";
  return `${base}${ns}/${r.plural}${name ? `/${encodeURIComponent(name)}` : ""}${sub ? `/${sub}` : ""}`;
}

export class ApiError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: unknown;
  constructor(code: number, reason: string, message: string, details?: unknown) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.reason = reason;
    this.details = details;
  }
}

export const isNotFound = (e: unknown) => e instanceof ApiError && e.code === 404;
export const isConflict = (e: unknown) => e instanceof ApiError && e.code === 409;
export const isAlreadyExists = (e: unknown) => e instanceof ApiError && e.code === 409 && e.reason === "AlreadyExists";

export type RequestOptions = {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
  /** Abort the request after this long (not for watches). */
  timeoutMs?: number;
};

export type WriteHook = (verb: string, resource: string) => void;

/** Where the API server is and how to authenticate, as plain data. */
export type Connection = {
  server: string;
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized?: boolean;
  servername?: string;
  headers: Record<string, string>;
  /** A bearer token file to re-read (in-cluster service account tokens rotate). */
  tokenFile?: string;
  /** Tokens from exec plugins or auth providers expire: resolve the kubeconfig again. */
  dynamic?: boolean;
};

/** Resolves a kubeconfig (or the in-cluster config) in a child process; see kubeconfig-child.ts. */
export function resolveConnection(kubeconfig: string | undefined): Promise<Connection> {
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, [fileURLToPath(new URL("./kubeconfig-child.ts", import.meta.url)), ...(kubeconfig ? [kubeconfig] : [])],
      { maxBuffer: 4 * 1024 * 1024, timeout: 60_000 }, (err, stdout, stderr) => {
        if (err) return reject(new Error(`cannot load the kubeconfig${kubeconfig ? ` ${kubeconfig}` : ""}: ${stderr.trim().split("\n").at(-1) || err.message}`));
        try {
          resolve(JSON.parse(stdout) as Connection);
        } catch (e) {
          reject(new Error(`cannot load the kubeconfig: ${(e as Error).message}`));
        }
      });
    child.stdin?.end();
  });
}

function isKubeConfig(x: KubeConfig | Connection): x is KubeConfig {
  return typeof (x as KubeConfig).getCurrentCluster === "function";
}

export class KubeClient {
  readonly server: string;
  readonly userAgent: string;
  private readonly kc: KubeConfig | undefined;
  private conn: Connection | undefined;
  private readonly kubeconfigPath: string | undefined;
  private readonly agent: Agent;
  private authCache: { at: number; headers: Record<string, string> } | undefined;
  private resolvedAt = Date.now();
  onWrite: WriteHook | undefined;

  /** From a KubeConfig (the CLI), or from a resolved Connection (the operator). */
  constructor(source: KubeConfig | Connection, o: { userAgent: string; kubeconfigPath?: string }) {
    this.userAgent = o.userAgent;
    this.kubeconfigPath = o.kubeconfigPath;
    const tls: { ca?: Buffer | string; cert?: Buffer | string; key?: Buffer | string; rejectUnauthorized?: boolean; servername?: string } = {};
    if (isKubeConfig(source)) {
      this.kc = source;
      const cluster = source.getCurrentCluster();
      if (!cluster) throw new Error("the kubeconfig has no current cluster");
      this.server = cluster.server.replace(/\/$/, "");
      // TLS material is read once; headers (tokens, which in-cluster rotate) are refreshed below.
      (source as unknown as { applyHTTPSOptions(o: Record<string, unknown>): void }).applyHTTPSOptions(tls);
    } else {
      this.conn = source;
      this.server = source.server.replace(/\/$/, "");
      Object.assign(tls, { ca: source.ca, cert: source.cert, key: source.key, rejectUnauthorized: source.rejectUnauthorized, servername: source.servername });
    }
    this.agent = new Agent({
      connect: {
        ...(tls.ca ? { ca: tls.ca } : {}),
        ...(tls.cert ? { cert: tls.cert } : {}),
        ...(tls.key ? { key: tls.key } : {}),
        ...(tls.rejectUnauthorized === false ? { rejectUnauthorized: false } : {}),
        ...(tls.servername ? { servername: tls.servername } : {}),
        keepAlive: true,
        keepAliveInitialDelay: 30_000,
      },
      keepAliveTimeout: 60_000,
    });
  }

  private async headers(): Promise<Record<string, string>> {
    const now = Date.now();
    if (this.authCache && now - this.authCache.at < 60_000) return this.authCache.headers;
    const headers: Record<string, string> = { "user-agent": this.userAgent, accept: "application/json" };
    let extra: Record<string, string> = {};
    if (this.kc) {
      const opts: { headers?: Record<string, string> } = {};
      await this.kc.applyToHTTPSOptions(opts as never);
      extra = opts.headers ?? {};
    } else {
      const c = this.conn!;
      if (c.dynamic && now - this.resolvedAt >= 5 * 60_000) {
        try {
          this.conn = await resolveConnection(this.kubeconfigPath);
          this.resolvedAt = now;
        } catch { /* keep the last headers; the next request tries again */ }
      }
      extra = { ...this.conn!.headers };
      if (this.conn!.tokenFile) {
        try {
          extra.Authorization = `Bearer ${readFileSync(this.conn!.tokenFile, "utf8").trim()}`;
        } catch { /* keep what the kubeconfig gave */ }
      }
    }
    for (const [k, v] of Object.entries(extra)) headers[k.toLowerCase()] = String(v);
    // Token files are read again every minute, dynamic credentials resolved every 5 minutes.
    this.authCache = { at: now, headers };
    return headers;
  }

  url(path: string, query?: RequestOptions["query"]): string {
    const u = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  /** A raw request; throws ApiError for statuses >= 400, returns the parsed JSON body otherwise. */
  async request<T = unknown>(method: string, path: string, o: RequestOptions = {}): Promise<T> {
    const headers = { ...(await this.headers()) };
    let body: string | undefined;
    if (o.body !== undefined) {
      body = typeof o.body === "string" ? o.body : JSON.stringify(o.body);
      headers["content-type"] = o.contentType ?? "application/json";
    }
    if (method !== "GET") this.onWrite?.(method, path.split("?")[0]!.split("/").slice(-2).join("/"));
    const signal = o.signal ?? AbortSignal.timeout(o.timeoutMs ?? 30_000);
    const res = await undiciRequest(this.url(path, o.query), { method: method as "GET", headers, body, dispatcher: this.agent, signal });
    const text = await res.body.text();
    if (res.statusCode >= 400) throw apiError(res.statusCode, text, method, path);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** GET one object; undefined when it does not exist. */
  async get<T = KubeObject>(r: Resource, namespace: string | undefined, name: string): Promise<T | undefined> {
    try {
      return await this.request<T>("GET", pathOf(r, namespace, name));
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Server-side apply with the operator's field manager, forcing conflicts on what it owns. */
  apply<T = KubeObject>(obj: KubeObject, o: { force?: boolean; sub?: string; fieldManager?: string } = {}): Promise<T> {
    const r = resourceForKind(obj.kind);
    return this.request<T>("PATCH", pathOf(r, obj.metadata.namespace, obj.metadata.name, o.sub), {
      query: { fieldManager: o.fieldManager ?? FIELD_MANAGER, force: o.force ?? true },
      body: obj,
      contentType: "application/apply-patch+yaml",
    });
  }

  mergePatch<T = KubeObject>(r: Resource, namespace: string | undefined, name: string, patch: unknown, sub?: string): Promise<T> {
    return this.request<T>("PATCH", pathOf(r, namespace, name, sub), { query: { fieldManager: FIELD_MANAGER }, body: patch, contentType: "application/merge-patch+json" });
  }

  jsonPatch<T = KubeObject>(r: Resource, namespace: string | undefined, name: string, ops: unknown[]): Promise<T> {
    return this.request<T>("PATCH", pathOf(r, namespace, name), { query: { fieldManager: FIELD_MANAGER }, body: ops, contentType: "application/json-patch+json" });
  }

  create<T = KubeObject>(r: Resource, namespace: string | undefined, obj: unknown): Promise<T> {
    return this.request<T>("POST", pathOf(r, namespace), { query: { fieldManager: FIELD_MANAGER }, body: obj });
  }

  replace<T = KubeObject>(r: Resource, namespace: string | undefined, name: string, obj: unknown): Promise<T> {
    return this.request<T>("PUT", pathOf(r, namespace, name), { query: { fieldManager: FIELD_MANAGER }, body: obj });
  }

  /** DELETE; a missing object counts as deleted. uid: only that incarnation (a precondition). */
  async delete(r: Resource, namespace: string | undefined, name: string, o: { uid?: string; propagationPolicy?: string } = {}): Promise<void> {
    try {
      await this.request("DELETE", pathOf(r, namespace, name), {
        body: { apiVersion: "v1", kind: "DeleteOptions", ...(o.uid ? { preconditions: { uid: o.uid } } : {}), ...(o.propagationPolicy ? { propagationPolicy: o.propagationPolicy } : {}) },
      });
    } catch (e) {
      if (isNotFound(e)) return;
      throw e;
    }
  }

  /** Opens a watch; the caller reads the body stream line by line. */
  async openWatch(path: string, query: RequestOptions["query"], signal: AbortSignal) {
    const res = await undiciRequest(this.url(path, { ...query, watch: true }), { method: "GET", headers: await this.headers(), dispatcher: this.agent, signal });
    if (res.statusCode >= 400) throw apiError(res.statusCode, await res.body.text(), "WATCH", path);
    return res.body;
  }

  close(): Promise<void> {
    return this.agent.close();
  }
}

function apiError(code: number, text: string, method: string, path: string): ApiError {
  let status: { reason?: string; message?: string; details?: unknown } = {};
  try {
    status = JSON.parse(text);
  } catch { /* not a Status */ }
  return new ApiError(code, status.reason ?? String(code), `${method} ${path.split("?")[0]}: ${code} ${status.message ?? text.slice(0, 300)}`, status.details);
}
