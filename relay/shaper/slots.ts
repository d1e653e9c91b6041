// Time-slot leases: the arithmetic of the fleet-wide shaper, as pure functions.
//
// A limit of L messages per period P is a chain of send slots spaced I = P / L apart (GCRA: the
// state is one number, the theoretical arrival time `tat` of the next free slot). A relay that
// wants n sends reserves the next n slots of the chain with one compare-and-set on the key's
// state in NATS KV, then spends each slot locally at its time. A slot may be spent only within
// `grace` after its time; a slot missed is dropped, never saved up. So in any window of length P
// the fleet sends at most the slots whose times fall in [t - grace, t + P]:
//
//     sends <= L + L * grace / P + 1
//
// With grace = 0.5% of P, a 6000/min lane stays within 1.01 L (0.5% + 1 message) and a 60/min
// lane within L + 1, however many relays share it and however they come and go. Coordination costs
// one CAS per reservation, and a reservation covers a fraction of a second of the lane's capacity,
// so the cost per delivery falls as the rate rises. Reserved slots are never handed out twice, so
// a relay that dies leaves nothing stuck: its slots simply pass unused.
//
// Warm-up quotas (per warm-up day and hour) count reserved slots, so a lane cannot exceed its
// quota even if every relay reserves at once; unused slots are returned to the count (release).

export type WindowCount = { start: number; used: number };

/** The state of one limit key, as stored in KV. */
export type SlotState = {
  /** Theoretical arrival time: when the next free slot starts (ms since epoch). */
  tat: number;
  /**
   * Slots issued on the chain so far (reservations, and sends made on local shares once their relay
   * is back). A relay back from its local share compares it with the count when it left, to learn
   * how many slots the others took meanwhile (fleet.ts). Absent in keys written before it existed.
   */
  n?: number;
  /** Quota windows (warm-up day and hour); absent when the key has no quota. */
  day?: WindowCount;
  hour?: WindowCount;
};

export type SlotLimit = {
  /** Messages per period; null: no rate limit (quota only, or nothing). */
  rate: { count: number; periodMs: number } | null;
  /** Multiplies the rate (response rules: SlowDown, recovery). 0 < factor <= 1. */
  factor: number;
  daily: number | null;
  hourly: number | null;
  /** Warm-up day length and the epoch offset where day 0 begins. */
  dayMs: number;
  dayZero: number;
  /** The quotas are for the warm-up day ending here: no quota slot at or after it (plan.ts). */
  quotaUntil?: number;
};

export type Reservation = {
  /** Slot times granted (ascending). */
  slots: number[];
  next: SlotState;
  /** When asking again may succeed (the next free slot, or the next quota window). */
  retryAt: number;
};

export function windowStart(t: number, lengthMs: number, zero: number): number {
  return zero + Math.floor((t - zero) / lengthMs) * lengthMs;
}

export function intervalMs(limit: SlotLimit): number {
  if (!limit.rate) return 0;
  return limit.rate.periodMs / (limit.rate.count * Math.max(limit.factor, 1e-6));
}

function rolled(w: WindowCount | undefined, start: number): WindowCount {
  return w && w.start === start ? { ...w } : { start, used: 0 };
}

/**
 * Reserve up to `n` slots at or after `now` (and before `now + horizonMs`, so a relay never holds
 * far-future slots it may not live to use).
 */
export function reserve(state: SlotState, limit: SlotLimit, n: number, now: number, horizonMs: number): Reservation {
  const interval = intervalMs(limit);
  const hourMs = limit.dayMs / 24;
  let tat = Math.max(state.tat, now);
  let day = limit.daily !== null ? rolled(state.day, windowStart(tat, limit.dayMs, limit.dayZero)) : undefined;
  let hour = limit.hourly !== null ? rolled(state.hour, windowStart(tat, hourMs, limit.dayZero)) : undefined;
  const slots: number[] = [];
  let retryAt = tat;
  while (slots.length < n && tat < now + horizonMs) {
    if (day) {
      const ds = windowStart(tat, limit.dayMs, limit.dayZero);
      if (ds !== day.start) day = { start: ds, used: 0 };
    }
    if (hour) {
      const hs = windowStart(tat, hourMs, limit.dayZero);
      if (hs !== hour.start) hour = { start: hs, used: 0 };
    }
    // Quota spent: nothing more until the next window. The chain stays where the last slot left
    // it (not moved to the next window's start), so slots given back (release) within this window
    // count again and can be granted again before it ends.
    if (day && day.used >= limit.daily!) {
      retryAt = day.start + limit.dayMs;
      break;
    }
    if (hour && hour.used >= limit.hourly!) {
      retryAt = hour.start + hourMs;
      break;
    }
    if ((day || hour) && limit.quotaUntil !== undefined && tat >= limit.quotaUntil) {
      retryAt = Math.max(now, limit.quotaUntil) + 250; // the next day's plan is due any moment
      break;
    }
    slots.push(tat);
    if (day) day.used++;
    if (hour) hour.used++;
    tat += interval;
    retryAt = tat;
  }
  const next: SlotState = { tat: slots.length ? tat : Math.max(state.tat, now), n: (state.n ?? 0) + slots.length };
  // A limit without a quota keeps the windows as they are: a relay still on an older plan must not
  // erase what the others counted (were the quota back within the window, its count holds).
  if (day) next.day = day;
  else if (state.day) next.day = state.day;
  if (hour) next.hour = hour;
  else if (state.hour) next.hour = state.hour;
  if (!slots.length) {
    // Nothing granted: keep the chain where it was, only roll the windows forward.
    next.tat = state.tat;
  }
  return { slots, next, retryAt };
}

/**
 * Give back slots that will not be used (drain, suspension): they no longer count against the
 * quota windows they fell in. The rate chain is not rewound (other relays may hold later slots).
 */
export function release(state: SlotState, limit: SlotLimit, slots: number[]): SlotState {
  const next: SlotState = { ...state };
  const hourMs = limit.dayMs / 24;
  for (const s of slots) {
    if (next.day && windowStart(s, limit.dayMs, limit.dayZero) === next.day.start && next.day.used > 0) {
      next.day = { ...next.day, used: next.day.used - 1 };
    }
    if (next.hour && windowStart(s, hourMs, limit.dayZero) === next.hour.start && next.hour.used > 0) {
      next.hour = { ...next.hour, used: next.hour.used - 1 };
    }
  }
  return next;
}

/** A slot may be spent from its time until `graceMs` after it. */
export function usable(slot: number, now: number, graceMs: number): boolean {
  return now >= slot && now <= slot + graceMs;
}

/** Grace for a limit: 0.5% of its period, at least 20 ms (timer resolution), at most 2 s. */
export function graceFor(limit: SlotLimit): number {
  if (!limit.rate) return 2000;
  return Math.min(2000, Math.max(20, limit.rate.periodMs * 0.005));
}

/**
 * Slots to ask for in one reservation: about `leadMs` of the lane's capacity split among the
 * relays sharing it, at least 1, at most what this relay can use.
 */
export function batchSize(limit: SlotLimit, relays: number, wanted: number, leadMs: number): number {
  const interval = intervalMs(limit);
  const capacity = interval > 0 ? Math.floor(leadMs / interval / Math.max(relays, 1)) : wanted;
  return Math.max(1, Math.min(wanted, capacity));
}

/**
 * The largest number of sends in any window of `periodMs` among sorted send times: what the
 * benchmark reports as max_window_ratio (divided by the limit).
 */
export function maxInWindow(times: number[], periodMs: number): number {
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < times.length; hi++) {
    while (times[hi]! - times[lo]! >= periodMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}
