// DNS records as people publish them (pure): TXT values cut into the 255-byte character-strings DNS
// stores (a 2048-bit DKIM key does not fit in one), quoted for zone files, and whole zone-file lines.
import type { DnsRecordStatus } from "../../api/v1alpha1/index.ts";

/** A TXT value as character-strings of at most 255 bytes (cut on character boundaries). */
export function txtStrings(value: string, max = 255): string[] {
  const out: string[] = [];
  let cur = "";
  let bytes = 0;
  for (const ch of value) {
    const n = Buffer.byteLength(ch);
    if (bytes + n > max) {
      out.push(cur);
      cur = "";
      bytes = 0;
    }
    cur += ch;
    bytes += n;
  }
  if (cur || out.length === 0) out.push(cur);
  return out;
}

/** A zone-file quoted string: backslash and double quote escaped. */
export function quote(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

export function fqdn(name: string): string {
  return name.endsWith(".") ? name : `${name}.`;
}

type Rec = Pick<DnsRecordStatus, "type" | "name" | "value" | "priority" | "purpose">;

/** The RDATA of a record as a zone file writes it (TXT split in strings). */
export function rdata(r: Rec): string[] {
  if (r.type === "TXT") return txtStrings(r.value).map(quote);
  if (r.type === "MX") return [`${r.priority ?? 10} ${r.value === "." ? "." : fqdn(r.value)}`];
  if (r.type === "CNAME") return [fqdn(r.value)];
  return [r.value];
}

/**
 * Zone-file lines (RFC 1035 master file format, as BIND and most DNS providers' importers take it).
 * A TXT record of several strings is one record: its strings go in parentheses across lines.
 */
export function zoneLines(records: Rec[], ttl: number): string[] {
  const owner = records.map((r) => fqdn(r.name).length);
  const width = Math.max(0, ...owner);
  const out: string[] = [];
  for (const r of records) {
    const head = `${fqdn(r.name).padEnd(width)}  ${ttl} IN ${r.type.padEnd(5)} `;
    const parts = rdata(r);
    if (parts.length === 1) {
      out.push(`${head}${parts[0]}`);
    } else {
      const pad = " ".repeat(head.length + 2);
      out.push(`${head}( ${parts[0]}`);
      for (const p of parts.slice(1, -1)) out.push(`${pad}${p}`);
      out.push(`${pad}${parts[parts.length - 1]} )`);
    }
  }
  return out;
}
