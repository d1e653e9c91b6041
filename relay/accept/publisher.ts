// Group commit into JetStream.
//
// With `sync_interval: always` nats-server fsyncs every stored message: measured with strace on the
// bench machine, N single publishes to a file stream cost N fsyncs (4,000 publishes, 4,000 fsync
// calls; ~1.6 ms each, ~600 msg/s per stream, no better with 20 publishes in flight). An atomic
// batch (nats-server 2.12+, `allow_atomic`) is staged and then committed with one flush: 4,000
// messages in batches of 200 took 82 fsyncs. A batch has a fixed cost of its own (the server stages
// it in a per-batch store: ~18 ms here, and about four fsyncs of its own), so a batch pays off
// from about five messages on.
//
// So each stream gets a batcher: a publish joins the queue; whenever fewer than `maxInflight`
// commits are in flight, everything queued goes out at once — one atomic batch when there are at
// least `minBatch` messages, otherwise as single publishes. Under load, messages that arrive while
// a commit is in flight share the next one (classic group commit: no timer, no added latency when
// idle). Figures and the chosen thresholds: relay/README.md.
//
// Errors: a batch with a message whose Nats-Msg-Id the stream has already seen (a client retrying
// after a lost 250) is refused whole by the server; its messages are then published one by one,
// so the duplicate gets its PubAck with `duplicate: true` and the others are stored.
import { headers as natsHeaders, nuid, type NatsConnection } from "@nats-io/transport-node";
import type { JetStreamClient } from "@nats-io/jetstream";
import { Histogram, type Registry } from "prom-client";

export interface StoredAck {
  stream: string;
  seq: number;
  duplicate: boolean;
}

interface Item {
  subject: string;
  data: Uint8Array;
  msgId?: string;
  resolve(a: StoredAck): void;
  reject(e: Error): void;
}

export interface BatcherOptions {
  /** Use atomic batches (server and stream support them). */
  atomic: boolean;
  /** Smallest group sent as an atomic batch; smaller ones go as single publishes. */
  minBatch?: number;
  /** Largest batch (the server's limit is 1,000 messages including the commit). */
  maxBatch?: number;
  maxBatchBytes?: number;
  /** Commits in flight per stream (the server allows 50 open batches per stream). */
  maxInflight?: number;
  timeoutMs?: number;
}

export class PublishError extends Error {
  readonly code: number | undefined;
  constructor(message: string, code?: number) {
    super(message);
    this.name = "PublishError";
    this.code = code;
  }
}

interface ApiReply {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  count?: number;
  error?: { code: number; err_code?: number; description: string };
}

export class StreamBatcher {
  readonly stream: string;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #o: Required<BatcherOptions>;
  readonly #queue: Item[] = [];
  #inflight = 0;
  readonly #sizes: Histogram | undefined;

  constructor(nc: NatsConnection, js: JetStreamClient, stream: string, o: BatcherOptions, sizes?: Histogram) {
    this.stream = stream;
    this.#nc = nc;
    this.#js = js;
    this.#o = { minBatch: 5, maxBatch: 999, maxBatchBytes: 16 * 1024 * 1024, maxInflight: 1, timeoutMs: 10_000, ...o };
    this.#sizes = sizes;
  }

  publish(subject: string, data: Uint8Array, msgId?: string): Promise<StoredAck> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ subject, data, msgId, resolve, reject });
      this.#pump();
    });
  }

  /** Queues several messages at once, so they can share one commit. */
  publishAll(items: { subject: string; data: Uint8Array; msgId?: string }[]): Promise<StoredAck>[] {
    const out = items.map((i) => new Promise<StoredAck>((resolve, reject) => this.#queue.push({ ...i, resolve, reject })));
    this.#pump();
    return out;
  }

  /** Messages queued or in flight. */
  pending(): number {
    return this.#queue.length + this.#inflight;
  }

  #pump(): void {
    while (this.#queue.length > 0 && this.#inflight < this.#o.maxInflight) {
      const group: Item[] = [];
      let bytes = 0;
      while (this.#queue.length > 0 && group.length < this.#o.maxBatch) {
        const next = this.#queue[0]!;
        if (group.length > 0 && bytes + next.data.length > this.#o.maxBatchBytes) break;
        group.push(this.#queue.shift()!);
        bytes += next.data.length;
      }
      this.#inflight++;
      this.#sizes?.observe({ stream: this.stream }, group.length);
      const run = this.#o.atomic && group.length >= this.#o.minBatch ? this.#batch(group) : this.#singles(group);
      run.finally(() => {
        this.#inflight--;
        this.#pump();
      });
    }
  }

  async #singles(group: Item[]): Promise<void> {
    await Promise.all(group.map(async (it) => {
      try {
        const pa = await this.#js.publish(it.subject, it.data, { timeout: this.#o.timeoutMs, ...(it.msgId ? { msgID: it.msgId } : {}) });
        it.resolve({ stream: pa.stream, seq: pa.seq, duplicate: Boolean(pa.duplicate) });
      } catch (e) {
        it.reject(new PublishError(`publish to ${this.stream}: ${(e as Error).message}`));
      }
    }));
  }

  async #batch(group: Item[]): Promise<void> {
    const id = nuid.next();
    let reply: ApiReply;
    try {
      for (let i = 0; i < group.length; i++) {
        const it = group[i]!;
        const h = natsHeaders();
        h.set("Nats-Batch-Id", id);
        h.set("Nats-Batch-Sequence", String(i + 1));
        if (it.msgId) h.set("Nats-Msg-Id", it.msgId);
        if (i < group.length - 1) {
          this.#nc.publish(it.subject, it.data, { headers: h });
        } else {
          h.set("Nats-Batch-Commit", "1");
          const m = await this.#nc.request(it.subject, it.data, { headers: h, timeout: this.#o.timeoutMs });
          reply = m.data.length ? (m.json() as ApiReply) : {};
        }
      }
    } catch (e) {
      const err = new PublishError(`batch publish to ${this.stream}: ${(e as Error).message}`);
      for (const it of group) it.reject(err);
      return;
    }
    const r = reply!;
    if (r.error) {
      // 10201 too many inflight batches; duplicates and anything else per message: one by one.
      return this.#singles(group);
    }
    const last = r.seq ?? 0;
    group.forEach((it, i) => it.resolve({ stream: r.stream ?? this.stream, seq: last - (group.length - 1 - i), duplicate: false }));
  }
}

/** One batcher per stream, with shared metrics. */
export class Publisher {
  readonly #batchers = new Map<string, StreamBatcher>();
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #opts: (stream: string) => BatcherOptions;
  readonly #sizes: Histogram;

  constructor(nc: NatsConnection, js: JetStreamClient, opts: (stream: string) => BatcherOptions, registry: Registry) {
    this.#nc = nc;
    this.#js = js;
    this.#opts = opts;
    this.#sizes = new Histogram({
      name: "mailfleet_relay_commit_group_size", help: "Messages per JetStream commit (group commit)", labelNames: ["stream"],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000], registers: [registry],
    });
  }

  for(stream: string): StreamBatcher {
    let b = this.#batchers.get(stream);
    if (!b) {
      b = new StreamBatcher(this.#nc, this.#js, stream, this.#opts(stream), this.#sizes);
      this.#batchers.set(stream, b);
    }
    return b;
  }

  pending(): number {
    let n = 0;
    for (const b of this.#batchers.values()) n += b.pending();
    return n;
  }
}
