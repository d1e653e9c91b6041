// The relay's NATS connection: reconnect forever (the client's default gives up after 10 tries, so
// a 20-second NATS rolling restart would leave a relay that never reconnects), with connectivity
// tracked for /readyz, the 452 decision and a gauge.
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { Gauge, type Registry } from "prom-client";
import { readFileSync } from "node:fs";

import type { RelayConfig } from "../config.ts";
import type { Logger } from "./logger.ts";

export interface RelayNats {
  nc: NatsConnection;
  connected(): boolean;
}

export async function connectNats(config: RelayConfig, log: Logger, registry: Registry): Promise<RelayNats> {
  const gauge = new Gauge({ name: "mailfleet_relay_nats_connected", help: "1 while the relay is connected to NATS", registers: [registry] });
  const nc = await connect({
    servers: config.MAILFLEET_NATS_URL,
    name: `mailfleet-relay ${config.MAILFLEET_RELAY_ID}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
    // Keep trying the first connect too: NATS may start after the relay.
    waitOnFirstConnect: true,
    pingInterval: 10_000,
    maxPingOut: 3,
    // nats.js otherwise builds an Error (a stack trace) for every request and publish to report
    // async stacks: 16% of the delivery side's CPU in a profile (relay/DELIVERY.md), and the
    // RequestError/TimeoutError frames in acceptance's.
    noAsyncTraces: true,
    ...(config.MAILFLEET_NATS_CREDS ? { authenticator: credsAuthenticator(readFileSync(config.MAILFLEET_NATS_CREDS)) } : {}),
  });
  let up = true;
  gauge.set(1);
  log.info("nats connected", { server: nc.getServer(), version: nc.info?.version });
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") { up = false; gauge.set(0); log.warn("nats disconnected", { server: s.server }); }
      else if (s.type === "reconnect") { up = true; gauge.set(1); log.info("nats reconnected", { server: s.server }); }
      else if (s.type === "staleConnection") { up = false; gauge.set(0); }
    }
  })().catch(() => {});
  nc.closed().then(() => { up = false; gauge.set(0); }).catch(() => {});
  return { nc, connected: () => up && !nc.isClosed() };
}
