// Rate limits on a provider or a source address as a whole: capacity claimed in fixed time cells.
// Pure functions; relay/shaper/fleet.ts stores the state in KV.
//
// Why not a second slot chain (slots.ts): a send needs a slot from every applicable key at one
// instant. The lane's chain hands a relay a contiguous run of slot times; a second chain shared by
// many lanes and relays cannot hand out slots *at those times* (a chain only moves forward, so the
// first relay to reserve would push every other relay's times out of their grace). Fixed cells can:
// time is cut into cells of width w on an absolute grid (cell j = [j*w, (j+1)*w)), and cell j may
// carry cap(j) = floor((j+1)*w/I) - floor(j*w/I) sends (I = period / limit), so consecutive cells
// never carry more than their length's share plus one. Any relay may claim capacity in any cell.
//
// Combining: the lane's slot at t (spend by t + grace) claims the first cell at or after t with
// room, at send time max(t, cell start); if that is past the lane slot's grace the slot is dropped
// (never sent late). A claim in cell j may be spent until (j+2)*w. In any window of the period P the
// sends counted against the key come from at most P/w + 3 consecutive cells, so
//
//     sends <= L * (1 + 3w/P) + 1      (w = P/1000: 1.003 L + 1)
//
// and the lane's own bound (slots.ts) holds as well, since every send happens within its lane slot's
// grace. The tighter key wins by construction: a send happens only when every key has room.
import { intervalMs, type SlotLimit } from "./slots.ts";

export interface CellState {
  /** Cell width (ms). Cells are recomputed when it changes (limit edited): old claims are dropped. */
  w: number;
  /** Claimed sends per cell index (only cells that may still be spent). */
  c: Record<string, number>;
}

/** Cell width for a limit: 0.1% of its period, at least 20 ms (timer resolution), at most 2 s. */
export function cellWidth(limit: SlotLimit): number {
  if (!limit.rate) return 2000;
  return Math.min(2000, Math.max(20, Math.round(limit.rate.periodMs / 1000)));
}

export function cellCapacity(j: number, w: number, limit: SlotLimit): number {
  const interval = intervalMs(limit);
  if (interval <= 0) return Number.POSITIVE_INFINITY;
  // Small epsilon: floating error must not hand out an extra send at exact multiples.
  return Math.floor(((j + 1) * w) / interval + 1e-9) - Math.floor((j * w) / interval + 1e-9);
}

export interface CellRequest {
  /** Earliest send time (the lane slot). */
  at: number;
  /** Latest send time (the lane slot's grace). */
  deadline: number;
}

export interface CellGrant {
  /** Send time, or null when no cell had room before the deadline. */
  at: number | null;
  /** Latest time the claim may be spent (cell end + one cell, and the request's deadline). */
  deadline: number;
}

/** Drops cells that can no longer be spent (their claims can never count again). */
export function pruneCells(state: CellState | undefined, w: number, now: number): CellState {
  if (!state || state.w !== w) return { w, c: {} };
  const c: Record<string, number> = {};
  for (const [k, v] of Object.entries(state.c)) if ((Number(k) + 2) * w >= now) c[k] = v;
  return { w, c };
}

/**
 * Claims one send per request (requests sorted by `at`), each in the first cell with room at or
 * after its time and before its deadline.
 */
export function claimCells(state: CellState | undefined, limit: SlotLimit, requests: CellRequest[], now: number): { grants: CellGrant[]; next: CellState } {
  const w = cellWidth(limit);
  const next = pruneCells(state, w, now);
  const grants: CellGrant[] = [];
  for (const r of requests) {
    let j = Math.floor(r.at / w);
    let granted: CellGrant = { at: null, deadline: r.deadline };
    for (;;) {
      const at = Math.max(r.at, j * w);
      if (at > r.deadline) break;
      const used = next.c[j] ?? 0;
      if (used < cellCapacity(j, w, limit)) {
        next.c[j] = used + 1;
        granted = { at, deadline: Math.min(r.deadline, (j + 2) * w) };
        break;
      }
      j++;
    }
    grants.push(granted);
  }
  return { grants, next };
}

/** Gives back claims that will not be spent (their send times). */
export function releaseCells(state: CellState, times: number[]): CellState {
  const next: CellState = { w: state.w, c: { ...state.c } };
  for (const t of times) {
    const j = Math.floor(t / state.w);
    if ((next.c[j] ?? 0) > 0) next.c[j]!--;
  }
  return next;
}

/** The window bound a cell-limited key keeps (see the header). */
export function cellBound(limit: SlotLimit): number {
  const count = limit.rate!.count * limit.factor;
  return count * (1 + (3 * cellWidth(limit)) / limit.rate!.periodMs) + 1;
}
