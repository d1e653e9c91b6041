// The warm-up engine (leader only): on a timer sized to the shortest warm-up period, for each pool
// (warming or not: every lane is judged on its reputation), it reads the stored state and the
// counters (counters.ts), runs the pure step (lanes.ts), stores the new state with compare-and-set
// (so a second replica, or a restart, never closes a day twice), records Events, and writes IPPool
// status.lanes with server-side apply under its own field manager, only when something changed. A
// status change reaches the plan through the IPPool watch (operator/manager.ts recompiles at once
// when a lane's stage or state changed), and so reaches the relays' shapers. Then it judges each
// SendingDomain over the same counters (domains.ts) and writes its status.reputation and
// SendingPaused condition; a paused domain's mail waits in the queue (api/plan.ts DomainPlan.paused).
import { type KV, Kvm } from "@nats-io/kv";
import { StorageType, jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Plan } from "../../api/plan.ts";
import { parseDuration } from "../../api/units.ts";
import { type DomainReputationStatus, type IPPool, LANE_STATES, type SendingDomain, type WarmupSchedule, objectId } from "../../api/v1alpha1/index.ts";
import { token } from "../../relay/queue/topology.ts";
import { SHAPER_BUCKET, shaperKeys } from "../../relay/shaper/keys.ts";
import { type LaneRuleState, laneStatesFrom } from "../../relay/shaper/state.ts";
import { decodeRule, type RuleRecord } from "../../relay/shaper/rulestate.ts";
import type { Context } from "../controllers/context.ts";
import { statusDiffers } from "../runtime/conditions.ts";
import { conditionsFor } from "../controllers/context.ts";
import type { KubeObject } from "../runtime/types.ts";
import type { CounterStore, PeriodDoc } from "./counters.ts";
import { type EngineState, DEFAULT_PERIOD_MS, type PoolStatusLanes, periodsNeeded, policyOf, stepPool } from "./lanes.ts";
import { type CounterSource, DOMAIN_PAUSED_CONDITION, domainWindow, stepDomain } from "./domains.ts";

export const WARMUP_STATE_BUCKET = "mailfleet-warmup-state";
export const WARMUP_FIELD_MANAGER = "mailfleet-warmup";
/** A SendingDomain's rates alone (its state unchanged) are rewritten at most this often. */
const DOMAIN_RATES_EVERY_MS = 30_000;

/** How long after a period ends its late events may still arrive (relays publish right after the dialogue). */
export function settleMs(periodMs: number): number {
  return Math.min(Math.max(periodMs * 0.02, 100), 5000);
}

/** Time between steps: often enough to close a period promptly and keep sentToday current. */
export function tickMs(periodMs: number): number {
  return Math.min(Math.max(periodMs / 40, 100), 10_000);
}

export type EngineOptions = {
  ctx: Context;
  counters: CounterStore;
  connection: () => Promise<NatsConnection>;
  replicas: number;
  plan: () => Plan | null;
  /** Called after a status write (the plan recompiles from the new status). */
  onStatus?: (pool: string) => void;
};

export class WarmupEngine {
  private readonly o: EngineOptions;
  private stateKv: KV | undefined;
  private shaperKv: KV | null | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;
  private readonly gauges = new Map<string, string[][]>();
  private warned = new Map<string, string>();
  /** When each SendingDomain's reputation was last written (namespace/name -> ms). */
  private readonly domainWrites = new Map<string, number>();
  /** Steps taken and status writes made (diagnostics and tests). */
  steps = 0;
  writes = 0;

  constructor(o: EngineOptions) {
    this.o = o;
  }

  /** The warm-up period of a pool (namespace/name): its schedule's, else a day (DEFAULT_PERIOD_MS). */
  periodMsOf(poolId: string): number {
    const [ns, name] = poolId.split("/");
    const pool = this.o.ctx.world.pool(ns!, name!);
    const s = pool ? this.scheduleOf(pool) : undefined;
    return s ? parseDuration(s.spec.period) : DEFAULT_PERIOD_MS;
  }

  private scheduleOf(pool: IPPool): WarmupSchedule | undefined {
    const ref = pool.spec.warmupScheduleRef?.name;
    if (!ref) return undefined;
    return this.o.ctx.world.schedules().find((s) => s.metadata.namespace === pool.metadata.namespace && s.metadata.name === ref);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.o.counters.start();
    const loop = async () => {
      if (this.stopped) return;
      this.running = this.tick().catch((err: Error) => this.o.ctx.log.warn("warm-up step failed", { error: err.message }));
      await this.running;
      if (this.stopped) return;
      this.timer = setTimeout(loop, this.nextTickMs());
      this.timer.unref();
    };
    void loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.ruleWatch?.stop();
    await this.running;
    await this.o.counters.stop();
  }

  private nextTickMs(): number {
    let ms = 10_000;
    for (const p of this.livePools()) {
      const s = this.scheduleOf(p);
      if (s) ms = Math.min(ms, tickMs(parseDuration(s.spec.period)));
    }
    return ms;
  }

  /** Every pool: warming ones follow their schedule, and every lane is judged on its reputation. */
  private livePools(): IPPool[] {
    return this.o.ctx.world.pools().filter((p) => !p.metadata.deletionTimestamp);
  }

  private async bucket(): Promise<KV> {
    if (this.stateKv) return this.stateKv;
    const js = jetstream(await this.o.connection(), { timeout: 10_000 });
    this.stateKv = await new Kvm(js).create(WARMUP_STATE_BUCKET, { history: 1, storage: StorageType.File, replicas: this.o.replicas });
    return this.stateKv;
  }

  /** The shaper's rule records, kept current by one watch on the bucket (key -> record). */
  private readonly ruleRecords = new Map<string, RuleRecord>();
  private ruleWatch: { stop(): void } | undefined;

  /**
   * The shaper's rules in force on a pool's lanes. One long-lived watch keeps them in memory: reading
   * the bucket's keys every step made a JetStream consumer each time, and they piled up until the
   * server refused more ("maximum consumers limit reached") and the engine stopped.
   */
  private async rules(pool: string, plan: Plan | null): Promise<LaneRuleState[]> {
    if (!plan) return [];
    if (!this.ruleWatch && !this.stopped) {
      try {
        await this.watchRules();
      } catch (err) {
        // Kvm.open binds without looking: before the first relay makes the bucket, the watch finds
        // no stream. No rule is in force anywhere then (tried again next step).
        if (!/stream not found/i.test((err as Error).message)) throw err;
        this.shaperKv = undefined;
        return [];
      }
    }
    return laneStatesFrom([...this.ruleRecords.values()], { plan, now: this.o.ctx.now(), pool });
  }

  private async watchRules(): Promise<void> {
    if (this.shaperKv === undefined || this.shaperKv === null) {
      try {
        this.shaperKv = await new Kvm(jetstream(await this.o.connection(), { timeout: 10_000 })).open(SHAPER_BUCKET);
      } catch {
        // No relay made the shaper bucket yet: no rule is in force anywhere (tried again next step).
        this.shaperKv = null;
        return;
      }
    }
    const w = await this.shaperKv.watch({ key: shaperKeys.allRules });
    this.ruleWatch = w;
    void (async () => {
      try {
        for await (const e of w) {
          const r = e.operation === "PUT" ? decodeRule(e.value) : null;
          if (r) this.ruleRecords.set(e.key, r);
          else this.ruleRecords.delete(e.key);
        }
      } catch (err) {
        this.o.ctx.log.warn("warm-up: shaper rule watch ended; starting it again", { error: (err as Error).message });
      }
      // Ended (bucket gone, connection replaced): the next step starts a new one.
      if (this.ruleWatch === w) this.ruleWatch = undefined;
      this.shaperKv = undefined;
    })();
  }

  async tick(): Promise<void> {
    const pools = this.livePools();
    const live = new Set<string>();
    const sources: CounterSource[] = [];
    for (const pool of pools) {
      const id = objectId(pool.metadata);
      live.add(id);
      try {
        const src = await this.syncPool(pool);
        if (src) sources.push(src);
        this.warned.delete(id);
      } catch (err) {
        const m = (err as Error).message;
        if (this.warned.get(id) !== m) this.o.ctx.log.warn("warm-up: pool step failed; retrying", { pool: id, error: m });
        this.warned.set(id, m);
      }
    }
    for (const id of [...this.gauges.keys()]) if (!live.has(id)) this.setGauges(id, null);
    // Only counters every pool could be read from: a domain judged on part of its mail could resume too early.
    if (sources.length === pools.length) await this.syncDomains(sources);
  }

  /** One step for one pool; returns the pool's counters (what its domains' windows read), null when it could not step. */
  async syncPool(pool: IPPool): Promise<CounterSource | null> {
    const { ctx } = this.o;
    const schedule = this.scheduleOf(pool);
    const id = objectId(pool.metadata);
    // The schedule is not there (yet): the pool steps once it is; its counters (kept per day
    // meanwhile, periodMsOf) still count for its domains.
    if (pool.spec.warmupScheduleRef && !schedule) return { pool: id, periodMs: DEFAULT_PERIOD_MS, counts: () => null };
    const periodMs = schedule ? parseDuration(schedule.spec.period) : DEFAULT_PERIOD_MS;
    const now = ctx.now();
    const kv = await this.bucket();
    const key = `s.${token(id).replaceAll("~", "=")}`;
    const entry = await kv.get(key);
    const state = entry && entry.operation === "PUT" && entry.value.length ? entry.json<EngineState>() : null;
    const policy = policyOf(pool, schedule?.spec ?? null);
    const docs = new Map<number, PeriodDoc | null>();
    for (const p of periodsNeeded(state, now, periodMs, policy.windowMs)) docs.set(p, await this.o.counters.read(id, periodMs, p));
    const plan = this.o.plan();
    const providers = (plan?.providers ?? []).map((p) => ({ name: p.name, feedbackLoop: p.feedbackLoop }));
    if (!providers.length) return null; // no plan yet: lanes are not known
    const caughtUp = this.o.counters.caughtUpAt;
    const out = stepPool({
      pool, schedule: schedule?.spec ?? null, providers, state, now,
      counts: (p) => docs.get(p) ?? null,
      canClose: (p) => caughtUp >= (p + 1) * periodMs + settleMs(periodMs) && now >= (p + 1) * periodMs + settleMs(periodMs),
      rules: await this.rules(id, plan),
    });
    this.steps++;
    // State first, with compare-and-set: whoever stores a step acts on it; a loser does nothing.
    const value = JSON.stringify(out.state);
    if (!entry || entry.operation !== "PUT" || Buffer.from(entry.value).toString("utf8") !== value) {
      try {
        if (entry && entry.operation === "PUT") await kv.update(key, value, entry.revision);
        else await kv.create(key, value);
      } catch (err) {
        ctx.log.info("warm-up: state changed under this step; it runs again", { pool: id, error: (err as Error).message });
        return null;
      }
    }
    const raw = ctx.inf.pools.get(pool.metadata.namespace, pool.metadata.name);
    if (raw) for (const n of out.notices) ctx.events.event(raw, n.type, n.reason, n.note, "Warmup");
    this.setGauges(id, out.status);
    if (raw) await this.writeStatus(raw, out.status);
    return { pool: id, periodMs, counts: (p) => docs.get(p) ?? null };
  }

  /**
   * Judges every SendingDomain over the counters of every pool (its mail may have gone through an
   * overflow pool) within its own pool's window, and writes status.reputation and the SendingPaused
   * condition when they changed, with an Event when the domain paused or resumed.
   */
  private async syncDomains(sources: CounterSource[]): Promise<void> {
    const { ctx } = this.o;
    const plan = this.o.plan();
    const providers = (plan?.providers ?? []).map((p) => ({ name: p.name, feedbackLoop: p.feedbackLoop }));
    if (!providers.length) return;
    const now = ctx.now();
    // Periods a pool's step did not read, read once per tick whichever domains need them.
    const extra = new Map<string, PeriodDoc | null>();
    const read = async (src: CounterSource, p: number) => {
      const k = `${src.pool}|${src.periodMs}|${p}`;
      if (!extra.has(k)) extra.set(k, await this.o.counters.read(src.pool!, src.periodMs, p));
      return extra.get(k) ?? null;
    };
    for (const d of ctx.world.domains() as SendingDomain[]) {
      if (d.metadata.deletionTimestamp) continue;
      const ns = d.metadata.namespace ?? "";
      const id = objectId(d.metadata);
      const pool = ctx.world.pool(ns, d.spec.poolRef.name);
      if (!pool) continue;
      try {
        const policy = policyOf(pool, this.scheduleOf(pool)?.spec ?? null);
        // A pool's step read its own window; a longer window of this domain's pool reads the rest here.
        const full: CounterSource[] = [];
        for (const src of sources) {
          const more = new Map<number, PeriodDoc | null>();
          const cur = Math.floor(now / src.periodMs);
          for (let p = Math.floor((now - policy.windowMs) / src.periodMs); p <= cur; p++) {
            if (src.counts(p) === null && src.pool) more.set(p, await read(src, p));
          }
          full.push({ periodMs: src.periodMs, counts: (p) => src.counts(p) ?? more.get(p) ?? null });
        }
        const window = domainWindow(d.spec.domain, providers, full, now, policy.windowMs);
        const step = stepDomain(policy, window, d.status?.reputation, now);
        const raw = ctx.inf.domains.get(ns, d.metadata.name);
        if (!raw) continue;
        const { conditions } = conditionsFor(raw, [step.condition], [DOMAIN_PAUSED_CONDITION], now);
        // Only what the engine owns is compared: server-side apply keeps the conditions list in the
        // server's order (ours last), which the merged list from conditionsFor does not follow.
        const ours = conditions.filter((c) => c.type === DOMAIN_PAUSED_CONDITION);
        const live = raw.status as { reputation?: DomainReputationStatus; conditions?: { type: string }[] } | undefined;
        const liveOurs = { reputation: live?.reputation, conditions: (live?.conditions ?? []).filter((c) => c.type === DOMAIN_PAUSED_CONDITION) };
        if (!statusDiffers(liveOurs, { reputation: step.reputation, conditions: ours })) continue;
        // A change of state, reason or warning is written at once; fresher rates alone at most every
        // DOMAIN_RATES_EVERY_MS (each write also wakes the plan compiler through the domain watch).
        const cur = live?.reputation;
        // (A warning's kind is part of the gist, its figure is not: the condition's reason follows these.)
        const gist = (r: DomainReputationStatus | undefined) => JSON.stringify([r?.state, r?.until, r?.reason, r?.warning?.replace(/ [\d.]+%.*$/, "")]);
        if (gist(cur) === gist(step.reputation) && now - (this.domainWrites.get(id) ?? 0) < DOMAIN_RATES_EVERY_MS) continue;
        // Server-side apply of only what the engine owns: the domain controller's conditions stay
        // (a map list), and a reputation field no longer set (until, warning) is removed.
        const out = await ctx.client.apply({
          apiVersion: raw.apiVersion, kind: raw.kind, metadata: { name: raw.metadata.name, namespace: raw.metadata.namespace },
          status: { reputation: step.reputation satisfies DomainReputationStatus, conditions: ours },
        } as KubeObject, { sub: "status", fieldManager: WARMUP_FIELD_MANAGER });
        ctx.inf.domains.upsert(out);
        this.domainWrites.set(id, now);
        this.writes++;
        if (step.notice) ctx.events.event(raw, step.notice.type, step.notice.reason, `${d.spec.domain}: ${step.notice.note}`, "Warmup");
      } catch (err) {
        const m = (err as Error).message;
        if (this.warned.get(id) !== m) ctx.log.warn("warm-up: domain step failed; retrying", { sendingdomain: id, error: m });
        this.warned.set(id, m);
      }
    }
  }

  private async writeStatus(raw: KubeObject, status: PoolStatusLanes): Promise<void> {
    const { ctx } = this.o;
    const desired = status as unknown as Record<string, unknown>;
    if (!statusDiffers(raw.status as Record<string, unknown> | undefined, desired)) return;
    const out = await ctx.client.apply({
      apiVersion: raw.apiVersion, kind: raw.kind, metadata: { name: raw.metadata.name, namespace: raw.metadata.namespace }, status: desired,
    } as KubeObject, { sub: "status", fieldManager: WARMUP_FIELD_MANAGER });
    ctx.inf.pools.upsert(out);
    this.writes++;
    this.o.onStatus?.(objectId(raw.metadata));
  }

  private setGauges(pool: string, status: PoolStatusLanes | null): void {
    const m = this.o.ctx.metrics;
    const prev = this.gauges.get(pool) ?? [];
    const now = new Set((status?.lanes ?? []).map((l) => `${l.address}|${l.provider}`));
    for (const [source_ip, provider] of prev) {
      if (now.has(`${source_ip}|${provider}`)) continue;
      const labels = { pool, source_ip: source_ip!, provider: provider! };
      for (const state of LANE_STATES) m.laneState.remove({ ...labels, state });
      m.laneWarmupStage.remove(labels);
      m.laneDailyQuota.remove(labels);
      m.laneSentToday.remove(labels);
      m.laneWarmupHeld.remove(labels);
    }
    if (!status) {
      this.gauges.delete(pool);
      return;
    }
    for (const l of status.lanes) {
      const labels = { pool, source_ip: l.address, provider: l.provider };
      for (const state of LANE_STATES) m.laneState.set({ ...labels, state }, l.state === state ? 1 : 0);
      m.laneSentToday.set(labels, l.sentToday ?? 0);
      if (l.stage === undefined) {
        // A lane of a pool that does not warm up: state only, no warm-up series.
        m.laneWarmupStage.remove(labels);
        m.laneDailyQuota.remove(labels);
        m.laneWarmupHeld.remove(labels);
        continue;
      }
      m.laneWarmupStage.set(labels, l.stage);
      m.laneDailyQuota.set(labels, l.dailyQuota ?? 0);
      m.laneWarmupHeld.set(labels, l.decision === "Held" || l.decision === "SteppedBack" ? 1 : 0);
    }
    this.gauges.set(pool, status.lanes.map((l) => [l.address, l.provider]));
  }
}

