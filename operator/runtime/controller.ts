// A controller: a work queue, a few workers, and a level-triggered reconcile of one key at a time.
// A failed reconcile is retried with the key's backoff; a 409 Conflict is expected under
// concurrent writers and is retried the same way (the next run reads the newer object) without
// being logged as an error; a requested requeue (clock-driven work) resets the backoff.
import { isConflict } from "./kube.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { WorkQueue } from "./workqueue.ts";

export type Result = { requeueAfterMs?: number } | void;
export type Reconcile = (key: string) => Promise<Result>;

export class Controller {
  readonly name: string;
  readonly queue: WorkQueue;
  private readonly reconcile: Reconcile;
  private readonly workers: number;
  private readonly log: Logger;
  private readonly metrics: Metrics | undefined;
  private running: Promise<void>[] = [];

  constructor(name: string, reconcile: Reconcile, o: { workers?: number; log: Logger; metrics?: Metrics }) {
    this.name = name;
    this.reconcile = reconcile;
    this.workers = o.workers ?? 2;
    this.log = o.log.child({ controller: name });
    this.metrics = o.metrics;
    this.queue = new WorkQueue({
      hooks: {
        onDepth: (d) => this.metrics?.workqueueDepth.set({ name }, d),
        onAdd: () => this.metrics?.workqueueAdds.inc({ name }),
        onRetry: () => this.metrics?.workqueueRetries.inc({ name }),
      },
    });
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  enqueueAfter(key: string, ms: number): void {
    this.queue.addAfter(key, ms);
  }

  start(): void {
    for (let i = 0; i < this.workers; i++) this.running.push(this.work());
  }

  /** Stops handing out keys and waits for the reconciles in flight. */
  async stop(): Promise<void> {
    await this.queue.shutDown();
    await Promise.all(this.running);
    this.running = [];
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const end = this.metrics?.reconcileDuration.startTimer({ controller: this.name });
      try {
        const r = await this.reconcile(key);
        this.queue.forget(key);
        if (r && r.requeueAfterMs !== undefined) {
          this.queue.addAfter(key, r.requeueAfterMs);
          this.metrics?.reconcileTotal.inc({ controller: this.name, result: "requeue" });
        } else {
          this.metrics?.reconcileTotal.inc({ controller: this.name, result: "success" });
        }
      } catch (err) {
        const delay = this.queue.addRateLimited(key);
        if (isConflict(err)) {
          this.metrics?.reconcileTotal.inc({ controller: this.name, result: "conflict" });
          this.log.debug("conflict; retrying with a fresh read", { key, retryInMs: delay, error: (err as Error).message });
        } else {
          this.metrics?.reconcileTotal.inc({ controller: this.name, result: "error" });
          this.metrics?.reconcileErrors.inc({ controller: this.name });
          this.log.warn("reconcile failed; retrying", { key, retryInMs: delay, error: (err as Error).message });
        }
      } finally {
        end?.();
        this.queue.done(key);
      }
    }
  }
}
