// Which queued mail a `queue` command means (pure matching), and reading the envelopes in MF_QUEUE
// (bounded scans through the stream API: see cli/lib/stream.ts for why not a consumer).
import { UsageError } from "../../command.ts";
import { decodeEnvelope, QUEUE_ID_RE, type Envelope } from "../../../relay/queue/envelope.ts";
import { STREAM_QUEUE, token } from "../../../relay/queue/topology.ts";
import { parseQueueSubject, streamSubjects, type QueueKind } from "../../lib/queue.ts";
import { scan, type RawMsg } from "../../lib/stream.ts";
import type { Fleet, NatsHandle } from "../../lib/fleet.ts";
import { listPools, id as objId } from "../../lib/resources.ts";

export interface Selection {
  pools: string[];
  providers: string[];
  domains: string[];
  rcptDomains: string[];
  qids: string[];
  rcpts: string[];
  kinds: QueueKind[];
}

export interface Item {
  seq: number;
  subject: string;
  kind: QueueKind;
  pool: string;
  /** Provider of a ready part (subject), else the envelope's. */
  provider?: string;
  storedAt: number;
  headers: Record<string, string>;
  data: Uint8Array;
  env?: Envelope;
  /** Why the envelope could not be read. */
  error?: string;
}

export const SELECT_OPTIONS = {
  pool: { type: "string", multiple: true },
  provider: { type: "string", multiple: true },
  domain: { type: "string", multiple: true },
  "rcpt-domain": { type: "string", multiple: true },
  qid: { type: "string", multiple: true },
  rcpt: { type: "string", multiple: true },
  "max-scan": { type: "string" },
} as const;

export const SELECT_USAGE = `selection (each repeatable; several flags: mail matching all of them):
  --pool P          pool NAMESPACE/NAME or NAME
  --provider P      mailbox provider (ready and deferred parts routed to it)
  --domain D        sending domain (the From domain)
  --rcpt-domain D   recipient domain
  --qid QID         queue id (the one in the 250 reply)
  --rcpt ADDR       recipient address
  --max-scan N      read at most N envelopes (default 10000); more are left for the next run`;

function list(v: unknown): string[] {
  return Array.isArray(v) ? (v as string[]).map((s) => s.trim()).filter(Boolean) : [];
}

export function parseSelection(values: Record<string, unknown>, kinds: QueueKind[]): Selection {
  const qids = list(values.qid).map((q) => q.toLowerCase());
  for (const q of qids) if (!QUEUE_ID_RE.test(q)) throw new UsageError(`--qid must be a 20-character queue id (as in "250 2.0.0 Ok: queued as ..."), got "${q}"`);
  const rcpts = list(values.rcpt).map((r) => r.toLowerCase());
  for (const r of rcpts) if (!/^[^\s@]+@[^\s@]+$/.test(r)) throw new UsageError(`--rcpt must be an email address, got "${r}"`);
  return {
    pools: list(values.pool),
    providers: list(values.provider),
    domains: list(values.domain).map((d) => d.toLowerCase()),
    rcptDomains: list(values["rcpt-domain"]).map((d) => d.toLowerCase()),
    qids,
    rcpts,
    kinds,
  };
}

export function isEmpty(s: Selection): boolean {
  return !s.pools.length && !s.providers.length && !s.domains.length && !s.rcptDomains.length && !s.qids.length && !s.rcpts.length;
}

export function describe(s: Selection): string {
  const parts = [
    s.pools.length && `pool ${s.pools.join("|")}`,
    s.providers.length && `provider ${s.providers.join("|")}`,
    s.domains.length && `domain ${s.domains.join("|")}`,
    s.rcptDomains.length && `recipient domain ${s.rcptDomains.join("|")}`,
    s.qids.length && `queue id ${s.qids.join("|")}`,
    s.rcpts.length && `recipient ${s.rcpts.join("|")}`,
  ].filter(Boolean);
  return parts.length ? parts.join(", ") : "all queued mail";
}

/** Whether an envelope read from the queue is selected (pools already resolved to ids). */
export function matches(item: Item, s: Selection): boolean {
  if (!s.kinds.includes(item.kind)) return false;
  if (s.pools.length && !s.pools.includes(item.pool)) return false;
  const env = item.env;
  if (!env) return false;
  const provider = item.provider ?? env.provider;
  if (s.providers.length && (!provider || !s.providers.includes(provider))) return false;
  if (s.domains.length && !s.domains.includes(env.domain.toLowerCase())) return false;
  if (s.qids.length && !s.qids.includes(env.id.toLowerCase())) return false;
  const rcpts = env.rcpts.map((r) => r.toLowerCase());
  if (s.rcptDomains.length) {
    const doms = env.rcptDomain ? [env.rcptDomain.toLowerCase()] : rcpts.map((r) => r.slice(r.lastIndexOf("@") + 1));
    if (!doms.some((d) => s.rcptDomains.includes(d))) return false;
  }
  if (s.rcpts.length && !rcpts.some((r) => s.rcpts.includes(r))) return false;
  return true;
}

/** --pool values to pool ids (NAMESPACE/NAME), checked against the plan, else the cluster. */
export async function resolvePools(fleet: Fleet, refs: string[]): Promise<string[]> {
  if (!refs.length) return [];
  const plan = await fleet.plan();
  let known = plan?.pools.map((p) => p.id) ?? [];
  if (!known.length) known = (await listPools(fleet)).map(objId);
  return refs.map((r) => {
    if (r.includes("/")) {
      if (!known.includes(r)) throw new Error(`IPPool ${r} not found${known.length ? ` (pools: ${known.join(", ")})` : ""}`);
      return r;
    }
    const hits = known.filter((k) => k.endsWith(`/${r}`));
    if (hits.length === 1) return hits[0]!;
    if (hits.length > 1) throw new Error(`IPPool ${r} is ambiguous: ${hits.join(", ")}; give NAMESPACE/NAME`);
    throw new Error(`IPPool ${r} not found${known.length ? ` (pools: ${known.join(", ")})` : ""}`);
  });
}

export function toItem(m: RawMsg): Item | null {
  const s = parseQueueSubject(m.subject);
  if (!s) return null;
  const item: Item = { seq: m.seq, subject: m.subject, kind: s.kind, pool: s.pool, storedAt: m.time, headers: m.headers, data: m.data };
  if (s.provider) item.provider = s.provider;
  try {
    item.env = decodeEnvelope(m.data);
  } catch (e) {
    item.error = (e as Error).message.slice(0, 200);
  }
  return item;
}

export interface ScanResult {
  items: Item[];
  scanned: number;
  /** Messages in the stream under the scanned subjects. */
  total: number;
  truncated: boolean;
}

/** The subject filter that covers a selection's pools (one pool: its subjects only). */
export function filterFor(s: Selection): string {
  const pool = s.pools.length === 1 ? token(s.pools[0]!) : "*";
  if (s.kinds.length === 1 && s.kinds[0] === "held") return `mf.q.${pool}.held`;
  if (s.kinds.length === 1 && s.kinds[0] === "route") return `mf.q.${pool}.route`;
  return s.pools.length === 1 ? `mf.q.${pool}.>` : "mf.q.>";
}

/**
 * Reads envelopes under the selection's subjects in stream order, keeping the selected ones;
 * at most `max` are read. `fromSeq` continues a scan.
 */
export async function scanQueue(h: NatsHandle, s: Selection, max: number, o: { fromSeq?: number } = {}): Promise<ScanResult> {
  const filter = filterFor(s);
  const counts = await streamSubjects(h, filter);
  let total = 0;
  for (const [subject, n] of Object.entries(counts)) {
    const q = parseQueueSubject(subject);
    if (q && s.kinds.includes(q.kind) && (!s.pools.length || s.pools.includes(q.pool))) total += n;
  }
  const items: Item[] = [];
  let scanned = 0;
  let truncated = false;
  for await (const m of scan(h.nc, STREAM_QUEUE, filter, { fromSeq: o.fromSeq ?? 1, max: Number.MAX_SAFE_INTEGER })) {
    const item = toItem(m);
    if (!item || !s.kinds.includes(item.kind) || (s.pools.length && !s.pools.includes(item.pool))) continue;
    if (scanned >= max) {
      truncated = true;
      break;
    }
    scanned++;
    if (matches(item, s)) items.push(item);
  }
  return { items, scanned, total, truncated };
}
