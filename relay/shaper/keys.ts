// Names the fleet shaper uses in NATS: the KV bucket, its keys, and the core subject for rule
// broadcasts. One module so the relays, the operator (relay/shaper/state.ts) and the benchmark
// agree.
//
//   mf-shaper (KV, R3 when the mail streams are R3)
//     l.<pool>.<address>.<provider>   lane key: send-slot chain, warm-up quota windows, connection-rate
//                                     chain, and per-relay entries (liveness + connection allowance,
//                                     expiring leases)
//     p.<provider>                    provider as a whole (fleet-wide): rate cells + connection allowances
//     a.<address>                     source address as a whole (fleet-wide): the same
//     r.<pool>.<address>.<provider>   response-rule state of a lane (SlowDown, SuspendLane, CapConnections)
//     rp.<pool>.<provider>            response-rule state of a provider for one pool (SuspendProvider)
//   mf.shaper.rule.<pool>            core subject: rule state changes, to every relay of the pool at once
//   mf.shaper.up.<pool>              core subject: a relay found NATS answering again (rejoin together)
//   mf.shaper.local.<pool>           core subject: a relay's KV requests fail, it shapes (or soon will)
//                                    on its local share: the others leave it its share of its keys
import { token } from "../queue/topology.ts";
import type { LaneRef } from "./types.ts";

export const SHAPER_BUCKET = "mf-shaper";
export const SHAPER_STREAM = `KV_${SHAPER_BUCKET}`;
export const RULE_SUBJECT_PREFIX = "mf.shaper.rule";

/**
 * A KV key token for a name (RFC 1123, namespace/name) or an address. KV keys take [-/=._A-Za-z0-9];
 * '.' separates tokens, so it becomes '=' and IPv6's ':' becomes '_' (neither appears in names or
 * addresses, so distinct inputs stay distinct). Values carry the plain names; keys need not decode.
 */
export function keyToken(s: string): string {
  return s.replaceAll(".", "=").replaceAll(":", "_");
}

export const shaperKeys = {
  lane: (l: LaneRef) => `l.${keyToken(l.pool)}.${keyToken(l.address)}.${keyToken(l.provider)}`,
  provider: (provider: string) => `p.${keyToken(provider)}`,
  address: (address: string) => `a.${keyToken(address)}`,
  laneRule: (l: LaneRef) => `r.${keyToken(l.pool)}.${keyToken(l.address)}.${keyToken(l.provider)}`,
  providerRule: (pool: string, provider: string) => `rp.${keyToken(pool)}.${keyToken(provider)}`,
  /** Watch filters for one pool's rule keys. */
  ruleFilters: (pool: string) => [`r.${keyToken(pool)}.>`, `rp.${keyToken(pool)}.>`],
  allRules: ["r.>", "rp.>"],
};

export const ruleSubject = (pool: string) => `${RULE_SUBJECT_PREFIX}.${token(pool)}`;
/** Core subject: "NATS answers again", so relays on their local share rejoin together. */
export const upSubject = (pool: string) => `mf.shaper.up.${token(pool)}`;
/**
 * Core subject: "KV does not answer me; I hold my slots and then shape on my local share", said at the
 * first failure and repeated while it lasts. A relay whose KV requests
 * fail may still reach the core subjects (a stream electing its leader, a server that lost its
 * route to the leader); the relays that still reserve on the fleet's chain then leave it its share.
 */
export const localSubject = (pool: string) => `mf.shaper.local.${token(pool)}`;
