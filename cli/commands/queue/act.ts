// `mailfleet queue hold|release|purge|bounce`: act on a selection of queued mail without losing any.
//
// Hold moves envelopes to mf.q.<pool>.held (relay/queue/topology.ts), which no consumer reads;
// release puts them back where they came from. A move is "publish the copy, then delete the
// original", so a crash between the two leaves two copies, never none.
//
// Mail a relay is sending must not be moved (it would be delivered and then released again), and
// MF_QUEUE cannot say which messages a relay holds. So, for route and ready subjects, the command
// first pauses the pool's durable consumers (relays then fetch nothing; the pause expires by itself
// after two minutes should this process die), reads each consumer's delivered stream sequence, and
// moves only messages above it: those no relay has been given. Messages at or below it are being
// attempted (or wait for redelivery) and are left alone and counted. The consumers are resumed at
// the end. Deferred parts (sched subjects) are message schedules: on nats-server 2.14+ the held
// copy is published with the schedule cancelled in the same operation, conditional on the schedule
// still being the one read (so a schedule that fires meanwhile is not held twice); on older servers
// the copy is published, the schedule deleted, and the copy removed again if the schedule had fired.
//
// Purge deletes (with a `dropped` event per part, so the sender's record shows it); bounce records
// a permanent failure per recipient through the delivery side's Outcomes (bounced events and a DSN
// to the submitter when the domain asks for DSNs, exactly as a 5xx from a receiver would). The DSN
// is DKIM-signed as a relay signs it, with the keys of the pool's keyring Secret, read into memory
// only (a user who may not read it gets a warning, and the DSNs go out unsigned).
import { hostname } from "node:os";
import { Registry } from "prom-client";
import { Objm } from "@nats-io/obj";
import { headers as natsHeaders } from "@nats-io/transport-node";
import type { Common } from "../../lib/flags.ts";
import type { Fleet, NatsHandle } from "../../lib/fleet.ts";
import { queueConsumers, parseQueueSubject } from "../../lib/queue.ts";
import { print, printJson, table, warn } from "../../lib/output.ts";
import { whoAmI } from "../../lib/resources.ts";
import { consumers as consumerNames, OBJECT_BUCKET_LARGE, STREAM_QUEUE, subjects } from "../../../relay/queue/topology.ts";
import { Outcomes } from "../../../relay/delivery/outcomes.ts";
import { BodyStore } from "../../../relay/delivery/body.ts";
import { deliveryMetrics } from "../../../relay/delivery/metrics.ts";
import { publishEvent } from "../../../relay/delivery/events.ts";
import { buildIndex } from "../../../relay/plan/index.ts";
import { createLogger } from "../../../relay/runtime/logger.ts";
import { domainSigner, secretKeySource } from "../../../relay/accept/dkim.ts";
import { relaySecretName } from "../../../operator/render/pool.ts";
import { classifyReply } from "../../../relay/classify/index.ts";
import type { RcptResult } from "../../../relay/delivery/attempt.ts";
import type { Envelope } from "../../../relay/queue/envelope.ts";
import type { QueueKind } from "../../lib/queue.ts";
import { describe, resolvePools, scanQueue, type Item, type Selection } from "./select.ts";

export type Action = "hold" | "release" | "purge" | "bounce";

export const KINDS: Record<Action, QueueKind[]> = {
  hold: ["route", "ready", "sched"],
  release: ["held"],
  purge: ["route", "ready", "sched", "held"],
  bounce: ["route", "ready", "sched", "held"],
};

export const HEADER = {
  from: "Mailfleet-Held-From",
  at: "Mailfleet-Held-At",
  by: "Mailfleet-Held-By",
  reason: "Mailfleet-Held-Reason",
  target: "Mailfleet-Schedule-Target",
} as const;

const PAUSE_MS = 120_000;

export interface ItemResult {
  qid: string;
  part: number;
  pool: string;
  subject: string;
  seq: number;
  rcpts: number;
  result: "done" | "in-flight" | "gone" | "error" | "would";
  to?: string;
  error?: string;
}

function version(nc: NatsHandle["nc"]): [number, number] {
  const m = /^v?(\d+)\.(\d+)/.exec(nc.info?.version ?? "0.0");
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}
function atLeast(nc: NatsHandle["nc"], major: number, minor: number): boolean {
  const [a, b] = version(nc);
  return a > major || (a === major && b >= minor);
}

const gone = (e: unknown) => /no message found|not found|wrong last sequence/i.test((e as Error).message);

/** The subject a part goes back to on release (from its held headers, else from the envelope). */
export function releaseTarget(item: Item, now: number): { subject: string; schedule?: { at: Date; target: string } } {
  const env = item.env!;
  const direct = env.part === 0 || !env.provider ? subjects.route(env.pool) : subjects.ready(env.pool, env.provider);
  const from = item.headers[HEADER.from];
  const q = from ? parseQueueSubject(from) : null;
  if (!from || !q || q.kind === "held") return { subject: direct };
  if (q.kind === "sched") {
    const target = item.headers[HEADER.target] || direct;
    // Still ahead: a schedule again (the same subject holds one schedule, so a repeat replaces it).
    if (env.notBefore && env.notBefore > now + 1000) return { subject: from, schedule: { at: new Date(env.notBefore), target } };
    return { subject: target };
  }
  return { subject: from };
}

export async function act(fleet: Fleet, common: Common, action: Action, sel: Selection, o: { maxScan: number; dryRun: boolean; reason?: string }): Promise<number> {
  const h = await fleet.nats();
  sel.pools = await resolvePools(fleet, sel.pools);
  sel.kinds = KINDS[action];
  const by = await whoAmI(fleet);
  const now = Date.now();
  const plan = await fleet.plan();
  if (action === "bounce" && !plan && !o.dryRun) warn("no fleet plan in NATS: bounces are recorded, but no DSN can be sent (the plan says which domains want them)");

  // Pause the consumers of the subjects this may touch (route and ready only).
  const paused: string[] = [];
  const delivered = new Map<string, number>();
  const touchesQueues = action !== "release" && !o.dryRun;
  let keepPaused: NodeJS.Timeout | undefined;
  try {
    if (touchesQueues) {
      const cons = await queueConsumers(h);
      for (const c of cons.values()) {
        const s = parseQueueSubject(c.config.filter_subject ?? "");
        if (!s || (s.kind !== "route" && s.kind !== "ready")) continue;
        if (sel.pools.length && !sel.pools.includes(s.pool)) continue;
        if (sel.providers.length && (s.kind === "route" || !sel.providers.includes(s.provider!))) continue;
        if (c.paused) {
          // Already paused (another hold in progress, or by hand): leave it as it was.
          delivered.set(c.name, c.delivered.stream_seq);
          continue;
        }
        await h.jsm.consumers.pause(STREAM_QUEUE, c.name, new Date(Date.now() + PAUSE_MS));
        paused.push(c.name);
      }
      // What each consumer has handed out, read after the pause: nothing above it is with a relay.
      for (const name of paused) {
        const info = await h.jsm.consumers.info(STREAM_QUEUE, name);
        delivered.set(name, info.delivered.stream_seq);
      }
    }
    // Keep the pause going while this runs (a long scan must not outlive it): the delivered
    // sequences read above hold only while no relay can fetch.
    if (paused.length) {
      keepPaused = setInterval(() => {
        for (const name of paused) void h.jsm.consumers.pause(STREAM_QUEUE, name, new Date(Date.now() + PAUSE_MS)).catch(() => {});
      }, PAUSE_MS / 4);
    }
    const scan = await scanQueue(h, sel, o.maxScan);
    const results: ItemResult[] = [];
    const ctx = await context(fleet, h, action, plan, by, o.reason);
    for (const it of scan.items) {
      const env = it.env!;
      const base = { qid: env.id, part: env.part, pool: it.pool, subject: it.subject, seq: it.seq, rcpts: env.rcpts.length };
      if (it.kind === "route" || it.kind === "ready") {
        const name = it.kind === "route" ? consumerNames.route(it.pool) : consumerNames.ready(it.pool, it.provider!);
        if (!o.dryRun && it.seq <= (delivered.get(name) ?? 0)) {
          results.push({ ...base, result: "in-flight" });
          continue;
        }
      }
      if (o.dryRun) {
        results.push({ ...base, result: "would", ...(action === "release" ? { to: releaseTarget(it, now).subject } : {}) });
        continue;
      }
      try {
        const r = await ctx.run(it, env);
        results.push({ ...base, ...r });
      } catch (e) {
        results.push({ ...base, result: "error", error: (e as Error).message });
      }
    }
    return report(common, action, sel, results, scan, o.dryRun);
  } finally {
    if (keepPaused) clearInterval(keepPaused);
    for (const name of paused) await h.jsm.consumers.resume(STREAM_QUEUE, name).catch((e) => warn(`consumer ${name} could not be resumed (${(e as Error).message}); its pause ends by itself within ${PAUSE_MS / 60_000} minutes`));
  }
}

interface Ctx {
  run(it: Item, env: Envelope): Promise<Pick<ItemResult, "result" | "to">>;
}

async function context(fleet: Fleet, h: NatsHandle, action: Action, plan: Awaited<ReturnType<Fleet["plan"]>>, by: string, reason: string | undefined): Promise<Ctx> {
  const now = () => Date.now();
  const del = async (seq: number): Promise<boolean> => {
    try {
      return await h.jsm.streams.deleteMessage(STREAM_QUEUE, seq, false);
    } catch (e) {
      if (gone(e)) return false;
      throw e;
    }
  };
  let bodies: BodyStore | undefined;
  const bodyStore = async () => {
    if (bodies) return bodies;
    const large = await new Objm(h.js).open(OBJECT_BUCKET_LARGE).catch(() => undefined);
    bodies = new BodyStore(h.jsm, large, 0);
    return bodies;
  };
  /** The body goes with the message's only part (as the delivery side decides). */
  const dropBody = async (env: Envelope) => {
    if (env.parts === 1 || (env.part === 0 && !env.routed?.length)) await (await bodyStore()).delete(env.body).catch(() => {});
  };

  if (action === "hold") {
    const atomic = atLeast(h.nc, 2, 14);
    return {
      async run(it) {
        const hd = natsHeaders();
        hd.set(HEADER.from, it.subject);
        hd.set(HEADER.at, new Date(now()).toISOString());
        hd.set(HEADER.by, by);
        if (reason) hd.set(HEADER.reason, reason.slice(0, 500));
        const target = it.headers["Nats-Schedule-Target"];
        if (target) hd.set(HEADER.target, target);
        const held = subjects.held(it.pool);
        if (it.kind === "sched" && atomic) {
          try {
            await h.js.publish(held, it.data, {
              headers: hd,
              msgID: `hold:${it.seq}`,
              cancelSchedule: { scheduleSubject: it.subject },
              expect: { lastSubjectSequence: it.seq, lastSubjectSequenceSubject: it.subject },
            });
          } catch (e) {
            if (gone(e)) return { result: "gone" }; // the schedule fired or was replaced meanwhile
            throw e;
          }
          return { result: "done", to: held };
        }
        const ack = await h.js.publish(held, it.data, { headers: hd, msgID: `hold:${it.seq}` });
        if (!(await del(it.seq))) {
          // Consumed or fired between the read and now: the copy must not stay.
          await del(ack.seq);
          return { result: "gone" };
        }
        return { result: "done", to: held };
      },
    };
  }

  if (action === "release") {
    return {
      async run(it) {
        const t = releaseTarget(it, now());
        // A new id (not the envelope's <qid>:<part>): mail held and released within the duplicate
        // window would otherwise be dropped as a duplicate of its first publish.
        const msgID = `release:${it.pool}:${it.seq}`;
        if (t.schedule) await h.js.publish(t.subject, it.data, { msgID, schedule: { specification: t.schedule.at, target: t.schedule.target } });
        else await h.js.publish(t.subject, it.data, { msgID });
        await del(it.seq);
        return { result: "done", to: t.subject };
      },
    };
  }

  if (action === "purge") {
    return {
      async run(it, env) {
        await publishEvent(h.js, {
          type: "dropped",
          qid: env.id,
          part: env.part,
          pool: env.pool,
          domain: env.domain,
          ...(env.rcptDomain ? { rcptDomain: env.rcptDomain } : {}),
          ...(it.provider ?? env.provider ? { provider: it.provider ?? env.provider } : {}),
          rcpts: env.rcpts,
          class: "purged",
          reply: `purged from the queue by ${by} (mailfleet queue purge)${reason ? `: ${reason}` : ""}`,
          attempts: env.attempts,
          time: new Date(now()).toISOString(),
          ...(env.messageId ? { messageId: env.messageId } : {}),
          submitter: env.submitter,
          acceptedAt: new Date(env.acceptedAt).toISOString(),
        }, `ev:${env.id}:${env.part}:dropped:purge:${it.seq}`);
        if (!(await del(it.seq))) return { result: "gone" };
        await dropBody(env);
        return { result: "done" };
      },
    };
  }

  // bounce: the delivery side's outcome path, as for a permanent reply from a receiver.
  const index = plan ? buildIndex(plan, "") : undefined;
  const log = createLogger({ level: "warn", write: (l) => process.stderr.write(l + "\n") });
  const reply = `550 5.0.0 Bounced by the mail administrator (mailfleet queue bounce)${reason ? `: ${reason.replace(/[\r\n]+/g, " ").slice(0, 300)}` : ""}`;
  const cls = classifyReply(reply);
  const outcomesByPool = new Map<string, Outcomes>();
  // The pool's keyring Secret, for signing DSNs: undefined (with a warning) when it cannot be read.
  const signer = async (pool: string) => {
    const [ns, name] = pool.split("/") as [string, string];
    const secret = relaySecretName(name);
    try {
      const kube = await fleet.kube();
      const s = await kube.request<{ data?: Record<string, string> }>("GET", `/api/v1/namespaces/${ns}/secrets/${secret}`, { timeoutMs: 10_000 });
      return domainSigner(secretKeySource(s.data ?? {}), Date.now);
    } catch (e) {
      warn(`DSNs of pool ${pool} go out unsigned: cannot read its keyring Secret ${ns}/${secret} (${(e as Error).message})`);
      return undefined;
    }
  };
  const outcomes = async (pool: string) => {
    let oc = outcomesByPool.get(pool);
    if (!oc) {
      const host = plan?.pools.find((p) => p.id === pool)?.addresses[0]?.hostname ?? hostname();
      const sign = plan ? await signer(pool) : undefined;
      oc = new Outcomes({
        js: h.js, bodies: await bodyStore(), pool, plan: () => index, metrics: deliveryMetrics(new Registry()), log, now, reportingMta: host,
        ...(sign ? { sign } : {}),
      });
      outcomesByPool.set(pool, oc);
    }
    return oc;
  };
  return {
    async run(it, env) {
      const results: RcptResult[] = env.rcpts.map((rcpt) => ({ rcpt, reply, code: "550", ...(cls.enhanced ? { enhanced: cls.enhanced } : {}), class: cls.class, permanent: true }));
      // Outcome first, then the envelope goes (as a relay acks last): a crash in between bounces
      // again with the same event ids and DSN queue id, which are deduplicated.
      await (await outcomes(it.pool)).record(env, results, {});
      if (!(await del(it.seq))) return { result: "gone" };
      await dropBody(env);
      return { result: "done" };
    },
  };
}

function report(common: Common, action: Action, sel: Selection, results: ItemResult[], scan: { scanned: number; total: number; truncated: boolean }, dryRun: boolean): number {
  const count = (r: ItemResult["result"]) => results.filter((x) => x.result === r);
  const done = count(dryRun ? "would" : "done");
  const inFlight = count("in-flight");
  const goneItems = count("gone");
  const errors = count("error");
  const rcpts = done.reduce((n, x) => n + x.rcpts, 0);
  if (common.output === "json") {
    printJson({
      action, dryRun, selection: describe(sel),
      matched: results.length, done: done.length, recipients: rcpts, inFlight: inFlight.length, gone: goneItems.length, errors: errors.length,
      scan, items: results,
    });
  } else {
    const verb = { hold: "held", release: "released", purge: "purged", bounce: "bounced" }[action];
    const lines: string[] = [];
    if (!results.length) {
      lines.push(`nothing to ${action}: no queued mail matches ${describe(sel)}${scan.truncated ? ` in the first ${scan.scanned} of ${scan.total} envelopes (--max-scan reads more)` : ""}`);
    } else {
      lines.push(`${dryRun ? `would ${action}` : verb} ${done.length} part${done.length === 1 ? "" : "s"} (${rcpts} recipient${rcpts === 1 ? "" : "s"}) of ${describe(sel)}`);
      const shown = (dryRun ? done : results).slice(0, 50);
      lines.push(table(["qid", "part", "pool", "from", "recipients", "result"], shown.map((r) => [
        r.qid, r.part, r.pool, r.subject.split(".").slice(3).join(".").replace(/^sched\.[^.]+\.\d+$/, "deferred"), r.rcpts, r.result === "would" ? (r.to ? `would go to ${r.to}` : `would ${action}`) : r.result + (r.error ? `: ${r.error}` : ""),
      ])));
      if (results.length > shown.length) lines.push(`(${results.length - shown.length} more; -o json lists all)`);
      if (inFlight.length) lines.push(`${inFlight.length} part${inFlight.length === 1 ? " was" : "s were"} being attempted by a relay and left alone; run again once they are done`);
      if (goneItems.length) lines.push(`${goneItems.length} left the queue meanwhile (delivered, or a deferral fired): run again to catch them where they went`);
      if (scan.truncated) lines.push(`read the first ${scan.scanned} of ${scan.total} envelopes: run again (or raise --max-scan) for the rest`);
      if (action === "hold" && !dryRun && done.length) lines.push("`mailfleet queue release` with the same selection sends them on");
    }
    print(lines.join("\n"));
  }
  if (errors.length) {
    process.stderr.write(`mailfleet queue ${action}: ${errors.length} failed: ${errors[0]!.error}\n`);
    return 1;
  }
  if (!results.length && sel.qids.length) {
    process.stderr.write(`mailfleet queue ${action}: queue id ${sel.qids.join(", ")} not found in the queue\n`);
    return 1;
  }
  return 0;
}
