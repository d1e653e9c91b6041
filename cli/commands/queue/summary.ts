// `mailfleet queue`: counts per pool and provider (stream and consumer state, no scan), and per
// sending domain and recipient domain (a bounded scan of the envelopes).
import type { Common } from "../../lib/flags.ts";
import type { Fleet } from "../../lib/fleet.ts";
import { queueDepths, type PoolQueue } from "../../lib/queue.ts";
import { age, print, printJson, table } from "../../lib/output.ts";
import { describe, isEmpty, resolvePools, scanQueue, type Selection } from "./select.ts";

export interface DomainCount {
  pool: string;
  domain: string;
  parts: number;
  recipients: number;
  deferred: number;
  held: number;
}

export interface RcptDomainCount {
  rcptDomain: string;
  provider: string | null;
  parts: number;
  recipients: number;
}

export async function summary(fleet: Fleet, common: Common, sel: Selection, maxScan: number): Promise<number> {
  const h = await fleet.nats();
  sel.pools = await resolvePools(fleet, sel.pools);
  const plan = await fleet.plan();
  const poolIds = sel.pools.length ? sel.pools : plan?.pools.map((p) => p.id) ?? [];
  let depths = await queueDepths(h, poolIds);
  if (sel.pools.length) depths = depths.filter((d) => sel.pools.includes(d.pool));
  if (sel.providers.length) depths = depths.map((d) => ({ ...d, providers: d.providers.filter((p) => sel.providers.includes(p.provider)) }));
  const r = await scanQueue(h, sel, maxScan);
  const byDomain = new Map<string, DomainCount>();
  const byRcpt = new Map<string, RcptDomainCount>();
  for (const it of r.items) {
    const env = it.env!;
    const k = `${it.pool}\0${env.domain}`;
    const d = byDomain.get(k) ?? { pool: it.pool, domain: env.domain, parts: 0, recipients: 0, deferred: 0, held: 0 };
    d.parts++;
    d.recipients += env.rcpts.length;
    if (it.kind === "sched") d.deferred++;
    if (it.kind === "held") d.held++;
    byDomain.set(k, d);
    const doms = env.rcptDomain ? [env.rcptDomain] : [...new Set(env.rcpts.map((x) => x.slice(x.lastIndexOf("@") + 1).toLowerCase()))];
    for (const rd of doms) {
      const provider = it.provider ?? env.provider ?? null;
      const rk = `${rd}\0${provider}`;
      const c = byRcpt.get(rk) ?? { rcptDomain: rd, provider, parts: 0, recipients: 0 };
      c.parts++;
      c.recipients += env.rcptDomain ? env.rcpts.length : env.rcpts.filter((x) => x.toLowerCase().endsWith(`@${rd}`)).length;
      byRcpt.set(rk, c);
    }
  }
  const domains = [...byDomain.values()].sort((a, b) => a.pool.localeCompare(b.pool) || b.parts - a.parts || a.domain.localeCompare(b.domain));
  const rcptDomains = [...byRcpt.values()].sort((a, b) => b.parts - a.parts || a.rcptDomain.localeCompare(b.rcptDomain));
  const now = Date.now();
  if (common.output === "json") {
    printJson({
      selection: describe(sel),
      pools: depths.map((d) => poolJson(d, now)),
      byDomain: domains,
      byRecipientDomain: rcptDomains,
      scanned: r.scanned,
      total: r.total,
      truncated: r.truncated,
    });
    return 0;
  }
  // Rows with something in them; a pool with nothing queued gets one "empty" row.
  const rows = depths.flatMap((q) => {
    const r = [
      ...(q.route.messages || q.route.inFlight ? [[q.pool, "route", q.route.messages, q.route.waiting, q.route.inFlight, q.route.oldestAt ? age(now - q.route.oldestAt) : undefined]] : []),
      ...q.providers.filter((p) => p.messages || p.inFlight || p.paused).map((p) => [q.pool, `ready/${p.provider}${p.paused ? " (paused)" : ""}`, p.messages, p.waiting, p.inFlight, p.oldestAt ? age(now - p.oldestAt) : undefined]),
      ...(q.scheduled ? [[q.pool, "deferred", q.scheduled, undefined, undefined, undefined]] : []),
      ...(q.held.messages ? [[q.pool, "held", q.held.messages, undefined, undefined, q.held.oldestAt ? age(now - q.held.oldestAt) : undefined]] : []),
    ];
    return r.length ? r : [[q.pool, "(empty)", 0, undefined, undefined, undefined]];
  });
  const out: string[] = [];
  out.push(rows.length ? table(["pool", "queue", "messages", "waiting", "in flight", "oldest"], rows) : "no pools");
  out.push("");
  const scope = `${isEmpty(sel) ? "" : `${describe(sel)}; `}${r.truncated ? `from the first ${r.scanned} of ${r.total} envelopes (--max-scan reads more)` : `${r.scanned} envelope${r.scanned === 1 ? "" : "s"}`}`;
  if (!domains.length) {
    out.push(`no queued mail${isEmpty(sel) ? "" : ` for ${describe(sel)}`}`);
  } else {
    out.push(`BY SENDING DOMAIN (${scope})`);
    out.push(table(["pool", "domain", "parts", "recipients", "deferred", "held"], domains.map((d) => [d.pool, d.domain, d.parts, d.recipients, d.deferred, d.held])));
    out.push("");
    const top = rcptDomains.slice(0, 20);
    out.push(`BY RECIPIENT DOMAIN${rcptDomains.length > top.length ? ` (top ${top.length} of ${rcptDomains.length}; -o json lists all)` : ""}`);
    out.push(table(["recipient domain", "provider", "parts", "recipients"], top.map((d) => [d.rcptDomain, d.provider ?? "(not routed yet)", d.parts, d.recipients])));
  }
  print(out.join("\n"));
  return 0;
}

function poolJson(q: PoolQueue, now: number) {
  const s = (x: { messages: number; waiting?: number; inFlight?: number; paused?: boolean; oldestAt?: number }) => ({
    messages: x.messages, waiting: x.waiting ?? null, inFlight: x.inFlight ?? null, oldestAgeSeconds: x.oldestAt ? Math.round((now - x.oldestAt) / 1000) : null, ...(x.paused ? { paused: true } : {}),
  });
  return { pool: q.pool, route: s(q.route), providers: q.providers.map((p) => ({ provider: p.provider, ...s(p) })), deferred: q.scheduled, held: s(q.held) };
}
