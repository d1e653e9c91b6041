// Loopback listen addresses for relays. Every relay on this one machine would bind the same ports,
// so each Pod gets its own 127.x.y.z from a range the runner owns (all of 127.0.0.0/8 is local and
// bindable without interface aliases: TESTBED.md). An address stays with its Pod until the Pod is
// gone and its relay has exited, so a draining relay never shares an address with a new one.
import { createServer } from "node:net";

/** Parses an IPv4 CIDR inside 127.0.0.0/8 into its usable addresses (no .0 or .255 last octet). */
export function parseRange(cidr: string): { first: number; last: number } {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr.trim());
  if (!m) throw new Error(`addressRange: "${cidr}" is not an IPv4 CIDR like 127.0.200.0/22`);
  const octets = m.slice(1, 5).map(Number);
  const bits = Number(m[5]);
  if (octets.some((o) => o > 255) || bits < 8 || bits > 30) throw new Error(`addressRange: "${cidr}" is not a valid CIDR with a prefix from /8 to /30`);
  if (octets[0] !== 127) throw new Error(`addressRange: "${cidr}" must lie in 127.0.0.0/8 (loopback: bindable without interface aliases)`);
  const base = ((octets[0]! << 24) >>> 0) + (octets[1]! << 16) + (octets[2]! << 8) + octets[3]!;
  const size = 2 ** (32 - bits);
  const first = base - (base % size);
  return { first, last: first + size - 1 };
}

export function ipToString(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export function ipToNumber(s: string): number | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (!m) return undefined;
  const o = m.slice(1).map(Number);
  if (o.some((x) => x > 255)) return undefined;
  return ((o[0]! << 24) >>> 0) + (o[1]! << 16) + (o[2]! << 8) + o[3]!;
}

/**
 * Whether nothing listens on address:port (a bind that succeeds and is released at once). Only
 * EADDRINUSE says "taken": without privileges a low port cannot be tried, and is not held against it.
 */
export function portFreeOn(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.unref();
    s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code !== "EADDRINUSE"));
    s.listen({ host: address, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

export class AddressPool {
  readonly range: string;
  private readonly first: number;
  private readonly last: number;
  /** address -> owner key (the Pod uid) */
  private readonly held = new Map<string, string>();

  constructor(range: string) {
    this.range = range;
    const r = parseRange(range);
    this.first = r.first;
    this.last = r.last;
  }

  contains(address: string): boolean {
    const n = ipToNumber(address);
    return n !== undefined && n >= this.first && n <= this.last && usable(n);
  }

  ownerOf(address: string): string | undefined {
    return this.held.get(address);
  }

  addressOf(owner: string): string | undefined {
    for (const [a, o] of this.held) if (o === owner) return a;
    return undefined;
  }

  /**
   * The owner's address: the one it holds, else `preferred` (what its Pod's annotation records) if
   * that is in range and not held by another owner, else the lowest free one. `free` checks the
   * address on this machine (another runner, a leftover process): an address where it fails is
   * skipped.
   */
  async allocate(owner: string, o: { preferred?: string; free?: (address: string) => Promise<boolean> } = {}): Promise<string> {
    const mine = this.addressOf(owner);
    if (mine) return mine;
    // Claim before each asynchronous check so that two allocations cannot pick the same address.
    if (o.preferred && this.contains(o.preferred) && !this.held.has(o.preferred)) {
      this.held.set(o.preferred, owner);
      if (!o.free || (await o.free(o.preferred))) return o.preferred;
      this.held.delete(o.preferred);
    }
    for (let n = this.first; n <= this.last; n++) {
      if (!usable(n)) continue;
      const a = ipToString(n);
      if (this.held.has(a)) continue;
      this.held.set(a, owner);
      if (o.free && !(await o.free(a))) {
        this.held.delete(a);
        continue;
      }
      return a;
    }
    throw new Error(`no free listen address left in ${this.range} (${this.held.size} held)`);
  }

  release(owner: string): void {
    for (const [a, o] of this.held) if (o === owner) this.held.delete(a);
  }
}

/** Skips x.y.z.0 and x.y.z.255: valid on loopback, but they read like network and broadcast. */
function usable(n: number): boolean {
  const lastOctet = n & 255;
  return lastOctet !== 0 && lastOctet !== 255;
}
