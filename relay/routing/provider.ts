// Which provider receives a recipient domain: a pure decision over the plan and the MX answer.
//
// 1. The recipient domain itself (or a parent) is listed by a provider (gmail.com, outlook.com).
// 2. MX rollup: every MX host at the lowest preference ends in one of a provider's MX suffixes
//    (every company domain whose MX is *.mail.protection.outlook.com is Microsoft 365). Only the
//    lowest preference counts, as in PowerMTA: backup MX hosts at higher preferences are often run
//    by someone else (a secondary MX service) and take mail only when the primary is down, so
//    requiring them to match too (KumoMTA's rule over all hosts) would send such domains to the
//    default provider and lose the primary's shaping. When several providers match, the longest
//    suffix wins (the most specific rule).
// 3. Nothing matches: the provider named "default".
import type { ProviderPlan } from "../../api/plan.ts";
import type { MxHost } from "./resolver.ts";

export const DEFAULT_PROVIDER = "default";

function norm(s: string): string {
  return s.trim().toLowerCase().replace(/^\.+/, "").replace(/\.$/, "");
}

/** Whether `host` is `suffix` or ends in `.suffix` (label boundary, never a partial label). */
export function hostMatches(host: string, suffix: string): boolean {
  const h = norm(host);
  const s = norm(suffix);
  return s !== "" && (h === s || h.endsWith(`.${s}`));
}

/** The MX hosts that count for rollup: those at the lowest preference. */
export function primaryHosts(hosts: MxHost[]): string[] {
  if (!hosts.length) return [];
  const best = Math.min(...hosts.map((h) => h.preference));
  return hosts.filter((h) => h.preference === best).map((h) => h.host);
}

export function providerFor(providers: readonly ProviderPlan[], domain: string, hosts: MxHost[]): string {
  let best: { name: string; len: number } | undefined;
  for (const p of providers) {
    for (const d of p.domains) {
      if (hostMatches(domain, d) && (!best || norm(d).length > best.len)) best = { name: p.name, len: norm(d).length };
    }
  }
  if (best) return best.name;
  const primary = primaryHosts(hosts);
  if (primary.length) {
    for (const p of providers) {
      // The longest suffix of this provider matching each host; the provider matches when all do.
      let shortest = Infinity;
      for (const h of primary) {
        const lens = p.mxSuffixes.filter((s) => hostMatches(h, s)).map((s) => norm(s).length);
        shortest = Math.min(shortest, lens.length ? Math.max(...lens) : -1);
      }
      if (shortest > 0 && (!best || shortest > best.len)) best = { name: p.name, len: shortest };
    }
  }
  return best?.name ?? DEFAULT_PROVIDER;
}
