// MailboxProvider: validated, and summarised in status: its lanes in the fleet (pool addresses x
// this provider) and the response rules in force on some lane now (from the pools' lane status,
// which the warm-up engine writes). Conditions: Accepted, Ready (and ReconciliationPaused).
import type { MailboxProvider } from "../../api/v1alpha1/index.ts";
import type { DesiredCondition } from "../runtime/conditions.ts";
import type { Result } from "../runtime/controller.ts";
import { splitKey } from "../runtime/types.ts";
import { type Context, isPaused, writePaused } from "./context.ts";
import { status } from "./warmupschedule.ts";

export async function reconcileProvider(ctx: Context, key: string): Promise<Result> {
  const { name } = splitKey(key);
  const raw = ctx.inf.providers.get(undefined, name);
  if (!raw || raw.metadata.deletionTimestamp) return;
  if (isPaused(raw)) return void (await writePaused(ctx, ctx.inf.providers, raw));
  const parsed = ctx.world.parse<MailboxProvider>(raw);
  if (!parsed.ok) {
    const accepted: DesiredCondition = { type: "Accepted", status: "False", reason: "InvalidSpec", message: parsed.error.issues.map((i) => `${i.path}: ${i.message}`).join("; ") };
    await status(ctx, raw, [accepted], {}, "provider valid");
    return;
  }
  const pools = ctx.world.pools().filter((p) => !p.metadata.deletionTimestamp);
  const lanes = new Set(pools.flatMap((p) => p.spec.addresses.map((a) => a.address))).size;
  const rules = new Set<string>();
  for (const p of pools) {
    for (const l of p.status?.lanes ?? []) if (l.provider === name && l.rule) rules.add(l.rule);
  }
  const accepted: DesiredCondition = { type: "Accepted", status: "True", reason: "Accepted", message: `${parsed.value.spec.responseRules.length} response rule(s)` };
  await status(ctx, raw, [accepted], { lanes, activeRules: rules.size }, "provider in the plan");
}
