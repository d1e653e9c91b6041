// The operator's Prometheus metrics. Names mirror controller-runtime's where there is one
// (reconcile totals, errors, time; workqueue depth, adds, retries) under mailfleet_operator_, so
// controller-runtime dashboards and alerts carry over with a prefix change.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export type UnverifiedRecords = { sendingdomain: string; domain: string; unverified: number };

/**
 * Per SendingDomain, how many of the DNS records its status lists to publish are not verified
 * (mailfleet_operator_domain_records_unverified; alert MailfleetDnsNotVerified). A domain whose
 * status lists no records yet has no series: nothing is known about it.
 */
export function unverifiedRecords(domains: { metadata: { namespace?: string; name: string }; spec?: unknown; status?: unknown }[]): UnverifiedRecords[] {
  const out: UnverifiedRecords[] = [];
  for (const d of domains) {
    const records = (d.status as { dnsRecords?: { verified?: boolean }[] } | undefined)?.dnsRecords;
    const domain = (d.spec as { domain?: string } | undefined)?.domain;
    if (!records?.length || !domain) continue;
    out.push({ sendingdomain: `${d.metadata.namespace}/${d.metadata.name}`, domain, unverified: records.filter((r) => r.verified !== true).length });
  }
  return out;
}

export type DomainReputationRow = { sendingdomain: string; domain: string; paused: boolean; bounceRate?: number; complaintRate?: number };

/**
 * Per SendingDomain, its reputation as the warm-up engine last wrote it (status.reputation):
 * mailfleet_operator_domain_paused (alert MailfleetSendingDomainPaused) and the window's bounce and
 * complaint rates. A domain whose status has no reputation yet has no series, and a rate the status
 * leaves out (nothing attempted) or null (no provider it sent to reports complaints) has none.
 */
export function domainReputation(domains: { metadata: { namespace?: string; name: string }; spec?: unknown; status?: unknown }[]): DomainReputationRow[] {
  const out: DomainReputationRow[] = [];
  for (const d of domains) {
    const rep = (d.status as { reputation?: { state?: string; bounceRate?: number; complaintRate?: number | null } } | undefined)?.reputation;
    const domain = (d.spec as { domain?: string } | undefined)?.domain;
    if (!rep?.state || !domain) continue;
    out.push({
      sendingdomain: `${d.metadata.namespace}/${d.metadata.name}`, domain, paused: rep.state === "Paused",
      ...(typeof rep.bounceRate === "number" ? { bounceRate: rep.bounceRate } : {}),
      ...(typeof rep.complaintRate === "number" ? { complaintRate: rep.complaintRate } : {}),
    });
  }
  return out;
}

export class Metrics {
  readonly registry = new Registry();
  readonly reconcileTotal: Counter<"controller" | "result">;
  readonly reconcileErrors: Counter<"controller">;
  readonly reconcileDuration: Histogram<"controller">;
  readonly workqueueDepth: Gauge<"name">;
  readonly workqueueAdds: Counter<"name">;
  readonly workqueueRetries: Counter<"name">;
  readonly planRevision: Gauge<"revision">;
  readonly planPublished: Gauge;
  readonly planBytes: Gauge;
  readonly resources: Gauge<"kind" | "ready">;
  readonly leader: Gauge;
  readonly watchRestarts: Counter<"resource" | "reason">;
  readonly kubeWrites: Counter<"verb" | "resource">;
  readonly webhookRequests: Counter<"operation" | "kind" | "allowed">;
  readonly events: Counter<"type" | "reason">;
  // Lanes (source IP x provider) of warming pools, from the status the warm-up engine writes.
  // Label names are what the chart's dashboards and alerts query (charts/mailfleet/METRICS.md).
  readonly laneState: Gauge<"pool" | "source_ip" | "provider" | "state">;
  readonly laneWarmupStage: Gauge<"pool" | "source_ip" | "provider">;
  readonly laneDailyQuota: Gauge<"pool" | "source_ip" | "provider">;
  readonly laneSentToday: Gauge<"pool" | "source_ip" | "provider">;
  readonly laneWarmupHeld: Gauge<"pool" | "source_ip" | "provider">;
  readonly natsConnected: Gauge;
  readonly domainRecordsUnverified: Gauge<"sendingdomain" | "domain">;
  readonly domainPaused: Gauge<"sendingdomain" | "domain">;
  readonly domainBounceRate: Gauge<"sendingdomain" | "domain">;
  readonly domainComplaintRate: Gauge<"sendingdomain" | "domain">;
  /** What the scrape-time gauges read (the manager sets them once its caches and NATS client exist). */
  readonly sources: { natsConnected?: () => boolean; domainRecords?: () => UnverifiedRecords[]; domainReputation?: () => DomainReputationRow[] } = {};

  constructor() {
    const r = [this.registry];
    const sources = this.sources;
    collectDefaultMetrics({ register: this.registry, prefix: "mailfleet_operator_" });
    this.reconcileTotal = new Counter({ name: "mailfleet_operator_reconcile_total", help: "Reconciles by controller and result (success, requeue, error, conflict).", labelNames: ["controller", "result"], registers: r });
    this.reconcileErrors = new Counter({ name: "mailfleet_operator_reconcile_errors_total", help: "Reconciles that failed.", labelNames: ["controller"], registers: r });
    this.reconcileDuration = new Histogram({
      name: "mailfleet_operator_reconcile_duration_seconds", help: "Time one reconcile took.", labelNames: ["controller"], registers: r,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    });
    this.workqueueDepth = new Gauge({ name: "mailfleet_operator_workqueue_depth", help: "Keys waiting in a controller's queue.", labelNames: ["name"], registers: r });
    this.workqueueAdds = new Counter({ name: "mailfleet_operator_workqueue_adds_total", help: "Keys added to a controller's queue.", labelNames: ["name"], registers: r });
    this.workqueueRetries = new Counter({ name: "mailfleet_operator_workqueue_retries_total", help: "Keys re-queued after a failure.", labelNames: ["name"], registers: r });
    this.planRevision = new Gauge({ name: "mailfleet_operator_plan_revision_info", help: "The revision of the fleet plan last published (value 1).", labelNames: ["revision"], registers: r });
    this.planPublished = new Gauge({ name: "mailfleet_operator_plan_published_timestamp_seconds", help: "When the fleet plan was last published.", registers: r });
    this.planBytes = new Gauge({ name: "mailfleet_operator_plan_bytes", help: "Size of the published plan (gzip).", registers: r });
    this.resources = new Gauge({ name: "mailfleet_operator_resources", help: "mailfleet objects by kind and Ready status.", labelNames: ["kind", "ready"], registers: r });
    this.leader = new Gauge({ name: "mailfleet_operator_leader", help: "1 while this replica holds the leader Lease.", registers: r });
    this.watchRestarts = new Counter({ name: "mailfleet_operator_watch_restarts_total", help: "Watches restarted, by reason (error, expired, quiet).", labelNames: ["resource", "reason"], registers: r });
    this.kubeWrites = new Counter({ name: "mailfleet_operator_kube_writes_total", help: "Write requests to the Kubernetes API.", labelNames: ["verb", "resource"], registers: r });
    this.webhookRequests = new Counter({ name: "mailfleet_operator_webhook_requests_total", help: "Admission reviews answered.", labelNames: ["operation", "kind", "allowed"], registers: r });
    this.events = new Counter({ name: "mailfleet_operator_events_total", help: "Kubernetes Events recorded.", labelNames: ["type", "reason"], registers: r });
    const lane = ["pool", "source_ip", "provider"] as const;
    this.laneState = new Gauge({ name: "mailfleet_operator_lane_state", help: "1 for the lane's current state (Healthy, Throttled, Suspended, Blocked, Paused), 0 for the others.", labelNames: [...lane, "state"], registers: r });
    this.laneWarmupStage = new Gauge({ name: "mailfleet_operator_lane_warmup_stage", help: "Warm-up stage of the lane (0-based index into its schedule's stages).", labelNames: lane, registers: r });
    this.laneDailyQuota = new Gauge({ name: "mailfleet_operator_lane_daily_quota", help: "Recipients the lane may attempt in the current warm-up day.", labelNames: lane, registers: r });
    this.laneSentToday = new Gauge({ name: "mailfleet_operator_lane_sent_today", help: "Recipients the lane attempted at the provider in the current warm-up day.", labelNames: lane, registers: r });
    this.laneWarmupHeld = new Gauge({ name: "mailfleet_operator_lane_warmup_held", help: "1 while the lane's last warm-up decision was Held or SteppedBack (its gates failed), else 0.", labelNames: lane, registers: r });
    // Read at scrape time, so a scrape never shows a value older than the caches.
    this.natsConnected = new Gauge({
      name: "mailfleet_operator_nats_connected", help: "1 while this replica is connected to NATS (where the fleet plan is published), else 0.", registers: r,
      collect() { this.set(sources.natsConnected?.() ? 1 : 0); },
    });
    this.domainRecordsUnverified = new Gauge({
      name: "mailfleet_operator_domain_records_unverified", help: "DNS records a SendingDomain's status lists to publish that are not verified.", labelNames: ["sendingdomain", "domain"], registers: r,
      collect() {
        this.reset();
        for (const x of sources.domainRecords?.() ?? []) this.set({ sendingdomain: x.sendingdomain, domain: x.domain }, x.unverified);
      },
    });
    // Each reads the list at its own collect: the informer's list is in memory, so one read per
    // gauge and scrape costs little and keeps the gauges independent.
    const domainGauge = (name: string, help: string, value: (x: DomainReputationRow) => number | undefined) => new Gauge({
      name, help, labelNames: ["sendingdomain", "domain"], registers: r,
      collect() {
        this.reset();
        for (const x of sources.domainReputation?.() ?? []) {
          const v = value(x);
          if (v !== undefined) this.set({ sendingdomain: x.sendingdomain, domain: x.domain }, v);
        }
      },
    });
    this.domainPaused = domainGauge("mailfleet_operator_domain_paused", "1 while the warm-up engine holds a SendingDomain's mail (status.reputation.state Paused), else 0.", (x) => (x.paused ? 1 : 0));
    this.domainBounceRate = domainGauge("mailfleet_operator_domain_bounce_rate", "A SendingDomain's bounce rate over its reputation window (status.reputation.bounceRate).", (x) => x.bounceRate);
    this.domainComplaintRate = domainGauge("mailfleet_operator_domain_complaint_rate", "A SendingDomain's complaint rate over its reputation window (status.reputation.complaintRate); no series while no provider it sent to reports complaints.", (x) => x.complaintRate);
  }
}
