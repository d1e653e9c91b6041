// Creates (or brings up to date) the JetStream streams, KV bucket and object store the relay uses;
// topology.ts names them. Every relay runs this at start and when the plan's delivery settings
// change; it is idempotent, and concurrent relays racing to create the same stream are fine (the
// loser finds it existing and compares).
//
//   MF_BODY    Limits, max age = delivery expiry + 1 day (a body outlives its last retry), discard
//              new (a full store refuses new mail with 452 instead of dropping old mail)
//   MF_QUEUE   WorkQueue; message schedules when the server has them (deferrals)
//   MF_EVENTS  Limits, 7 days
//   all three: atomic batch publish (group commit, see relay/accept/publisher.ts), duplicate
//              window = the plan's idempotency window (Nats-Msg-Id dedup of client retries)
//   mf-suppress  KV with per-key TTL (limit markers) when the server has it
//   mf-large     object store for bodies over the server's max payload
import {
  DiscardPolicy, RetentionPolicy, StorageType,
  type JetStreamManager, type StreamConfig, type StreamInfo,
} from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient } from "@nats-io/jetstream";
import { DEFAULT_DELIVERY } from "../../api/plan.ts";
import type { Logger } from "../runtime/logger.ts";
import { KV_SUPPRESSION, OBJECT_BUCKET_LARGE, STREAM_BODY, STREAM_EVENTS, STREAM_QUEUE } from "./topology.ts";

const DAY_MS = 86_400_000;

export interface ServerFeatures {
  version: string;
  /** 2.11: per-message TTL, KV limit markers. */
  msgTtl: boolean;
  /** 2.12: atomic batch publish, message schedules. */
  atomicBatch: boolean;
  msgSchedules: boolean;
}

function parseVersion(v: string): [number, number, number] {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
}
function atLeast(v: string, major: number, minor: number): boolean {
  const [a, b] = parseVersion(v);
  return a > major || (a === major && b >= minor);
}

export function serverFeatures(nc: NatsConnection): ServerFeatures {
  const version = nc.info?.version ?? "0.0.0";
  return { version, msgTtl: atLeast(version, 2, 11), atomicBatch: atLeast(version, 2, 12), msgSchedules: atLeast(version, 2, 12) };
}

export interface StreamSettings {
  replicas: number;
  /** Plan delivery settings (expiry, idempotency window). */
  delivery?: { expiryMs: number; idempotencyWindowMs: number };
  features: ServerFeatures;
}

/** The desired stream configurations (pure, for tests and for the CLI's `describe`). */
export function desiredStreams(s: StreamSettings): Partial<StreamConfig>[] {
  const delivery = s.delivery ?? DEFAULT_DELIVERY;
  // The duplicate window may not exceed max age; 0 would mean the server default (2 min).
  const dupWindowMs = Math.max(1000, delivery.idempotencyWindowMs);
  const common = {
    storage: StorageType.File,
    num_replicas: s.replicas,
    duplicate_window: nanos(dupWindowMs),
    ...(s.features.atomicBatch ? { allow_atomic: true } : {}),
  };
  return [
    {
      ...common,
      name: STREAM_BODY,
      subjects: ["mf.body.>"],
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.New,
      max_age: nanos(delivery.expiryMs + DAY_MS),
      // Delivery reads bodies by subject with direct get (any replica answers).
      allow_direct: true,
    },
    {
      ...common,
      name: STREAM_QUEUE,
      subjects: ["mf.q.>"],
      retention: RetentionPolicy.Workqueue,
      // Message schedules forbid discard new; the queue has no limits, so nothing is ever dropped.
      discard: DiscardPolicy.Old,
      ...(s.features.msgSchedules ? { allow_msg_schedules: true } : {}),
    },
    {
      ...common,
      name: STREAM_EVENTS,
      subjects: ["mf.ev.>"],
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      max_age: nanos(7 * DAY_MS),
      // Events are records of what happened, not mail: none of them is promised to a client.
      // On one node they skip the per-message fsync of sync_interval: always (persist_mode
      // async, 2.12+: flushed in the background; a hard kill of nats-server can lose the last
      // few). Measured: events were one fsync in four of the fleet's (relay/README.md). Async
      // persistence excludes atomic batches. Replicated streams keep the default (quorum).
      ...(s.replicas === 1 && s.features.atomicBatch ? { persist_mode: "async", allow_atomic: undefined } : {}),
    } as Partial<StreamConfig>,
  ];
}

/** Whether a stream takes atomic batches (publishers check before batching). */
export function atomicStreams(s: StreamSettings): Set<string> {
  return new Set(desiredStreams(s).filter((c) => c.allow_atomic).map((c) => c.name!));
}

/** Fields we own on existing streams: changed in place when they differ (persist_mode cannot be). */
const MANAGED: (keyof StreamConfig)[] = ["max_age", "duplicate_window", "allow_atomic", "allow_msg_schedules", "allow_direct", "discard", "num_replicas"];

async function ensureStream(jsm: JetStreamManager, want: Partial<StreamConfig>, log: Logger): Promise<StreamInfo> {
  const name = want.name!;
  let info: StreamInfo | undefined;
  try {
    info = await jsm.streams.info(name);
  } catch (e) {
    if (!/stream not found/i.test((e as Error).message)) throw e;
  }
  if (!info) {
    try {
      const created = await jsm.streams.add({ ...want, name });
      log.info("stream created", { stream: name, replicas: want.num_replicas });
      return created;
    } catch (e) {
      // Another relay created it meanwhile: fall through to compare.
      if (!/already in use|exists/i.test((e as Error).message)) throw e;
      info = await jsm.streams.info(name);
    }
  }
  const cfg = info.config as unknown as Record<string, unknown>;
  const diff = MANAGED.filter((k) => want[k] !== undefined && cfg[k] !== want[k]);
  if (diff.length === 0) return info;
  const updated = await jsm.streams.update(name, { ...info.config, ...Object.fromEntries(diff.map((k) => [k, want[k]])) });
  log.info("stream updated", { stream: name, fields: diff });
  return updated;
}

export interface Stores {
  suppressKv: KV;
  large: ObjectStore;
}

export async function ensureStreams(
  nc: NatsConnection, js: JetStreamClient, jsm: JetStreamManager, s: StreamSettings, log: Logger,
): Promise<Stores> {
  for (const want of desiredStreams(s)) await ensureStream(jsm, want, log);
  const kvm = new Kvm(js);
  // Per-key TTL (limit markers) needs 2.11; older servers keep the expiry in the value only.
  const suppressKv = await kvm.create(KV_SUPPRESSION, {
    history: 1,
    replicas: s.replicas,
    storage: StorageType.File,
    ...(s.features.msgTtl ? { markerTTL: 60_000 } : {}),
  });
  const large = await new Objm(js).create(OBJECT_BUCKET_LARGE, {
    replicas: s.replicas,
    storage: StorageType.File,
    ttl: nanos((s.delivery ?? DEFAULT_DELIVERY).expiryMs + DAY_MS),
  });
  void nc;
  return { suppressKv, large };
}
