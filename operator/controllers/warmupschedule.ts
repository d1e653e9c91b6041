// WarmupSchedule: validated, and summarised in status (stages, the day full volume is reached, the
// pools warming on it). Conditions: Accepted, Ready (and ReconciliationPaused while paused).
import type { WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { formatProblems } from "../webhook/review.ts";
import { type DesiredCondition, readyFrom } from "../runtime/conditions.ts";
import type { Result } from "../runtime/controller.ts";
import { type KubeObject, splitKey } from "../runtime/types.ts";
import { type Context, conditionsFor, isPaused, recordTransitions, writePaused, writeStatus } from "./context.ts";

export const SCHEDULE_CONDITIONS = ["Accepted", "Ready", "ReconciliationPaused"] as const;

/** The day the last stage begins, over the default curve and every provider's own. */
export function fullVolumeDay(s: WarmupSchedule): number {
  const curves = [s.spec.stages, ...s.spec.providers.map((p) => p.stages)];
  return Math.max(...curves.map((c) => c.at(-1)?.day ?? 0));
}

export async function reconcileSchedule(ctx: Context, key: string): Promise<Result> {
  const { namespace, name } = splitKey(key);
  const raw = ctx.inf.schedules.get(namespace, name);
  if (!raw || raw.metadata.deletionTimestamp) return;
  if (isPaused(raw)) return void (await writePaused(ctx, ctx.inf.schedules, raw));
  const parsed = ctx.world.parse<WarmupSchedule>(raw);
  let accepted: DesiredCondition;
  let fields: Record<string, unknown> = {};
  if (!parsed.ok) {
    accepted = { type: "Accepted", status: "False", reason: "InvalidSpec", message: parsed.error.issues.map((i) => `${i.path}: ${i.message}`).join("; ") };
  } else {
    const s = parsed.value;
    const problems = ctx.world.problemsOf("WarmupSchedule", key);
    const pools = ctx.world.pools().filter((p) => p.metadata.namespace === namespace && p.spec.warmupScheduleRef?.name === name).length;
    const unknown = s.spec.providers.map((p) => p.provider).filter((p) => !ctx.inf.providers.get(undefined, p));
    accepted = problems.length
      ? { type: "Accepted", status: "False", reason: problems[0]!.reason, message: formatProblems(problems) }
      : { type: "Accepted", status: "True", reason: "Accepted", message: unknown.length ? `no MailboxProvider named ${unknown.join(", ")}: those curves apply to nothing yet` : `${s.spec.stages.length} stages` };
    fields = { stages: s.spec.stages.length, fullVolumeDay: fullVolumeDay(s), pools };
  }
  await status(ctx, raw, [accepted], fields, "schedule valid");
}

export async function status(ctx: Context, raw: KubeObject, parts: DesiredCondition[], fields: Record<string, unknown>, ok: string): Promise<void> {
  const inf = raw.kind === "MailboxProvider" ? ctx.inf.providers : ctx.inf.schedules;
  const transitions = await writeStatus(ctx, inf, raw, (live) => {
    const { conditions, transitions } = conditionsFor(live, [...parts, readyFrom(parts, ok)], SCHEDULE_CONDITIONS, ctx.now());
    return { status: { observedGeneration: live.metadata.generation, ...fields, conditions }, transitions };
  });
  recordTransitions(ctx, raw, transitions);
}
