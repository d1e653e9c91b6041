// Per-key rate limit for submissions (the domain's submitRate), per relay: GCRA, one number per
// key, in a bounded map. A fleet-wide limit would need the shaper's coordination; a submission
// limit is about stopping a runaway client, and per relay (times the relay count) does that.
export class RateLimiter {
  readonly #tat = new Map<string, number>();
  readonly #max: number;
  constructor(maxKeys = 100_000) {
    this.#max = maxKeys;
  }
  /** Takes one token; false when the key is over `count` per `periodMs` (burst: `count`). */
  take(key: string, count: number, periodMs: number, now: number): boolean {
    const interval = periodMs / count;
    const tat = Math.max(this.#tat.get(key) ?? now, now);
    if (tat - now > periodMs - interval) return false;
    if (this.#tat.size >= this.#max && !this.#tat.has(key)) {
      for (const [k, v] of this.#tat) if (v <= now) this.#tat.delete(k);
      if (this.#tat.size >= this.#max) this.#tat.clear();
    }
    this.#tat.set(key, tat + interval);
    return true;
  }
}
