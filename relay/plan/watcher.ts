// Watches the plan key in KV and applies each new plan live. A bad value (not JSON, not a plan,
// wrong schema) is logged and counted, and the last good plan stays in force: a broken publish
// must not take the fleet down.
import { EventEmitter } from "node:events";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { Counter, Gauge } from "prom-client";
import { PLAN_BUCKET, PLAN_KEY } from "../../api/plan.ts";
import type { RelayContext } from "../runtime/context.ts";
import type { Logger } from "../runtime/logger.ts";
import { decodePlanValue } from "./decode.ts";
import { buildIndex, type PlanIndex } from "./index.ts";

export interface PlanSource {
  current(): PlanIndex | undefined;
  /** Resolves with the first good plan (immediately when one is loaded). */
  ready(timeoutMs?: number): Promise<PlanIndex>;
  on(event: "change", fn: (next: PlanIndex, prev: PlanIndex | undefined) => void): void;
  off(event: "change", fn: (next: PlanIndex, prev: PlanIndex | undefined) => void): void;
}

/** Holds the current plan; the watcher (or a test) feeds it values. */
export class PlanHolder extends EventEmitter implements PlanSource {
  #current: PlanIndex | undefined;
  readonly poolId: string;
  readonly #log: Logger;
  readonly #errors?: Counter;
  constructor(poolId: string, log: Logger, errors?: Counter) {
    super();
    this.poolId = poolId;
    this.#log = log;
    this.#errors = errors;
  }
  current(): PlanIndex | undefined {
    return this.#current;
  }
  /** Applies a raw KV value; returns false (and keeps the last good plan) when it is bad. */
  applyValue(value: Uint8Array, revision?: number): boolean {
    let next: PlanIndex;
    try {
      next = buildIndex(decodePlanValue(value), this.poolId);
    } catch (e) {
      this.#errors?.inc();
      this.#log.error("plan value rejected; keeping the last good plan", {
        kvRevision: revision, kept: this.#current?.revision ?? null, error: (e as Error).message.slice(0, 2000),
      });
      return false;
    }
    const prev = this.#current;
    if (prev && prev.revision === next.revision) return true;
    this.#current = next;
    this.#log.info("plan applied", { revision: next.revision, kvRevision: revision, domains: next.domains.size, poolKnown: Boolean(next.pool) });
    this.emit("change", next, prev);
    return true;
  }
  ready(timeoutMs = 0): Promise<PlanIndex> {
    const cur = this.#current;
    if (cur) return Promise.resolve(cur);
    return new Promise((resolve, reject) => {
      const timer = timeoutMs > 0 ? setTimeout(() => { this.off("change", on); reject(new Error(`no plan within ${timeoutMs} ms`)); }, timeoutMs) : undefined;
      const on = (p: PlanIndex) => { if (timer) clearTimeout(timer); this.off("change", on); resolve(p); };
      this.on("change", on);
    });
  }
}

/** Component: keeps a KV watch on the plan key open for the life of the relay. */
export class PlanWatcher {
  readonly name = "plan";
  #stopped = false;
  #wake: (() => void) | undefined;
  #iter: { stop(): void } | undefined;
  #loop: Promise<void> | undefined;

  async start(ctx: RelayContext): Promise<void> {
    const holder = ctx.planHolder;
    const log = ctx.log.child("plan");
    const loaded = new Gauge({ name: "mailfleet_relay_plan_loaded", help: "1 when a good plan is in force", registers: [ctx.registry] });
    loaded.set(0);
    const applied = new Gauge({ name: "mailfleet_relay_plan_applied_timestamp_seconds", help: "When the plan in force was applied", registers: [ctx.registry] });
    holder.on("change", () => { loaded.set(1); applied.set(ctx.clock.now() / 1000); });
    this.#loop = this.#run(ctx, log);
  }

  async #run(ctx: RelayContext, log: Logger): Promise<void> {
    let kv: KV | undefined;
    let announced = false;
    while (!this.#stopped) {
      try {
        if (!kv) kv = await new Kvm(ctx.js).open(PLAN_BUCKET);
        // open() does not check that the bucket exists; status() does.
        await kv.status();
        const iter = await kv.watch({ key: PLAN_KEY });
        this.#iter = iter;
        for await (const e of iter as AsyncIterable<KvEntry>) {
          if (this.#stopped) break;
          if (e.operation !== "PUT") {
            log.warn("plan key deleted or purged; keeping the last good plan", { kvRevision: e.revision });
            continue;
          }
          ctx.planHolder.applyValue(e.value, e.revision);
        }
      } catch (e) {
        if (this.#stopped) break;
        kv = undefined;
        if (!announced) log.warn("plan bucket not readable yet; retrying", { bucket: PLAN_BUCKET, error: (e as Error).message });
        announced = true;
        await new Promise<void>((r) => { const t = setTimeout(r, 1000); this.#wake = () => { clearTimeout(t); r(); }; });
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#iter?.stop();
    this.#wake?.();
    await this.#loop?.catch(() => {});
  }
}
