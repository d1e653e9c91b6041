// Where the fleet shaper keeps its state: the KV bucket `mf-shaper` (compare-and-set per key) and a
// core subject for rule broadcasts. An interface, so the limiter's logic runs in unit tests against
// an in-memory store (several "relays" sharing it, on a fake clock, with outages on demand).
//
// Every operation has a short timeout (default 1 s, not the client's 5 s): while the stream elects
// a leader, or the relay cannot reach NATS, the limiter must notice quickly, keep spending the slots
// it holds and, past a bound, fall back to its local share.
import { jetstream, StorageType, type JetStreamClient } from "@nats-io/jetstream";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { SHAPER_BUCKET } from "./keys.ts";

/** The store could not be reached or did not answer in time. */
export class StoreUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "StoreUnavailable";
  }
}

/** Compare-and-set lost: the key changed since the revision given. */
export class StoreConflict extends Error {
  constructor(key: string) {
    super(`${key}: revision changed`);
    this.name = "StoreConflict";
  }
}

export interface Stored {
  value: Uint8Array;
  rev: number;
}

export interface ShaperStore {
  /** The key's value and revision; null when absent. */
  get(key: string): Promise<Stored | null>;
  /** Writes when the key is still at `rev` (0: absent). Resolves to the new revision. */
  cas(key: string, value: Uint8Array, rev: number): Promise<number>;
  /** Core publish, best effort. */
  publish(subject: string, data: Uint8Array): void;
  subscribe(subject: string, cb: (data: Uint8Array) => void): () => void;
  /** Current values of the keys matching the filters, then every update (null: deleted). */
  watch(filters: string[], cb: (key: string, value: Uint8Array | null, rev: number) => void): () => void;
  close(): Promise<void>;
}

function unavailable(err: unknown, what: string): StoreUnavailable {
  return new StoreUnavailable(`${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

function isConflict(err: unknown): boolean {
  const e = err as { code?: number; message?: string };
  return e?.code === 10071 || /wrong last sequence/i.test(e?.message ?? "");
}

export interface NatsStoreOptions {
  /** Replicas of the bucket: 3 when the mail streams are R3. */
  replicas: number;
  timeoutMs?: number;
  /** How long start-up may wait for the bucket. Default 60 s. */
  startTimeoutMs?: number;
}

/** The shaper's store on NATS: KV `mf-shaper` plus core subjects, over the given connection. */
export class NatsShaperStore implements ShaperStore {
  readonly nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #timeout: number;
  #kv!: KV;
  readonly #subs = new Set<Subscription>();
  readonly #stops = new Set<() => void>();

  private constructor(nc: NatsConnection, timeoutMs: number) {
    this.nc = nc;
    this.#timeout = timeoutMs;
    this.#js = jetstream(nc, { timeout: timeoutMs });
  }

  /** Opens (creating when missing) the bucket. */
  static async open(nc: NatsConnection, o: NatsStoreOptions): Promise<NatsShaperStore> {
    const s = new NatsShaperStore(nc, o.timeoutMs ?? 1000);
    // Creating an R3 bucket may meet a leader election on a fresh cluster, or a busy one: longer
    // timeouts, and retries for a while, before a relay gives up starting.
    const kvm = new Kvm(jetstream(nc, { timeout: 10_000 }));
    const deadline = Date.now() + (o.startTimeoutMs ?? 60_000);
    for (;;) {
      try {
        await kvm.create(SHAPER_BUCKET, { history: 1, replicas: o.replicas, storage: StorageType.File });
        s.#kv = await new Kvm(s.#js).open(SHAPER_BUCKET);
        return s;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`shaper: KV bucket ${SHAPER_BUCKET} not available: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  get kv(): KV {
    return this.#kv;
  }

  async get(key: string): Promise<Stored | null> {
    let e: KvEntry | null;
    try {
      e = await this.#kv.get(key);
    } catch (err) {
      throw unavailable(err, `get ${key}`);
    }
    if (!e || e.operation !== "PUT" || e.value.length === 0) return e ? { value: new Uint8Array(), rev: e.revision } : null;
    return { value: e.value, rev: e.revision };
  }

  async cas(key: string, value: Uint8Array, rev: number): Promise<number> {
    try {
      const ack = await this.#js.publish(`$KV.${SHAPER_BUCKET}.${key}`, value, { expect: { lastSubjectSequence: rev }, timeout: this.#timeout, retries: 0 } as never);
      return ack.seq;
    } catch (err) {
      if (isConflict(err)) throw new StoreConflict(key);
      throw unavailable(err, `update ${key}`);
    }
  }

  publish(subject: string, data: Uint8Array): void {
    try {
      this.nc.publish(subject, data);
    } catch {
      // Closed or draining connection: the KV copy carries the change.
    }
  }

  subscribe(subject: string, cb: (data: Uint8Array) => void): () => void {
    const sub = this.nc.subscribe(subject, { callback: (err, msg) => { if (!err) cb(msg.data); } });
    this.#subs.add(sub);
    return () => {
      this.#subs.delete(sub);
      sub.unsubscribe();
    };
  }

  watch(filters: string[], cb: (key: string, value: Uint8Array | null, rev: number) => void): () => void {
    let stopped = false;
    let iter: { stop(): void } | undefined;
    // A watch is an ordered consumer; it resets itself after reconnects. Restart it if it ends.
    const run = async () => {
      while (!stopped) {
        try {
          const w = await this.#kv.watch({ key: filters });
          iter = w;
          for await (const e of w) cb(e.key, e.operation === "PUT" && e.value.length ? e.value : null, e.revision);
        } catch {
          // stream unavailable for now
        }
        if (!stopped) await new Promise((r) => setTimeout(r, 1000).unref());
      }
    };
    void run();
    const stop = () => {
      stopped = true;
      iter?.stop();
    };
    this.#stops.add(stop);
    return stop;
  }

  async close(): Promise<void> {
    for (const s of this.#subs) s.unsubscribe();
    this.#subs.clear();
    for (const stop of this.#stops) stop();
    this.#stops.clear();
  }
}

/**
 * An in-memory store shared by several clients, for unit tests: `client()` gives one relay's view;
 * a client can be cut off (every operation fails as NATS would) and reconnected.
 */
export class MemoryShaperStore {
  readonly data = new Map<string, Stored>();
  readonly #subs = new Map<string, Set<(d: Uint8Array) => void>>();
  readonly #watchers = new Set<{ filters: string[]; cb: (key: string, value: Uint8Array | null, rev: number) => void; client: MemoryClient }>();
  seq = 0;
  /** Operations per kind, like the server would count them. */
  ops = { get: 0, cas: 0, conflicts: 0, publish: 0 };
  /** When set, writes fail for every client (a leader election). */
  writesDown = false;

  client(): MemoryClient {
    return new MemoryClient(this);
  }

  _get(key: string): Stored | null {
    this.ops.get++;
    return this.data.get(key) ?? null;
  }

  _cas(key: string, value: Uint8Array, rev: number): number {
    this.ops.cas++;
    if (this.writesDown) throw new StoreUnavailable(`update ${key}: no leader`);
    const cur = this.data.get(key);
    if ((cur?.rev ?? 0) !== rev) {
      this.ops.conflicts++;
      throw new StoreConflict(key);
    }
    const next = ++this.seq;
    this.data.set(key, { value, rev: next });
    for (const w of this.#watchers) if (!w.client.down && w.filters.some((f) => matches(f, key))) w.cb(key, value, next);
    return next;
  }

  _publish(subject: string, data: Uint8Array): void {
    this.ops.publish++;
    for (const cb of this.#subs.get(subject) ?? []) cb(data);
  }

  _subscribe(subject: string, cb: (d: Uint8Array) => void): () => void {
    const set = this.#subs.get(subject) ?? new Set();
    this.#subs.set(subject, set);
    set.add(cb);
    return () => set.delete(cb);
  }

  _watch(client: MemoryClient, filters: string[], cb: (key: string, value: Uint8Array | null, rev: number) => void): () => void {
    const w = { filters, cb, client };
    this.#watchers.add(w);
    for (const [k, v] of this.data) if (filters.some((f) => matches(f, k))) cb(k, v.value, v.rev);
    return () => this.#watchers.delete(w);
  }
}

function matches(filter: string, key: string): boolean {
  const f = filter.split(".");
  const k = key.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return k.length > i;
    if (i >= k.length) return false;
    if (f[i] !== "*" && f[i] !== k[i]) return false;
  }
  return f.length === k.length;
}

export class MemoryClient implements ShaperStore {
  readonly #m: MemoryShaperStore;
  /** Cut off from "NATS": every operation fails. */
  down = false;
  /** KV requests fail (they time out), core subjects still flow: a stream without a leader for this client. */
  kvDown = false;
  #unsubs = new Set<() => void>();
  constructor(m: MemoryShaperStore) {
    this.#m = m;
  }
  async get(key: string): Promise<Stored | null> {
    if (this.down || this.kvDown) throw new StoreUnavailable(`get ${key}: disconnected`);
    return this.#m._get(key);
  }
  async cas(key: string, value: Uint8Array, rev: number): Promise<number> {
    if (this.down || this.kvDown) throw new StoreUnavailable(`update ${key}: disconnected`);
    return this.#m._cas(key, value, rev);
  }
  publish(subject: string, data: Uint8Array): void {
    if (!this.down) this.#m._publish(subject, data);
  }
  subscribe(subject: string, cb: (data: Uint8Array) => void): () => void {
    const u = this.#m._subscribe(subject, (d) => { if (!this.down) cb(d); });
    this.#unsubs.add(u);
    return u;
  }
  watch(filters: string[], cb: (key: string, value: Uint8Array | null, rev: number) => void): () => void {
    const u = this.#m._watch(this, filters, cb);
    this.#unsubs.add(u);
    return u;
  }
  async close(): Promise<void> {
    for (const u of this.#unsubs) u();
  }
}
