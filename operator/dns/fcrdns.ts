// Forward-confirmed reverse DNS of a pool's sending addresses: the address's PTR names the EHLO
// host, and that host resolves back to the address. Receivers (Gmail, Microsoft, most gateways)
// refuse or junk mail from addresses without it. Also DNS blocklist listings. Lookups injected.
import { isIPv4, isIPv6 } from "node:net";
import { type Lookup, isNotFound } from "./verify.ts";

export type AddressCheck = {
  address: string;
  hostname: string;
  ptr?: string[];
  forwardConfirmed: boolean;
  listed?: string[];
  message?: string;
};

const host = (s: string) => s.toLowerCase().replace(/\.$/, "");

/** The name a DNSBL is asked for: reversed octets (IPv4) or nibbles (IPv6) under the zone. */
export function dnsblName(address: string, zone: string): string {
  if (isIPv4(address)) return `${address.split(".").reverse().join(".")}.${zone}`;
  const groups = expandIPv6(address);
  return `${groups.join("").split("").reverse().join(".")}.${zone}`;
}

export function expandIPv6(address: string): string[] {
  const [head, tail] = address.split("::") as [string, string | undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const fill = tail === undefined ? [] : Array(8 - h.length - t.length).fill("0");
  return [...h, ...fill, ...t].map((g) => g.padStart(4, "0").toLowerCase());
}

function sameAddress(a: string, b: string): boolean {
  if (isIPv6(a) && isIPv6(b)) return expandIPv6(a).join(":") === expandIPv6(b).join(":");
  return a === b;
}

export async function checkAddress(
  a: { address: string; hostname: string }, lookup: Lookup, blocklists: string[] = [],
): Promise<AddressCheck> {
  const out: AddressCheck = { address: a.address, hostname: a.hostname, forwardConfirmed: false };
  const problems: string[] = [];
  let ptr: string[] = [];
  try {
    ptr = (await lookup.reverse(a.address)).map(host);
  } catch (err) {
    if (!isNotFound(err)) problems.push(`PTR lookup of ${a.address} failed (${(err as { code?: string }).code ?? (err as Error).message}); will retry`);
  }
  out.ptr = [...new Set(ptr)].sort().slice(0, 16);
  const want = host(a.hostname);
  if (!problems.length) {
    if (ptr.length === 0) problems.push(`${a.address} has no PTR record: ask the address's owner to point it at ${want}`);
    else if (!ptr.includes(want)) problems.push(`the PTR of ${a.address} is ${out.ptr.join(", ")}, not the EHLO name ${want}`);
  }
  let forward: string[] = [];
  try {
    forward = (await lookup.resolve(want, isIPv4(a.address) ? "A" : "AAAA")) as string[];
  } catch (err) {
    if (!isNotFound(err)) problems.push(`lookup of ${want} failed (${(err as { code?: string }).code ?? (err as Error).message}); will retry`);
    else problems.push(`${want} has no ${isIPv4(a.address) ? "A" : "AAAA"} record: publish ${want} ${isIPv4(a.address) ? "A" : "AAAA"} ${a.address}`);
  }
  if (forward.length && !forward.some((f) => sameAddress(f, a.address))) {
    problems.push(`${want} resolves to ${forward.join(", ")}, not ${a.address}`);
  }
  out.forwardConfirmed = ptr.includes(want) && forward.some((f) => sameAddress(f, a.address));
  const listed: string[] = [];
  for (const zone of blocklists) {
    try {
      const answers = (await lookup.resolve(dnsblName(a.address, zone), "A")) as string[];
      // DNSBLs answer 127.0.0.x for a listing; other answers are errors (e.g. 127.255.255.254: query refused).
      if (answers.some((x) => /^127\.0\.0\.\d+$/.test(x))) listed.push(zone);
    } catch {
      /* not listed, or the list is unreachable: neither is a listing */
    }
  }
  if (listed.length) {
    out.listed = listed;
    problems.push(`${a.address} is listed on ${listed.join(", ")}`);
  }
  if (problems.length) out.message = problems.join("; ").slice(0, 1024);
  return out;
}
