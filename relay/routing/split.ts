// Splitting an accepted envelope (part 0) into parts: one recipient domain and one provider each,
// at most the provider's recipientsPerMessage recipients each. Pure.
//
// Part numbers are deterministic whatever DNS says, so a route step that runs twice (a crash
// after publishing, before the ack) publishes the same `<qid>:<part>` message ids and JetStream's
// duplicate window drops the copies: recipient domains are taken in order of first appearance,
// and domain d owns the numbers [base_d, base_d + n_d) where n_d is its recipient count and
// base_d = 1 + the recipients of the domains before it. A domain never has more chunks than
// recipients, so the ranges never overlap, even when recipientsPerMessage differs between runs.
import type { Envelope } from "../queue/envelope.ts";
import { classifyReply } from "../classify/index.ts";
import type { ReplyClass } from "../classify/index.ts";

export type RouteDecision =
  | { kind: "deliver"; provider: string; mx: string[]; recipientsPerMessage: number }
  /** The domain takes no mail (null MX, NXDOMAIN, no MX and no address): bounce at once. */
  | { kind: "bounce"; reply: string }
  /** DNS gave no answer: route these recipients later. */
  | { kind: "retry"; reply: string };

export interface RouteBounce {
  part: number;
  domain: string;
  rcpts: string[];
  reply: string;
  class: ReplyClass;
}

export interface SplitResult {
  parts: Envelope[];
  bounces: RouteBounce[];
  /** Domains to route again later, with the reason. */
  retry: { domain: string; rcpts: string[]; reply: string }[];
}

export function domainOf(address: string): string {
  const at = address.lastIndexOf("@");
  return (at >= 0 ? address.slice(at + 1) : "").trim().toLowerCase().replace(/\.$/, "");
}

/** Recipients grouped by domain, in order of first appearance, with each domain's first part number. */
export function groupByDomain(rcpts: string[]): { domain: string; rcpts: string[]; base: number }[] {
  const groups = new Map<string, string[]>();
  for (const r of rcpts) {
    const d = domainOf(r);
    const g = groups.get(d);
    if (g) g.push(r);
    else groups.set(d, [r]);
  }
  let base = 1;
  const out: { domain: string; rcpts: string[]; base: number }[] = [];
  for (const [domain, list] of groups) {
    out.push({ domain, rcpts: list, base });
    base += list.length;
  }
  return out;
}

export function nullMxReply(domain: string): string {
  return `556 5.1.10 Recipient domain ${domain} has a null MX: it accepts no mail (RFC 7505)`;
}
export function nxdomainReply(domain: string): string {
  return `550 5.1.2 Host or domain name not found. Name service error for name=${domain} type=MX: Host not found`;
}
export function noMailReply(domain: string): string {
  return `550 5.1.2 Domain ${domain} has no MX and no address record: it accepts no mail`;
}
export function dnsRetryReply(domain: string, why: string): string {
  return `451 4.4.3 Domain name lookup for ${domain} failed, will retry: ${why}`;
}

/**
 * Splits `env` (a part-0 envelope) given a decision for each of its recipient domains. Domains in
 * `env.routed` were published by an earlier run and are skipped.
 */
export function splitEnvelope(env: Envelope, decide: (domain: string) => RouteDecision): SplitResult {
  const done = new Set(env.routed ?? []);
  const out: SplitResult = { parts: [], bounces: [], retry: [] };
  for (const g of groupByDomain(env.rcpts)) {
    if (done.has(g.domain)) continue;
    const d = decide(g.domain);
    if (d.kind === "bounce") {
      out.bounces.push({ part: g.base, domain: g.domain, rcpts: g.rcpts, reply: d.reply, class: classifyReply(d.reply).class });
    } else if (d.kind === "retry") {
      out.retry.push({ domain: g.domain, rcpts: g.rcpts, reply: d.reply });
    } else {
      const size = Math.max(1, d.recipientsPerMessage);
      for (let i = 0; i * size < g.rcpts.length; i++) {
        const { routed: _routed, ...rest } = env;
        out.parts.push({
          ...rest,
          part: g.base + i,
          rcpts: g.rcpts.slice(i * size, (i + 1) * size),
          rcptDomain: g.domain,
          provider: d.provider,
          mx: d.mx,
        });
      }
    }
  }
  return out;
}
