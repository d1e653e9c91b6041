// Leader election on a coordination.k8s.io Lease, with client-go's algorithm and
// controller-runtime's timings (15 s lease, 10 s renew deadline, 2 s retry period):
//
//  - a candidate takes the Lease when it is absent, unheld, or not renewed for leaseDuration as
//    measured on the candidate's own clock (from when it last saw the record change, so clock skew
//    between replicas does not matter);
//  - writes are a create, or a replace carrying the resourceVersion read: a 409 means another
//    replica won the race;
//  - the leader renews every retry period and gives up if it cannot renew within renewDeadline;
//  - on shutdown the leader releases the Lease so a successor need not wait for it to expire.
// client-node has no leader election (only the Lease model), hence this file.
import { ApiError, type KubeClient, RESOURCES } from "./kube.ts";
import type { Logger } from "./log.ts";
import type { OwnerReference } from "./types.ts";

type LeaseSpec = {
  holderIdentity?: string | null;
  leaseDurationSeconds?: number;
  acquireTime?: string | null;
  renewTime?: string | null;
  leaseTransitions?: number;
};
type Lease = { apiVersion: string; kind: string; metadata: { name: string; namespace: string; resourceVersion?: string; ownerReferences?: OwnerReference[] }; spec?: LeaseSpec };

export type LeaderOptions = {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  log: Logger;
  now?: () => number;
  /**
   * Owner references for the Lease, so it goes with what the operator was installed with (the
   * chart's webhook configuration): the garbage collector removes a Lease whose owner is gone,
   * even one written again after the uninstall began.
   */
  owners?: () => OwnerReference[] | undefined;
};

function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

export class LeaderElector {
  private readonly client: KubeClient;
  private readonly o: Required<Omit<LeaderOptions, "now">> & { now: () => number };
  private observed: { record: string; at: number } | undefined;
  private leader = false;
  private stopping = new AbortController();
  private loop: Promise<void> | undefined;
  private lastRenew = 0;

  constructor(client: KubeClient, o: LeaderOptions) {
    this.client = client;
    this.o = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000, now: Date.now, owners: () => undefined, ...o };
  }

  isLeader(): boolean {
    return this.leader;
  }

  /** Campaigns until stopped; onStarted when this replica leads, onStopped when it loses the Lease. */
  run(cb: { onStarted(): void; onStopped(): void }): void {
    this.loop = this.campaign(cb);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.stopping.signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  private async campaign(cb: { onStarted(): void; onStopped(): void }): Promise<void> {
    const { retryPeriodMs, renewDeadlineMs } = this.o;
    while (!this.stopping.signal.aborted) {
      // Candidate: try every retry period, with jitter so replicas do not march in step.
      if (await this.tryAcquireOrRenew()) {
        this.leader = true;
        this.lastRenew = this.o.now();
        this.o.log.info("became leader", { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
        cb.onStarted();
        // Leader: renew every retry period; give up after renewDeadline without success.
        while (!this.stopping.signal.aborted) {
          await this.sleep(retryPeriodMs);
          if (this.stopping.signal.aborted) break;
          if (await this.tryAcquireOrRenew()) {
            this.lastRenew = this.o.now();
            continue;
          }
          if (this.o.now() - this.lastRenew > renewDeadlineMs) {
            this.leader = false;
            this.o.log.error("lost the leader Lease", { lease: `${this.o.namespace}/${this.o.name}` });
            cb.onStopped();
            return;
          }
        }
        return;
      }
      await this.sleep(retryPeriodMs * (1 + Math.random() * 0.2));
    }
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity, leaseDurationMs } = this.o;
    const now = this.o.now();
    const desired = (prev: LeaseSpec | undefined): LeaseSpec => {
      const ours = prev?.holderIdentity === identity;
      return {
        holderIdentity: identity,
        leaseDurationSeconds: Math.round(leaseDurationMs / 1000),
        acquireTime: ours && prev?.acquireTime ? prev.acquireTime : microTime(now),
        renewTime: microTime(now),
        leaseTransitions: ours ? (prev?.leaseTransitions ?? 0) : (prev?.holderIdentity ? (prev.leaseTransitions ?? 0) + 1 : (prev?.leaseTransitions ?? 0)),
      };
    };
    try {
      const lease = await this.client.get<Lease>(RESOURCES.Lease, namespace, name);
      const owners = this.o.owners();
      if (!lease) {
        await this.client.create(RESOURCES.Lease, namespace, {
          apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: { name, namespace, ...(owners ? { ownerReferences: owners } : {}) }, spec: desired(undefined),
        });
        this.observed = { record: "", at: now };
        return true;
      }
      const spec = lease.spec ?? {};
      const record = `${spec.holderIdentity ?? ""}|${spec.renewTime ?? ""}|${spec.leaseDurationSeconds ?? ""}`;
      if (!this.observed || this.observed.record !== record) this.observed = { record, at: now };
      const held = spec.holderIdentity && spec.holderIdentity !== identity;
      const duration = (spec.leaseDurationSeconds ?? leaseDurationMs / 1000) * 1000;
      if (held && this.observed.at + duration > now) return false;
      // A leader that cannot prove its renewals stopped (it still holds per our clock) never gets here.
      const adopt = owners && !owners.every((x) => lease.metadata.ownerReferences?.some((y) => y.uid === x.uid));
      const updated = await this.client.replace<Lease>(RESOURCES.Lease, namespace, name, {
        ...lease, ...(adopt ? { metadata: { ...lease.metadata, ownerReferences: owners } } : {}), spec: desired(spec),
      });
      const s = updated.spec ?? {};
      this.observed = { record: `${s.holderIdentity ?? ""}|${s.renewTime ?? ""}|${s.leaseDurationSeconds ?? ""}`, at: now };
      return true;
    } catch (err) {
      // 409: another replica wrote first (create or replace); anything else: try again later.
      if (!(err instanceof ApiError && err.code === 409)) this.o.log.warn("leader election: Lease request failed", { error: (err as Error).message });
      return false;
    }
  }

  /** Stops campaigning; the leader releases the Lease (holder cleared, 1 s duration). */
  async stop(): Promise<void> {
    this.stopping.abort();
    await this.loop;
    if (!this.leader) return;
    this.leader = false;
    try {
      const lease = await this.client.get<Lease>(RESOURCES.Lease, this.o.namespace, this.o.name);
      if (lease?.spec?.holderIdentity === this.o.identity) {
        const now = microTime(this.o.now());
        await this.client.replace(RESOURCES.Lease, this.o.namespace, this.o.name, {
          ...lease, spec: { ...lease.spec, holderIdentity: null, leaseDurationSeconds: 1, renewTime: now, acquireTime: now },
        });
        this.o.log.info("released the leader Lease", { lease: `${this.o.namespace}/${this.o.name}` });
      }
    } catch (err) {
      this.o.log.warn("releasing the leader Lease failed; it expires by itself", { error: (err as Error).message });
    }
  }
}
