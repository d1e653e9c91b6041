// The operator's side of NATS: the plan bucket (created when missing: history 5, file storage,
// replicas as configured), reading the plan in force at start, publishing a new one (gzip of the
// JSON; relays tell gzip from plain JSON by its magic bytes), and deleting a pool's durable
// consumers when the pool goes (IPPool finalizer).
import { readFileSync } from "node:fs";
import { gunzipSync, gzipSync } from "node:zlib";
import { jetstreamManager, type JetStreamManager, StorageType } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import { type NatsConnection, connect, credsAuthenticator } from "@nats-io/transport-node";
import { PLAN_BUCKET, PLAN_KEY, type Plan, parsePlan } from "../../api/plan.ts";
import { STREAM_QUEUE, consumers, token } from "../../relay/queue/topology.ts";
import type { Logger } from "../runtime/log.ts";

export function encodePlan(plan: Plan): Uint8Array {
  return gzipSync(Buffer.from(JSON.stringify(plan)));
}

export function decodePlan(value: Uint8Array): Plan {
  const bytes = value[0] === 0x1f && value[1] === 0x8b ? gunzipSync(value) : Buffer.from(value);
  return parsePlan(JSON.parse(bytes.toString("utf8")));
}

/** NATS may be down for long: no operation waits longer than this (the controller retries). */
const OP_TIMEOUT_MS = 15_000;

function timeout<T>(p: Promise<T>, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(`NATS: ${what} did not finish within ${OP_TIMEOUT_MS / 1000} s (is NATS reachable?)`)), OP_TIMEOUT_MS);
      t.unref();
    }),
  ]).finally(() => clearTimeout(t));
}

export class PlanStore {
  private readonly servers: string[];
  private readonly creds: string | undefined;
  private readonly replicas: number;
  private readonly log: Logger;
  private nc: NatsConnection | undefined;
  private connecting: Promise<NatsConnection> | undefined;
  private kv: KV | undefined;
  private jsm: JetStreamManager | undefined;
  /** Connected now (mailfleet_operator_nats_connected): set on connect and reconnect, cleared on disconnect. */
  private up = false;

  constructor(o: { servers: string[]; creds?: string; replicas: number; log: Logger }) {
    this.servers = o.servers;
    this.creds = o.creds;
    this.replicas = o.replicas;
    this.log = o.log.child({ component: "nats" });
  }

  /** Connects once; the client then reconnects forever on its own. */
  private conn(): Promise<NatsConnection> {
    if (this.nc && !this.nc.isClosed()) return Promise.resolve(this.nc);
    if (!this.connecting) {
      this.connecting = connect({
        servers: this.servers,
        name: "mailfleet-operator",
        maxReconnectAttempts: -1,
        reconnectTimeWait: 1000,
        waitOnFirstConnect: true,
        ...(this.creds ? { authenticator: credsAuthenticator(readFileSync(this.creds)) } : {}),
      }).then((nc) => {
        this.nc = nc;
        this.up = true;
        this.log.info("connected to NATS", { server: nc.getServer() });
        (async () => {
          for await (const s of nc.status()) {
            if (s.type === "disconnect") {
              this.up = false;
              this.log.warn("NATS disconnected", { server: s.server });
            } else if (s.type === "reconnect") {
              this.up = true;
              this.log.info("NATS reconnected", { server: s.server });
            }
          }
        })().catch(() => {});
        void nc.closed().then(() => { this.up = false; });
        return nc;
      }).finally(() => {
        this.connecting = undefined;
      });
    }
    return this.connecting;
  }

  /** The operator's NATS connection (shared with the warm-up counters). */
  connection(): Promise<NatsConnection> {
    return timeout(this.conn(), "connecting");
  }

  /**
   * Connects in the background (every replica, leader or not: a standby that cannot reach NATS
   * could not publish the plan once it leads, and its gauge says so before then).
   */
  start(): void {
    this.conn().catch((err: Error) => this.log.warn("cannot connect to NATS yet", { error: err.message }));
  }

  /** Whether the connection is up now. */
  connected(): boolean {
    return this.up && Boolean(this.nc) && !this.nc!.isClosed();
  }

  private async manager(): Promise<JetStreamManager> {
    if (!this.jsm) this.jsm = await jetstreamManager(await this.conn(), { timeout: 10_000 });
    return this.jsm;
  }

  private async bucket(): Promise<KV> {
    if (this.kv) return this.kv;
    const jsm = await this.manager();
    const kvm = new Kvm(jsm.jetstream());
    // create() opens the bucket when it exists.
    this.kv = await kvm.create(PLAN_BUCKET, { history: 5, storage: StorageType.File, replicas: this.replicas });
    return this.kv;
  }

  /** The plan in force, or null when none was published (or what is there cannot be read). */
  async read(): Promise<Plan | null> {
    const e = await timeout(this.bucket().then((kv) => kv.get(PLAN_KEY)), "reading the plan");
    if (!e || !e.value?.length || e.operation !== "PUT") return null;
    try {
      return decodePlan(e.value);
    } catch (err) {
      this.log.warn("the plan in KV cannot be read; it will be replaced", { error: (err as Error).message });
      return null;
    }
  }

  /** Publishes a plan; returns its compressed size. */
  async publish(plan: Plan): Promise<number> {
    const value = encodePlan(plan);
    await timeout(this.bucket().then((kv) => kv.put(PLAN_KEY, value)), "publishing the plan");
    return value.length;
  }

  /** Deletes the durable consumers relays made for a pool; how many. No stream: nothing to do. */
  async deletePoolConsumers(poolId: string): Promise<number> {
    const jsm = await timeout(this.manager(), "connecting");
    // By filter subject, not by name: subject tokens are dot-separated and cannot be confused,
    // while "ready-<pool>-<provider>" names of pools "a" and "a-b" can.
    const prefix = `mf.q.${token(poolId)}.`;
    const names: string[] = [];
    try {
      for await (const c of jsm.consumers.list(STREAM_QUEUE)) {
        const subjects = [c.config.filter_subject, ...(c.config.filter_subjects ?? [])].filter((x): x is string => Boolean(x));
        if (c.name === consumers.route(poolId) || (subjects.length && subjects.every((x) => x.startsWith(prefix)))) names.push(c.name);
      }
    } catch (err) {
      if (/stream not found/i.test((err as Error).message)) return 0;
      throw err;
    }
    let n = 0;
    for (const name of names) {
      await jsm.consumers.delete(STREAM_QUEUE, name);
      n++;
    }
    return n;
  }

  async close(): Promise<void> {
    await this.nc?.drain().catch(() => {});
  }
}
