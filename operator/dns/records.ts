// The DNS records a SendingDomain needs, exactly as a person should publish them. Pure: the
// domain's spec, the addresses and EHLO names of the pools that send its mail, and the public
// keys of its published DKIM selectors.
import { isIPv4 } from "node:net";
import type { DkimKeyType, DnsRecordStatus, SendingDomainSpec } from "../../api/v1alpha1/index.ts";

export type DesiredRecord = Omit<DnsRecordStatus, "verified" | "message">;

export type DkimPublicKey = { selector: string; keyType: DkimKeyType; /** the p= value */ publicKey: string };

export type RecordsInput = {
  spec: SendingDomainSpec;
  /**
   * Addresses and EHLO names that send this domain's mail: its pool's and those of every pool its
   * mail may overflow to (overflow relays send it too, so SPF must authorise them).
   */
  addresses: { address: string; hostname: string }[];
  /** EHLO names of the domain's own pool, the default MX hosts of the return-path domain. */
  mxHosts: string[];
  /** Every selector that must be in DNS (Published, Active and Retiring ones). */
  dkim: DkimPublicKey[];
};

export function returnPathDomain(spec: SendingDomainSpec): string {
  return spec.returnPath.domain ?? `bounces.${spec.domain}`;
}

export function dkimRecordName(selector: string, domain: string): string {
  return `${selector}._domainkey.${domain}`;
}

export function dkimRecordValue(keyType: DkimKeyType, publicKey: string): string {
  return `v=DKIM1; k=${keyType === "Ed25519" ? "ed25519" : "rsa"}; p=${publicKey}`;
}

function uniqueSorted(list: string[]): string[] {
  return [...new Set(list)].sort();
}

function v4ToInt(a: string): number {
  return a.split(".").reduce((n, o) => n * 256 + Number(o), 0);
}
function intToV4(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
}

/**
 * The fewest CIDR blocks covering exactly these IPv4 addresses (a pool of 200 addresses from one
 * range becomes a few ip4:a.b.c.d/n mechanisms instead of a record too long for one DNS answer).
 */
export function ipv4Blocks(addresses: string[]): string[] {
  const nums = [...new Set(addresses.map(v4ToInt))].sort((a, b) => a - b);
  const out: string[] = [];
  let i = 0;
  while (i < nums.length) {
    let start = nums[i]!;
    let end = start;
    while (i + 1 < nums.length && nums[i + 1] === end + 1) end = nums[++i]!;
    i++;
    while (start <= end) {
      // Largest aligned block starting at start that stays within end.
      let size = 1;
      while (start % (size * 2) === 0 && start + size * 2 - 1 <= end && size < 2 ** 32) size *= 2;
      const bits = 32 - Math.log2(size);
      out.push(bits === 32 ? intToV4(start) : `${intToV4(start)}/${bits}`);
      start += size;
    }
  }
  return out;
}

/** ip4:/ip6: mechanisms for the addresses, IPv4 first (contiguous ranges as CIDR blocks), each once. */
export function spfMechanisms(addresses: string[]): string[] {
  const all = uniqueSorted(addresses);
  return [...ipv4Blocks(all.filter((a) => isIPv4(a))).map((a) => `ip4:${a}`), ...all.filter((a) => !isIPv4(a)).map((a) => `ip6:${a}`)];
}

export function spfValue(addresses: string[], include: string[], policy: string): string {
  return ["v=spf1", ...spfMechanisms(addresses), ...include.map((i) => `include:${i}`), policy].join(" ");
}

export function dmarcValue(spec: SendingDomainSpec): string {
  const d = spec.dmarc;
  const parts = [`v=DMARC1`, `p=${d.policy}`];
  if (d.rua.length) parts.push(`rua=${d.rua.join(",")}`);
  const a = d.alignment === "strict" ? "s" : "r";
  parts.push(`adkim=${a}`, `aspf=${a}`);
  return parts.join("; ");
}

export function desiredRecords(input: RecordsInput): DesiredRecord[] {
  const { spec } = input;
  const domain = spec.domain;
  const rp = returnPathDomain(spec);
  const addrs = input.addresses.map((a) => a.address);
  const records: DesiredRecord[] = [];
  records.push({ purpose: "spf", type: "TXT", name: domain, value: spfValue(addrs, spec.spf.include, spec.spf.policy) });
  for (const k of [...input.dkim].sort((a, b) => a.selector.localeCompare(b.selector))) {
    records.push({ purpose: "dkim", type: "TXT", name: dkimRecordName(k.selector, domain), value: dkimRecordValue(k.keyType, k.publicKey), selector: k.selector });
  }
  if (spec.dmarc.publish) records.push({ purpose: "dmarc", type: "TXT", name: `_dmarc.${domain}`, value: dmarcValue(spec) });
  const mx = uniqueSorted(spec.returnPath.mxHosts?.length ? spec.returnPath.mxHosts : input.mxHosts);
  for (const host of mx) records.push({ purpose: "return-path-mx", type: "MX", name: rp, value: host, priority: 10 });
  // One SPF record per name: when bounces go to the domain itself, its own record covers them.
  if (rp !== domain) {
    records.push({ purpose: "return-path-spf", type: "TXT", name: rp, value: spfValue(addrs, [], spec.spf.policy) });
  }
  return records;
}
