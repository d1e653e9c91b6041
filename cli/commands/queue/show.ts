// `mailfleet queue show <qid>` and `queue find --rcpt <addr>`: where a message is (each part: route,
// ready and waiting or in flight, deferred until, held), its headers, and its events.
import { simpleParser } from "mailparser";
import type { ConsumerInfo } from "@nats-io/jetstream";
import type { Common } from "../../lib/flags.ts";
import type { Fleet, NatsHandle } from "../../lib/fleet.ts";
import { queueConsumers, streamSubjects } from "../../lib/queue.ts";
import { nextMessage } from "../../lib/stream.ts";
import { readEvents, type StoredEvent } from "../../lib/events.ts";
import { clip, print, printJson, table, when } from "../../lib/output.ts";
import { consumers as consumerNames, STREAM_BODY, STREAM_QUEUE, subjects, token } from "../../../relay/queue/topology.ts";
import { headerBlock } from "../../../relay/delivery/dsn.ts";
import { refOf } from "../../../relay/delivery/body.ts";
import type { Envelope } from "../../../relay/queue/envelope.ts";
import { scanQueue, toItem, type Item, type Selection } from "./select.ts";

export interface PartView {
  qid: string;
  part: number;
  pool: string;
  state: string;
  subject: string;
  seq: number;
  provider?: string;
  domain: string;
  rcptDomain?: string;
  rcpts: string[];
  mailFrom: string;
  attempts: number;
  acceptedAt: string;
  storedAt: string;
  notBefore?: string;
  lastReply?: string;
  lastClass?: string;
  heldBy?: string;
  heldAt?: string;
  messageId?: string;
  submitter: string;
  size: number;
}

/** A part's state in words: where it is, and for ready parts whether a relay has it now. */
export function partState(it: Item, cons: Map<string, ConsumerInfo>): string {
  if (it.kind === "held") return "held";
  if (it.kind === "sched") return "deferred";
  const name = it.kind === "route" ? consumerNames.route(it.pool) : consumerNames.ready(it.pool, it.provider!);
  const c = cons.get(name);
  const delivered = c?.delivered.stream_seq ?? 0;
  const where = it.kind === "route" ? "routing" : "ready";
  return it.seq <= delivered ? `${where}, being attempted` : `${where}, waiting${c?.paused ? " (consumer paused)" : ""}`;
}

export function partView(it: Item, cons: Map<string, ConsumerInfo>): PartView {
  const e = it.env!;
  return {
    qid: e.id,
    part: e.part,
    pool: it.pool,
    state: partState(it, cons),
    subject: it.subject,
    seq: it.seq,
    ...(it.provider ?? e.provider ? { provider: it.provider ?? e.provider } : {}),
    domain: e.domain,
    ...(e.rcptDomain ? { rcptDomain: e.rcptDomain } : {}),
    rcpts: e.rcpts,
    mailFrom: e.mailFrom,
    attempts: e.attempts,
    acceptedAt: new Date(e.acceptedAt).toISOString(),
    storedAt: new Date(it.storedAt).toISOString(),
    ...(e.notBefore ? { notBefore: new Date(e.notBefore).toISOString() } : {}),
    ...(e.lastReply ? { lastReply: e.lastReply } : {}),
    ...(e.lastClass ? { lastClass: e.lastClass } : {}),
    ...(it.headers["Mailfleet-Held-By"] ? { heldBy: it.headers["Mailfleet-Held-By"] } : {}),
    ...(it.headers["Mailfleet-Held-At"] ? { heldAt: it.headers["Mailfleet-Held-At"] } : {}),
    ...(e.messageId ? { messageId: e.messageId } : {}),
    submitter: e.submitter,
    size: e.size,
  };
}

async function bodyHeaders(h: NatsHandle, env: Envelope | undefined, qid: string): Promise<Record<string, string> | { stored: string } | null> {
  const ref = env ? refOf(env.body) : { subject: subjects.body(qid) };
  if ("object" in ref) return { stored: `object ${ref.object} in the object store` };
  try {
    const m = await h.jsm.streams.getMessage(STREAM_BODY, { last_by_subj: ref.subject });
    if (!m) return null;
    const parsed = await simpleParser(headerBlock(Buffer.from(m.data)) + "\r\n", { skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true });
    const out: Record<string, string> = {};
    for (const k of ["from", "to", "cc", "subject", "date", "message-id"]) {
      const v = parsed.headers.get(k);
      if (v === undefined) continue;
      out[k] = typeof v === "string" ? v : v instanceof Date ? v.toISOString() : (v as { text?: string }).text ?? JSON.stringify(v);
    }
    return out;
  } catch (e) {
    if (/no message found|not found/i.test((e as Error).message)) return null;
    throw e;
  }
}

function eventRows(events: StoredEvent[], now: number) {
  return events.map((e) => [when(e.time, now), e.type, e.part, clip(e.rcpts.join(","), 40), e.source, e.provider, clip(e.reply, 70)]);
}

function partRows(parts: PartView[], now: number) {
  return parts.map((p) => [
    p.qid, p.part, p.pool, p.state, p.provider ?? "(not routed)", clip(p.rcpts.join(","), 40), p.attempts,
    p.notBefore ? when(p.notBefore, now) : undefined, clip(p.lastReply, 50),
  ]);
}

export async function show(fleet: Fleet, common: Common, qid: string, o: { maxScan: number; sinceMs: number }): Promise<number> {
  const h = await fleet.nats();
  const cons = await queueConsumers(h);
  const items: Item[] = [];
  // Deferred parts carry the queue id in their subject: found without a scan.
  for (const subject of Object.keys(await streamSubjects(h, `mf.q.*.sched.${qid}.*`))) {
    const m = await nextMessage(h.nc, STREAM_QUEUE, 0, subject);
    const it = m && toItem(m);
    if (it?.env) items.push(it);
  }
  const sel: Selection = { pools: [], providers: [], domains: [], rcptDomains: [], qids: [qid], rcpts: [], kinds: ["route", "ready", "held"] };
  const r = await scanQueue(h, sel, o.maxScan);
  items.push(...r.items);
  items.sort((a, b) => a.env!.part - b.env!.part || a.seq - b.seq);
  const parts = items.map((it) => partView(it, cons));
  const first = items[0]?.env;
  const now = Date.now();
  const since = first ? first.acceptedAt - 60_000 : now - o.sinceMs;
  const pool = items[0]?.pool;
  const ev = await readEvents(h, { filter: pool ? `mf.ev.${token(pool)}.>` : "mf.ev.>", since, max: o.maxScan, match: (e) => e.qid === qid });
  const headers = first || ev.events.length ? await bodyHeaders(h, first, qid) : null;
  const found = parts.length > 0 || ev.events.length > 0;
  if (!found) {
    throw new Error(
      `queue id ${qid} not found: not in ${STREAM_QUEUE} (${r.scanned}${r.truncated ? ` of ${r.total}` : ""} envelopes read${r.truncated ? "; --max-scan reads more" : ""}) ` +
        `and no events since ${new Date(since).toISOString()} (${ev.scanned} read${ev.truncated ? ", more left" : ""}; --since looks further back)`,
    );
  }
  const acc = ev.events.find((e) => e.type === "accepted");
  if (common.output === "json") {
    printJson({
      qid,
      inQueue: parts.length > 0,
      parts,
      headers,
      events: ev.events,
      scan: { envelopes: r.scanned, total: r.total, truncated: r.truncated, events: ev.scanned, eventsTruncated: ev.truncated, eventsSince: new Date(since).toISOString() },
    });
    return 0;
  }
  const out: string[] = [];
  const domain = first?.domain ?? acc?.domain ?? ev.events[0]?.domain;
  const acceptedAt = first?.acceptedAt ?? (acc ? Date.parse(acc.time) : undefined);
  out.push(`queue id ${qid}: pool ${pool ?? ev.events[0]?.pool}, domain ${domain}${acceptedAt ? `, accepted ${when(acceptedAt, now)}` : ""}${first?.submitter ?? acc?.submitter ? ` from ${first?.submitter ?? acc?.submitter}` : ""}`);
  if (headers && "stored" in headers) out.push(`body: ${headers.stored}`);
  else if (headers) for (const [k, v] of Object.entries(headers)) out.push(`  ${k}: ${clip(v, 100)}`);
  else out.push("  (body gone: delivered, purged or expired)");
  out.push("");
  if (parts.length) {
    out.push(table(["qid", "part", "pool", "state", "provider", "recipients", "attempts", "next try", "last reply"], partRows(parts, now)));
  } else {
    out.push(`not in the queue any more${r.truncated ? ` (read ${r.scanned} of ${r.total} envelopes; --max-scan reads more)` : ""}`);
  }
  out.push("");
  out.push(ev.events.length ? `EVENTS (since ${when(since, now)})` : `no events since ${when(since, now)}${ev.missing ? " (no MF_EVENTS stream)" : ""}`);
  if (ev.events.length) out.push(table(["time", "type", "part", "recipients", "source", "provider", "reply"], eventRows(ev.events, now)));
  if (ev.truncated) out.push(`(read ${ev.scanned} events; --max-scan reads more)`);
  print(out.join("\n"));
  return 0;
}

export async function find(fleet: Fleet, common: Common, sel: Selection, o: { maxScan: number; sinceMs: number; events: boolean }): Promise<number> {
  const h = await fleet.nats();
  const cons = await queueConsumers(h);
  const r = await scanQueue(h, sel, o.maxScan);
  const parts = r.items.map((it) => partView(it, cons));
  const now = Date.now();
  const rcpts = new Set(sel.rcpts);
  const ev = o.events
    ? await readEvents(h, {
      filter: sel.pools.length === 1 ? `mf.ev.${token(sel.pools[0]!)}.>` : "mf.ev.>",
      since: now - o.sinceMs,
      max: o.maxScan,
      match: (e) => e.rcpts.some((x) => rcpts.has(x.toLowerCase())),
    })
    : undefined;
  if (common.output === "json") {
    printJson({ recipients: sel.rcpts, parts, events: ev?.events ?? [], scan: { envelopes: r.scanned, total: r.total, truncated: r.truncated, ...(ev ? { events: ev.scanned, eventsTruncated: ev.truncated } : {}) } });
  } else {
    const out: string[] = [];
    const scope = r.truncated ? `first ${r.scanned} of ${r.total} envelopes read; --max-scan reads more` : `${r.scanned} envelope${r.scanned === 1 ? "" : "s"} read`;
    out.push(parts.length ? `IN THE QUEUE (${scope})` : `not in the queue (${scope})`);
    if (parts.length) out.push(table(["qid", "part", "pool", "state", "provider", "recipients", "attempts", "next try", "last reply"], partRows(parts, now)));
    if (ev) {
      out.push("");
      out.push(ev.events.length ? `EVENTS since ${when(now - o.sinceMs, now)}` : `no events since ${when(now - o.sinceMs, now)}`);
      if (ev.events.length) out.push(table(["time", "qid", "type", "part", "source", "provider", "reply"], ev.events.map((e) => [when(e.time, now), e.qid, e.type, e.part, e.source, e.provider, clip(e.reply, 70)])));
      if (ev.truncated) out.push(`(read ${ev.scanned} events; --max-scan reads more)`);
    }
    print(out.join("\n"));
  }
  // Nothing found anywhere: exit 1, as a lookup that finds nothing.
  return parts.length || ev?.events.length ? 0 : 1;
}
