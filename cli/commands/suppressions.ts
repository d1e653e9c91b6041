// mailfleet suppressions list|check|add|remove: the suppression list (KV mf-suppress) through
// relay/suppression, the same code submission and delivery use. Keys are hashes, so the list holds
// no addresses: `list` shows entries without them, `check` answers for one address.
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, domainArg, durationFlag, emailArg, intFlag, parseWith, stringFlag } from "../lib/flags.ts";
import { withFleet, type Fleet } from "../lib/fleet.ts";
import { listDomains } from "../lib/resources.ts";
import { clip, print, printJson, table, when } from "../lib/output.ts";
import { Suppressions, type SuppressionReason, type SuppressionScope } from "../../relay/suppression/index.ts";
import { KV_SUPPRESSION } from "../../relay/queue/topology.ts";
import { serverFeatures } from "../../relay/queue/streams.ts";

const usage = `usage: mailfleet suppressions list [--domain D | --global] [--limit N]
       mailfleet suppressions check <address> [--domain D]
       mailfleet suppressions add <address>... (--domain D | --global) [--reason R] [--for DUR] [--detail TEXT]
       mailfleet suppressions remove <address>... (--domain D | --global)

  Addresses that get no mail: fleet-wide (hard bounces: every sending domain) or for one sending
  domain (complaints, unsubscribes, manual entries). Submission refuses or drops them (the domain's
  suppression.onSubmit). The list stores hashes of addresses, never the addresses: \`list\` shows the
  entries without them; \`check\` says whether one address is on it and why.

  --domain D    a sending domain's list (D must be a SendingDomain's domain)
  --global      the fleet-wide list
  --reason R    manual (default), hard-bounce, complaint or unsubscribe
  --for DUR     the entry expires after this long (default: never)
  --detail TEXT a note kept with the entry (who, why; no addresses)
  --limit N     list at most N entries (default 1000)

${COMMON_USAGE}`;

const REASONS: SuppressionReason[] = ["manual", "hard-bounce", "complaint", "unsubscribe"];

async function open(fleet: Fleet): Promise<Suppressions> {
  const kv = await fleet.kv(KV_SUPPRESSION, { why: "no relay has started on this NATS yet (relays create it)" });
  const { nc } = await fleet.nats();
  return new Suppressions(kv!, { perKeyTtl: serverFeatures(nc).msgTtl });
}

/** A sending domain must exist: entries for a domain nothing sends as would never be read. */
async function checkDomain(fleet: Fleet, domain: string): Promise<void> {
  const plan = await fleet.plan();
  const known = plan ? plan.domains.map((d) => d.domain.toLowerCase()) : (await listDomains(fleet)).map((d) => d.spec.domain.toLowerCase());
  if (!known.includes(domain)) throw new Error(`${domain} is not a sending domain (domains: ${known.sort().join(", ") || "none"})`);
}

export const command: Command = {
  summary: "list, check, add or remove suppressed recipients, per sending domain or fleet-wide",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, {
      domain: { type: "string" },
      global: { type: "boolean", default: false },
      reason: { type: "string" },
      for: { type: "string" },
      detail: { type: "string" },
      limit: { type: "string" },
    });
    const [sub, ...rest] = positionals;
    const subs = ["list", "check", "add", "remove"];
    if (!sub) throw new UsageError(`missing subcommand (${subs.join(", ")})`);
    if (!subs.includes(sub)) throw new UsageError(`unknown subcommand "${sub}" (${subs.join(", ")})`);
    const domainText = stringFlag(values, "domain");
    const domain = domainText === undefined ? undefined : domainArg("--domain", domainText);
    const global = values.global === true;
    if (domain && global) throw new UsageError("give --domain or --global, not both");
    const reasonText = stringFlag(values, "reason");
    if (reasonText !== undefined && !REASONS.includes(reasonText as SuppressionReason)) throw new UsageError(`--reason must be one of ${REASONS.join(", ")}, got "${reasonText}"`);
    const ttlMs = durationFlag(values, "for");
    const detail = stringFlag(values, "detail");
    const limit = intFlag(values, "limit", 1000, 1, 1_000_000);
    if (sub !== "add" && (reasonText || ttlMs !== undefined || detail)) throw new UsageError("--reason, --for and --detail go with add");
    if (sub !== "list" && values.limit !== undefined) throw new UsageError("--limit goes with list");

    if (sub === "list") {
      if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
      return withFleet(common, async (fleet) => {
        if (domain) await checkDomain(fleet, domain);
        const s = await open(fleet);
        const all = await s.list(domain ? { domain } : global ? { global: true } : {});
        const entries = all.slice(0, limit);
        const now = Date.now();
        if (common.output === "json") {
          printJson({ scope: domain ?? (global ? "global" : "all"), total: all.length, entries });
        } else if (!entries.length) {
          print(`no suppressions${domain ? ` for ${domain}` : global ? " fleet-wide" : ""}`);
        } else {
          print([
            table(["scope", "domain", "reason", "added", "expires", "detail", "address hash"], entries.map((e) => [
              e.scope, e.domain, e.reason, when(e.addedAt, now), e.expiresAt ? when(e.expiresAt, now) : "never", clip(e.detail, 50), `${e.key.split(".").pop()!.slice(0, 16)}…`,
            ])),
            ...(all.length > entries.length ? [`(${entries.length} of ${all.length}; --limit shows more)`] : []),
            "(addresses are stored as hashes; `mailfleet suppressions check <address>` looks one up)",
          ].join("\n"));
        }
        return 0;
      });
    }

    const addresses = rest.map((a) => emailArg("<address>", a));
    if (!addresses.length) throw new UsageError("missing <address>");

    if (sub === "check") {
      if (global) throw new UsageError("check looks at the fleet-wide list always; --global is not needed");
      if (addresses.length !== 1) throw new UsageError("check takes one address");
      return withFleet(common, async (fleet) => {
        if (domain) await checkDomain(fleet, domain);
        const s = await open(fleet);
        const plan = await fleet.plan();
        // Without --domain: the fleet-wide list and every sending domain's.
        const domains = domain ? [domain] : (plan?.domains.map((d) => d.domain.toLowerCase()) ?? []);
        const hits = [];
        // check() answers the fleet-wide entry first whatever the domain: "-" is no sending domain.
        const fleetWide = await s.check("-", addresses[0]!);
        if (fleetWide?.scope === "global") hits.push(fleetWide);
        for (const d of domains) {
          const e = await s.check(d, addresses[0]!);
          if (e?.scope === "domain") hits.push(e);
        }
        const now = Date.now();
        if (common.output === "json") {
          printJson({ address: addresses[0], suppressed: hits.length > 0, entries: hits });
        } else if (!hits.length) {
          print(`${addresses[0]} is not suppressed${domain ? ` for ${domain}` : ""} (fleet-wide list${domain ? ` and ${domain}'s` : domains.length ? ` and ${domains.length} sending domains' lists` : ""})`);
        } else {
          print(table(["address", "scope", "domain", "reason", "added", "expires", "detail"], hits.map((e) => [
            addresses[0], e.scope, e.domain, e.reason, when(e.addedAt, now), e.expiresAt ? when(e.expiresAt, now) : "never", clip(e.detail, 60),
          ])));
        }
        return 0;
      });
    }

    if (!domain && !global) throw new UsageError(`${sub} needs --domain D (one sending domain's list) or --global (fleet-wide)`);
    const scope: SuppressionScope = domain ? { domain } : { global: true };
    const where = domain ? `${domain}'s list` : "the fleet-wide list";
    return withFleet(common, async (fleet) => {
      if (domain) await checkDomain(fleet, domain);
      const s = await open(fleet);
      if (sub === "add") {
        const reason = (reasonText ?? "manual") as SuppressionReason;
        const results = [];
        for (const a of addresses) {
          const key = await s.add({ scope, address: a, reason, ...(ttlMs ? { ttlMs } : {}), ...(detail ? { detail } : {}) });
          results.push({ address: a, key });
        }
        if (common.output === "json") printJson({ added: results, scope: domain ?? "global", reason, ...(ttlMs ? { expiresAt: new Date(Date.now() + ttlMs).toISOString() } : {}) });
        else print(results.map((r) => `${r.address} added to ${where} (${reason}${ttlMs ? `, expires ${when(Date.now() + ttlMs, Date.now())}` : ""})`).join("\n"));
        return 0;
      }
      const results = [];
      for (const a of addresses) results.push({ address: a, removed: await s.remove(scope, a) });
      if (common.output === "json") printJson({ scope: domain ?? "global", results });
      else print(results.map((r) => (r.removed ? `${r.address} removed from ${where}` : `${r.address} was not on ${where}`)).join("\n"));
      if (results.some((r) => !r.removed)) {
        process.stderr.write(`mailfleet suppressions: ${results.filter((r) => !r.removed).map((r) => r.address).join(", ")} not on ${where}\n`);
        return 1;
      }
      return 0;
    });
  },
};
