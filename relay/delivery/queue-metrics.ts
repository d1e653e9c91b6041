// Queue depth and oldest age per (pool, provider), from the ready consumers' info: num_pending
// (waiting) + num_ack_pending (in flight), and the age of the first message on the ready subject
// (a WorkQueue stream keeps a message until it is acked, so the first one on the subject is the
// one that has waited longest). Deferred parts waiting for their schedule are counted per pool.
// Every relay of the pool reports the same series; dashboards take max() over instances.
import type { Component, RelayContext } from "../runtime/context.ts";
import { consumers, STREAM_QUEUE, subjects, token } from "../queue/topology.ts";
import { deliveryMetrics } from "./metrics.ts";

interface MsgGetReply {
  message?: { time: string };
  error?: { code: number; description: string };
}

export class QueueMetrics implements Component {
  readonly name = "queue-metrics";
  #timer?: NodeJS.Timeout;
  #running?: Promise<void>;
  readonly #intervalMs: number;

  constructor(o: { intervalMs?: number } = {}) {
    this.#intervalMs = o.intervalMs ?? 15_000;
  }

  async start(ctx: RelayContext): Promise<void> {
    const m = deliveryMetrics(ctx.registry);
    const pool = ctx.config.MAILFLEET_POOL;
    const collect = async () => {
      const plan = ctx.plan();
      if (!plan || !ctx.natsConnected()) return;
      for (const p of plan.plan.providers) {
        const labels = { pool, provider: p.name };
        try {
          const info = await ctx.jsm.consumers.info(STREAM_QUEUE, consumers.ready(pool, p.name));
          m.queueDepth.set(labels, info.num_pending + info.num_ack_pending);
        } catch {
          m.queueDepth.set(labels, 0); // no consumer yet: nothing was ever routed there
        }
        // The first message on the subject (the API's next_by_subj, which the client's typed
        // getMessage does not offer without direct get).
        try {
          const r = await ctx.nc.request(`$JS.API.STREAM.MSG.GET.${STREAM_QUEUE}`, JSON.stringify({ seq: 0, next_by_subj: subjects.ready(pool, p.name) }), { timeout: 5000 });
          const reply = r.json<MsgGetReply>();
          m.queueOldest.set(labels, reply.message ? Math.max(0, (ctx.clock.now() - Date.parse(reply.message.time)) / 1000) : 0);
        } catch {
          /* NATS busy: keep the last value */
        }
      }
      try {
        const info = await ctx.jsm.streams.info(STREAM_QUEUE, { subjects_filter: `mf.q.${token(pool)}.sched.>` });
        m.scheduled.set({ pool }, Object.keys(info.state.subjects ?? {}).length);
      } catch {
        /* keep the last value */
      }
    };
    const tick = () => {
      this.#running = collect().catch(() => {});
      this.#timer = setTimeout(tick, this.#intervalMs);
      this.#timer.unref();
    };
    tick();
  }

  async stop(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    await this.#running;
  }
}
