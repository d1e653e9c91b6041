// Shaper metrics. Labels are bounded by the plan: pool, source_ip, provider, rule names, states.
import { Counter, Gauge, type Registry } from "prom-client";

export const LANE_STATE_NAMES = ["Healthy", "Throttled", "Suspended", "Blocked", "Paused", "QuotaHeld"] as const;
export type LaneStateName = (typeof LANE_STATE_NAMES)[number];

export interface ShaperMetrics {
  ruleActive: Gauge<"pool" | "source_ip" | "provider" | "rule">;
  ruleUntil: Gauge<"pool" | "source_ip" | "provider" | "rule">;
  laneState: Gauge<"pool" | "source_ip" | "provider" | "state">;
  factor: Gauge<"pool" | "source_ip" | "provider">;
  relays: Gauge<"pool" | "source_ip" | "provider">;
  reservations: Counter<"pool" | "source_ip" | "provider" | "result">;
  slots: Counter<"pool" | "source_ip" | "provider" | "outcome">;
  storeOps: Counter<"op" | "result">;
  fallback: Gauge;
}

const byRegistry = new WeakMap<Registry, ShaperMetrics>();

export function shaperMetrics(registry: Registry): ShaperMetrics {
  let m = byRegistry.get(registry);
  if (m) return m;
  const registers = [registry];
  const lane = ["pool", "source_ip", "provider"] as const;
  m = {
    ruleActive: new Gauge({
      name: "mailfleet_shaper_rule_active",
      help: "1 while a response rule holds a lane (suspension, slow-down or connection cap, until fully recovered)",
      labelNames: [...lane, "rule"], registers,
    }),
    ruleUntil: new Gauge({
      name: "mailfleet_shaper_rule_until_timestamp_seconds",
      help: "When the response rule in force on a lane ends (recovery starts then)",
      labelNames: [...lane, "rule"], registers,
    }),
    laneState: new Gauge({
      name: "mailfleet_lane_state",
      help: "1 for the lane's current state as this relay enforces it (Healthy, Throttled, Suspended, Blocked, Paused, QuotaHeld), 0 for the others",
      labelNames: [...lane, "state"], registers,
    }),
    factor: new Gauge({ name: "mailfleet_shaper_lane_factor", help: "Rate multiplier in force on a lane (response rules and recovery), 1 = full rate", labelNames: lane, registers }),
    relays: new Gauge({ name: "mailfleet_shaper_lane_relays", help: "Relays sharing a lane's limits (live entries on its key)", labelNames: lane, registers }),
    reservations: new Counter({
      name: "mailfleet_shaper_reservations_total",
      help: "Send-slot reservations by result: ok (fleet KV), empty (nothing free yet), local (local share while NATS was unreachable), failed",
      labelNames: [...lane, "result"], registers,
    }),
    slots: new Counter({
      name: "mailfleet_shaper_slots_total",
      help: "Send slots by outcome: reserved, spent, missed (grace passed before delivery took it), late (delivery came after its grace: not sent), dropped (suspension, slow-down, unmatched provider/address capacity)",
      labelNames: [...lane, "outcome"], registers,
    }),
    storeOps: new Counter({ name: "mailfleet_shaper_store_operations_total", help: "Shaper KV operations by kind and result (ok, conflict, unavailable)", labelNames: ["op", "result"], registers }),
    fallback: new Gauge({ name: "mailfleet_shaper_local_share", help: "1 while this relay shapes on its local share of each limit (NATS unreachable), else 0", registers }),
  };
  byRegistry.set(registry, m);
  return m;
}
