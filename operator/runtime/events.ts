// Kubernetes Events (events.k8s.io/v1) on state changes, with reasons a person can act on.
// Controllers record Events for transitions (a condition changing, a key rotating), so steady
// state records none; on top of that, an identical Event (object, type, reason, note) is not
// recorded twice within the dedupe window.
import { type KubeClient, RESOURCES } from "./kube.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import type { KubeObject } from "./types.ts";

export type EventType = "Normal" | "Warning";

export type EventSink = {
  event(obj: KubeObject, type: EventType, reason: string, note: string, action?: string): void;
};

function microTime(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

export class Recorder implements EventSink {
  private readonly client: KubeClient;
  private readonly controller: string;
  private readonly instance: string;
  private readonly log: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly recent = new Map<string, number>();
  private readonly windowMs: number;
  private readonly inflight = new Set<Promise<void>>();

  constructor(client: KubeClient, o: { controller: string; instance: string; log: Logger; metrics?: Metrics; windowMs?: number }) {
    this.client = client;
    this.controller = o.controller;
    this.instance = o.instance.slice(0, 128);
    this.log = o.log;
    this.metrics = o.metrics;
    this.windowMs = o.windowMs ?? 30 * 60_000;
  }

  event(obj: KubeObject, type: EventType, reason: string, note: string, action = "Reconcile"): void {
    const uid = obj.metadata.uid ?? `${obj.kind}/${obj.metadata.namespace}/${obj.metadata.name}`;
    const key = `${uid}|${type}|${reason}|${note}`;
    const now = Date.now();
    const last = this.recent.get(key);
    if (last !== undefined && now - last < this.windowMs) return;
    this.recent.set(key, now);
    if (this.recent.size > 10_000) {
      for (const [k, t] of this.recent) if (now - t >= this.windowMs || this.recent.size > 8_000) this.recent.delete(k);
    }
    const namespace = obj.metadata.namespace ?? "default";
    const body = {
      apiVersion: "events.k8s.io/v1",
      kind: "Event",
      metadata: { name: `${obj.metadata.name}.${now.toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`, namespace },
      eventTime: microTime(new Date(now)),
      reportingController: this.controller,
      reportingInstance: this.instance,
      action,
      reason,
      type,
      note: note.length > 1000 ? `${note.slice(0, 997)}...` : note,
      regarding: {
        apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata.name,
        ...(obj.metadata.namespace ? { namespace: obj.metadata.namespace } : {}),
        ...(obj.metadata.uid ? { uid: obj.metadata.uid } : {}),
      },
    };
    this.metrics?.events.inc({ type, reason });
    this.log.info("event", { type, reason, object: `${obj.kind}/${obj.metadata.namespace ? `${obj.metadata.namespace}/` : ""}${obj.metadata.name}`, note: body.note });
    const p = this.client.create(RESOURCES.Event, namespace, body)
      .then(() => undefined, (err: Error) => this.log.warn("recording an Event failed", { reason, error: err.message }))
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  /** Waits for Events still being sent (shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.inflight]);
  }
}
