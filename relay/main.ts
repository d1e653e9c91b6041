// The relay process: `node relay/main.ts`. Reads its environment (config.ts), connects to NATS,
// makes sure the streams exist, watches the fleet plan, and starts the components listed below in
// order. SIGTERM drains: stop accepting (new SMTP connections get 421 4.3.2), let transactions in
// flight finish, stop components in reverse order, close NATS, exit 0.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Counter, Registry, collectDefaultMetrics } from "prom-client";
import { loadRelayConfig, type RelayConfig } from "./config.ts";
import { Acceptor } from "./accept/acceptor.ts";
import { Keyring } from "./accept/dkim.ts";
import { HttpServer } from "./http/server.ts";
import { PlanHolder, PlanWatcher } from "./plan/watcher.ts";
import { SubmissionServer } from "./submission/server.ts";
import { ensureStreams, serverFeatures } from "./queue/streams.ts";
import { systemClock, type Clock, type Component, type RelayContext } from "./runtime/context.ts";
import { createLogger, type Logger } from "./runtime/logger.ts";
import { connectNats } from "./runtime/nats.ts";
import { RouteStage } from "./routing/stage.ts";
import { Delivery } from "./delivery/service.ts";
import { QueueMetrics } from "./delivery/queue-metrics.ts";
import { Shaper } from "./shaper/component.ts";
import { InboundServer } from "./inbound/server.ts";
import { WebhookDispatcher } from "./webhooks/dispatcher.ts";

/**
 * The relay's components, started in this order and stopped in reverse. Acceptance comes before
 * the listeners that feed it; delivery-side components go after the plan watcher.
 */
export function components(): Component[] {
  // The lane limiter delivery asks: fleet-wide over NATS, or per relay (MAILFLEET_SHAPER=local).
  const shaper = new Shaper();
  // Acceptance (relay/accept) feeds the queues; its listeners come last so they stop first.
  const acceptor = new Acceptor();
  return [
    new PlanWatcher(),
    acceptor,
    // Delivery side (relay/DELIVERY.md): route stage, lane scheduler, queue metrics, inbound
    // listener for bounces and feedback reports (MAILFLEET_INBOUND_PORT, 0 = none), webhooks.
    new RouteStage(),
    shaper,
    new Delivery({ limiter: () => shaper.limiter }),
    new QueueMetrics(),
    new InboundServer(),
    new WebhookDispatcher(),
    new SubmissionServer(acceptor, { earlyTalkerDelay: false }),
    new HttpServer(acceptor),
  ];
}

export interface Relay {
  ctx: RelayContext;
  /** Drain and stop (what SIGTERM does); resolves when everything is closed. */
  shutdown(reason?: string): Promise<void>;
}

export async function startRelay(opts: { config?: RelayConfig; log?: Logger; clock?: Clock; components?: Component[] } = {}): Promise<Relay> {
  const config = opts.config ?? loadRelayConfig();
  const log = opts.log ?? createLogger({ level: config.MAILFLEET_LOG_LEVEL }, { relay: config.MAILFLEET_RELAY_ID, pool: config.MAILFLEET_POOL });
  const clock = opts.clock ?? systemClock;
  const registry = new Registry();
  registry.setDefaultLabels({ pool: config.MAILFLEET_POOL });
  collectDefaultMetrics({ register: registry, prefix: "mailfleet_relay_process_" });
  const planErrors = new Counter({ name: "mailfleet_relay_plan_rejected_total", help: "Plan values rejected (the last good plan stayed in force)", registers: [registry] });

  const nats = await connectNats(config, log.child("nats"), registry);
  const nc = nats.nc;
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const features = serverFeatures(nc);
  const streamLog = log.child("streams");
  const stores = await ensureStreams(nc, js, jsm, { replicas: config.MAILFLEET_STREAM_REPLICAS, features }, streamLog);

  const planHolder = new PlanHolder(config.MAILFLEET_POOL, log.child("plan"), planErrors);
  let draining = false;
  const keyring = new Keyring(config.MAILFLEET_SECRETS_DIR, log.child("keyring"));
  const ctx: RelayContext = {
    config, log, registry, clock, nc, js, jsm, features, keyring,
    suppressKv: stores.suppressKv,
    large: stores.large,
    maxPayload: nc.info?.max_payload ?? 1024 * 1024,
    planHolder,
    plan: () => planHolder.current(),
    natsConnected: nats.connected,
    draining: () => draining,
  };

  // Stream settings follow the plan's delivery expiry and idempotency window.
  let applied = "";
  planHolder.on("change", (next) => {
    const d = next.plan.delivery;
    const key = `${d.expiryMs}/${d.idempotencyWindowMs}`;
    if (key === applied) return;
    applied = key;
    ensureStreams(nc, js, jsm, { replicas: config.MAILFLEET_STREAM_REPLICAS, features, delivery: d }, streamLog)
      .catch((e) => { applied = ""; streamLog.error("stream settings not applied", { error: e }); });
  });

  const list = opts.components ?? components();
  const started: Component[] = [];
  const stopAll = async () => {
    for (const c of [...started].reverse()) {
      try { await c.stop(); } catch (e) { log.error("component stop failed", { component: c.name, error: e }); }
    }
    started.length = 0;
  };
  try {
    for (const c of list) {
      await c.start(ctx);
      started.push(c);
      log.debug("component started", { component: c.name });
    }
  } catch (e) {
    await stopAll();
    keyring.close();
    await nc.close();
    throw e;
  }
  log.info("relay started", { components: list.map((c) => c.name), nats: features.version, replicas: config.MAILFLEET_STREAM_REPLICAS });

  let done: Promise<void> | undefined;
  const shutdown = (reason = "shutdown"): Promise<void> => {
    done ??= (async () => {
      draining = true;
      log.info("draining", { reason });
      // Phase 1: every component stops taking new work at once.
      await Promise.all(started.map(async (c) => {
        try { await c.quiesce?.(); } catch (e) { log.error("component quiesce failed", { component: c.name, error: e }); }
      }));
      // Phase 2: stop in reverse order (listeners first, then what they feed).
      await stopAll();
      keyring.close();
      try { await nc.drain(); } catch { await nc.close().catch(() => {}); }
      log.info("relay stopped", { reason });
    })();
    return done;
  };
  return { ctx, shutdown };
}

async function main(): Promise<void> {
  let relay: Relay;
  try {
    relay = await startRelay();
  } catch (e) {
    process.stderr.write(`mailfleet relay: ${(e as Error).message}\n`);
    process.exit(1);
  }
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) process.exit(1); // a second signal: stop now
    // Kubernetes' grace period is 30 s by default; leave a margin and never hang past it.
    const hard = setTimeout(() => process.exit(1), 25_000);
    hard.unref();
    relay.shutdown(sig).then(() => process.exit(0), () => process.exit(1));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

if (import.meta.main) await main();
