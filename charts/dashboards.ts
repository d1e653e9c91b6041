// The chart's Grafana dashboards, written as data here and generated into
// charts/mailfleet/dashboards/*.json by `npm run gen:chart` (a test fails when they are stale).
// Why generate: four dashboards of Grafana JSON by hand repeat the same datasource, variables,
// grid arithmetic and label matchers dozens of times; here each panel is its title and queries.
//
// Conventions every query follows (test/e2e/monitoring.test.ts runs each one, variables
// substituted, against a Prometheus scraping a live fleet and wants a series back):
//   - relay series carry pool (namespace/name) and, per lane, source_ip and provider; operator
//     series carry what their metric says; both get job/namespace/pod from the chart's monitors;
//   - variables: $pool, $provider, $source_ip (multi-value, "All" = .*), filtered with =~;
//   - rates use $__rate_interval.
// Every metric name used here is listed in charts/mailfleet/METRICS.md.

export type Target = { expr: string; legend?: string; instant?: boolean; format?: "table" | "time_series" };
export type PanelSpec = {
  title: string;
  description: string;
  type: "stat" | "timeseries" | "table" | "bargauge";
  unit?: string;
  w?: number;
  h?: number;
  stack?: boolean;
  targets: Target[];
  thresholds?: { value: number; color: string }[];
};
export type RowSpec = { title: string; panels: PanelSpec[] };
export type DashboardSpec = { file: string; uid: string; title: string; description: string; variables: string[]; rows: RowSpec[] };

const POOL = 'pool=~"$pool"';
const LANE = 'pool=~"$pool", provider=~"$provider", source_ip=~"$source_ip"';
const PROV = 'pool=~"$pool", provider=~"$provider"';
const RI = "$__rate_interval";
/** Per-provider rate and hourly increase of an outcome counter. A sum of such vectors needs the
 * `or ... * 0` fallbacks: `+` keeps only providers present on both sides, and a provider with no
 * deferrals (or no deliveries) has no series there. */
const rate = (outcome: string) => `sum by (provider) (rate(mailfleet_${outcome}_total{${PROV}}[${RI}]))`;
const inc1h = (outcome: string) => `sum by (provider) (increase(mailfleet_${outcome}_total{${PROV}}[1h]))`;

/** Label-values queries of the template variables (each filtered by the ones before it). */
export const VARIABLES: Record<string, { label: string; query: string }> = {
  pool: { label: "Pool", query: "label_values(mailfleet_relay_nats_connected, pool)" },
  provider: { label: "Provider", query: `label_values(mailfleet_delivered_total{${POOL}}, provider)` },
  source_ip: { label: "Source IP", query: `label_values(mailfleet_delivered_total{${POOL}, provider=~"$provider"}, source_ip)` },
};

export const DASHBOARDS: DashboardSpec[] = [
  {
    file: "fleet-overview.json",
    uid: "mailfleet-overview",
    title: "mailfleet / Fleet overview",
    description: "Mail in and out of every pool, queues, lanes by state, relays and the operator.",
    variables: ["pool"],
    rows: [
      {
        title: "Now",
        panels: [
          { title: "Accepted", type: "stat", unit: "reqps", w: 4, description: "Messages accepted per second (stored durably, answered 250).", targets: [{ expr: `sum(rate(mailfleet_relay_accepted_total{${POOL}}[${RI}]))` }] },
          { title: "Delivered", type: "stat", unit: "reqps", w: 4, description: "Recipients delivered per second.", targets: [{ expr: `sum(rate(mailfleet_delivered_total{${POOL}}[${RI}]))` }] },
          { title: "Deferred", type: "stat", unit: "reqps", w: 4, description: "Recipients deferred per second (temporary failures; retried).", targets: [{ expr: `sum(rate(mailfleet_deferred_total{${POOL}}[${RI}]))` }] },
          { title: "Bounced", type: "stat", unit: "reqps", w: 4, description: "Recipients bounced per second (permanent failures, rules, expiry).", targets: [{ expr: `sum(rate(mailfleet_bounced_total{${POOL}}[${RI}]))` }] },
          { title: "Queued", type: "stat", unit: "short", w: 4, description: "Parts waiting or in flight in the ready queues.", targets: [{ expr: `sum(mailfleet_queue_depth{${POOL}})` }] },
          {
            title: "Oldest queued", type: "stat", unit: "s", w: 4, description: "Age of the oldest waiting part in any ready queue.",
            thresholds: [{ value: 0, color: "green" }, { value: 900, color: "orange" }, { value: 3600, color: "red" }],
            targets: [{ expr: `max(mailfleet_queue_oldest_age_seconds{${POOL}})` }],
          },
        ],
      },
      {
        title: "Traffic",
        panels: [
          { title: "Accepted by source", type: "timeseries", unit: "reqps", w: 12, description: "Accepted messages per second by how they arrived (SMTP submission or the HTTP injection API).", targets: [{ expr: `sum by (source) (rate(mailfleet_relay_accepted_total{${POOL}}[${RI}]))`, legend: "{{source}}" }] },
          { title: "Outcomes by pool", type: "timeseries", unit: "reqps", w: 12, stack: true, description: "Delivered, deferred and bounced recipients per second.", targets: [
            { expr: `sum by (pool) (rate(mailfleet_delivered_total{${POOL}}[${RI}]))`, legend: "delivered {{pool}}" },
            { expr: `sum by (pool) (rate(mailfleet_deferred_total{${POOL}}[${RI}]))`, legend: "deferred {{pool}}" },
            { expr: `sum by (pool) (rate(mailfleet_bounced_total{${POOL}}[${RI}]))`, legend: "bounced {{pool}}" },
          ] },
          { title: "Queue depth by provider", type: "timeseries", unit: "short", w: 12, description: "Parts waiting per pool and provider.", targets: [{ expr: `sum by (pool, provider) (mailfleet_queue_depth{${POOL}})`, legend: "{{pool}} {{provider}}" }] },
          { title: "Oldest queued by provider", type: "timeseries", unit: "s", w: 12, description: "How long the oldest part has waited, per pool and provider.", targets: [{ expr: `max by (pool, provider) (mailfleet_queue_oldest_age_seconds{${POOL}})`, legend: "{{pool}} {{provider}}" }] },
        ],
      },
      {
        title: "Lanes, relays, operator",
        panels: [
          { title: "Lanes by state", type: "bargauge", unit: "short", w: 8, description: "Lanes (source IP x provider) in each state: Healthy and Throttled send, Suspended, Blocked and Paused do not.", targets: [{ expr: `sum by (state) (mailfleet_operator_lane_state{${POOL}})`, legend: "{{state}}", instant: true }] },
          { title: "Relays up", type: "stat", unit: "short", w: 4, description: "Relay pods Prometheus scrapes successfully.", targets: [{ expr: 'sum(up{job="mailfleet-relay"})' }] },
          { title: "Relays with a plan", type: "stat", unit: "short", w: 4, description: "Relays with a good fleet plan in force.", targets: [{ expr: `sum(mailfleet_relay_plan_loaded{${POOL}})` }] },
          { title: "Operator leader", type: "stat", unit: "short", w: 4, description: "Operator replicas holding the leader Lease (1 is right).", targets: [{ expr: "sum(mailfleet_operator_leader)" }] },
          { title: "Plan age", type: "stat", unit: "s", w: 4, description: "Seconds since the operator last published the fleet plan.", targets: [{ expr: "time() - max(mailfleet_operator_plan_published_timestamp_seconds)" }] },
        ],
      },
    ],
  },
  {
    file: "providers.json",
    uid: "mailfleet-providers",
    title: "mailfleet / Providers",
    description: "Per mailbox provider: acceptance, deferrals and bounces by reply class, blocks and throttles, connections, latency.",
    variables: ["pool", "provider"],
    rows: [
      {
        title: "Acceptance",
        panels: [
          { title: "Acceptance ratio", type: "timeseries", unit: "percentunit", w: 12, description: "Share of delivery attempts the provider accepted (delivered over delivered + deferred + bounced).", targets: [{
            expr: `${rate("delivered")} / (${rate("delivered")} + (${rate("deferred")} or ${rate("delivered")} * 0) + (${rate("bounced")} or ${rate("delivered")} * 0))`,
            legend: "{{provider}}",
          }] },
          { title: "Delivered by provider", type: "timeseries", unit: "reqps", w: 12, description: "Recipients delivered per second.", targets: [{ expr: `sum by (provider) (rate(mailfleet_delivered_total{${PROV}}[${RI}]))`, legend: "{{provider}}" }] },
        ],
      },
      {
        title: "Deferrals and bounces",
        panels: [
          { title: "Deferrals by class", type: "timeseries", unit: "reqps", w: 12, stack: true, description: "Temporary failures per second, by provider and reply class (rate-limited, reputation, connection, ...).", targets: [{ expr: `sum by (provider, class) (rate(mailfleet_deferred_total{${PROV}}[${RI}]))`, legend: "{{provider}} {{class}}" }] },
          { title: "Bounces by class", type: "timeseries", unit: "reqps", w: 12, stack: true, description: "Permanent failures per second, by provider and reply class (unknown-user, blocked, policy, expired, ...).", targets: [{ expr: `sum by (provider, class) (rate(mailfleet_bounced_total{${PROV}}[${RI}]))`, legend: "{{provider}} {{class}}" }] },
          { title: "Bounce rate (1h)", type: "timeseries", unit: "percentunit", w: 12, description: "Bounced over bounced + delivered in the last hour (the MailfleetBounceRateHigh alert's measure).", targets: [{
            expr: `${inc1h("bounced")} / (${inc1h("bounced")} + (${inc1h("delivered")} or ${inc1h("bounced")} * 0))`,
            legend: "{{provider}}",
          }] },
          { title: "Complaints", type: "timeseries", unit: "short", w: 12, description: "Feedback-loop complaints in the last 24 hours, by provider.", targets: [{ expr: `sum by (provider) (increase(mailfleet_complaints_total{${PROV}}[24h]))`, legend: "{{provider}}" }] },
        ],
      },
      {
        title: "Blocks, throttles, connections",
        panels: [
          { title: "Response rules fired", type: "timeseries", unit: "short", w: 12, description: "Provider response rules that fired (slow down, suspend, cap connections, ...), by provider, rule and action.", targets: [{ expr: `sum by (provider, rule, action) (increase(mailfleet_rule_activations_total{${PROV}}[$__range]))`, legend: "{{provider}} {{rule}} {{action}}" }] },
          { title: "Lanes blocked or throttled", type: "table", w: 12, description: "Lanes not in the Healthy state now, by provider.", targets: [{ expr: `sum by (provider, state) (mailfleet_operator_lane_state{${PROV}, state!="Healthy"})`, instant: true, format: "table" }] },
          { title: "Open connections", type: "timeseries", unit: "short", w: 12, description: "SMTP connections open to each provider (all lanes).", targets: [{ expr: `sum by (provider) (mailfleet_lane_connections{${PROV}})`, legend: "{{provider}}" }] },
          { title: "Delivery latency p95", type: "timeseries", unit: "s", w: 12, description: "95th percentile of the time from acceptance to delivery, by provider.", targets: [{ expr: `histogram_quantile(0.95, sum by (provider, le) (rate(mailfleet_delivery_latency_seconds_bucket{${PROV}}[${RI}])))`, legend: "{{provider}}" }] },
        ],
      },
    ],
  },
  {
    file: "warmup.json",
    uid: "mailfleet-warmup",
    title: "mailfleet / Warm-up",
    description: "Warm-up progress per lane (source IP x provider): stage, today's quota and what was sent, holds; sending domains paused on their rates.",
    variables: ["pool", "provider", "source_ip"],
    rows: [
      {
        title: "Lanes",
        panels: [
          { title: "Stage", type: "timeseries", unit: "short", w: 12, description: "Warm-up stage index of each lane (0 is the first stage).", targets: [{ expr: `max by (pool, source_ip, provider) (mailfleet_operator_lane_warmup_stage{${LANE}})`, legend: "{{source_ip}} {{provider}}" }] },
          { title: "Sent today vs quota", type: "table", w: 12, description: "Per lane: recipients attempted in the current warm-up day and the day's quota.", targets: [
            { expr: `max by (pool, source_ip, provider) (mailfleet_operator_lane_sent_today{${LANE}})`, instant: true, format: "table" },
            { expr: `max by (pool, source_ip, provider) (mailfleet_operator_lane_daily_quota{${LANE}})`, instant: true, format: "table" },
          ] },
          { title: "Quota used", type: "bargauge", unit: "percentunit", w: 12, description: "Share of today's quota each lane has used.", targets: [{ expr: `max by (pool, source_ip, provider) (mailfleet_operator_lane_sent_today{${LANE}}) / max by (pool, source_ip, provider) (mailfleet_operator_lane_daily_quota{${LANE}} > 0)`, legend: "{{source_ip}} {{provider}}", instant: true }] },
          { title: "Held lanes", type: "table", w: 12, description: "Lanes whose warm-up gates failed at the last decision (held or stepped back).", targets: [{ expr: `max by (pool, source_ip, provider) (mailfleet_operator_lane_warmup_held{${LANE}})`, instant: true, format: "table" }] },
        ],
      },
      {
        title: "What the gates see",
        panels: [
          { title: "Delivered per lane", type: "timeseries", unit: "reqps", w: 12, description: "Recipients delivered per second, by lane.", targets: [{ expr: `sum by (source_ip, provider) (rate(mailfleet_delivered_total{${LANE}}[${RI}]))`, legend: "{{source_ip}} {{provider}}" }] },
          { title: "Deferred and bounced per lane", type: "timeseries", unit: "reqps", w: 12, description: "Recipients deferred or bounced per second, by lane.", targets: [
            { expr: `sum by (source_ip, provider) (rate(mailfleet_deferred_total{${LANE}}[${RI}]))`, legend: "deferred {{source_ip}} {{provider}}" },
            { expr: `sum by (source_ip, provider) (rate(mailfleet_bounced_total{${LANE}}[${RI}]))`, legend: "bounced {{source_ip}} {{provider}}" },
          ] },
        ],
      },
      {
        // Per SendingDomain (operator gauges from status.reputation): no pool, provider or address
        // label, so the dashboard's variables do not filter these.
        title: "Sending domains",
        panels: [
          { title: "Paused sending domains", type: "table", w: 12, description: "1 for each SendingDomain the warm-up engine paused on its bounce or complaint rate (its mail is held in the queue until the pause ends), 0 for the others. All pools.", targets: [{ expr: "max by (sendingdomain, domain) (mailfleet_operator_domain_paused)", instant: true, format: "table" }] },
          { title: "Domain bounce and complaint rates", type: "timeseries", unit: "percentunit", w: 12, description: "Each SendingDomain's bounce and complaint rate over its pool's reputation window, as the warm-up engine judges them for a pause. All pools.", targets: [
            { expr: "max by (sendingdomain, domain) (mailfleet_operator_domain_bounce_rate)", legend: "bounce {{domain}}" },
            { expr: "max by (sendingdomain, domain) (mailfleet_operator_domain_complaint_rate)", legend: "complaint {{domain}}" },
          ] },
        ],
      },
    ],
  },
  {
    file: "relay-internals.json",
    uid: "mailfleet-relay-internals",
    title: "mailfleet / Relay internals",
    description: "Per relay: submission, durable acceptance, NATS, the plan, routing, inbound, the fleet shaper, process health.",
    variables: ["pool"],
    rows: [
      {
        title: "Submission and acceptance",
        panels: [
          { title: "Submission connections", type: "timeseries", unit: "short", w: 8, description: "Open SMTP submission connections per relay.", targets: [{ expr: `sum by (pod) (mailfleet_relay_submission_connections{${POOL}})`, legend: "{{pod}}" }] },
          { title: "Accept latency p99", type: "timeseries", unit: "s", w: 8, description: "From end of DATA to durable storage in JetStream (what the 250 waits for), 99th percentile.", targets: [{ expr: `histogram_quantile(0.99, sum by (pod, le) (rate(mailfleet_relay_accept_duration_seconds_bucket{${POOL}}[${RI}])))`, legend: "{{pod}}" }] },
          { title: "Group commit size", type: "timeseries", unit: "short", w: 8, description: "Messages per JetStream commit (average).", targets: [{ expr: `sum by (pod) (rate(mailfleet_relay_commit_group_size_sum{${POOL}}[${RI}])) / sum by (pod) (rate(mailfleet_relay_commit_group_size_count{${POOL}}[${RI}]))`, legend: "{{pod}}" }] },
          { title: "Submissions refused", type: "timeseries", unit: "short", w: 12, description: "Submissions refused in the dashboard's range, by reply code.", targets: [{ expr: `sum by (code, enhanced) (increase(mailfleet_relay_submission_rejected_total{${POOL}}[$__range]))`, legend: "{{code}} {{enhanced}}" }] },
          { title: "AUTH failures", type: "timeseries", unit: "short", w: 12, description: "Failed AUTH attempts on submission in the dashboard's range.", targets: [{ expr: `sum by (pod) (increase(mailfleet_relay_auth_failures_total{${POOL}}[$__range]))`, legend: "{{pod}}" }] },
        ],
      },
      {
        title: "NATS and the plan",
        panels: [
          { title: "NATS connected", type: "stat", unit: "short", w: 6, description: "Relays connected to NATS.", targets: [{ expr: `sum(mailfleet_relay_nats_connected{${POOL}})` }] },
          { title: "Plan in force", type: "stat", unit: "short", w: 6, description: "Relays with a good plan in force.", targets: [{ expr: `sum(mailfleet_relay_plan_loaded{${POOL}})` }] },
          { title: "Plan applied age", type: "timeseries", unit: "s", w: 6, description: "Seconds since each relay applied the plan in force.", targets: [{ expr: `time() - max by (pod) (mailfleet_relay_plan_applied_timestamp_seconds{${POOL}})`, legend: "{{pod}}" }] },
          { title: "Plan values rejected", type: "stat", unit: "short", w: 6, description: "Plan values relays rejected in the dashboard's range (the last good plan stayed in force).", targets: [{ expr: `sum(increase(mailfleet_relay_plan_rejected_total{${POOL}}[$__range]))` }] },
        ],
      },
      {
        title: "Routing, retries, inbound",
        panels: [
          { title: "Routing decisions", type: "timeseries", unit: "reqps", w: 8, description: "Route decisions per recipient domain per second: deliver, bounce, retry.", targets: [{ expr: `sum by (result) (rate(mailfleet_routed_total{${POOL}}[${RI}]))`, legend: "{{result}}" }] },
          { title: "Scheduled retries", type: "timeseries", unit: "short", w: 8, description: "Deferred parts waiting for their next try.", targets: [{ expr: `sum by (pool) (mailfleet_queue_scheduled{${POOL}})`, legend: "{{pool}}" }] },
          { title: "Inbound messages", type: "timeseries", unit: "reqps", w: 8, description: "Messages taken by the inbound listener per second: DSNs, ARF complaints, other, refused.", targets: [{ expr: `sum by (kind) (rate(mailfleet_inbound_messages_total[${RI}]))`, legend: "{{kind}}" }] },
        ],
      },
      {
        // The fleet shaper (relay/shaper/): every lane limit shared across relays through the NATS
        // KV bucket mf-shaper; on its local share while the bucket does not answer.
        title: "Shaper",
        panels: [
          { title: "Send slots by outcome", type: "timeseries", unit: "reqps", w: 12, description: "Send slots per second, by provider and outcome: reserved, spent (a transaction opened on it), missed (its grace passed before delivery took it), late (delivery came after its grace: not sent), dropped (suspension, slow-down, no room in a provider-wide or address-wide rate).", targets: [{ expr: `sum by (provider, outcome) (rate(mailfleet_shaper_slots_total{${POOL}}[${RI}]))`, legend: "{{provider}} {{outcome}}" }] },
          { title: "Slot reservations by result", type: "timeseries", unit: "reqps", w: 12, description: "Send-slot reservations per second, by provider and result: ok (from the fleet's KV), empty (nothing free yet), local (on the relay's local share, the KV not answering), failed (the KV not answering).", targets: [{ expr: `sum by (provider, result) (rate(mailfleet_shaper_reservations_total{${POOL}}[${RI}]))`, legend: "{{provider}} {{result}}" }] },
          { title: "Shaper KV operations", type: "timeseries", unit: "ops", w: 8, description: "Reads (get) and compare-and-set writes (cas) of the KV bucket mf-shaper per second, by result: ok, conflict (another relay wrote first; retried), unavailable (failed or no answer within 1 s).", targets: [{ expr: `sum by (op, result) (rate(mailfleet_shaper_store_operations_total{${POOL}}[${RI}]))`, legend: "{{op}} {{result}}" }] },
          {
            title: "Shaper KV unavailable", type: "stat", unit: "short", w: 4, description: "Shaper KV operations that failed or got no answer within 1 s in the dashboard's range (0 is right; the relays shape on their local share after 1.5 s of these).",
            thresholds: [{ value: 0, color: "green" }, { value: 1, color: "red" }],
            // 0 rather than no data while nothing has failed (the counter has no unavailable series yet).
            targets: [{ expr: `sum(increase(mailfleet_shaper_store_operations_total{${POOL}, result="unavailable"}[$__range])) or sum(increase(mailfleet_shaper_store_operations_total{${POOL}}[$__range])) * 0` }],
          },
          {
            title: "Relays on their local share", type: "stat", unit: "short", w: 4, description: "Relays shaping on their local share now (the shaper's KV not answering): each sends every lane's limit divided by the relays last seen on it, never unlimited. 0 is right.",
            thresholds: [{ value: 0, color: "green" }, { value: 1, color: "orange" }],
            targets: [{ expr: `sum(mailfleet_shaper_local_share{${POOL}})` }],
          },
          { title: "Live relays per lane", type: "timeseries", unit: "short", w: 8, description: "Relays sharing each lane's limits (live entries on its KV key as the relays last read it): batches and the local share are sized by it.", targets: [{ expr: `max by (pool, source_ip, provider) (mailfleet_shaper_lane_relays{${POOL}})`, legend: "{{source_ip}} {{provider}}" }] },
        ],
      },
      {
        title: "Process",
        panels: [
          { title: "CPU", type: "timeseries", unit: "percentunit", w: 8, description: "CPU used per relay (cores).", targets: [{ expr: `sum by (pod) (rate(mailfleet_relay_process_process_cpu_seconds_total{${POOL}}[${RI}]))`, legend: "{{pod}}" }] },
          { title: "Memory", type: "timeseries", unit: "bytes", w: 8, description: "Resident memory per relay.", targets: [{ expr: `max by (pod) (mailfleet_relay_process_process_resident_memory_bytes{${POOL}})`, legend: "{{pod}}" }] },
          { title: "Event loop lag p99", type: "timeseries", unit: "s", w: 8, description: "Node.js event loop lag, 99th percentile (high values delay SMTP replies).", targets: [{ expr: `max by (pod) (mailfleet_relay_process_nodejs_eventloop_lag_p99_seconds{${POOL}})`, legend: "{{pod}}" }] },
        ],
      },
    ],
  },
];

/** Every metric name the dashboards query (for METRICS.md and its test). */
export function dashboardMetrics(): Set<string> {
  const out = new Set<string>();
  for (const d of DASHBOARDS) for (const r of d.rows) for (const p of r.panels) for (const t of p.targets) for (const m of metricNames(t.expr)) out.add(m);
  for (const v of Object.values(VARIABLES)) for (const m of metricNames(v.query)) out.add(m);
  return out;
}

/** Metric names in a PromQL expression: identifiers that are not functions, keywords or labels. */
export function metricNames(expr: string): string[] {
  const stripped = expr.replace(/\{[^}]*\}/g, "{}").replace(/"[^"]*"/g, '""').replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "");
  const words = stripped.match(/[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{[)\s]|$)/g) ?? [];
  const notMetrics = new Set(["sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "time", "vector", "or", "and", "unless", "label_values", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "le"]);
  return [...new Set(words.filter((w) => !notMetrics.has(w) && /^mailfleet_|^up$/.test(w)))];
}

function gridded(rows: RowSpec[]): unknown[] {
  const panels: unknown[] = [];
  let id = 1;
  let y = 0;
  for (const row of rows) {
    panels.push({ type: "row", id: id++, title: row.title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
    y += 1;
    let x = 0;
    let rowH = 0;
    for (const p of row.panels) {
      const w = p.w ?? 12;
      const h = p.h ?? (p.type === "stat" ? 4 : 8);
      if (x + w > 24) { x = 0; y += rowH; rowH = 0; }
      panels.push(panel(p, id++, { h, w, x, y }));
      x += w;
      rowH = Math.max(rowH, h);
    }
    y += rowH;
  }
  return panels;
}

function panel(p: PanelSpec, id: number, gridPos: Record<string, number>): unknown {
  const thresholds = p.thresholds ?? [{ value: 0, color: "green" }];
  return {
    id,
    type: p.type,
    title: p.title,
    description: p.description,
    datasource: { type: "prometheus", uid: "${datasource}" },
    gridPos,
    fieldConfig: {
      defaults: {
        unit: p.unit ?? "short",
        thresholds: { mode: "absolute", steps: thresholds.map((t, i) => ({ color: t.color, value: i === 0 ? null : t.value })) },
        ...(p.type === "timeseries" ? { custom: { drawStyle: "line", lineWidth: 1, fillOpacity: p.stack ? 30 : 10, stacking: { mode: p.stack ? "normal" : "none" } } } : {}),
      },
      overrides: [],
    },
    options: p.type === "stat"
      ? { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, colorMode: "value", graphMode: "area" }
      : p.type === "table"
        ? { showHeader: true }
        : p.type === "bargauge"
          ? { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false }, orientation: "horizontal", displayMode: "gradient" }
          : { legend: { displayMode: "list", placement: "bottom", showLegend: true }, tooltip: { mode: "multi", sort: "desc" } },
    ...(p.type === "table" ? { transformations: [{ id: "merge", options: {} }] } : {}),
    targets: p.targets.map((t, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: { type: "prometheus", uid: "${datasource}" },
      expr: t.expr,
      legendFormat: t.legend ?? "__auto",
      range: !t.instant,
      instant: Boolean(t.instant),
      ...(t.format ? { format: t.format } : {}),
    })),
  };
}

function templating(vars: string[]): unknown {
  return {
    list: [
      { name: "datasource", label: "Data source", type: "datasource", query: "prometheus", current: {}, hide: 0, refresh: 1, regex: "" },
      ...vars.map((v) => ({
        name: v,
        label: VARIABLES[v]!.label,
        type: "query",
        datasource: { type: "prometheus", uid: "${datasource}" },
        query: { query: VARIABLES[v]!.query, refId: `${v}-values` },
        definition: VARIABLES[v]!.query,
        multi: true,
        includeAll: true,
        allValue: ".*",
        current: { selected: true, text: ["All"], value: ["$__all"] },
        refresh: 2,
        sort: 1,
        hide: 0,
      })),
    ],
  };
}

export function renderDashboard(d: DashboardSpec): string {
  const json = {
    uid: d.uid,
    title: d.title,
    description: d.description,
    tags: ["mailfleet"],
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    time: { from: "now-6h", to: "now" },
    refresh: "30s",
    timezone: "",
    links: [{ title: "mailfleet", type: "dashboards", tags: ["mailfleet"], asDropdown: true }],
    templating: templating(d.variables),
    annotations: { list: [] },
    panels: gridded(d.rows),
  };
  return JSON.stringify(json, null, 2) + "\n";
}

/** dashboards/<file> -> JSON text. */
export function dashboardFiles(): Map<string, string> {
  return new Map(DASHBOARDS.map((d) => [`dashboards/${d.file}`, renderDashboard(d)]));
}
