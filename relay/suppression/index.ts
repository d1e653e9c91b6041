// The suppression list: KV bucket `mf-suppress`, keys hashed so the bucket holds no addresses.
//
//   h.<sha256(address)>                      hard bounces, fleet-wide
//   d.<sha256(domain)>.<sha256(address)>     complaints, unsubscribes, manual entries, per sending domain
//
// (sha256 hex of the lower-cased value). Expiry: a per-key TTL on the server (2.11+, the bucket is
// created with limit markers), and the expiry in the value as well, which check() honours, so an
// entry never outlives its TTL even on an older server. Used by submission (refuse or drop), by
// delivery (hard bounces, complaints) and by the CLI.
import { createHash } from "node:crypto";
import type { KV } from "@nats-io/kv";

export type SuppressionReason = "hard-bounce" | "complaint" | "unsubscribe" | "manual";
export type SuppressionScope = { global: true } | { domain: string };

export interface SuppressionValue {
  reason: SuppressionReason;
  /** Sending domain for domain-scoped entries. */
  domain?: string;
  addedAt: number;
  /** ms since epoch; absent: no expiry. */
  expiresAt?: number;
  /** Free text: the bounce reply, the feedback report id, who added it. No addresses. */
  detail?: string;
}

export interface SuppressionEntry extends SuppressionValue {
  key: string;
  scope: "global" | "domain";
}

const hex = (s: string) => createHash("sha256").update(s.trim().toLowerCase()).digest("hex");

export function suppressionKey(scope: SuppressionScope, address: string): string {
  return "global" in scope ? `h.${hex(address)}` : `d.${hex(scope.domain)}.${hex(address)}`;
}

/** Go duration string for a KV TTL (seconds, at least 1). */
function ttlString(ms: number): string {
  return `${Math.max(1, Math.ceil(ms / 1000))}s`;
}

export interface SuppressionOptions {
  /** Server supports per-key TTL (2.11+). */
  perKeyTtl: boolean;
  clock?: () => number;
  /** Cache of check() results: a bounded map kept `cacheMs` (0: no cache). */
  cacheMs?: number;
}

export class Suppressions {
  readonly #kv: KV;
  readonly #o: Required<SuppressionOptions>;
  readonly #cache = new Map<string, { at: number; value: SuppressionValue | null }>();

  constructor(kv: KV, o: SuppressionOptions) {
    this.#kv = kv;
    this.#o = { clock: Date.now, cacheMs: 0, ...o };
  }

  async #get(key: string): Promise<SuppressionValue | null> {
    const now = this.#o.clock();
    const c = this.#cache.get(key);
    if (c && now - c.at < this.#o.cacheMs) return c.value;
    const e = await this.#kv.get(key);
    let value: SuppressionValue | null = null;
    if (e && e.operation === "PUT" && e.length > 0) {
      try {
        const v = e.json<SuppressionValue>();
        if (!v.expiresAt || v.expiresAt > now) value = v;
      } catch {
        value = null;
      }
    }
    if (this.#o.cacheMs > 0) {
      if (this.#cache.size > 100_000) this.#cache.clear();
      this.#cache.set(key, { at: now, value });
    }
    return value;
  }

  /** Why `rcpt` must not get mail from `domain` (fleet-wide hard bounce first), or null. */
  async check(domain: string, rcpt: string): Promise<SuppressionEntry | null> {
    const hk = suppressionKey({ global: true }, rcpt);
    const dk = suppressionKey({ domain }, rcpt);
    const [h, d] = await Promise.all([this.#get(hk), this.#get(dk)]);
    if (h) return { ...h, key: hk, scope: "global" };
    if (d) return { ...d, key: dk, scope: "domain" };
    return null;
  }

  async add(o: { scope: SuppressionScope; address: string; reason: SuppressionReason; ttlMs?: number; detail?: string }): Promise<string> {
    const key = suppressionKey(o.scope, o.address);
    const now = this.#o.clock();
    const value: SuppressionValue = {
      reason: o.reason,
      ...("domain" in o.scope ? { domain: o.scope.domain.toLowerCase() } : {}),
      addedAt: now,
      ...(o.ttlMs && o.ttlMs > 0 ? { expiresAt: now + o.ttlMs } : {}),
      ...(o.detail ? { detail: o.detail.slice(0, 500) } : {}),
    };
    const data = JSON.stringify(value);
    const ttl = o.ttlMs && o.ttlMs > 0 && this.#o.perKeyTtl ? ttlString(o.ttlMs) : undefined;
    // TTLs can be set only when a key is created (nats.js v3). An existing entry that already
    // lasts at least as long is left alone (concurrent adds of one address are common: a burst
    // of bounces); otherwise it is purged and created again.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#kv.create(key, data, ttl);
        break;
      } catch (e) {
        if (attempt >= 5 || !/wrong last sequence|exists/i.test((e as Error).message)) throw e;
        this.#cache.delete(key);
        const cur = await this.#get(key);
        if (cur && (!cur.expiresAt || (value.expiresAt !== undefined && cur.expiresAt >= value.expiresAt))) break;
        await this.#kv.purge(key);
      }
    }
    this.#cache.delete(key);
    return key;
  }

  async remove(scope: SuppressionScope, address: string): Promise<boolean> {
    const key = suppressionKey(scope, address);
    const had = (await this.#get(key)) !== null;
    await this.#kv.purge(key);
    this.#cache.delete(key);
    return had;
  }

  /** Entries, optionally only one sending domain's (keys are hashes: addresses are not stored). */
  async list(o: { domain?: string; global?: boolean } = {}): Promise<SuppressionEntry[]> {
    const filter = o.domain ? `d.${hex(o.domain)}.>` : o.global ? "h.>" : ">";
    const keys: string[] = [];
    for await (const k of await this.#kv.keys(filter)) keys.push(k);
    const out: SuppressionEntry[] = [];
    for (const key of keys.sort()) {
      const v = await this.#get(key);
      if (v) out.push({ ...v, key, scope: key.startsWith("h.") ? "global" : "domain" });
    }
    return out;
  }
}
