// Delivery-side metrics. Labels are bounded: pool, source_ip, provider, class (and rule names,
// which the plan bounds); never a recipient, domain or message id.
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface DeliveryMetrics {
  delivered: Counter<"pool" | "source_ip" | "provider" | "class">;
  deferred: Counter<"pool" | "source_ip" | "provider" | "class">;
  bounced: Counter<"pool" | "source_ip" | "provider" | "class">;
  latency: Histogram<"pool" | "provider">;
  connections: Gauge<"pool" | "source_ip" | "provider">;
  ruleActivations: Counter<"pool" | "source_ip" | "provider" | "rule" | "action">;
  queueDepth: Gauge<"pool" | "provider">;
  queueOldest: Gauge<"pool" | "provider">;
  scheduled: Gauge<"pool">;
  routed: Counter<"pool" | "result">;
  complaints: Counter<"pool" | "source_ip" | "provider">;
  inbound: Counter<"kind">;
  webhooks: Counter<"pool" | "result">;
  dsns: Counter<"pool">;
}

const byRegistry = new WeakMap<Registry, DeliveryMetrics>();

/** The delivery metrics on a registry (created once per registry: several components share them). */
export function deliveryMetrics(registry: Registry): DeliveryMetrics {
  let m = byRegistry.get(registry);
  if (m) return m;
  const registers = [registry];
  const outcome = ["pool", "source_ip", "provider", "class"] as const;
  m = {
    delivered: new Counter({ name: "mailfleet_delivered_total", help: "Recipients delivered (2xx after DATA), by lane", labelNames: outcome, registers }),
    deferred: new Counter({ name: "mailfleet_deferred_total", help: "Recipients deferred for a later try, by lane and reply class", labelNames: outcome, registers }),
    bounced: new Counter({ name: "mailfleet_bounced_total", help: "Recipients bounced (permanent failure, rule, or expiry), by lane and reply class", labelNames: outcome, registers }),
    latency: new Histogram({
      name: "mailfleet_delivery_latency_seconds",
      help: "Time from acceptance to delivery, per delivered part",
      labelNames: ["pool", "provider"],
      buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400, 5 * 86_400],
      registers,
    }),
    connections: new Gauge({ name: "mailfleet_lane_connections", help: "SMTP connections open per lane", labelNames: ["pool", "source_ip", "provider"], registers }),
    ruleActivations: new Counter({
      name: "mailfleet_rule_activations_total",
      help: "Provider response rules fired, by lane, rule and action",
      labelNames: ["pool", "source_ip", "provider", "rule", "action"],
      registers,
    }),
    queueDepth: new Gauge({ name: "mailfleet_queue_depth", help: "Parts waiting or in flight in a ready queue", labelNames: ["pool", "provider"], registers }),
    queueOldest: new Gauge({ name: "mailfleet_queue_oldest_age_seconds", help: "How long the oldest waiting part of a ready queue has been in it", labelNames: ["pool", "provider"], registers }),
    scheduled: new Gauge({ name: "mailfleet_queue_scheduled", help: "Deferred parts waiting for their next try", labelNames: ["pool"], registers }),
    routed: new Counter({ name: "mailfleet_routed_total", help: "Route decisions per recipient domain: deliver, bounce, retry", labelNames: ["pool", "result"], registers }),
    complaints: new Counter({ name: "mailfleet_complaints_total", help: "Feedback-loop complaints (ARF), by lane", labelNames: ["pool", "source_ip", "provider"], registers }),
    inbound: new Counter({ name: "mailfleet_inbound_messages_total", help: "Messages taken by the inbound listener, by kind: dsn, arf, other, refused", labelNames: ["kind"], registers }),
    webhooks: new Counter({ name: "mailfleet_webhook_posts_total", help: "Webhook POSTs by result: ok, retry, failed", labelNames: ["pool", "result"], registers }),
    dsns: new Counter({ name: "mailfleet_dsn_sent_total", help: "Delivery status notifications queued to senders", labelNames: ["pool"], registers }),
  };
  byRegistry.set(registry, m);
  return m;
}
