// mailfleet lane: manual lane overrides, written to the IPPool annotation mailfleet.io/lane-overrides.
// The operator compiles them into the plan (manual wins over automation until released), so this
// command needs only the Kubernetes API; --wait also watches the plan in NATS.
import { setTimeout as sleep } from "node:timers/promises";
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, durationFlag, parseWith, positionals as pos, stringFlag } from "../lib/flags.ts";
import { withFleet, type Fleet } from "../lib/fleet.ts";
import { getPool, getSchedule, id, listProviders, whoAmI } from "../lib/resources.ts";
import { editOverrides, parseOverrides } from "../lib/lanes.ts";
import { print, printJson, when } from "../lib/output.ts";
import { ApiError, pathOf, RESOURCES } from "../../operator/runtime/kube.ts";
import { LANE_OVERRIDES_ANNOTATION, PAUSED_ANNOTATION, laneKey, type IPPool, type LaneOverride } from "../../api/v1alpha1/index.ts";
import { stagesFor } from "../../operator/plan/compile.ts";

const usage = `usage: mailfleet lane suspend <pool> <address> <provider> [--for 2h | --until TIME] [--reason TEXT]
       mailfleet lane resume <pool> <address> <provider>
       mailfleet lane hold <pool> <address> <provider> [--reason TEXT]
       mailfleet lane unhold <pool> <address> <provider>
       mailfleet lane set-stage <pool> <address> <provider> <stage> [--reason TEXT]
       mailfleet lane set-stage <pool> <address> <provider> --clear

  A lane is one source address of a pool at one mailbox provider. These write the pool's
  ${LANE_OVERRIDES_ANNOTATION} annotation; the operator puts it in the plan the relays follow, and
  a manual state wins over automation (response rules, warm-up, reputation) until released.

  suspend     the lane sends nothing until resumed, or until --for/--until has passed
  resume      release a manual suspension (automation decides again)
  hold        freeze the lane's warm-up stage (the warm-up engine neither advances nor steps back)
  unhold      release the hold
  set-stage   put the lane on warm-up stage <stage> (0-based, as in \`mailfleet warmup\`); --clear
              returns the stage to the warm-up engine

  <pool> is NAMESPACE/NAME or NAME; <address> or <provider> may be "*" for every address of the
  pool or every provider.

  --for DUR       suspend for this long (90s, 30m, 2h, 7d)
  --until TIME    suspend until this RFC 3339 time
  --reason TEXT   recorded with the override (shown by status)
  --wait          wait until the plan in NATS shows the change
  --timeout DUR   how long --wait waits (default 2m); not in the plan by then: exit 1

${COMMON_USAGE}`;

const SUBS = ["suspend", "resume", "hold", "unhold", "set-stage"] as const;
type Sub = (typeof SUBS)[number];

export const command: Command = {
  summary: "suspend, resume, hold or set the warm-up stage of a lane by hand (IPPool annotation)",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, {
      for: { type: "string" },
      until: { type: "string" },
      reason: { type: "string" },
      clear: { type: "boolean", default: false },
      wait: { type: "boolean", default: false },
      timeout: { type: "string" },
    });
    const [sub, ...rest] = positionals;
    if (!sub) throw new UsageError(`missing subcommand (${SUBS.join(", ")})`);
    if (!(SUBS as readonly string[]).includes(sub)) throw new UsageError(`unknown subcommand "${sub}" (${SUBS.join(", ")})`);
    const s = sub as Sub;
    const clear = values.clear === true;
    const names = s === "set-stage" && !clear ? ["pool", "address", "provider", "stage"] : ["pool", "address", "provider"];
    const [poolRef, address, provider, stageText] = pos(rest, names);
    const forMs = durationFlag(values, "for");
    const untilText = stringFlag(values, "until");
    const reason = stringFlag(values, "reason");
    const timeoutMs = durationFlag(values, "timeout") ?? 120_000;
    if ((forMs !== undefined || untilText !== undefined) && s !== "suspend") throw new UsageError("--for and --until go with suspend");
    if (forMs !== undefined && untilText !== undefined) throw new UsageError("give --for or --until, not both");
    if (clear && s !== "set-stage") throw new UsageError("--clear goes with set-stage");
    let until: string | undefined;
    if (untilText !== undefined) {
      const t = Date.parse(untilText);
      if (!/^\d{4}-\d{2}-\d{2}T/.test(untilText) || !Number.isFinite(t)) throw new UsageError(`--until must be an RFC 3339 time such as 2026-05-01T12:00:00Z, got "${untilText}"`);
      if (t <= Date.now()) throw new UsageError(`--until ${untilText} is in the past`);
      until = new Date(t).toISOString();
    }
    if (forMs !== undefined) until = new Date(Date.now() + forMs).toISOString();
    let stage: number | undefined;
    if (stageText !== undefined) {
      if (!/^[0-9]+$/.test(stageText)) throw new UsageError(`<stage> must be a whole number (0-based), got "${stageText}"`);
      stage = Number(stageText);
    }

    return withFleet(common, async (fleet) => {
      const pool = await getPool(fleet, poolRef!, common.namespace);
      const addresses = await pickAddresses(pool, address!);
      const providers = await pickProviders(fleet, provider!);
      if (stage !== undefined) await checkStage(fleet, pool, providers, stage);
      const by = await whoAmI(fleet);
      const change: { [K in keyof LaneOverride]?: LaneOverride[K] | null } =
        s === "suspend" ? { state: "Suspended", until: until ?? null, reason: reason ?? null, by }
        : s === "resume" ? { state: null, until: null }
        : s === "hold" ? { hold: true, by, ...(reason ? { reason } : {}) }
        : s === "unhold" ? { hold: null }
        : clear ? { stage: null } : { stage: stage!, by, ...(reason ? { reason } : {}) };
      const keys = addresses.flatMap((a) => providers.map((p) => laneKey(a, p)));
      const { pool: written, before, after } = await writeOverrides(fleet, pool, (cur) => {
        let next = cur;
        for (const k of keys) next = editOverrides(next, k, change);
        return next;
      });
      const notes: string[] = [];
      if (written.metadata.annotations?.[PAUSED_ANNOTATION] === "true") {
        notes.push(`IPPool ${id(written)} is paused (${PAUSED_ANNOTATION}=true): the operator applies this only when the pause is lifted`);
      }
      if (s === "resume" && keys.every((k) => before[k]?.state !== "Suspended")) notes.push("no manual suspension was set on " + (keys.length === 1 ? "this lane" : "these lanes"));
      if (s === "unhold" && keys.every((k) => !before[k]?.hold)) notes.push("no hold was set on " + (keys.length === 1 ? "this lane" : "these lanes"));
      let applied: boolean | undefined;
      if (values.wait === true) applied = await waitForPlan(fleet, id(written), keys, s, stage, clear, timeoutMs);
      const lanes = keys.map((k) => ({ lane: k, override: after[k] ?? null }));
      if (common.output === "json") {
        printJson({ pool: id(written), action: s, lanes, notes, ...(applied !== undefined ? { inPlan: applied } : {}) });
      } else {
        const what = s === "suspend" ? `suspended${until ? ` until ${until} (${when(until, Date.now())})` : " until resumed"}`
          : s === "resume" ? "resumed (manual suspension released)"
          : s === "hold" ? "warm-up stage held"
          : s === "unhold" ? "warm-up hold released"
          : clear ? "warm-up stage returned to the warm-up engine" : `set to warm-up stage ${stage}`;
        const lines = [`${id(written)}: ${keys.length === 1 ? `lane ${keys[0]}` : `${keys.length} lanes`} ${what}`];
        if (keys.length > 1) lines.push(...keys.map((k) => `  ${k}`));
        lines.push(applied === undefined ? "the operator puts it in the plan; `mailfleet status` shows it (or use --wait)" : applied ? "the plan shows it" : "");
        for (const n of notes) lines.push(`note: ${n}`);
        print(lines.filter(Boolean).join("\n"));
      }
      if (applied === false) {
        process.stderr.write(`mailfleet lane: the plan did not show the change within ${Math.round(timeoutMs / 1000)}s (is the operator running?)\n`);
        return 1;
      }
      return 0;
    });
  },
};

async function pickAddresses(pool: IPPool, address: string): Promise<string[]> {
  const all = pool.spec.addresses.map((a) => a.address);
  if (address === "*") return all;
  if (!all.includes(address)) throw new Error(`${address} is not an address of IPPool ${id(pool)} (addresses: ${all.join(", ")})`);
  return [address];
}

async function pickProviders(fleet: Fleet, provider: string): Promise<string[]> {
  const names = (await listProviders(fleet)).map((p) => p.metadata.name);
  if (!names.includes("default")) names.push("default"); // the plan always has one
  names.sort();
  if (provider === "*") return names;
  if (!names.includes(provider)) throw new Error(`MailboxProvider ${provider} not found (providers: ${names.join(", ")})`);
  return [provider];
}

async function checkStage(fleet: Fleet, pool: IPPool, providers: string[], stage: number): Promise<void> {
  const ref = pool.spec.warmupScheduleRef;
  if (!ref) throw new Error(`IPPool ${id(pool)} does not warm up (no warmupScheduleRef): its lanes have no stages`);
  const schedule = await getSchedule(fleet, pool.metadata.namespace!, ref.name);
  if (!schedule) throw new Error(`WarmupSchedule ${pool.metadata.namespace}/${ref.name} (of IPPool ${id(pool)}) not found`);
  for (const p of providers) {
    const n = stagesFor(schedule, p).length;
    if (stage >= n) throw new Error(`stage ${stage} does not exist for ${p} on WarmupSchedule ${pool.metadata.namespace}/${ref.name}: stages are 0 to ${n - 1}`);
  }
}

/**
 * Read-modify-write of the annotation with the object's resourceVersion as a precondition (a merge
 * patch carrying metadata.resourceVersion fails with 409 when someone wrote in between): retried.
 */
async function writeOverrides(fleet: Fleet, pool: IPPool, edit: (cur: Record<string, LaneOverride>) => Record<string, LaneOverride>):
  Promise<{ pool: IPPool; before: Record<string, LaneOverride>; after: Record<string, LaneOverride> }> {
  const kube = await fleet.kube();
  const path = pathOf(RESOURCES.IPPool, pool.metadata.namespace, pool.metadata.name);
  let cur = pool;
  for (let attempt = 0; ; attempt++) {
    const parsed = parseOverrides(cur);
    if (parsed.error) throw new Error(`${parsed.error}; fix or remove the annotation first (kubectl annotate ippool -n ${cur.metadata.namespace} ${cur.metadata.name} ${LANE_OVERRIDES_ANNOTATION}-)`);
    const after = edit(parsed.overrides);
    const value = Object.keys(after).length ? JSON.stringify(sortKeys(after)) : null;
    try {
      const written = await kube.request<IPPool>("PATCH", path, {
        query: { fieldManager: "mailfleet-cli" },
        contentType: "application/merge-patch+json",
        body: { metadata: { resourceVersion: cur.metadata.resourceVersion, annotations: { [LANE_OVERRIDES_ANNOTATION]: value } } },
      });
      return { pool: written, before: parsed.overrides, after };
    } catch (e) {
      if (e instanceof ApiError && e.code === 409 && attempt < 5) {
        const fresh = await kube.get<IPPool>(RESOURCES.IPPool, pool.metadata.namespace, pool.metadata.name);
        if (!fresh) throw new Error(`IPPool ${id(pool)} was deleted meanwhile`);
        cur = fresh;
        continue;
      }
      if (e instanceof ApiError) throw new Error(`writing the ${LANE_OVERRIDES_ANNOTATION} annotation of IPPool ${id(pool)} failed: ${e.message}`);
      throw e;
    }
  }
}

function sortKeys(o: Record<string, LaneOverride>): Record<string, LaneOverride> {
  return Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]!]));
}

/** Polls the plan until every lane shows the change (true), or the timeout passes (false). */
async function waitForPlan(fleet: Fleet, poolId: string, keys: string[], s: Sub, stage: number | undefined, clear: boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const plan = await fleet.freshPlan();
    const lanes = plan?.pools.find((p) => p.id === poolId)?.lanes ?? [];
    const ok = keys.every((k) => {
      const l = lanes.find((x) => laneKey(x.address, x.provider) === k);
      if (!l) return false;
      if (s === "suspend") return l.state === "Suspended" && l.manual === true;
      if (s === "resume") return !(l.state === "Suspended" && l.manual);
      if (s === "set-stage" && !clear) return l.stage === stage;
      return true; // hold/unhold/clear change nothing the plan shows directly
    });
    if (ok) return true;
    if (Date.now() > deadline) return false;
    await sleep(1000);
  }
}
