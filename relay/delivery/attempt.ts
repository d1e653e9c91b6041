// One delivery attempt of one part from one lane: pick the TLS policy, walk the MX hosts in
// preference order, run one transaction on a pooled session, and classify every recipient's reply.
//
// Which failures move on to the next MX host: anything before the transaction starts (address
// lookup, connection, greeting, EHLO, STARTTLS), as RFC 5321 §5.1 asks. A reply to MAIL, RCPT or
// DATA is the receiver's answer about this mail and decides the outcome.
import { isIPv6 } from "node:net";
import type { Envelope } from "../queue/envelope.ts";
import type { ProviderPlan } from "../../api/plan.ts";
import { classifyDeliveryError, classifyReply, type ReplyClass, type ReplyClassification } from "../classify/index.ts";
import type { MxResolver } from "../routing/resolver.ts";
import { mxMatches, type MtaSts } from "../routing/mta-sts.ts";
import { DnsTemporaryError } from "../routing/dns.ts";
import type { LaneLimiter, LaneRef, Observation } from "../shaper/types.ts";
import { NoConnectionSlot, SmtpError, type SessionPool, type TlsMode } from "./smtp.ts";
import type { NodemailerError } from "nodemailer/lib/errors";

export interface RcptResult {
  rcpt: string;
  reply: string;
  code: string;
  enhanced?: string;
  class: ReplyClass | "delivered";
  permanent: boolean;
  /** Response rule that decided (Bounce/Classify) or fired on this reply. */
  rule?: string;
}

export interface AttemptResult {
  rcpts: RcptResult[];
  mx?: string;
  ip?: string;
  tls?: boolean;
}

export interface AttemptDeps {
  resolver: MxResolver;
  mtaSts?: MtaSts;
  pool: SessionPool;
  limiter: LaneLimiter;
  port: number;
  ca?: string[];
  connectTimeoutMs?: number;
  /** Asked right before the transaction opens: false when the send slot may no longer be spent. */
  gate?: () => boolean;
}

/** The send slot could not be spent (grace passed, lane suspended meanwhile): nothing was sent. */
export class SlotLost extends Error {
  constructor() {
    super("send slot no longer valid");
    this.name = "SlotLost";
  }
}

export interface AttemptInput {
  env: Envelope;
  lane: LaneRef;
  helo: string;
  provider: ProviderPlan | undefined;
  body: Buffer;
}

function asObservation(c: ReplyClassification, reply: string): Observation {
  return { reply, code: c.code, ...(c.enhanced ? { enhanced: c.enhanced } : {}), class: c.class, permanent: c.permanent };
}

/** A local failure as the reply a DSN would carry, e.g. "421 4.4.1 connect ECONNREFUSED ...". */
export function localReply(c: ReplyClassification, message: string): string {
  return `${c.code} ${c.enhanced ? `${c.enhanced} ` : ""}${message.replace(/\s+/g, " ").slice(0, 300)}`;
}

/** Classifies an error raised before or instead of a reply. */
export function classifyError(err: unknown): { c: ReplyClassification; reply: string } {
  const e = err as SmtpError & NodemailerError;
  // A TLS requirement the receiver cannot meet is ours to report: its EHLO reply is no verdict.
  if (e.code === "ETLS") {
    const c = classifyDeliveryError({ code: "ETLS", message: e.message });
    return { c, reply: localReply(c, e.message) };
  }
  if (e.response && /^[2-5]\d\d/.test(e.response)) {
    const c = classifyReply(e.response);
    if (!/^[45]/.test(c.code)) {
      const lc = classifyDeliveryError({ code: e.code ?? "EPROTOCOL", message: e.message });
      return { c: lc, reply: localReply(lc, `${e.message}: ${e.response}`) };
    }
    return { c, reply: e.response };
  }
  const c = classifyDeliveryError({ code: e.code, message: e.message ?? String(err) });
  return { c, reply: localReply(c, e.message ?? String(err)) };
}

export async function attemptPart(input: AttemptInput, deps: AttemptDeps): Promise<AttemptResult> {
  const { env, lane, provider } = input;
  const domain = env.rcptDomain ?? env.rcpts[0]!.split("@").pop()!.toLowerCase();
  const all = (c: ReplyClassification, reply: string, extra: Partial<AttemptResult> = {}): AttemptResult => ({
    rcpts: env.rcpts.map((r) => ({ rcpt: r, reply, code: c.code, ...(c.enhanced ? { enhanced: c.enhanced } : {}), class: c.class, permanent: c.permanent })),
    ...extra,
  });

  // TLS policy: MTA-STS enforce (verified) > provider requires TLS > opportunistic.
  const policy = deps.mtaSts ? await deps.mtaSts.policy(domain).catch(() => null) : null;
  const enforce = policy?.mode === "enforce";
  const tls: TlsMode = enforce ? "verify" : provider?.lane.tlsRequired ? "required" : "opportunistic";

  let hosts = env.mx ?? [];
  if (!hosts.length) {
    try {
      const r = await deps.resolver.route(domain);
      hosts = r.kind === "mx" || r.kind === "implicit" ? r.hosts.map((h) => h.host) : [];
    } catch (err) {
      const c = classifyDeliveryError({ code: (err as DnsTemporaryError).code ?? "ESERVFAIL", message: (err as Error).message });
      return all(c, localReply(c, (err as Error).message));
    }
  }
  if (enforce) {
    const allowed = hosts.filter((h) => mxMatches(h, policy!.mx));
    if (!allowed.length) {
      const c = classifyDeliveryError({ code: "ETLS", message: "MTA-STS" });
      return all(c, `451 4.7.5 MTA-STS policy of ${domain} (enforce) lists none of its MX hosts ${hosts.join(", ")}`);
    }
    hosts = allowed;
  }

  // A lane sends from one source address: an IPv6 lane reaches the MX hosts' AAAA addresses, an
  // IPv4 lane their A addresses (a socket cannot cross families).
  const family = isIPv6(lane.address) ? 6 : 4;
  let last: { c: ReplyClassification; reply: string } | undefined;
  for (const host of hosts) {
    let ips: string[];
    try {
      ips = await deps.resolver.addresses(host, family);
    } catch (err) {
      const c = classifyDeliveryError({ code: "ESERVFAIL", message: (err as Error).message });
      last = { c, reply: localReply(c, (err as Error).message) };
      continue;
    }
    if (!ips.length) {
      const type = family === 6 ? "AAAA" : "A";
      const c = classifyDeliveryError({ code: "ESERVFAIL", message: `MX host ${host} has no ${type} record` });
      last = { c, reply: `451 4.4.3 MX host ${host} has no ${type} record (lane source ${lane.address})` };
      continue;
    }
    for (const ip of ips) {
      let session;
      try {
        session = await deps.pool.acquire(lane, { ip, port: deps.port, mxHost: host }, {
          localAddress: lane.address,
          helo: input.helo,
          tls,
          ...(deps.ca ? { ca: deps.ca } : {}),
          ...(deps.connectTimeoutMs ? { connectTimeoutMs: deps.connectTimeoutMs } : {}),
        });
      } catch (err) {
        if (err instanceof NoConnectionSlot) throw err;
        last = classifyError(err);
        // Greeting refusals (421 too many connections, 554 no service) are lane signals too.
        if (/^[45]\d\d/.test(last.c.code) && (err as SmtpError).response) await deps.limiter.observe(lane, asObservation(last.c, last.reply));
        continue;
      }
      if (deps.gate && !deps.gate()) {
        deps.pool.release(session, provider?.lane.messagesPerConnection ?? 100);
        throw new SlotLost();
      }
      const tx = await session.send(env.returnPath, env.rcpts, input.body, env.dsn ? { envid: env.dsn.envid, ret: env.dsn.ret } : undefined);
      const rcpts: RcptResult[] = [];
      const seen = new Map<string, RcptResult>();
      for (const r of tx.replies) {
        if (r.ok) {
          rcpts.push({ rcpt: r.rcpt, reply: r.reply, code: r.reply.slice(0, 3), class: "delivered", permanent: false });
          continue;
        }
        let res = seen.get(r.reply);
        if (!res) {
          const c = classifyReply(r.reply);
          const effect = await deps.limiter.observe(lane, asObservation(c, r.reply));
          res = {
            rcpt: "",
            reply: r.reply,
            code: c.code,
            ...(c.enhanced ? { enhanced: c.enhanced } : {}),
            class: effect.classifyAs ?? c.class,
            permanent: c.permanent || Boolean(effect.bounce),
            ...(effect.rule ? { rule: effect.rule } : {}),
          };
          seen.set(r.reply, res);
        }
        rcpts.push({ ...res, rcpt: r.rcpt });
      }
      if (tx.error) {
        const { c, reply } = classifyError(tx.error);
        const answered = new Set(rcpts.map((r) => r.rcpt));
        for (const r of env.rcpts) {
          if (!answered.has(r)) rcpts.push({ rcpt: r, reply, code: c.code, ...(c.enhanced ? { enhanced: c.enhanced } : {}), class: c.class, permanent: false });
        }
      }
      if (rcpts.some((r) => r.class === "delivered")) await deps.limiter.observe(lane, { reply: "250", code: "250", class: "delivered", permanent: false });
      // A session that saw an error is reset (or dropped) before it carries more mail.
      const clean = !tx.error && rcpts.every((r) => r.class === "delivered");
      if (!clean && !session.closed && !tx.error) {
        if (!(await session.reset())) session.close();
      } else if (tx.error) session.close();
      deps.pool.release(session, provider?.lane.messagesPerConnection ?? 100);
      return { rcpts, mx: host, ip, tls: session.secure };
    }
  }
  const fail = last ?? { c: classifyDeliveryError({ code: "ECONNECTION", message: "no MX host could be reached" }), reply: "421 4.4.1 No MX host could be reached" };
  return all(fail.c, fail.reply, hosts.length ? { mx: hosts[hosts.length - 1] } : {});
}
