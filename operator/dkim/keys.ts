// DKIM keys with node:crypto: PKCS#8 PEM private keys and the p= value of their DNS record.
// Private keys never leave this module except into Secrets (never logs, status or NATS).
import { createPublicKey, generateKeyPair, generateKeyPairSync } from "node:crypto";
import { Worker } from "node:worker_threads";
import type { DkimKeyType } from "../../api/v1alpha1/index.ts";

export type DkimKey = { keyType: DkimKeyType; privatePem: string; publicKey: string };

/** Secret data keys of one DKIM key (the same shape as a user's own key Secret). */
export const SECRET_KEYS: Record<DkimKeyType, { pem: string; selector: string }> = {
  RSA2048: { pem: "rsa.pem", selector: "rsa.selector" },
  Ed25519: { pem: "ed25519.pem", selector: "ed25519.selector" },
};

// The fixed 12-byte SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410); RFC 8463 publishes
// the bare 32-byte key after it.
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** The p= value: base64 SubjectPublicKeyInfo for RSA (RFC 6376), the raw key for Ed25519 (RFC 8463). */
export function dkimPublicValue(spkiDer: Buffer, keyType: DkimKeyType): string {
  if (keyType === "Ed25519") {
    if (spkiDer.length !== 44 || !spkiDer.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) throw new Error("not an Ed25519 public key");
    return spkiDer.subarray(12).toString("base64");
  }
  return spkiDer.toString("base64");
}

/** Key type and p= value of a PEM private key; throws a message fit for a condition. */
export function publicFromPrivate(pem: string): { keyType: DkimKeyType; publicKey: string } {
  let key;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error("is not a PEM private key");
  }
  const type = key.asymmetricKeyType;
  const der = key.export({ type: "spki", format: "der" });
  if (type === "ed25519") return { keyType: "Ed25519", publicKey: dkimPublicValue(der, "Ed25519") };
  if (type === "rsa") {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 1024) throw new Error(`is an RSA key of ${bits} bits; receivers need at least 1024 (2048 recommended)`);
    return { keyType: "RSA2048", publicKey: dkimPublicValue(der, "RSA2048") };
  }
  throw new Error(`is a ${type} key; DKIM signs with RSA or Ed25519`);
}

const ENCODING = { publicKeyEncoding: { type: "spki", format: "der" }, privateKeyEncoding: { type: "pkcs8", format: "pem" } } as const;

/** On the calling thread (the key generator threads use this). */
export function generateDkimKeySync(keyType: DkimKeyType): DkimKey {
  const pair = keyType === "Ed25519"
    ? generateKeyPairSync("ed25519", { publicKeyEncoding: ENCODING.publicKeyEncoding, privateKeyEncoding: ENCODING.privateKeyEncoding })
    : generateKeyPairSync("rsa", { modulusLength: 2048, publicKeyEncoding: ENCODING.publicKeyEncoding, privateKeyEncoding: ENCODING.privateKeyEncoding });
  return { keyType, privatePem: pair.privateKey, publicKey: dkimPublicValue(pair.publicKey, keyType) };
}

export function generateDkimKey(keyType: DkimKeyType): Promise<DkimKey> {
  return new Promise((resolve, reject) => {
    const cb = (err: Error | null, publicKey: Buffer, privateKey: string) => {
      if (err) return reject(err);
      resolve({ keyType, privatePem: privateKey, publicKey: dkimPublicValue(publicKey, keyType) });
    };
    const enc = { publicKeyEncoding: { type: "spki", format: "der" }, privateKeyEncoding: { type: "pkcs8", format: "pem" } } as const;
    if (keyType === "Ed25519") generateKeyPair("ed25519", enc, cb);
    else generateKeyPair("rsa", { modulusLength: 2048, ...enc }, cb);
  });
}

type Generator = (keyType: DkimKeyType) => Promise<DkimKey>;

/**
 * Key generation on worker threads at a lower CPU priority (nice 10; on Linux a thread's nice value
 * is its own). A thousand new domains mean a thousand RSA-2048 keys, 100-200 ms of CPU each: at
 * normal priority they take every core from the API server and the operator's own reconciles, and
 * every status waits; at a lower priority they use what is left. Threads rather than a process:
 * an isolate costs about 15 MB, a Node process about 70. Idle for 30 s, the threads end.
 */
export class WorkerGenerator {
  private readonly size: number;
  private workers: { w: Worker; busy: number }[] = [];
  private readonly jobs = new Map<number, { keyType: DkimKeyType; resolve: (k: DkimKey) => void; reject: (e: Error) => void; worker: Worker }>();
  private next = 1;
  private closed = false;
  private idle: NodeJS.Timeout | undefined;

  constructor(size = 2) {
    this.size = size;
  }

  private pick(): { w: Worker; busy: number } {
    if (this.workers.length < this.size && this.workers.every((x) => x.busy > 0)) {
      const w = new Worker(new URL("./keygen-worker.ts", import.meta.url));
      const slot = { w, busy: 0 };
      w.on("message", (m: { id: number; error?: string } & Partial<DkimKey>) => {
        const job = this.jobs.get(m.id);
        if (!job) return;
        this.jobs.delete(m.id);
        slot.busy--;
        if (m.error) job.reject(new Error(m.error));
        else job.resolve({ keyType: m.keyType!, privatePem: m.privatePem!, publicKey: m.publicKey! });
        this.settle();
      });
      w.on("error", (err) => this.fail(w, err));
      w.on("exit", () => this.fail(w, new Error("key generator thread ended")));
      w.unref();
      this.workers.push(slot);
      return slot;
    }
    return this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  /** A thread that died: its jobs go to another (a new one if need be). */
  private fail(w: Worker, err: Error): void {
    this.workers = this.workers.filter((x) => x.w !== w);
    for (const [id, job] of [...this.jobs]) {
      if (job.worker !== w) continue;
      this.jobs.delete(id);
      if (this.closed) job.reject(err);
      else this.generate(job.keyType).then(job.resolve, job.reject);
    }
  }

  generate: Generator = (keyType) => new Promise((resolve, reject) => {
    if (this.closed) return reject(new Error("key generator closed"));
    if (this.idle) clearTimeout(this.idle);
    const id = this.next++;
    const slot = this.pick();
    slot.busy++;
    this.jobs.set(id, { keyType, resolve, reject, worker: slot.w });
    slot.w.postMessage({ id, keyType });
  });

  private settle(): void {
    if (this.jobs.size || this.closed) return;
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(() => {
      if (this.jobs.size) return;
      const ws = this.workers;
      this.workers = [];
      for (const x of ws) void x.w.terminate();
    }, 30_000);
    this.idle.unref();
  }

  close(): void {
    this.closed = true;
    if (this.idle) clearTimeout(this.idle);
    for (const job of this.jobs.values()) job.reject(new Error("key generator closed"));
    this.jobs.clear();
    for (const x of this.workers) void x.w.terminate();
    this.workers = [];
  }
}

/**
 * Generates keys in the background, a few at a time, so that no reconcile waits for one: a
 * reconcile asks for a key, gets "pending", and is enqueued again when the key is ready.
 */
export class KeyFactory {
  private readonly results = new Map<string, DkimKey | Error>();
  private readonly pending = new Map<string, { keyType: DkimKeyType; onReady: () => void }>();
  private readonly order: string[] = [];
  private running = 0;
  readonly concurrency: number;
  private readonly generate: Generator;

  constructor(concurrency = 2, generate: Generator = generateDkimKey) {
    this.concurrency = concurrency;
    this.generate = generate;
  }

  /** The key for id (e.g. the Secret's namespace/name) if it is ready; else starts or continues making it. */
  take(id: string, keyType: DkimKeyType, onReady: () => void): DkimKey | "pending" | Error {
    const done = this.results.get(id);
    if (done) return done;
    if (!this.pending.has(id)) {
      this.pending.set(id, { keyType, onReady });
      this.order.push(id);
      this.pump();
    }
    return "pending";
  }

  /** Forget a key once it is stored (or no longer wanted). */
  release(id: string): void {
    this.results.delete(id);
  }

  queued(): number {
    return this.pending.size;
  }

  private pump(): void {
    while (this.running < this.concurrency && this.order.length) {
      const id = this.order.shift()!;
      const job = this.pending.get(id);
      if (!job) continue;
      this.running++;
      this.generate(job.keyType)
        .then((k) => this.results.set(id, k), (e: Error) => this.results.set(id, e))
        .finally(() => {
          this.running--;
          this.pending.delete(id);
          job.onReady();
          this.pump();
        });
    }
  }
}
