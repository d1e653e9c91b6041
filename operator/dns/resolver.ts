// The operator's DNS lookups: node's c-ares resolver pointed at --dns-servers (the system's
// servers when none are given). Verification must see what receivers see, so this asks the
// configured servers directly rather than through the node's caching stub resolver.
import { promises as dns } from "node:dns";
import type { Lookup, RRType } from "./verify.ts";

export function makeLookup(servers: string[], o: { timeoutMs?: number; tries?: number } = {}): Lookup {
  const resolver = new dns.Resolver({ timeout: o.timeoutMs ?? 3000, tries: o.tries ?? 2 });
  if (servers.length) resolver.setServers(servers);
  return {
    resolve: (name: string, type: RRType) => resolver.resolve(name, type) as Promise<unknown>,
    reverse: (address: string) => resolver.reverse(address),
  };
}
