// The shaper as a relay component: builds the lane limiter delivery uses. MAILFLEET_SHAPER=fleet
// (the default) shares every lane's limits across the fleet over NATS (fleet.ts); =local keeps them
// per relay in memory (local.ts: tests, development, a single relay).
//
// The fleet shaper gets its own NATS connection: its messages are few and latency-sensitive (a
// suspension must reach every relay within a second) and must not queue behind bulk mail on the
// relay's main connection; and the server then counts shaping traffic on its own (/connz).
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { readFileSync } from "node:fs";
import type { Component, RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { deliveryMetrics } from "../delivery/metrics.ts";
import { laneId, type LaneLimiter } from "./types.ts";
import { LocalLaneLimiter } from "./local.ts";
import { FleetLaneLimiter } from "./fleet.ts";
import { NatsShaperStore } from "./store.ts";

/** The name the shaper's NATS connection carries (the benchmark counts its traffic by it). */
export function shaperConnectionName(relayId: string): string {
  return `mailfleet-relay ${relayId} shaper`;
}

export class Shaper implements Component {
  readonly name = "shaper";
  #limiter?: LaneLimiter;
  #nc?: NatsConnection;
  #store?: NatsShaperStore;
  #log?: Logger;

  /** The limiter (after start). Delivery takes it through `limiter: () => shaper.limiter`. */
  get limiter(): LaneLimiter {
    if (!this.#limiter) throw new Error("shaper: not started");
    return this.#limiter;
  }

  async start(ctx: RelayContext): Promise<void> {
    const cfg = ctx.config;
    const log = (this.#log = ctx.log.child("shaper"));
    if (cfg.MAILFLEET_SHAPER === "local") {
      const metrics = deliveryMetrics(ctx.registry);
      this.#limiter = new LocalLaneLimiter({
        onRule: (a) => {
          metrics.ruleActivations.inc({ pool: a.lane.pool, source_ip: a.lane.address, provider: a.lane.provider, rule: a.rule.name, action: a.rule.action });
          log.info("response rule fired", { lane: laneId(a.lane), rule: a.rule.name, action: a.rule.action, reply: a.reply.slice(0, 200) });
        },
      });
      log.info("lane limits per relay (MAILFLEET_SHAPER=local)");
      return;
    }
    this.#nc = await connect({
      servers: cfg.MAILFLEET_NATS_URL,
      name: shaperConnectionName(cfg.MAILFLEET_RELAY_ID),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      waitOnFirstConnect: true,
      // A dead server must be noticed in seconds: the limiter falls back on its own timeouts, but a
      // quick reconnect keeps it on the fleet's limits.
      pingInterval: 5000,
      maxPingOut: 2,
      ...(cfg.MAILFLEET_NATS_CREDS ? { authenticator: credsAuthenticator(readFileSync(cfg.MAILFLEET_NATS_CREDS)) } : {}),
    });
    this.#store = await NatsShaperStore.open(this.#nc, { replicas: cfg.MAILFLEET_STREAM_REPLICAS });
    this.#limiter = new FleetLaneLimiter({
      store: this.#store,
      relayId: cfg.MAILFLEET_RELAY_ID,
      pool: cfg.MAILFLEET_POOL,
      now: () => ctx.clock.now(),
      registry: ctx.registry,
      log,
    });
    log.info("lane limits shared by the fleet (KV mf-shaper)", { replicas: cfg.MAILFLEET_STREAM_REPLICAS });
  }

  async stop(): Promise<void> {
    // Delivery closes the limiter (giving slots and connection allowances back) before this runs.
    await this.#limiter?.close().catch(() => {});
    await this.#store?.close().catch(() => {});
    if (this.#nc) {
      try {
        await this.#nc.drain();
      } catch {
        await this.#nc.close().catch(() => {});
      }
    }
    this.#log?.debug("shaper stopped");
  }
}
