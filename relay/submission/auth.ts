// Checking submission credentials against the plan's scrypt hashes.
//
// scrypt (N=16384) costs ~50 ms of CPU per check by design. A client that opens many connections
// must not pay it on each, so a successful check is remembered in memory: the key is an HMAC (with a
// per-process random key) of username, password and the stored hash, so the cache holds nothing
// that verifies a password outside this process and a changed hash in the plan invalidates it.
//
// Failures are throttled per client IP: each failure delays the 535 reply by 250 ms x 2^(n-1) up to
// 15 s (a brute-force client gets a few guesses a minute per IP), and the counter decays 15 minutes
// after the last failure. Every failure is logged with the username and client IP (never the
// password).
import { createHmac, randomBytes } from "node:crypto";
import { verifyPassword } from "../../api/password.ts";
import type { PlanIndex } from "../plan/index.ts";

export class Authenticator {
  readonly #secret = randomBytes(32);
  readonly #ok = new Map<string, number>();
  readonly #failures = new Map<string, { n: number; last: number }>();
  readonly #clock: () => number;
  readonly #okTtlMs: number;

  constructor(clock: () => number = Date.now, okTtlMs = 15 * 60_000) {
    this.#clock = clock;
    this.#okTtlMs = okTtlMs;
  }

  #cacheKey(username: string, password: string, hash: string): string {
    return createHmac("sha256", this.#secret).update(username).update("\0").update(password).update("\0").update(hash).digest("base64");
  }

  /** Delay (ms) to apply before answering a failure from this IP; counts the failure. */
  failure(ip: string): number {
    const now = this.#clock();
    const f = this.#failures.get(ip);
    const n = f && now - f.last < 15 * 60_000 ? f.n + 1 : 1;
    if (this.#failures.size > 50_000) this.#failures.clear();
    this.#failures.set(ip, { n, last: now });
    return Math.min(250 * 2 ** (n - 1), 15_000);
  }

  /** Failures counted for this IP (tests, logs). */
  failures(ip: string): number {
    return this.#failures.get(ip)?.n ?? 0;
  }

  /** The credential's username when the password matches, else null. */
  async verify(plan: PlanIndex, username: string, password: string): Promise<string | null> {
    const cred = plan.credentials.get(username);
    if (!cred) return null;
    const key = this.#cacheKey(username, password, cred.hash);
    const now = this.#clock();
    const hit = this.#ok.get(key);
    if (hit && hit > now) return cred.username;
    if (!(await verifyPassword(password, cred.hash))) return null;
    if (this.#ok.size > 10_000) this.#ok.clear();
    this.#ok.set(key, now + this.#okTtlMs);
    return cred.username;
  }
}
