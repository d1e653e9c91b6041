// The validating admission webhook, served by every replica (leader or not) over HTTPS with the
// serving certificate from the webhook Secret, reloaded in place when the leader renews it.
import { createServer, type Server } from "node:https";
import { createSecureContext, type SecureContext } from "node:tls";
import type { World } from "../controllers/world.ts";
import type { IPPool, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { type KubeClient, RESOURCES, type Resource } from "../runtime/kube.ts";
import type { Logger } from "../runtime/log.ts";
import type { Metrics } from "../runtime/metrics.ts";
import { type AdmissionRequest, type WebhookWorld, review } from "./review.ts";

export const WEBHOOK_PATH = "/validate";

export type WebhookServerOptions = {
  host: string;
  port: number;
  world: World;
  client: KubeClient;
  log: Logger;
  metrics: Metrics;
};

export class WebhookServer {
  private server: Server | undefined;
  private context: SecureContext | undefined;
  private certVersion = "";
  private readonly o: WebhookServerOptions;

  constructor(o: WebhookServerOptions) {
    this.o = o;
  }

  serving(): boolean {
    return this.server?.listening ?? false;
  }

  /** Sets the serving certificate; starts listening on the first call. */
  async setCertificate(certPem: string, keyPem: string, version: string): Promise<void> {
    if (version === this.certVersion) return;
    this.certVersion = version;
    this.context = createSecureContext({ cert: certPem, key: keyPem });
    if (this.server) {
      this.server.setSecureContext({ cert: certPem, key: keyPem });
      this.o.log.info("webhook serving certificate reloaded");
      return;
    }
    const server = createServer({ cert: certPem, key: keyPem, SNICallback: (_name, cb) => cb(null, this.context!) }, (req, res) => {
      if (req.method !== "POST" || (req.url ?? "").split("?")[0] !== WEBHOOK_PATH) {
        res.writeHead(404);
        res.end();
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      req.on("data", (c: Buffer) => {
        size += c.length;
        if (size > 8 * 1024 * 1024) req.destroy();
        else chunks.push(c);
      });
      req.on("end", () => {
        this.handle(Buffer.concat(chunks).toString("utf8")).then((body) => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify(body));
        }, (err: Error) => {
          this.o.log.error("admission review failed", { error: err.message });
          res.writeHead(500);
          res.end(err.message);
        });
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.o.port, this.o.host, () => resolve());
    });
    this.server = server;
    this.o.log.info("webhook serving", { host: this.o.host, port: this.o.port, path: WEBHOOK_PATH });
  }

  private async handle(text: string): Promise<unknown> {
    const review0 = JSON.parse(text) as { apiVersion: string; kind: string; request: AdmissionRequest };
    const req = review0.request;
    let namespaceTerminating = false;
    if (req.operation === "DELETE" && req.namespace) {
      const ns = await this.o.client.get(RESOURCES.Namespace, undefined, req.namespace).catch(() => undefined);
      namespaceTerminating = !ns || Boolean(ns.metadata.deletionTimestamp);
    }
    const w = this.o.world;
    const world = { pools: w.pools(), domains: w.domains(), schedules: w.schedules() };
    await this.fillReferences(req, world);
    const verdict = review(req, world, { namespaceTerminating });
    this.o.metrics.webhookRequests.inc({ operation: req.operation, kind: req.kind.kind, allowed: String(verdict.allowed) });
    if (!verdict.allowed) {
      this.o.log.info("admission refused", { operation: req.operation, kind: req.kind.kind, name: req.name, namespace: req.namespace, reason: verdict.message });
    }
    return {
      apiVersion: review0.apiVersion ?? "admission.k8s.io/v1",
      kind: "AdmissionReview",
      response: {
        uid: req.uid,
        allowed: verdict.allowed,
        ...(verdict.allowed ? {} : { status: { code: 422, reason: "Invalid", message: verdict.message } }),
        ...(verdict.warnings?.length ? { warnings: verdict.warnings } : {}),
      },
    };
  }

  /**
   * The caches lag the API server by a moment: an object applied just before the one that names it
   * (kubectl apply -f of a folder) may not be there yet. References the caches lack are read from
   * the API server before anything is refused for naming a missing object.
   */
  private async fillReferences(req: AdmissionRequest, world: WebhookWorld): Promise<void> {
    if (req.operation !== "CREATE" && req.operation !== "UPDATE") return;
    const ns = req.namespace;
    const spec = ((req.object as { spec?: Record<string, any> })?.spec ?? {}) as Record<string, any>;
    const wanted: [Resource, string | undefined][] = [
      [RESOURCES.IPPool, spec.poolRef?.name],
      [RESOURCES.IPPool, spec.overflowPoolRef?.name],
      [RESOURCES.WarmupSchedule, spec.warmupScheduleRef?.name],
    ];
    for (const [r, name] of wanted) {
      if (!name || !ns) continue;
      const list: { metadata: { namespace?: string; name: string } }[] = r.kind === "IPPool" ? world.pools : world.schedules;
      if (list.some((o) => o.metadata.namespace === ns && o.metadata.name === name)) continue;
      const live = await this.o.client.get(r, ns, name).catch(() => undefined);
      if (!live) continue;
      const parsed = this.o.world.parse(live);
      if (!parsed.ok) continue;
      if (r.kind === "IPPool") world.pools.push(parsed.value as IPPool);
      else world.schedules.push(parsed.value as WarmupSchedule);
    }
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => s.close(() => resolve()));
    s.closeAllConnections();
  }
}
