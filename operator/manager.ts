// Wires the operator together: caches (every replica), the admission webhook (every replica),
// leader election, and the controllers (the leader only), and takes it all down again in order.
import type { Server } from "node:http";
import type { MailfleetObject } from "../api/v1alpha1/index.ts";
import type { OperatorConfig } from "./config.ts";
import { type Context, type ControllerName } from "./controllers/context.ts";
import { reconcilePool } from "./controllers/ippool.ts";
import { reconcileProvider } from "./controllers/mailboxprovider.ts";
import { PLAN_KEY_NAME, PlanController } from "./controllers/plan.ts";
import { reconcileDomain } from "./controllers/sendingdomain.ts";
import { reconcileSchedule } from "./controllers/warmupschedule.ts";
import { type WebhookConfig, ownedByConfig, reconcileWebhook, servingPair } from "./controllers/webhook.ts";
import { type Informers, World } from "./controllers/world.ts";
import { KeyFactory, WorkerGenerator } from "./dkim/keys.ts";
import { makeLookup } from "./dns/resolver.ts";
import { PlanStore } from "./plan/store.ts";
import { Controller } from "./runtime/controller.ts";
import { Recorder } from "./runtime/events.ts";
import { startHttp } from "./runtime/http.ts";
import { type Cache, Informer, MultiInformer } from "./runtime/informer.ts";
import { KubeClient, RESOURCES, type Resource, resolveConnection } from "./runtime/kube.ts";
import { LeaderElector } from "./runtime/leader.ts";
import { type Logger, makeLogger } from "./runtime/log.ts";
import { Metrics, domainReputation, unverifiedRecords } from "./runtime/metrics.ts";
import { DOMAIN_LABEL, type KubeObject, MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL, keyOf } from "./runtime/types.ts";
import { WebhookServer } from "./webhook/server.ts";
import { CounterStore } from "./warmup/counters.ts";
import { WarmupEngine } from "./warmup/engine.ts";

export const VERSION = "0.1.0";

/** Secret types whose data the operator may read; others are cached without their data. */
const SECRET_TYPES_WITH_DATA = new Set(["Opaque", "kubernetes.io/basic-auth", "kubernetes.io/tls", ""]);

export type Operator = {
  metrics: Metrics;
  log: Logger;
  isLeader(): boolean;
  /** Resolves when the operator has stopped (a signal, or leadership lost: exitCode 1). */
  done: Promise<number>;
  shutdown(reason: string): Promise<number>;
};

export async function startOperator(cfg: OperatorConfig, o: { log?: Logger } = {}): Promise<Operator> {
  const log = o.log ?? makeLogger({ level: cfg.logLevel, base: { identity: cfg.identity } });
  const metrics = new Metrics();
  const conn = await resolveConnection(cfg.kubeconfig);
  const client = new KubeClient(conn, { userAgent: `mailfleet-operator/${VERSION} (${cfg.identity})`, ...(cfg.kubeconfig ? { kubeconfigPath: cfg.kubeconfig } : {}) });
  client.onWrite = (verb, resource) => metrics.kubeWrites.inc({ verb, resource });
  const events = new Recorder(client, { controller: "mailfleet.io/operator", instance: cfg.identity, log, metrics });
  const lookup = makeLookup(cfg.dnsServers);
  const keygen = new WorkerGenerator(2);
  const keys = new KeyFactory(2, keygen.generate);
  const store = new PlanStore({ servers: cfg.natsUrls, ...(cfg.natsCreds ? { creds: cfg.natsCreds } : {}), replicas: cfg.natsReplicas, log });

  // KEDA: its ScaledObject CRD decides between an HPA and a ScaledObject.
  let keda = false;
  try {
    keda = Boolean(await client.get(RESOURCES.CustomResourceDefinition, undefined, "scaledobjects.keda.sh"));
  } catch (err) {
    log.warn("cannot tell whether KEDA is installed; assuming not", { error: (err as Error).message });
  }

  // Caches.
  const all: Cache[] = [];
  const make = (r: Resource, opts: { label?: string; field?: string; transform?: (o: KubeObject) => KubeObject; resync?: boolean } = {}): Cache => {
    const mk = (namespace: string | undefined) => new Informer(client, r, log, {
      ...(namespace ? { namespace } : {}),
      ...(opts.label ? { labelSelector: opts.label } : {}),
      ...(opts.field ? { fieldSelector: opts.field } : {}),
      ...(opts.transform ? { transform: opts.transform } : {}),
      ...(opts.resync ? { resyncMs: cfg.resyncMs } : {}),
      onWatchRestart: (reason) => metrics.watchRestarts.inc({ resource: r.plural, reason }),
    });
    const c: Cache = r.namespaced && cfg.namespaces.length ? new MultiInformer(cfg.namespaces.map(mk), cfg.namespaces) : mk(undefined);
    all.push(c);
    return c;
  };
  const owned = `${MANAGED_BY_LABEL}=${MANAGED_BY}`;
  const inf: Informers = {
    domains: make(RESOURCES.SendingDomain, { resync: true }),
    pools: make(RESOURCES.IPPool, { resync: true }),
    schedules: make(RESOURCES.WarmupSchedule, { resync: true }),
    providers: make(RESOURCES.MailboxProvider, { resync: true }),
    // Every Secret (credentials and keys are referenced by name), minus the big kinds no mailfleet
    // object can name; data is kept only for the types the operator reads.
    secrets: make(RESOURCES.Secret, {
      field: "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token,type!=kubernetes.io/dockerconfigjson",
      transform: (s) => {
        if (!SECRET_TYPES_WITH_DATA.has(String(s.type ?? ""))) delete s.data;
        return s;
      },
    }),
    deployments: make(RESOURCES.Deployment, { label: owned }),
    statefulsets: make(RESOURCES.StatefulSet, { label: owned }),
    services: make(RESOURCES.Service, { label: owned }),
    serviceaccounts: make(RESOURCES.ServiceAccount, { label: owned }),
    pdbs: make(RESOURCES.PodDisruptionBudget, { label: owned }),
    hpas: make(RESOURCES.HorizontalPodAutoscaler, { label: owned }),
    networkpolicies: make(RESOURCES.NetworkPolicy, { label: owned }),
    ...(keda ? { scaledobjects: make(RESOURCES.ScaledObject, { label: owned }) } : {}),
    webhooks: make(RESOURCES.ValidatingWebhookConfiguration, { field: `metadata.name=${cfg.webhook.configName}` }),
  };
  const world = new World(inf);
  metrics.sources.domainRecords = () => unverifiedRecords(inf.domains.list());
  metrics.sources.domainReputation = () => domainReputation(inf.domains.list());
  metrics.sources.natsConnected = () => store.connected();

  // Controllers (started only while leading).
  const controllers = new Map<ControllerName, Controller>();
  let leading = !cfg.leaderElect;
  const enqueue = (c: ControllerName, key: string) => {
    if (leading) controllers.get(c)?.enqueue(key);
  };
  const enqueuePlan = () => {
    // Coalesce bursts: a compile every 2 s at most while objects keep changing.
    if (leading) controllers.get("plan")?.enqueueAfter(PLAN_KEY_NAME, 2000);
  };
  const webhookCfg: WebhookConfig = {
    enabled: cfg.webhook.port > 0,
    port: cfg.webhook.port,
    configName: cfg.webhook.configName,
    secretName: cfg.webhook.secretName,
    ...(cfg.webhook.urlHost ? { urlHost: cfg.webhook.urlHost } : { service: { namespace: cfg.operatorNamespace, name: cfg.webhook.serviceName, port: cfg.webhook.servicePort } }),
    ...(cfg.webhook.certManager ? { certManager: cfg.webhook.certManager } : {}),
    configFromChart: cfg.webhook.configFromChart,
  };
  const ctx: Context = {
    client, world, inf, events, log, metrics, lookup, keys,
    config: {
      operatorNamespace: cfg.operatorNamespace,
      render: {
        relayImage: cfg.relay.image, natsUrls: cfg.relay.natsUrls, streamReplicas: cfg.natsReplicas, relayEnv: cfg.relay.env,
        ...(cfg.relay.natsCredsSecret ? { natsCredsSecret: cfg.relay.natsCredsSecret } : {}),
        ...(cfg.relay.natsMonitoringEndpoint ? { natsMonitoringEndpoint: cfg.relay.natsMonitoringEndpoint } : {}),
        ...(cfg.relay.resources ? { relayResources: cfg.relay.resources } : {}),
      },
      dnsRecheckMs: cfg.dnsRecheckMs,
      dnsRecheckUnverifiedMs: cfg.dnsRecheckUnverifiedMs,
    },
    keda: () => keda,
    now: () => Date.now(),
    enqueue,
    cleanupPool: (id) => store.deletePoolConsumers(id),
  };
  const plan = new PlanController(store);
  // Warm-up (leader only, like the controllers): counters from MF_EVENTS and the engine's steps.
  const natsConn = () => store.connection();
  let warmup: WarmupEngine | undefined;
  const counters = new CounterStore({
    connection: natsConn, replicas: cfg.natsReplicas, log: log.child({ component: "warmup" }),
    periodMsOf: (pool) => warmup?.periodMsOf(pool) ?? 86_400_000,
  });
  warmup = new WarmupEngine({ ctx, counters, connection: natsConn, replicas: cfg.natsReplicas, plan: () => plan.current() });
  const mk = (name: ControllerName, fn: (key: string) => ReturnType<typeof reconcileDomain>, workers = cfg.workers) =>
    controllers.set(name, new Controller(name, fn, { workers, log, metrics }));
  mk("domain", (k) => reconcileDomain(ctx, k));
  mk("pool", (k) => reconcilePool(ctx, k));
  mk("schedule", (k) => reconcileSchedule(ctx, k), 1);
  mk("provider", (k) => reconcileProvider(ctx, k), 1);
  mk("plan", () => plan.reconcile(ctx), 1);
  mk("webhook", () => reconcileWebhook(ctx, webhookCfg), 1);

  const webhookServer = webhookCfg.enabled
    ? new WebhookServer({ host: cfg.webhook.host, port: cfg.webhook.port, world, client, log, metrics })
    : undefined;

  // Events -> keys.
  const spec = (o: KubeObject) => (o.spec ?? {}) as Record<string, any>;
  const specChanged = (a: KubeObject, b: KubeObject) =>
    a.metadata.generation !== b.metadata.generation || a.metadata.deletionTimestamp !== b.metadata.deletionTimestamp ||
    JSON.stringify(a.metadata.annotations) !== JSON.stringify(b.metadata.annotations) || JSON.stringify(a.metadata.labels) !== JSON.stringify(b.metadata.labels) ||
    JSON.stringify(a.metadata.finalizers) !== JSON.stringify(b.metadata.finalizers);
  const poolsSigningFor = (ns: string, poolName: string | undefined) => (poolName ? world.overflowChain(ns, poolName) : []);
  const domainsUsingPool = (ns: string, poolName: string) => {
    const feeding = new Set(world.poolsFeeding(ns, poolName).map((p) => p.metadata.name));
    feeding.add(poolName);
    return [...feeding].flatMap((p) => inf.domains.byIndex("pool", `${ns}/${p}`));
  };
  // Pools only care about a domain's keys (its keyring) and webhook secrets; a burst of domain
  // changes reaches each pool once (the delay coalesces them).
  // At most one keyring update per pool every 10 s while keys keep coming: the kubelet takes up to
  // a minute to refresh a mounted Secret anyway, and each update rewrites the whole keyring.
  const poolKicked = new Map<string, number>();
  const enqueuePoolSoon = (key: string) => {
    if (!leading) return;
    const now = Date.now();
    const since = now - (poolKicked.get(key) ?? 0);
    if (since >= 10_000) {
      poolKicked.set(key, now);
      controllers.get("pool")?.enqueueAfter(key, 500);
    } else {
      controllers.get("pool")?.enqueueAfter(key, 10_000 - since);
    }
  };
  const keyringInputs = (d: KubeObject) => JSON.stringify([spec(d).poolRef?.name, spec(d).webhooks, ((d.status as any)?.dkim ?? []).map((k: any) => [k.selector, k.secretName])]);
  const onDomain = (d: KubeObject, old?: KubeObject) => {
    if (!old || specChanged(old, d)) enqueue("domain", keyOf(d));
    enqueuePlan();
    if (old && keyringInputs(old) === keyringInputs(d)) return;
    const ns = d.metadata.namespace!;
    for (const p of poolsSigningFor(ns, spec(d).poolRef?.name)) enqueuePoolSoon(keyOf(p));
    if (old && spec(old).poolRef?.name !== spec(d).poolRef?.name) for (const p of poolsSigningFor(ns, spec(old).poolRef?.name)) enqueuePoolSoon(keyOf(p));
  };
  inf.domains.on({ add: (d) => onDomain(d), update: (old, d) => onDomain(d, old), delete: (d) => onDomain(d), resync: (d) => enqueue("domain", keyOf(d)) });
  // What of a pool's status.lanes the plan takes: a change there is a quota or a pause the relays
  // must apply now, not after the usual coalescing delay.
  const lanePlanInputs = (o: KubeObject) => JSON.stringify([(o.status as any)?.warmupDay, ((o.status as any)?.lanes ?? []).map((l: any) => [l.address, l.provider, l.stage, l.state, l.until, l.reason])]);
  const onPool = (p: KubeObject, old?: KubeObject) => {
    const ns = p.metadata.namespace!;
    if (old && leading && lanePlanInputs(old) !== lanePlanInputs(p)) controllers.get("plan")?.enqueue(PLAN_KEY_NAME);
    enqueuePlan();
    for (const pr of inf.providers.list()) enqueue("provider", keyOf(pr));
    if (old && !specChanged(old, p)) return; // status only (the warm-up engine's lanes)
    enqueue("pool", keyOf(p));
    // Overflow changes move keys between keyrings; address changes move SPF records.
    for (const q of inf.pools.list(ns)) enqueue("pool", keyOf(q));
    for (const d of domainsUsingPool(ns, p.metadata.name)) enqueue("domain", keyOf(d));
    for (const s of [spec(p).warmupScheduleRef?.name, old && spec(old).warmupScheduleRef?.name]) if (s) enqueue("schedule", `${ns}/${s}`);
  };
  inf.pools.on({ add: (p) => onPool(p), update: (old, p) => onPool(p, old), delete: (p) => onPool(p), resync: (p) => enqueue("pool", keyOf(p)) });
  const onSchedule = (s: KubeObject, old?: KubeObject) => {
    enqueuePlan();
    if (!old || specChanged(old, s)) enqueue("schedule", keyOf(s));
  };
  inf.schedules.on({ add: (s) => onSchedule(s), update: (old, s) => onSchedule(s, old), delete: (s) => onSchedule(s), resync: (s) => enqueue("schedule", keyOf(s)) });
  const onProvider = (p: KubeObject, old?: KubeObject) => {
    enqueuePlan();
    if (!old || specChanged(old, p)) enqueue("provider", keyOf(p));
    if (!old) for (const s of inf.schedules.list()) enqueue("schedule", keyOf(s));
  };
  inf.providers.on({ add: (p) => onProvider(p), update: (old, p) => onProvider(p, old), delete: (p) => onProvider(p), resync: (p) => enqueue("provider", keyOf(p)) });
  inf.domains.on({ resync: () => enqueuePlan() });

  const onSecret = (s: KubeObject, added = false) => {
    const ns = s.metadata.namespace!;
    const name = s.metadata.name;
    if (ns === cfg.operatorNamespace && name === cfg.webhook.secretName) {
      enqueue("webhook", "webhook");
      const pair = servingPair(inf.secrets.get(ns, name));
      if (pair && webhookServer) webhookServer.setCertificate(pair.cert, pair.key, pair.version).catch((err: Error) => log.error("webhook cannot serve", { error: err.message }));
    }
    const domainLabel = s.metadata.labels?.[DOMAIN_LABEL];
    if (domainLabel) {
      // A key Secret appears because the domain's reconcile made it: only a change or a deletion
      // by someone else needs another look.
      if (!added) enqueue("domain", `${ns}/${domainLabel}`);
      for (const p of poolsSigningFor(ns, (inf.domains.get(ns, domainLabel)?.spec as any)?.poolRef?.name)) enqueuePoolSoon(keyOf(p));
      return;
    }
    const poolLabel = s.metadata.labels?.[POOL_LABEL];
    if (poolLabel) enqueue("pool", `${ns}/${poolLabel}`);
    // Referenced by name (only Secrets people make are).
    if (s.metadata.labels?.[MANAGED_BY_LABEL] === MANAGED_BY) return;
    for (const d of inf.domains.list(ns)) {
      const sp = spec(d);
      const creds = (sp.senders?.credentials ?? []).some((c: any) => c.secretRef?.name === name);
      const hooks = (sp.webhooks ?? []).some((w: any) => w.secretRef?.name === name);
      const own = sp.dkim?.secretRef?.name === name;
      if (creds || hooks || own) {
        enqueuePlan();
        enqueue("domain", keyOf(d));
      }
      if (hooks || own) for (const p of poolsSigningFor(ns, sp.poolRef?.name)) enqueue("pool", keyOf(p));
    }
    for (const p of inf.pools.list(ns)) if (spec(p).relay?.submission?.tlsSecretRef?.name === name) enqueue("pool", keyOf(p));
  };
  inf.secrets.on({ add: (s) => onSecret(s, true), update: (_o, s) => onSecret(s), delete: (s) => onSecret(s) });
  for (const c of [inf.deployments, inf.statefulsets, inf.services, inf.serviceaccounts, inf.pdbs, inf.hpas, inf.networkpolicies, ...(inf.scaledobjects ? [inf.scaledobjects] : [])]) {
    const h = (o: KubeObject) => {
      const p = o.metadata.labels?.[POOL_LABEL];
      if (p && o.metadata.namespace) enqueue("pool", `${o.metadata.namespace}/${p}`);
    };
    c.on({ add: h, update: (_o, n) => h(n), delete: h });
  }
  inf.webhooks.on({ add: () => enqueue("webhook", "webhook"), update: () => enqueue("webhook", "webhook"), delete: () => enqueue("webhook", "webhook") });
  world.onProblemsChanged = (kind, id) => {
    const c: Record<MailfleetObject["kind"], ControllerName> = { SendingDomain: "domain", IPPool: "pool", WarmupSchedule: "schedule", MailboxProvider: "provider" };
    enqueue(c[kind], id);
  };

  const enqueueAll = () => {
    for (const d of inf.domains.list()) enqueue("domain", keyOf(d));
    for (const p of inf.pools.list()) enqueue("pool", keyOf(p));
    for (const s of inf.schedules.list()) enqueue("schedule", keyOf(s));
    for (const p of inf.providers.list()) enqueue("provider", keyOf(p));
    enqueue("plan", PLAN_KEY_NAME);
    enqueue("webhook", "webhook");
  };

  // Start: caches, NATS, then the servers, then the election.
  for (const c of all) c.start();
  store.start();
  let synced = false;
  const http: Server | undefined = cfg.metrics.port > 0
    ? await startHttp({
      host: cfg.metrics.host, port: cfg.metrics.port, metrics,
      checks: {
        ready: () => {
          const waiting = all.filter((c) => !c.hasSynced()).map((c) => c.name);
          if (waiting.length) return { ok: false, detail: `caches not synced: ${waiting.join(", ")}` };
          if (webhookServer && !webhookServer.serving()) return { ok: false, detail: "webhook not serving yet (waiting for its certificate)" };
          return { ok: true, detail: "ok" };
        },
      },
    })
    : undefined;
  await Promise.all(all.map((c) => c.waitForSync()));
  synced = true;
  log.info("caches synced", Object.fromEntries(all.map((c) => [c.name, c.size()])));
  const pair = servingPair(inf.secrets.get(cfg.operatorNamespace, cfg.webhook.secretName));
  if (pair && webhookServer) await webhookServer.setCertificate(pair.cert, pair.key, pair.version).catch((err: Error) => log.error("webhook cannot serve", { error: err.message }));

  const gauges = setInterval(() => {
    metrics.leader.set(leading ? 1 : 0);
    metrics.resources.reset();
    for (const [kind, c] of [["SendingDomain", inf.domains], ["IPPool", inf.pools], ["WarmupSchedule", inf.schedules], ["MailboxProvider", inf.providers]] as const) {
      const n: Record<string, number> = { True: 0, False: 0, Unknown: 0 };
      for (const o of c.list()) {
        const r = ((o.status as any)?.conditions as { type: string; status: string }[] | undefined)?.find((x) => x.type === "Ready")?.status ?? "Unknown";
        n[r] = (n[r] ?? 0) + 1;
      }
      for (const [ready, v] of Object.entries(n)) metrics.resources.set({ kind, ready }, v);
    }
  }, 5000);
  gauges.unref();

  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  let stopping: Promise<number> | undefined;
  const startControllers = () => {
    leading = true;
    metrics.leader.set(1);
    for (const c of controllers.values()) c.start();
    enqueueAll();
    warmup.start();
  };
  const stopControllers = async () => {
    leading = false;
    await Promise.all([...controllers.values()].map((c) => c.stop()));
    await warmup.stop();
  };
  const elector = cfg.leaderElect
    ? new LeaderElector(client, {
      namespace: cfg.leaseNamespace, name: cfg.leaseName, identity: cfg.identity, log,
      // With the chart's webhook configuration (it lives as long as the release), the Lease goes with it.
      ...(cfg.webhook.configFromChart ? { owners: () => ownedByConfig(inf.webhooks.get(undefined, cfg.webhook.configName)) } : {}),
    })
    : undefined;

  const shutdown = (reason: string, code = 0): Promise<number> => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info("shutting down", { reason });
      // Finish what is in flight before letting a successor start: stop the queues, wait for the
      // reconciles, then release the Lease.
      await stopControllers();
      await elector?.stop();
      await events.flush();
      clearInterval(gauges);
      await Promise.all(all.map((c) => c.stop()));
      await webhookServer?.close();
      await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
      http?.closeAllConnections();
      await store.close();
      keygen.close();
      await client.close().catch(() => {});
      log.info("stopped", { reason });
      resolveDone(code);
      return code;
    })();
    return stopping;
  };

  if (elector) {
    elector.run({
      onStarted: startControllers,
      onStopped: () => {
        metrics.leader.set(0);
        // As controller-runtime does: a replica that lost the Lease stops (and is restarted).
        void shutdown("lost the leader Lease", 1);
      },
    });
  } else {
    startControllers();
  }
  void synced;
  return { metrics, log, isLeader: () => leading, done, shutdown: (reason) => shutdown(reason) };
}
