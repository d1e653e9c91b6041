// The runtime context handed to every relay component: configuration, logging, metrics, the NATS
// handles, the plan in force, and the clock. Components get everything they need from here, so
// tests can build a context around a harness NATS server and drive one component alone.
import type { NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { ObjectStore } from "@nats-io/obj";
import type { Registry } from "prom-client";
import type { RelayConfig } from "../config.ts";
import type { PlanHolder } from "../plan/watcher.ts";
import type { PlanIndex } from "../plan/index.ts";
import type { ServerFeatures } from "../queue/streams.ts";
import type { Logger } from "./logger.ts";
import type { Keyring } from "../accept/dkim.ts";

export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };

export interface RelayContext {
  config: RelayConfig;
  log: Logger;
  registry: Registry;
  clock: Clock;
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** KV `mf-suppress` (relay/suppression wraps it). */
  suppressKv: KV;
  /** Object store `mf-large` for bodies over the stream's payload limit. */
  large: ObjectStore;
  /** What the connected server supports (atomic batches, per-message TTL, schedules). */
  features: ServerFeatures;
  /** The pool's mounted Secret (DKIM keys, unsubscribe keys): one per relay, for every component that signs. */
  keyring: Keyring;
  /** Largest message the server takes (its max_payload), for the body-or-object decision. */
  maxPayload: number;
  planHolder: PlanHolder;
  /** The plan in force (undefined until the first good plan arrives). */
  plan(): PlanIndex | undefined;
  /** True while NATS is connected (status events). */
  natsConnected(): boolean;
  /** Set when the relay is draining (SIGTERM): stop taking new work. */
  draining(): boolean;
}

/**
 * A relay component: its own folder, started in the order main lists them and stopped in reverse.
 * `quiesce` (optional) is the first phase of a drain: stop taking new work (new SMTP connections
 * get 421) while work in flight finishes; `stop` then waits for that and releases everything.
 */
export interface Component {
  readonly name: string;
  start(ctx: RelayContext): Promise<void>;
  quiesce?(): Promise<void> | void;
  stop(): Promise<void>;
}
