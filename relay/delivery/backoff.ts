// When to try a deferred part again, and when to give up. Pure.
//
// Exponential backoff with "equal jitter": the n-th retry waits a random time in [d/2, d] where
// d = min(retryMax, retryBase * 2^(n-1)). The jitter spreads retries of mail deferred together
// (a provider's 421 to a whole batch) so they do not come back as one burst; keeping half of d
// fixed keeps the schedule predictable. The last try is made at the expiry itself; a transient
// failure after it bounces the mail as expired.

export interface RetryPolicy {
  expiryMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
}

export function retryDelayMs(attempts: number, p: RetryPolicy, random: () => number = Math.random): number {
  const n = Math.max(1, attempts);
  const d = Math.min(p.retryMaxMs, p.retryBaseMs * 2 ** Math.min(n - 1, 40));
  return Math.round(d / 2 + random() * (d / 2));
}

export type NextAttempt = { at: number } | { expired: true };

/**
 * After the `attempts`-th failed attempt at `now`: when to try again, or expired when the mail
 * was accepted at `acceptedAt` more than the expiry ago.
 */
export function nextAttempt(acceptedAt: number, attempts: number, now: number, p: RetryPolicy, random?: () => number): NextAttempt {
  const expiresAt = acceptedAt + p.expiryMs;
  if (now >= expiresAt) return { expired: true };
  return { at: Math.min(expiresAt, now + retryDelayMs(attempts, p, random)) };
}
