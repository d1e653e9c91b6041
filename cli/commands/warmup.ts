// mailfleet warmup <pool>: where each lane of a warming pool stands: its stage, today's quota and
// what was sent, the rates the gates judge, the next step and the last decision with its reason.
//
// Sources, each shown only when present (nothing is made up): IPPool status.lanes (written by the
// warm-up engine: day, sentToday, rates, decision, reason), the plan (the stage and quota relays
// enforce now), the shaper's lane key in KV (slots reserved in the current warm-up day), the
// lane-overrides annotation (holds and stages set by hand), and the WarmupSchedule (next stage).
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, parseWith, positionals as pos, stringFlag } from "../lib/flags.ts";
import { withFleet } from "../lib/fleet.ts";
import { getPool, getSchedule, id } from "../lib/resources.ts";
import { parseOverrides } from "../lib/lanes.ts";
import { clip, percent, print, printJson, table, warn, when } from "../lib/output.ts";
import { laneKey, type LaneStatus, type WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { stagesFor } from "../../operator/plan/compile.ts";
import { readLaneKey } from "../../relay/shaper/state.ts";
import { SHAPER_BUCKET } from "../../relay/shaper/keys.ts";
import type { LanePlan } from "../../api/plan.ts";

const usage = `usage: mailfleet warmup <pool> [--provider P] [common options]

  Each lane (source address x provider) of a pool that warms up: its stage (0-based) and day,
  today's quota and what was sent, bounce/deferral/complaint rates over the stage, the next stage
  and when it comes, and the warm-up engine's last decision and why. Values the fleet has not
  recorded are shown as "-".

  STAGE      the stage in force (the plan's; the status's when the plan is not readable)
  DAY        qualifying warm-up days completed (status)
  QUOTA      daily quota in force (hourly in parentheses)
  SENT       recipients attempted today (status sentToday)
  RESERVED   send slots taken from the current warm-up day's quota (the shaper's live counter; relays
             take a few slots ahead, so it can exceed what was sent)
  NEXT       the next stage: its quota and the day it begins

  --provider P   only lanes to this provider

${COMMON_USAGE}`;

export interface WarmupLane {
  address: string;
  provider: string;
  stage: number | null;
  stageSource: "plan" | "status" | "override" | null;
  day: number | null;
  dailyQuota: number | null;
  hourlyQuota: number | null;
  sentToday: number | null;
  reservedToday: number | null;
  bounceRate: number | null;
  deferralRate: number | null;
  complaintRate: number | null;
  failedDays: number | null;
  held: boolean;
  heldBy?: string;
  manualStage?: number;
  decision: string | null;
  reason: string | null;
  next: { stage: number; day: number; daily: number; hourly?: number; inDays: number | null } | null;
  state?: string;
}

export function warmupLanes(o: {
  addresses: string[];
  providers: string[];
  schedule: WarmupSchedule;
  status: LaneStatus[];
  plan: LanePlan[] | undefined;
  overrides: Record<string, { hold?: boolean; stage?: number; by?: string }>;
  reserved: Map<string, number>;
}): WarmupLane[] {
  const out: WarmupLane[] = [];
  for (const address of o.addresses) {
    for (const provider of o.providers) {
      const key = laneKey(address, provider);
      const s = o.status.find((l) => l.address === address && l.provider === provider);
      const p = o.plan?.find((l) => l.address === address && l.provider === provider);
      const ov = o.overrides[key];
      const stages = stagesFor(o.schedule, provider);
      const stage = p?.stage ?? s?.stage ?? ov?.stage ?? null;
      const cur = stage !== null ? stages[Math.min(stage, stages.length - 1)] : undefined;
      const nextStage = stage !== null && stage + 1 < stages.length ? stages[stage + 1]! : undefined;
      const day = s?.day ?? null;
      out.push({
        address,
        provider,
        stage,
        stageSource: p?.stage != null ? "plan" : s?.stage !== undefined ? "status" : ov?.stage !== undefined ? "override" : null,
        day,
        dailyQuota: p?.dailyQuota ?? s?.dailyQuota ?? cur?.daily ?? null,
        hourlyQuota: p?.hourlyQuota ?? s?.hourlyQuota ?? (cur ? cur.hourly ?? Math.ceil(cur.daily / 12) : null),
        sentToday: s?.sentToday ?? null,
        reservedToday: o.reserved.get(key) ?? null,
        bounceRate: s?.bounceRate ?? null,
        deferralRate: s?.deferralRate ?? null,
        complaintRate: s?.complaintRate ?? null,
        failedDays: s?.failedDays ?? null,
        held: !!(ov?.hold || s?.held),
        ...(ov?.hold && ov.by ? { heldBy: ov.by } : {}),
        ...(ov?.stage !== undefined ? { manualStage: ov.stage } : {}),
        decision: s?.decision ?? null,
        reason: s?.reason ?? null,
        next: nextStage
          ? { stage: stage! + 1, day: nextStage.day, daily: nextStage.daily, ...(nextStage.hourly ? { hourly: nextStage.hourly } : {}), inDays: day !== null ? Math.max(0, nextStage.day - 1 - day) : null }
          : null,
        ...(p && p.state !== "Healthy" ? { state: p.state } : s && s.state !== "Healthy" ? { state: s.state } : {}),
      });
    }
  }
  return out;
}

export const command: Command = {
  summary: "warm-up per lane of a pool: stage, today's quota and sent, rates, next step and why",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, { provider: { type: "string" } });
    const [poolRef] = pos(positionals, ["pool"]);
    const only = stringFlag(values, "provider");
    if (only !== undefined && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(only)) throw new UsageError(`--provider must be a MailboxProvider name, got "${only}"`);
    return withFleet(common, async (fleet) => {
      const pool = await getPool(fleet, poolRef!, common.namespace);
      const ref = pool.spec.warmupScheduleRef;
      if (!ref) {
        if (common.output === "json") printJson({ pool: id(pool), warmup: false, lanes: [] });
        else print(`${id(pool)} does not warm up (no warmupScheduleRef): its addresses are treated as warm, with no warm-up quota`);
        return 0;
      }
      const schedule = await getSchedule(fleet, pool.metadata.namespace!, ref.name);
      if (!schedule) throw new Error(`WarmupSchedule ${pool.metadata.namespace}/${ref.name} (of IPPool ${id(pool)}) not found`);
      const warnings: string[] = [];
      let planLanes: LanePlan[] | undefined;
      let providers: string[] = [];
      const reserved = new Map<string, number>();
      try {
        const plan = await fleet.plan();
        const pp = plan?.pools.find((p) => p.id === id(pool));
        planLanes = pp?.lanes;
        providers = plan?.providers.map((p) => p.name) ?? [];
        if (!pp) warnings.push(`the plan has no pool ${id(pool)} yet`);
        const kv = await fleet.kv(SHAPER_BUCKET, { optional: true });
        const now = Date.now();
        if (kv && pp?.warmup) {
          for (const l of pp.lanes) {
            if (only && l.provider !== only) continue;
            const k = await readLaneKey(kv, { pool: id(pool), address: l.address, provider: l.provider });
            // Only the current warm-up day's window counts as today.
            const day = k?.s?.day;
            if (day && now - day.start < pp.warmup.periodMs && now >= day.start) reserved.set(laneKey(l.address, l.provider), day.used);
          }
        }
      } catch (e) {
        warnings.push(`NATS: ${(e as Error).message}; showing IPPool status only`);
      }
      const status = pool.status?.lanes ?? [];
      if (!providers.length) providers = [...new Set(status.map((l) => l.provider))].sort();
      if (only) {
        if (providers.length && !providers.includes(only)) throw new Error(`MailboxProvider ${only} not found (providers: ${providers.join(", ")})`);
        providers = [only];
      }
      if (!status.length) warnings.push(`IPPool ${id(pool)} has no status.lanes yet: day, sent today, rates and decisions come from the warm-up engine, which has not written them`);
      const lanes = warmupLanes({
        addresses: pool.spec.addresses.map((a) => a.address),
        providers,
        schedule,
        status,
        plan: planLanes,
        overrides: parseOverrides(pool).overrides,
        reserved,
      });
      const now = Date.now();
      if (common.output === "json") {
        printJson({
          pool: id(pool),
          schedule: `${pool.metadata.namespace}/${ref.name}`,
          period: schedule.spec.period,
          warmupDayStartedAt: pool.status?.warmupDay ?? null,
          gates: schedule.spec.advance,
          onFailure: schedule.spec.onFailure,
          lanes,
          warnings,
        });
      } else {
        const a = schedule.spec.advance;
        const f = schedule.spec.onFailure;
        const head = [
          `${id(pool)} warms on WarmupSchedule ${pool.metadata.namespace}/${ref.name} (warm-up day = ${schedule.spec.period}${pool.status?.warmupDay ? `; this one began ${when(pool.status.warmupDay, now)}` : ""})`,
          `advances when a day used >= ${percent(a.minUsage, 0)} of its quota and, over the stage, bounces < ${percent(a.maxBounceRate)}, deferrals < ${percent(a.maxDeferralRate)}, complaints < ${percent(a.maxComplaintRate, 2)} (judged from ${a.minSample} attempts); ` +
            (f.action === "Hold" ? "otherwise holds" : `otherwise holds, and steps back ${f.stepBackBy} after ${f.stepBackAfter} failed days`),
          "",
        ];
        const rows = lanes.map((l) => [
          l.address,
          l.provider,
          l.stage === null ? undefined : `${l.stage}${l.held ? " (held)" : l.manualStage !== undefined ? " (set)" : ""}`,
          l.day,
          l.dailyQuota === null ? undefined : `${l.dailyQuota}${l.hourlyQuota !== null ? ` (${l.hourlyQuota}/h)` : ""}`,
          l.sentToday,
          l.reservedToday,
          l.bounceRate === null && l.deferralRate === null ? undefined : `${percent(l.bounceRate) ?? "-"} / ${percent(l.deferralRate) ?? "-"} / ${l.complaintRate === null ? "n/a" : percent(l.complaintRate, 2)}`,
          l.next ? `${l.next.daily}/day from day ${l.next.day}${l.next.inDays !== null ? ` (in ${l.next.inDays}d)` : ""}` : l.stage !== null ? "last stage" : undefined,
          l.decision,
        ]);
        const reasons = lanes.filter((l) => l.reason || l.state).map((l) => `  ${laneKey(l.address, l.provider)}: ${[l.state, clip(l.reason ?? undefined, 160)].filter(Boolean).join(": ")}`);
        print([
          ...head,
          table(["address", "provider", "stage", "day", "quota", "sent", "reserved", "bounce/defer/complaint", "next", "decision"], rows),
          ...(reasons.length ? ["", "why:", ...reasons] : []),
        ].join("\n"));
        for (const w of warnings) warn(w);
      }
      return 0;
    });
  },
};
