// A keyed, de-duplicating, level-triggered work queue with client-go's semantics
// (k8s.io/client-go/util/workqueue): a key is queued at most once; a key that is re-added while a
// worker processes it is processed again after that worker calls done(); addAfter keeps the
// earliest due time per key; addRateLimited backs off per key, exponentially, until forget().
//
// Controllers enqueue keys (namespace/name), never objects: the reconcile reads the latest state
// from the informer cache, so a burst of events for one object costs one reconcile.

export type Clock = {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
};

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Per-key exponential backoff: base * 2^(failures-1), capped (client-go ItemExponentialFailureRateLimiter). */
export class ExponentialBackoff {
  readonly baseMs: number;
  readonly maxMs: number;
  private readonly failures = new Map<string, number>();

  constructor(baseMs = 5, maxMs = 5 * 60_000) {
    this.baseMs = baseMs;
    this.maxMs = maxMs;
  }

  /** The delay before the next retry of key; counts one more failure. */
  when(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    // 2^n overflows to Infinity for large n, which min() caps.
    return Math.min(this.baseMs * 2 ** n, this.maxMs);
  }

  retries(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }
}

export type QueueHooks = {
  /** Called whenever the number of keys waiting changes (metrics). */
  onDepth?: (depth: number) => void;
  onAdd?: () => void;
  onRetry?: () => void;
};

export class WorkQueue {
  private readonly queue: string[] = [];
  private head = 0;
  /** Keys that need processing (queued, or re-added while processing). */
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly waiting = new Map<string, { at: number; handle: unknown }>();
  private readonly getters: ((key: string | undefined) => void)[] = [];
  private readonly drainers: (() => void)[] = [];
  private shuttingDown = false;
  private readonly clock: Clock;
  readonly backoff: ExponentialBackoff;
  private readonly hooks: QueueHooks;

  constructor(o: { clock?: Clock; backoff?: ExponentialBackoff; hooks?: QueueHooks } = {}) {
    this.clock = o.clock ?? realClock;
    this.backoff = o.backoff ?? new ExponentialBackoff();
    this.hooks = o.hooks ?? {};
  }

  /** Keys waiting to be processed (not counting those in progress or delayed). */
  len(): number {
    return this.queue.length - this.head;
  }

  isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  add(key: string): void {
    if (this.shuttingDown) return;
    this.hooks.onAdd?.();
    if (this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return; // done() queues it again
    this.push(key);
  }

  private push(key: string): void {
    const getter = this.getters.shift();
    if (getter) {
      this.dirty.delete(key);
      this.processing.add(key);
      getter(key);
      return;
    }
    this.queue.push(key);
    this.hooks.onDepth?.(this.len());
  }

  /** Adds key after ms; a key already waiting keeps the earlier of the two times. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.clock.now() + ms;
    const prev = this.waiting.get(key);
    if (prev && prev.at <= at) return;
    if (prev) this.clock.clearTimeout(prev.handle);
    const handle = this.clock.setTimeout(() => {
      this.waiting.delete(key);
      this.add(key);
    }, ms);
    this.waiting.set(key, { at, handle });
  }

  /** Adds key after its backoff delay (one more failure). */
  addRateLimited(key: string): number {
    const ms = this.backoff.when(key);
    this.hooks.onRetry?.();
    this.addAfter(key, ms);
    return ms;
  }

  /** The key succeeded: reset its backoff. */
  forget(key: string): void {
    this.backoff.forget(key);
  }

  numRequeues(key: string): number {
    return this.backoff.retries(key);
  }

  /** Waits for the next key; undefined once the queue shuts down. */
  get(): Promise<string | undefined> {
    if (this.len() > 0) {
      const key = this.queue[this.head++]!;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      this.dirty.delete(key);
      this.processing.add(key);
      this.hooks.onDepth?.(this.len());
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.getters.push(resolve));
  }

  /** A worker finished key; if it was re-added meanwhile, it is queued again. */
  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key) && !this.shuttingDown) this.push(key);
    else this.dirty.delete(key);
    if (this.processing.size === 0) for (const d of this.drainers.splice(0)) d();
  }

  /** Stops handing out keys; waiting getters get undefined. Resolves when in-flight keys are done. */
  shutDown(): Promise<void> {
    this.shuttingDown = true;
    for (const w of this.waiting.values()) this.clock.clearTimeout(w.handle);
    this.waiting.clear();
    for (const g of this.getters.splice(0)) g(undefined);
    this.queue.length = 0;
    this.head = 0;
    this.hooks.onDepth?.(0);
    if (this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainers.push(resolve));
  }
}
