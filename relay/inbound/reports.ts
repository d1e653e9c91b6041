// What arrives at the return-path domains: asynchronous bounces (RFC 3464 DSNs sent to the VERP
// address b-<qid>@<return-path domain>) and feedback-loop reports (RFC 5965 ARF, sent to the
// fbl@/abuse@ addresses the providers' FBL programmes are given). Each becomes events (and
// suppressions), published before the inbound listener answers 250, so a report is never lost:
// a NATS failure answers 451 and the reporter tries again.
//
// How a report finds its lane (source address x provider), its message and its sending domain:
// - queue id: the VERP local part of the address the DSN came to (or, for ARF, of the original
//   message's Return-Path / Original-Mail-From);
// - sending domain and pool: the return-path domain (plan domains map one to the other), else the
//   original From domain;
// - source address: ARF Source-IP when it is one of the pool's addresses; otherwise the receiver's
//   Received header in the returned original ("from out1... ([127.0.31.1])"), the first bracketed
//   address that is one of the pool's;
// - provider: the complainer's (or bounced recipient's) domain through the same MX routing and
//   rollup as delivery (so a complaint from a Workspace-hosted company counts against Google).
import type { JetStreamClient } from "@nats-io/jetstream";
import type { DomainPlan } from "../../api/plan.ts";
import type { PlanIndex } from "../plan/index.ts";
import type { Logger } from "../runtime/logger.ts";
import { classifyDsn, parseArf, type ArfReport, type DsnRecipient } from "../classify/index.ts";
import { parseVerp } from "../queue/envelope.ts";
import type { Router } from "../routing/router.ts";
import { domainOf } from "../routing/split.ts";
import { digest, publishEvent, type MailEvent } from "../delivery/events.ts";
import type { DeliveryMetrics } from "../delivery/metrics.ts";
import { HARD_BOUNCE_CLASSES, type Suppressor } from "../delivery/outcomes.ts";

/** Local parts taken at each return-path domain besides b-<qid> (VERP). */
export const REPORT_MAILBOXES = ["fbl", "abuse", "postmaster"] as const;

export type InboundKind = "dsn" | "arf" | "other";

export interface InboundDeps {
  js: JetStreamClient;
  plan: () => PlanIndex | undefined;
  router: Router;
  suppressor?: Suppressor;
  metrics: DeliveryMetrics;
  log: Logger;
  now: () => number;
}

/** The plan domain whose return-path domain this is. */
export function domainForReturnPath(plan: PlanIndex, rpDomain: string): DomainPlan | undefined {
  const d = rpDomain.toLowerCase();
  return plan.plan.domains.find((x) => x.returnPathDomain.toLowerCase() === d);
}

/** Whether the inbound listener takes mail for this address (anything else: 550 5.7.1). */
export function acceptsRecipient(plan: PlanIndex, address: string): boolean {
  const at = address.lastIndexOf("@");
  if (at <= 0) return false;
  const local = address.slice(0, at).toLowerCase();
  if (!domainForReturnPath(plan, address.slice(at + 1))) return false;
  return parseVerp(address) !== null || (REPORT_MAILBOXES as readonly string[]).includes(local);
}

/**
 * The first IPv4 address in the report's Received header lines that is one of `addresses`: the
 * receiver's Received header in the returned original names the client address, bracketed
 * (Postfix, Exchange: "([127.0.31.1])") or bare (Yahoo: "from 198.51.100.7 (EHLO ...)").
 */
export function sourceFromReceived(raw: string, addresses: Set<string>): string | undefined {
  const received = raw.split(/\r?\n(?![ \t])/).filter((l) => /^received:/i.test(l));
  for (const line of received) {
    for (const m of line.matchAll(/(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])/g)) if (addresses.has(m[1]!)) return m[1];
  }
  return undefined;
}

async function providerOf(deps: InboundDeps, plan: PlanIndex, address: string | undefined): Promise<string | undefined> {
  if (!address) return undefined;
  const d = domainOf(address);
  if (!d) return undefined;
  const decision = await Promise.race([deps.router.decide(d, plan), new Promise<null>((r) => setTimeout(() => r(null), 5000).unref())]).catch(() => null);
  return decision?.kind === "deliver" ? decision.provider : undefined;
}

function poolAddresses(plan: PlanIndex, pool: string): Set<string> {
  return new Set(plan.pools.get(pool)?.addresses.map((a) => a.address) ?? []);
}

/** A report that cannot be read (malformed MIME, not a DSN or ARF after all): it will not read next time either. */
export class UnreadableReport extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnreadableReport";
  }
}

async function read<T>(what: string, parse: () => Promise<T>): Promise<T> {
  try {
    return await parse();
  } catch (e) {
    throw new UnreadableReport(`${what}: ${(e as Error).message}`);
  }
}

export async function processInbound(raw: Buffer, rcpts: string[], deps: InboundDeps): Promise<{ kind: InboundKind; events: number }> {
  const plan = deps.plan();
  if (!plan) throw new Error("no fleet plan yet");
  const id = digest(raw.toString("latin1"));
  const text = raw.toString("latin1");
  const isReport = (t: string) => new RegExp(`^content-type:\\s*multipart/report;[^]*?report-type="?${t}`, "im").test(text);

  if (isReport("feedback-report")) {
    const arf = await read("parseArf", () => parseArf(raw));
    const n = await complaint(arf, rcpts, text, id, plan, deps);
    return { kind: "arf", events: n };
  }
  if (isReport("delivery-status")) {
    const dsn = await read("classifyDsn", () => classifyDsn(raw));
    const n = await bounces(dsn, rcpts, text, id, plan, deps);
    return { kind: "dsn", events: n };
  }
  // Auto-replies, challenge-responses, mail to postmaster: nothing to record.
  return { kind: "other", events: 0 };
}

async function bounces(list: DsnRecipient[], rcpts: string[], text: string, id: string, plan: PlanIndex, deps: InboundDeps): Promise<number> {
  const verpRcpt = rcpts.find((r) => parseVerp(r));
  const qidFromRcpt = verpRcpt ? parseVerp(verpRcpt) : null;
  const rp = (verpRcpt ?? rcpts[0] ?? "").split("@").pop() ?? "";
  const domain = domainForReturnPath(plan, rp);
  if (!domain) return 0;
  const source = sourceFromReceived(text, poolAddresses(plan, domain.pool));
  let n = 0;
  for (const [i, r] of list.entries()) {
    const qid = qidFromRcpt ?? (r.verp ? parseVerp(`${r.verp}@x`) : null);
    const provider = await providerOf(deps, plan, r.recipient);
    const type = r.permanent ? "bounced" : "deferred";
    const e: MailEvent = {
      type,
      qid: qid ?? "",
      part: 0,
      pool: domain.pool,
      domain: domain.domain,
      rcptDomain: domainOf(r.recipient),
      ...(provider ? { provider } : {}),
      ...(source ? { source } : {}),
      rcpts: [r.recipient],
      class: r.class,
      reply: r.diagnosticCode ?? r.status,
      attempts: 0,
      time: new Date(deps.now()).toISOString(),
      ...(r.remoteMta ? { mx: r.remoteMta } : {}),
      async: true,
    };
    await publishEvent(deps.js, e, `ev:in:${id}:${i}`);
    n++;
    const labels = { pool: domain.pool, source_ip: source ?? "", provider: provider ?? "", class: r.class };
    if (r.permanent) deps.metrics.bounced.inc(labels);
    else deps.metrics.deferred.inc(labels);
    if (r.permanent && HARD_BOUNCE_CLASSES.has(r.class) && deps.suppressor) {
      await deps.suppressor.suppress({ address: r.recipient, scope: "global", reason: "hard-bounce", ttlMs: domain.suppression.hardBounceTtlMs, ...(qid ? { qid } : {}), class: r.class });
    }
  }
  return n;
}

async function complaint(arf: ArfReport, rcpts: string[], text: string, id: string, plan: PlanIndex, deps: InboundDeps): Promise<number> {
  const h = arf.originalHeaders;
  // The message it is about: VERP in its Return-Path (or the report's Original-Mail-From).
  const verp = [h.returnPath, arf.originalMailFrom, ...rcpts].map((a) => (a ? parseVerp(a) : null)).find(Boolean) ?? null;
  const rpCandidates = [h.returnPath, arf.originalMailFrom, ...rcpts].filter(Boolean).map((a) => a!.split("@").pop()!);
  let domain = rpCandidates.map((d) => domainForReturnPath(plan, d)).find(Boolean);
  if (!domain && h.from) domain = plan.domains.get(domainOf(h.from));
  if (!domain) {
    deps.log.warn("feedback report for no known domain", { reporter: arf.userAgent, reportedDomain: arf.reportedDomain });
    return 0;
  }
  const complainer = arf.originalRcptTo ?? (h.to ? h.to.replace(/^.*<|>.*$/g, "") : undefined);
  const addresses = poolAddresses(plan, domain.pool);
  const source = arf.sourceIp && addresses.has(arf.sourceIp) ? arf.sourceIp : sourceFromReceived(text, addresses);
  const provider = await providerOf(deps, plan, complainer);
  const e: MailEvent = {
    type: "complained",
    qid: verp ?? "",
    part: 0,
    pool: domain.pool,
    domain: domain.domain,
    ...(complainer ? { rcptDomain: domainOf(complainer) } : {}),
    ...(provider ? { provider } : {}),
    ...(source ? { source } : {}),
    rcpts: complainer ? [complainer] : [],
    feedbackType: arf.feedbackType,
    attempts: 0,
    time: new Date(deps.now()).toISOString(),
    ...(h.messageId ? { messageId: h.messageId } : {}),
    async: true,
  };
  await publishEvent(deps.js, e, `ev:in:${id}:arf`);
  deps.metrics.complaints.inc({ pool: domain.pool, source_ip: source ?? "", provider: provider ?? "" });
  // "not-spam" reports say the opposite; everything else stops mail from this domain to them.
  if (complainer && arf.feedbackType !== "not-spam" && deps.suppressor) {
    await deps.suppressor.suppress({ address: complainer, scope: "domain", domain: domain.domain, reason: "complaint", ttlMs: domain.suppression.complaintTtlMs, ...(verp ? { qid: verp } : {}) });
  }
  return 1;
}
