// The value of one limit key in the shaper's KV bucket, and the pure decisions over it: who shares
// the key (relay entries that expire), connection allowances (leases that expire), and the safe
// local share a relay falls back to when it cannot reach NATS.
//
// Relay entries double as presence: a relay refreshes its entry whenever it writes the key (every
// reservation), so "live relays sharing this key" costs no extra messages, and counts only relays
// that really send on it. An entry not refreshed within the lease time no longer counts, and its
// connection allowance is free again: a relay that dies leaves no limit stuck.
import type { CellState } from "./cells.ts";
import { reserve, type SlotLimit, type SlotState } from "./slots.ts";

export interface RelayEntry {
  /** Last time the relay wrote its entry (ms since epoch, the relay's clock). */
  seen: number;
  /** Connections the relay may hold open on this key (its allowance). */
  conns: number;
}

export interface KeyState {
  v: 1;
  /** Lane keys: the send-slot chain and quota windows (slots.ts). */
  s?: SlotState;
  /** Lane keys of lanes with a connection rate: the chain of connection opens (takeConnection). */
  c?: SlotState;
  /** Provider/address keys with a rate limit: claimed cells (cells.ts). */
  cells?: CellState;
  /** Relay id -> entry. */
  r: Record<string, RelayEntry>;
  /** What the key limits, for readers (the operator's status, the CLI). */
  ref?: { pool?: string; address?: string; provider?: string };
}

export function emptyKey(ref?: KeyState["ref"]): KeyState {
  return { v: 1, r: {}, ...(ref ? { ref } : {}) };
}

export function decodeKey(data: Uint8Array | undefined | null): KeyState | null {
  if (!data || data.length === 0) return null;
  try {
    const v = JSON.parse(new TextDecoder().decode(data)) as KeyState;
    if (!v || typeof v !== "object" || typeof v.r !== "object") return null;
    return v;
  } catch {
    return null;
  }
}

export function encodeKey(k: KeyState): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(k));
}

function isLive(e: RelayEntry, now: number, leaseMs: number): boolean {
  return e.seen > now - leaseMs;
}

/** Relays sharing the key now, counting `self` whether or not it has an entry yet. */
export function liveRelays(k: KeyState | null, self: string, now: number, leaseMs: number): number {
  let n = 1;
  for (const [id, e] of Object.entries(k?.r ?? {})) if (id !== self && isLive(e, now, leaseMs)) n++;
  return n;
}

/** Connections held by the other live relays. */
export function othersConnections(k: KeyState | null, self: string, now: number, leaseMs: number): number {
  let n = 0;
  for (const [id, e] of Object.entries(k?.r ?? {})) if (id !== self && isLive(e, now, leaseMs)) n += e.conns;
  return n;
}

/**
 * Sets this relay's entry (refreshing its lease) and drops expired entries. `want` is the
 * allowance it asks for; it gets at most what the cap leaves after the other live relays. (A cap
 * lowered by a rule can leave a relay with more open than its new allowance: it opens no more
 * until its count is under, as connections close after their messages or when idle.)
 */
export function touchRelay(k: KeyState, self: string, now: number, leaseMs: number, want: number, max: number | null): { next: KeyState; conns: number } {
  const r: Record<string, RelayEntry> = {};
  for (const [id, e] of Object.entries(k.r)) if (id !== self && isLive(e, now, leaseMs)) r[id] = e;
  const free = max === null ? Number.POSITIVE_INFINITY : Math.max(0, max - othersConnections(k, self, now, leaseMs));
  const conns = Math.max(0, Math.min(want, free));
  r[self] = { seen: now, conns: Number.isFinite(conns) ? conns : want };
  return { next: { ...k, r }, conns: r[self]!.conns };
}

/** Removes this relay's entry (drain): its allowance is free at once. */
export function leaveRelay(k: KeyState, self: string): KeyState {
  const r = { ...k.r };
  delete r[self];
  return { ...k, r };
}

/**
 * The safe local share of a limit for a relay that cannot reach NATS: the rate divided by the
 * relays last seen sharing the key, and the quota left in the current windows divided the same way.
 * Never unlimited: a limit stays a limit, only smaller.
 */
export function localShare(limit: SlotLimit, known: SlotState | undefined, relays: number, now: number): SlotLimit {
  const n = Math.max(1, relays);
  const share = { ...limit, factor: limit.factor / n };
  const hourMs = limit.dayMs / 24;
  const left = (quota: number | null, w: { start: number; used: number } | undefined, len: number) => {
    if (quota === null) return null;
    const start = limit.dayZero + Math.floor((now - limit.dayZero) / len) * len;
    const used = w && w.start === start ? w.used : 0;
    return Math.floor(Math.max(0, quota - used) / n);
  };
  share.daily = left(limit.daily, known?.day, limit.dayMs);
  share.hourly = left(limit.hourly, known?.hour, hourMs);
  return share;
}

/** Connections a relay may hold when it cannot reach NATS: the cap over the relays, at least one. */
export function localConnections(max: number, relays: number): number {
  return Math.max(1, Math.floor(max / Math.max(1, relays)));
}

/**
 * Adds sends made on a local share (while NATS was unreachable) to the key's quota windows, so the
 * fleet's count includes them once the relay is back.
 */
export function addSpent(s: SlotState, spent: { day?: { start: number; used: number }; hour?: { start: number; used: number } }): SlotState {
  const next: SlotState = { ...s };
  for (const w of ["day", "hour"] as const) {
    const add = spent[w];
    if (!add || add.used <= 0) continue;
    const cur = next[w];
    if (!cur || cur.start < add.start) next[w] = { start: add.start, used: add.used };
    else if (cur.start === add.start) next[w] = { start: cur.start, used: cur.used + add.used };
  }
  return next;
}

/**
 * A lane's connection rate as a chain limit. Factor 1, as in local.ts: a SlowDown stretches the
 * message rate, and rules limit connections through their own lever (CapConnections, the ramp
 * after a suspension); stretching opens too would also hold back the reconnects a slowed lane
 * needs when its connections close after messagesPerConnection.
 */
export function connectionLimit(rate: { count: number; periodMs: number }): SlotLimit {
  return { rate, factor: 1, daily: null, hourly: null, dayMs: 86_400_000, dayZero: 0 };
}

/**
 * One connection open on a connection-rate chain: the next slot when it falls before `now +
 * graceMs` (the connection opens now, at most the grace ahead of its slot), else when it will.
 * The chain resumes no earlier than `after` (the head of this relay's local chain, back from its
 * local share). Slots are never saved up (reserve starts at now at the earliest), so in any window
 * of a period at most the slots within it plus the grace open: L + 1 while the grace is under one
 * interval (300 ms against 2 s at 30/min).
 */
export function takeConnection(c: SlotState | undefined, limit: SlotLimit, now: number, graceMs: number, after = 0): { next: SlotState } | { retryAt: number } {
  const state: SlotState = { ...(c ?? { tat: 0 }), tat: Math.max(c?.tat ?? 0, after) };
  const r = reserve(state, limit, 1, now, Math.max(1, graceMs));
  return r.slots.length ? { next: { tat: r.next.tat, n: r.next.n ?? 0 } } : { retryAt: r.retryAt };
}
