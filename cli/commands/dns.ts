// mailfleet dns <domain>: the DNS records a sending domain needs (from its SendingDomain status,
// where the operator lists them and checks each), whether each verifies, and --zone for zone-file
// lines. --check verifies them again from this machine with the operator's own checks.
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, intFlag, parseWith, positionals as pos } from "../lib/flags.ts";
import { withFleet } from "../lib/fleet.ts";
import { getDomain, id } from "../lib/resources.ts";
import { clip, print, printJson, table, when } from "../lib/output.ts";
import { rdata, txtStrings, zoneLines } from "../lib/zone.ts";
import { verifyRecords } from "../../operator/dns/verify.ts";
import { makeLookup } from "../../operator/dns/resolver.ts";
import type { DnsRecordStatus } from "../../api/v1alpha1/index.ts";

const usage = `usage: mailfleet dns <domain> [--zone [--ttl N]] [--check [--dns-server HOST[:PORT]]...] [common options]

  The records to publish for a sending domain (SPF, DKIM selectors, DMARC, the return-path
  domain's MX and SPF) as the operator lists them in the SendingDomain's status, and whether each
  verifies. A TXT value longer than 255 bytes (an RSA DKIM key) is shown as the several
  character-strings DNS stores; publish them as one record.

  <domain>        the sending domain (spec.domain), or the SendingDomain as NAMESPACE/NAME
  --zone          print zone-file lines (BIND format) instead of a table
  --ttl N         TTL for --zone lines (default 3600)
  --check         look the records up now from here (the operator's checks), instead of showing the
                  operator's last verdicts
  --dns-server S  DNS server for --check (repeatable; default: the system's)

${COMMON_USAGE}`;

export const command: Command = {
  summary: "DNS records a sending domain needs and whether each verifies (--zone: zone-file lines)",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, {
      zone: { type: "boolean", default: false },
      ttl: { type: "string" },
      check: { type: "boolean", default: false },
      "dns-server": { type: "string", multiple: true },
    });
    const [domain] = pos(positionals, ["domain"]);
    const ttl = intFlag(values, "ttl", 3600, 0, 2_147_483_647);
    if (values.ttl !== undefined && values.zone !== true) throw new UsageError("--ttl goes with --zone");
    const servers = ((values["dns-server"] as string[] | undefined) ?? []).map((s) => s.trim());
    if (servers.length && values.check !== true) throw new UsageError("--dns-server goes with --check");
    for (const s of servers) if (!/^[0-9a-fA-F.:[\]]+$/.test(s)) throw new UsageError(`--dns-server must be an IP address with an optional port, got "${s}"`);

    return withFleet(common, async (fleet) => {
      const sd = await getDomain(fleet, domain!, common.namespace);
      let records: (DnsRecordStatus & { checkedHere?: boolean })[] = sd.status?.dnsRecords ?? [];
      if (!records.length) {
        throw new Error(`the operator has not listed DNS records for ${sd.spec.domain} yet (SendingDomain ${id(sd)} has no status.dnsRecords): is the operator running?`);
      }
      const now = Date.now();
      if (values.check === true) {
        const desired = records.map(({ verified: _v, message: _m, ...r }) => r);
        records = (await verifyRecords(desired, makeLookup(servers))).map((r) => ({ ...r, checkedHere: true }));
      }
      const verified = records.filter((r) => r.verified).length;
      if (values.zone === true) {
        const lines = [
          `; ${sd.spec.domain}: records for SendingDomain ${id(sd)} (${verified} of ${records.length} verified${values.check === true ? " just now" : ""})`,
          ...zoneLines(records, ttl),
        ];
        if (common.output === "json") printJson({ domain: sd.spec.domain, zone: lines.slice(1) });
        else print(lines.join("\n"));
        return 0;
      }
      if (common.output === "json") {
        printJson({
          domain: sd.spec.domain,
          sendingDomain: id(sd),
          pool: sd.status?.pool ?? `${sd.metadata.namespace}/${sd.spec.poolRef.name}`,
          verifiedRecords: verified,
          totalRecords: records.length,
          lastCheck: values.check === true ? new Date(now).toISOString() : sd.status?.lastDnsCheck ?? null,
          checkedBy: values.check === true ? "cli" : "operator",
          records: records.map((r) => ({ ...r, ...(r.type === "TXT" ? { strings: txtStrings(r.value) } : {}) })),
        });
        return 0;
      }
      const head = `${sd.spec.domain} (SendingDomain ${id(sd)}, pool ${sd.status?.pool ?? sd.spec.poolRef.name}): ${verified} of ${records.length} records verified` +
        (values.check === true ? " (checked just now from here)" : sd.status?.lastDnsCheck ? ` (checked by the operator ${when(sd.status.lastDnsCheck, now)})` : "");
      const rows: (string | undefined)[][] = [];
      for (const r of records) {
        const parts = rdata(r);
        rows.push([r.purpose, r.type, r.name, r.verified ? "yes" : "NO", parts[0]]);
        for (const p of parts.slice(1)) rows.push([" ", " ", " ", " ", p]);
      }
      const problems = records.filter((r) => !r.verified && r.message).map((r) => `  ${r.purpose} ${r.name}: ${clip(r.message, 140)}`);
      print([head, "", table(["purpose", "type", "name", "verified", "value"], rows), ...(problems.length ? ["", "not verified:", ...problems] : [])].join("\n"));
      return 0;
    });
  },
};
