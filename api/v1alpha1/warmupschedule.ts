// WarmupSchedule: how a new lane (source IP x provider) earns its volume. Stages say how much a
// lane may send per warm-up day once it has completed that many qualifying days; gates say when a
// lane may move on; onFailure says what happens when it may not.
import { z } from "zod";
import { commonStatus, duration, fraction, k8s, objectName, unique } from "./common.ts";

export const stage = z.object({
  day: z.number().int().min(1).max(3650).describe("First warm-up day (1-based count of qualifying days) this stage applies to."),
  daily: z.number().int().min(1).max(100_000_000).describe("Messages per lane per day."),
  hourly: z.number().int().min(1).max(100_000_000).optional()
    .describe("Messages per lane per hour (a day is cut into 24 hours); default daily/12, so a day's volume is spread out."),
});
export type Stage = z.infer<typeof stage>;

/** Stages must be listed by ascending day and never shrink: the API server refuses it. */
const stageRules = [
  { rule: "self.map(s, s.day).isSorted()", message: "stages must be listed by ascending day" },
  { rule: "self.map(s, s.daily).isSorted()", message: "stages must not shrink: daily volume must not decrease from one stage to the next" },
];

function checkStages(stages: Stage[], ctx: z.RefinementCtx): void {
  for (let i = 1; i < stages.length; i++) {
    const prev = stages[i - 1]!;
    const cur = stages[i]!;
    if (cur.day <= prev.day) ctx.addIssue({ code: "custom", path: [i, "day"], message: "stages must be listed by ascending day" });
    if (cur.daily < prev.daily) {
      ctx.addIssue({ code: "custom", path: [i, "daily"], message: "stages must not shrink: daily volume must not decrease from one stage to the next" });
    }
  }
}

export const stages = k8s(
  z.array(stage).min(1).max(100).superRefine(checkStages),
  { cel: stageRules, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["day"] },
);

export const warmupScheduleSpec = z.object({
  period: duration.default("24h").describe("Length of one warm-up day. Shorter periods are for tests on an accelerated clock."),
  stages: stages.describe("The default curve for every provider."),
  providers: k8s(
    z.array(z.object({ provider: objectName.describe("MailboxProvider name."), stages })).max(32).superRefine(unique("provider")).default([]),
    { "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["provider"] },
  ).describe("Per-provider curves that replace the default for that provider."),
  advance: z.object({
    minUsage: fraction.default(0.5).describe("A day counts as a step only when the lane used at least this share of its quota."),
    maxBounceRate: fraction.default(0.05).describe("Advance only when bounces / attempted stayed below this over the stage."),
    maxDeferralRate: fraction.default(0.2).describe("Advance only when deferrals / attempted stayed below this over the stage."),
    maxComplaintRate: fraction.default(0.001).describe("Advance only when complaints / delivered stayed below this over the stage."),
    minSample: z.number().int().min(0).max(1_000_000).default(20).describe("Rates are judged only over at least this many attempts."),
  }).default({ minUsage: 0.5, maxBounceRate: 0.05, maxDeferralRate: 0.2, maxComplaintRate: 0.001, minSample: 20 }),
  onFailure: z.object({
    action: z.enum(["Hold", "StepBack"]).default("StepBack").describe("Hold keeps the stage; StepBack holds, then steps back after stepBackAfter failed days."),
    stepBackAfter: z.number().int().min(1).max(30).default(2).describe("Consecutive failed days before stepping back."),
    stepBackBy: z.number().int().min(1).max(30).default(1).describe("Stages to step back."),
  }).default({ action: "StepBack", stepBackAfter: 2, stepBackBy: 1 }),
});

export const warmupScheduleStatus = z.object({
  ...commonStatus,
  stages: z.number().int().min(0).optional(),
  fullVolumeDay: z.number().int().min(0).optional().describe("The day the last stage begins: the fewest days to full volume."),
  pools: z.number().int().min(0).optional().describe("IPPools warming on this schedule."),
});

export type WarmupScheduleSpec = z.infer<typeof warmupScheduleSpec>;
