// Reading message bodies for delivery and DSNs, and deleting them when the mail is done.
//
// A body is stored once per accepted message (MF_BODY, `mf.body.<qid>`, or the object store when
// large) and read once per attempt of each part. A small LRU keeps recent bodies: parts of one
// message and retries after a short deferral usually come back to the same relay soon.
import type { JetStreamManager } from "@nats-io/jetstream";
import type { ObjectStore } from "@nats-io/obj";
import type { BodyRef } from "../queue/envelope.ts";
import { STREAM_BODY } from "../queue/topology.ts";

/** The two shapes of a body reference, told apart by their field. */
export function refOf(ref: BodyRef): { subject: string } | { object: string } {
  const subject = (ref as { subject?: unknown }).subject;
  if (typeof subject === "string") return { subject };
  return { object: String((ref as { object?: unknown }).object) };
}

export class BodyNotFound extends Error {
  constructor(what: string) {
    super(`message body not found: ${what}`);
    this.name = "BodyNotFound";
  }
}

export class BodyStore {
  readonly #jsm: JetStreamManager;
  readonly #large: ObjectStore | undefined;
  readonly #cache = new Map<string, Buffer>();
  #cached = 0;
  readonly #maxBytes: number;

  constructor(jsm: JetStreamManager, large?: ObjectStore, maxCacheBytes = 64 * 1024 * 1024) {
    this.#jsm = jsm;
    this.#large = large;
    this.#maxBytes = maxCacheBytes;
  }

  #key(ref: BodyRef): string {
    const r = refOf(ref);
    return "subject" in r ? `s:${r.subject}` : `o:${r.object}`;
  }

  async get(ref: BodyRef): Promise<Buffer> {
    const key = this.#key(ref);
    const hit = this.#cache.get(key);
    if (hit) {
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit;
    }
    let body: Buffer;
    const r = refOf(ref);
    if ("subject" in r) {
      // Direct get (MF_BODY allows it) is answered by any replica without the leader's API
      // queue; a replica that has not caught up yet answers "not found", so the leader is asked
      // before the body is declared missing.
      const notFound = (e: Error) => {
        if (/no message found|not found/i.test(e.message)) return null;
        throw e;
      };
      let m: { data: Uint8Array } | null = await this.#jsm.direct.getMessage(STREAM_BODY, { last_by_subj: r.subject }).catch(notFound);
      m ??= await this.#jsm.streams.getMessage(STREAM_BODY, { last_by_subj: r.subject }).catch(notFound);
      if (!m) throw new BodyNotFound(r.subject);
      body = Buffer.from(m.data);
    } else {
      const name = r.object;
      if (!this.#large) throw new BodyNotFound(`object ${name} (no object store)`);
      const obj = await this.#large.get(name);
      if (!obj) throw new BodyNotFound(`object ${name}`);
      const chunks: Uint8Array[] = [];
      const reader = obj.data.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
      }
      await obj.error;
      body = Buffer.concat(chunks);
    }
    this.#remember(key, body);
    return body;
  }

  #remember(key: string, body: Buffer): void {
    if (body.length > this.#maxBytes / 4) return;
    this.#cache.set(key, body);
    this.#cached += body.length;
    while (this.#cached > this.#maxBytes) {
      const [k, v] = this.#cache.entries().next().value!;
      this.#cache.delete(k);
      this.#cached -= v.length;
    }
  }

  /** Deletes a body (the last part of its message is final). Missing bodies are fine. */
  async delete(ref: BodyRef): Promise<void> {
    const key = this.#key(ref);
    const v = this.#cache.get(key);
    if (v) {
      this.#cache.delete(key);
      this.#cached -= v.length;
    }
    const r = refOf(ref);
    if ("subject" in r) await this.#jsm.streams.purge(STREAM_BODY, { filter: r.subject });
    else await this.#large?.delete(r.object).catch(() => {});
  }
}
