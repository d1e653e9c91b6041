// Checking submission credentials against the plan's scrypt hashes.
//
// scrypt (N=16384) costs ~50 ms of CPU per check by design. A client that opens many connections
// must not pay it on each, so a successful check is remembered in memory: the key is an HMAC (with a
// per-process random key) of username, password and the stored hash, so the cache holds nothing
// that verifies a password outside this process and a changed hash in the plan invalidates it.
//
// Brute force is throttled per client IP (check()): attempts from one address run one after
// another, each only after the back-off its recent failures earned (250 ms x 2^(n-1), up to 15 s;
// the count decays 15 minutes after the last failure), so opening more connections gains a
// guesser nothing; and at most two scrypt checks run at once for all clients, so guessing from
// many addresses cannot take the CPU from the rest. An unknown username costs the same scrypt as
// a known one (no timing difference tells which usernames exist). Every failure is logged by the
// caller with the username and client IP (never the password).
import { createHmac, randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { verifyPassword } from "../../api/password.ts";
import type { PlanIndex } from "../plan/index.ts";

export class Authenticator {
  readonly #secret = randomBytes(32);
  readonly #ok = new Map<string, number>();
  readonly #failures = new Map<string, { n: number; last: number }>();
  readonly #clock: () => number;
  readonly #okTtlMs: number;
  /** Per client IP: the tail of its chain of attempts (one at a time). */
  readonly #chains = new Map<string, Promise<void>>();
  /** scrypt checks running, and those waiting for a slot. */
  #running = 0;
  readonly #waiting: (() => void)[] = [];
  /** A well-formed hash no password matches: what an unknown username is checked against. */
  readonly #decoy = `scrypt$16384$8$1$${randomBytes(16).toString("base64")}$${randomBytes(32).toString("base64")}`;
  static readonly MAX_CONCURRENT = 2;

  constructor(clock: () => number = Date.now, okTtlMs = 15 * 60_000) {
    this.#clock = clock;
    this.#okTtlMs = okTtlMs;
  }

  #cacheKey(username: string, password: string, hash: string): string {
    return createHmac("sha256", this.#secret).update(username).update("\0").update(password).update("\0").update(hash).digest("base64");
  }

  /** Back-off (ms) after n failures. */
  static backoff(n: number): number {
    return n <= 0 ? 0 : Math.min(250 * 2 ** (n - 1), 15_000);
  }

  /** Delay (ms) a failure from this IP earns; counts the failure. */
  failure(ip: string): number {
    const now = this.#clock();
    const f = this.#failures.get(ip);
    const n = f && now - f.last < 15 * 60_000 ? f.n + 1 : 1;
    if (this.#failures.size > 50_000) this.#failures.clear();
    this.#failures.set(ip, { n, last: now });
    return Authenticator.backoff(n);
  }

  /** Failures counted for this IP (tests, logs). */
  failures(ip: string): number {
    return this.#failures.get(ip)?.n ?? 0;
  }

  /**
   * One AUTH attempt from a client address: waits its turn (attempts from one address run one at a
   * time, after the back-off its failures earned), checks, counts a failure. `failures` is the
   * address's count after this attempt; `waitedMs` how long it was held back.
   */
  async check(ip: string, plan: PlanIndex, username: string, password: string): Promise<{ user: string | null; failures: number; waitedMs: number }> {
    const t0 = Date.now();
    const prev = this.#chains.get(ip) ?? Promise.resolve();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => gate);
    this.#chains.set(ip, tail);
    await prev;
    try {
      const f = this.#failures.get(ip);
      if (f && this.#clock() - f.last < 15 * 60_000) {
        const wait = f.last + Authenticator.backoff(f.n) - this.#clock();
        if (wait > 0) await sleep(wait);
      }
      const waitedMs = Date.now() - t0;
      const user = await this.verify(plan, username, password);
      if (!user) this.failure(ip);
      return { user, failures: this.failures(ip), waitedMs };
    } finally {
      release();
      if (this.#chains.get(ip) === tail) this.#chains.delete(ip);
    }
  }

  async #slot<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#running >= Authenticator.MAX_CONCURRENT) await new Promise<void>((r) => this.#waiting.push(r));
    this.#running++;
    try {
      return await fn();
    } finally {
      this.#running--;
      this.#waiting.shift()?.();
    }
  }

  /** The credential's username when the password matches, else null. */
  async verify(plan: PlanIndex, username: string, password: string): Promise<string | null> {
    const cred = plan.credentials.get(username);
    if (!cred) {
      await this.#slot(() => verifyPassword(password, this.#decoy));
      return null;
    }
    const key = this.#cacheKey(username, password, cred.hash);
    const now = this.#clock();
    const hit = this.#ok.get(key);
    if (hit && hit > now) return cred.username;
    if (!(await this.#slot(() => verifyPassword(password, cred.hash)))) return null;
    if (this.#ok.size > 10_000) this.#ok.clear();
    this.#ok.set(key, now + this.#okTtlMs);
    return cred.username;
  }
}
