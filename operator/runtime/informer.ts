// A list+watch cache of one resource (client-go's reflector + store, in small):
//
//  - lists in pages, then watches from the list's resourceVersion with bookmarks, so a quiet watch
//    rarely ages out into a 410 and a relist;
//  - relists on 410 Gone, and on any other error after an exponential backoff with jitter
//    (1 s -> 30 s), never in a tight loop (kubernetes-client/javascript#1933);
//  - a watchdog restarts a watch that has delivered nothing (not even a bookmark) for longer than
//    a bound: watches can go quiet without an error (kubernetes-client/javascript#596);
//  - the server closes each watch after a random 5-10 minutes, as client-go asks it to, and the
//    watch resumes from the last resourceVersion;
//  - a periodic resync hands every cached object to the handlers again (level-triggered
//    controllers use it to re-check what the clock or the outside world changed).
//
// Handlers get keys' objects; controllers enqueue keys and read the cache when they run.
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { type KubeClient, type Resource, apiVersionOf, pathOf } from "./kube.ts";
import type { Logger } from "./log.ts";
import type { KubeObject } from "./types.ts";

export type Handler<T> = {
  add?(obj: T): void;
  update?(oldObj: T, obj: T): void;
  delete?(obj: T): void;
  /** Periodic resync: every cached object. */
  resync?(obj: T): void;
};

export type InformerOptions<T> = {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  /** Shrink objects before caching (e.g. drop managedFields, or data the operator never reads). */
  transform?(obj: KubeObject): T;
  resyncMs?: number;
  /** Restart a watch that delivered nothing for this long (default 5 minutes). */
  watchdogMs?: number;
  pageSize?: number;
  onWatchRestart?(reason: string): void;
};

const sleep = (ms: number, signal: AbortSignal) => new Promise<void>((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

export class Informer<T extends KubeObject = KubeObject> {
  readonly resource: Resource;
  readonly name: string;
  private readonly client: KubeClient;
  private readonly log: Logger;
  private readonly o: InformerOptions<T>;
  private readonly store = new Map<string, T>();
  /** Secondary indexes: name -> value -> key -> object (a namespace index always). */
  private readonly indexes = new Map<string, { fn: (o: T) => string[]; map: Map<string, Map<string, T>> }>();
  private readonly indexed = new Map<string, { name: string; values: string[] }[]>();
  private readonly handlers: Handler<T>[] = [];
  /** Keys whose cached object came from upsert: their watch event is still handed to handlers. */
  private readonly written = new Set<string>();
  private rv = "";
  private synced = false;
  private syncWaiters: (() => void)[] = [];
  private stopped = new AbortController();
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  /** Consecutive failures, for the backoff. */
  private failures = 0;

  constructor(client: KubeClient, resource: Resource, log: Logger, o: InformerOptions<T> = {}) {
    this.client = client;
    this.resource = resource;
    this.o = o;
    this.indexes.set("namespace", { fn: (x) => [x.metadata.namespace ?? ""], map: new Map() });
    this.name = `${resource.plural}${resource.group ? `.${resource.group}` : ""}${o.namespace ? ` in ${o.namespace}` : ""}`;
    this.log = log.child({ informer: this.name });
  }

  on(h: Handler<T>): void {
    this.handlers.push(h);
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.store.get(namespace ? `${namespace}/${name}` : name);
  }

  list(namespace?: string): T[] {
    if (namespace === undefined) return [...this.store.values()];
    return this.byIndex("namespace", namespace);
  }

  /** Adds an index (before start); byIndex then finds objects by a value fn gives them. */
  addIndex(name: string, fn: (o: T) => string[]): void {
    this.indexes.set(name, { fn, map: new Map() });
    for (const [k, o] of this.store) this.indexPut(k, o);
  }

  byIndex(name: string, value: string): T[] {
    const m = this.indexes.get(name)?.map.get(value);
    return m ? [...m.values()] : [];
  }

  private indexPut(key: string, obj: T): void {
    this.indexRemove(key);
    const entries: { name: string; values: string[] }[] = [];
    for (const [name, ix] of this.indexes) {
      const values = ix.fn(obj);
      for (const v of values) {
        let m = ix.map.get(v);
        if (!m) ix.map.set(v, (m = new Map()));
        m.set(key, obj);
      }
      entries.push({ name, values });
    }
    this.indexed.set(key, entries);
  }

  private indexRemove(key: string): void {
    for (const { name, values } of this.indexed.get(key) ?? []) {
      const ix = this.indexes.get(name)!;
      for (const v of values) {
        const m = ix.map.get(v);
        m?.delete(key);
        if (m && m.size === 0) ix.map.delete(v);
      }
    }
    this.indexed.delete(key);
  }

  private put(key: string, obj: T): void {
    this.store.set(key, obj);
    this.indexPut(key, obj);
  }

  private remove(key: string): void {
    this.store.delete(key);
    this.indexRemove(key);
  }

  size(): number {
    return this.store.size;
  }

  hasSynced(): boolean {
    return this.synced;
  }

  waitForSync(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  /**
   * Puts an object the operator just wrote into the cache (write-through), so the next reconcile
   * does not act on the version before its own write. The watch event that follows replaces it and
   * still reaches the handlers (other controllers may depend on what was written).
   */
  upsert(obj: KubeObject): void {
    const t = this.shrink(obj);
    const key = this.keyOf(t);
    const old = this.store.get(key);
    if (old && old.metadata.resourceVersion === t.metadata.resourceVersion) return;
    this.put(key, t);
    this.written.add(key);
  }

  /** Whether an event for key at obj's version is news to the handlers. */
  private changed(key: string, prev: T | undefined, obj: T): boolean {
    const wrote = this.written.delete(key);
    return !prev || wrote || prev.metadata.resourceVersion !== obj.metadata.resourceVersion;
  }

  start(): void {
    if (this.running) return;
    this.stopped = new AbortController();
    this.running = this.loop();
    if (this.o.resyncMs) {
      this.resyncTimer = setInterval(() => {
        if (!this.synced) return;
        for (const obj of this.store.values()) for (const h of this.handlers) h.resync?.(obj);
      }, this.o.resyncMs);
      this.resyncTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped.abort();
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    await this.running;
    this.running = undefined;
  }

  private keyOf(o: { metadata: { namespace?: string; name: string } }): string {
    return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
  }

  private shrink(obj: KubeObject): T {
    if (obj.metadata.managedFields) delete obj.metadata.managedFields;
    return this.o.transform ? this.o.transform(obj) : (obj as T);
  }

  private query(): Record<string, string | undefined> {
    return { labelSelector: this.o.labelSelector, fieldSelector: this.o.fieldSelector };
  }

  private async loop(): Promise<void> {
    const signal = this.stopped.signal;
    while (!signal.aborted) {
      try {
        if (!this.rv) await this.relist(signal);
        await this.watch(signal);
        this.failures = 0;
      } catch (err) {
        if (signal.aborted) break;
        const e = err as { code?: number; message?: string };
        if (e.code === 410) {
          this.rv = "";
          this.o.onWatchRestart?.("expired");
          continue;
        }
        this.failures++;
        const base = Math.min(1000 * 2 ** (this.failures - 1), 30_000);
        const delay = base / 2 + Math.random() * base / 2;
        this.o.onWatchRestart?.("error");
        this.log.warn("list/watch failed; retrying", { error: e.message ?? String(err), retryInMs: Math.round(delay) });
        // After repeated failures, start over from a fresh list: the resourceVersion may be the problem.
        if (this.failures >= 3) this.rv = "";
        await sleep(delay, signal);
      }
    }
  }

  private async relist(signal: AbortSignal): Promise<void> {
    const seen = new Map<string, T>();
    let cont: string | undefined;
    let rv = "";
    const r = this.resource;
    do {
      const page = await this.client.request<{ metadata: { resourceVersion: string; continue?: string }; items: KubeObject[] }>(
        "GET", pathOf(r, this.o.namespace), { query: { ...this.query(), limit: this.o.pageSize ?? 500, continue: cont }, signal: AbortSignal.any([signal, AbortSignal.timeout(60_000)]) },
      );
      for (const item of page.items) {
        item.apiVersion = apiVersionOf(r);
        item.kind = r.kind;
        const t = this.shrink(item);
        seen.set(this.keyOf(t), t);
      }
      cont = page.metadata.continue || undefined;
      rv = page.metadata.resourceVersion;
    } while (cont);
    // Replace the store, telling handlers what changed while we were not watching.
    const old = new Map(this.store);
    for (const k of old.keys()) if (!seen.has(k)) this.remove(k);
    for (const [k, t] of seen) {
      this.put(k, t);
      const prev = old.get(k);
      if (!prev) this.emit("add", t);
      else if (this.changed(k, prev, t)) this.emit("update", t, prev);
    }
    for (const [k, prev] of old) if (!seen.has(k)) this.emit("delete", prev);
    this.rv = rv;
    if (!this.synced) {
      this.synced = true;
      for (const w of this.syncWaiters.splice(0)) w();
      this.log.debug("synced", { objects: this.store.size });
    }
  }

  private async watch(signal: AbortSignal): Promise<void> {
    const local = new AbortController();
    const all = AbortSignal.any([signal, local.signal]);
    const watchdogMs = this.o.watchdogMs ?? 5 * 60_000;
    let quietTimer: NodeJS.Timeout | undefined;
    let quiet = false;
    const pet = () => {
      if (quietTimer) clearTimeout(quietTimer);
      quietTimer = setTimeout(() => {
        quiet = true;
        local.abort();
      }, watchdogMs);
      quietTimer.unref();
    };
    pet();
    let body: Readable | undefined;
    let lines: ReturnType<typeof createInterface> | undefined;
    try {
      body = await this.client.openWatch(pathOf(this.resource, this.o.namespace), {
        ...this.query(),
        resourceVersion: this.rv,
        allowWatchBookmarks: true,
        timeoutSeconds: 300 + Math.floor(Math.random() * 300),
      }, all) as unknown as Readable;
      lines = createInterface({ input: body, crlfDelay: Infinity });
      for await (const line of lines) {
        pet();
        if (!line) continue;
        const ev = JSON.parse(line) as { type: string; object: KubeObject & { code?: number; message?: string } };
        if (ev.type === "ERROR") {
          const code = ev.object.code ?? 500;
          throw Object.assign(new Error(`watch error ${code}: ${ev.object.message ?? ""}`), { code });
        }
        const rv = ev.object.metadata?.resourceVersion;
        if (ev.type === "BOOKMARK") {
          if (rv) this.rv = rv;
          continue;
        }
        ev.object.apiVersion = apiVersionOf(this.resource);
        ev.object.kind = this.resource.kind;
        const t = this.shrink(ev.object);
        const key = this.keyOf(t);
        if (ev.type === "DELETED") {
          const prev = this.store.get(key) ?? t;
          this.remove(key);
          this.written.delete(key);
          this.emit("delete", prev);
        } else {
          const prev = this.store.get(key);
          this.put(key, t);
          if (!prev) this.emit("add", t);
          else if (this.changed(key, prev, t)) this.emit("update", t, prev);
        }
        if (rv) this.rv = rv;
      }
    } catch (err) {
      if (quiet && !signal.aborted) {
        this.o.onWatchRestart?.("quiet");
        this.log.info("watch was quiet too long; restarting it", { quietMs: watchdogMs });
        return;
      }
      if (signal.aborted) return;
      throw err;
    } finally {
      if (quietTimer) clearTimeout(quietTimer);
      // Destroying a watch body still being read emits an abort error, which readline passes on as
      // an 'error' event of its own; with no listener left that crashed the operator (seen when
      // the API server answered 429 "storage is (re)initializing" right after start).
      lines?.on("error", () => {});
      body?.on("error", () => {});
      lines?.close();
      body?.destroy();
    }
    // The server ended the watch (timeoutSeconds): resume from the last resourceVersion.
  }

  private emit(kind: "add" | "update" | "delete", obj: T, prev?: T): void {
    for (const h of this.handlers) {
      try {
        if (kind === "add") h.add?.(obj);
        else if (kind === "update") h.update?.(prev!, obj);
        else h.delete?.(obj);
      } catch (err) {
        this.log.error("event handler failed", { error: (err as Error).message });
      }
    }
  }
}

/** What controllers need of a cache: an Informer, or several (one per watched namespace). */
export type Cache<T extends KubeObject = KubeObject> = {
  readonly name: string;
  on(h: Handler<T>): void;
  get(namespace: string | undefined, name: string): T | undefined;
  list(namespace?: string): T[];
  size(): number;
  hasSynced(): boolean;
  waitForSync(): Promise<void>;
  upsert(obj: KubeObject): void;
  addIndex(name: string, fn: (o: T) => string[]): void;
  byIndex(name: string, value: string): T[];
  start(): void;
  stop(): Promise<void>;
};

/** One informer per namespace, seen as one cache (--namespace a,b). */
export class MultiInformer<T extends KubeObject = KubeObject> implements Cache<T> {
  readonly name: string;
  private readonly parts: Map<string, Informer<T>>;

  constructor(parts: Informer<T>[], namespaces: string[]) {
    this.parts = new Map(parts.map((p, i) => [namespaces[i]!, p]));
    this.name = parts[0]?.name ?? "";
  }

  on(h: Handler<T>): void { for (const p of this.parts.values()) p.on(h); }
  get(namespace: string | undefined, name: string): T | undefined { return namespace ? this.parts.get(namespace)?.get(namespace, name) : undefined; }
  list(namespace?: string): T[] {
    if (namespace !== undefined) return this.parts.get(namespace)?.list(namespace) ?? [];
    return [...this.parts.values()].flatMap((p) => p.list());
  }
  size(): number { return [...this.parts.values()].reduce((n, p) => n + p.size(), 0); }
  hasSynced(): boolean { return [...this.parts.values()].every((p) => p.hasSynced()); }
  async waitForSync(): Promise<void> { await Promise.all([...this.parts.values()].map((p) => p.waitForSync())); }
  upsert(obj: KubeObject): void { if (obj.metadata.namespace) this.parts.get(obj.metadata.namespace)?.upsert(obj); }
  addIndex(name: string, fn: (o: T) => string[]): void { for (const p of this.parts.values()) p.addIndex(name, fn); }
  byIndex(name: string, value: string): T[] { return [...this.parts.values()].flatMap((p) => p.byIndex(name, value)); }
  start(): void { for (const p of this.parts.values()) p.start(); }
  async stop(): Promise<void> { await Promise.all([...this.parts.values()].map((p) => p.stop())); }
}
