// Rules that need other objects to judge: an address in two pools, a domain declared twice, a
// reference to something that does not exist, overflow pools that send in a circle.
//
// One pure function serves both the admission webhook (refuse the newcomer) and the plan compiler
// (when the webhook was bypassed or is down: the older object keeps its claim, the newer one does
// not take effect, and the problem is reported in a condition and an Event).
import type { IPPool, MailfleetObject, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { objectId } from "../../api/v1alpha1/index.ts";

export type ProblemReason = "AddressConflict" | "DomainConflict" | "MissingReference" | "OverflowCycle";

export type Problem = {
  kind: MailfleetObject["kind"];
  id: string;
  field: string;
  reason: ProblemReason;
  message: string;
};

export type World = {
  pools: IPPool[];
  domains: SendingDomain[];
  schedules: WarmupSchedule[];
  /** Secrets that exist, as namespace/name (for credential and webhook references). */
  secrets?: Set<string>;
};

/** Oldest first; ties by id, so every replica of the operator picks the same winner. */
export function byAge<T extends { metadata: { creationTimestamp?: string; namespace?: string; name: string } }>(a: T, b: T): number {
  const ta = a.metadata.creationTimestamp ?? "";
  const tb = b.metadata.creationTimestamp ?? "";
  if (ta !== tb) return ta < tb ? -1 : 1;
  const ia = objectId(a.metadata);
  const ib = objectId(b.metadata);
  return ia < ib ? -1 : ia > ib ? 1 : 0;
}

function isLive(o: MailfleetObject): boolean {
  return !o.metadata.deletionTimestamp;
}

/** Every problem in the world, each charged to the object that loses. */
export function findProblems(world: World): Problem[] {
  const problems: Problem[] = [];
  const pools = world.pools.filter(isLive).sort(byAge);
  const domains = world.domains.filter(isLive).sort(byAge);
  const scheduleIds = new Set(world.schedules.filter(isLive).map((s) => objectId(s.metadata)));
  const poolIds = new Set(pools.map((p) => objectId(p.metadata)));

  const addressOwner = new Map<string, string>();
  for (const pool of pools) {
    const id = objectId(pool.metadata);
    const ns = pool.metadata.namespace ?? "";
    pool.spec.addresses.forEach((a, i) => {
      const owner = addressOwner.get(a.address);
      if (owner && owner !== id) {
        problems.push({
          kind: "IPPool", id, field: `spec.addresses[${i}].address`, reason: "AddressConflict",
          message: `address ${a.address} already belongs to IPPool ${owner}`,
        });
      } else addressOwner.set(a.address, id);
    });
    const sched = pool.spec.warmupScheduleRef?.name;
    if (sched && !scheduleIds.has(`${ns}/${sched}`)) {
      problems.push({
        kind: "IPPool", id, field: "spec.warmupScheduleRef.name", reason: "MissingReference",
        message: `WarmupSchedule ${ns}/${sched} does not exist`,
      });
    }
    const overflow = pool.spec.overflowPoolRef?.name;
    if (overflow && !poolIds.has(`${ns}/${overflow}`)) {
      problems.push({
        kind: "IPPool", id, field: "spec.overflowPoolRef.name", reason: "MissingReference",
        message: `overflow IPPool ${ns}/${overflow} does not exist`,
      });
    }
  }
  problems.push(...overflowCycles(pools));

  const domainOwner = new Map<string, string>();
  for (const d of domains) {
    const id = objectId(d.metadata);
    const ns = d.metadata.namespace ?? "";
    const owner = domainOwner.get(d.spec.domain);
    if (owner && owner !== id) {
      problems.push({
        kind: "SendingDomain", id, field: "spec.domain", reason: "DomainConflict",
        message: `domain ${d.spec.domain} is already declared by SendingDomain ${owner}`,
      });
    } else domainOwner.set(d.spec.domain, id);
    if (!poolIds.has(`${ns}/${d.spec.poolRef.name}`)) {
      problems.push({
        kind: "SendingDomain", id, field: "spec.poolRef.name", reason: "MissingReference",
        message: `IPPool ${ns}/${d.spec.poolRef.name} does not exist`,
      });
    }
    if (world.secrets) {
      d.spec.senders.credentials.forEach((c, i) => {
        if (!world.secrets!.has(`${ns}/${c.secretRef.name}`)) {
          problems.push({
            kind: "SendingDomain", id, field: `spec.senders.credentials[${i}].secretRef.name`, reason: "MissingReference",
            message: `Secret ${ns}/${c.secretRef.name} does not exist`,
          });
        }
      });
      d.spec.webhooks.forEach((w, i) => {
        if (!world.secrets!.has(`${ns}/${w.secretRef.name}`)) {
          problems.push({
            kind: "SendingDomain", id, field: `spec.webhooks[${i}].secretRef.name`, reason: "MissingReference",
            message: `Secret ${ns}/${w.secretRef.name} does not exist`,
          });
        }
      });
    }
  }
  return problems;
}

function overflowCycles(pools: IPPool[]): Problem[] {
  const next = new Map<string, string>();
  for (const p of pools) {
    const o = p.spec.overflowPoolRef?.name;
    if (o) next.set(objectId(p.metadata), `${p.metadata.namespace}/${o}`);
  }
  const problems: Problem[] = [];
  const reported = new Set<string>();
  for (const p of pools) {
    const start = objectId(p.metadata);
    const seen = [start];
    let cur = next.get(start);
    while (cur && !seen.includes(cur)) {
      seen.push(cur);
      cur = next.get(cur);
    }
    // The pool that closes the cycle last (the newest in it) is charged.
    if (cur === start && !reported.has(start)) {
      const newest = pools.filter((q) => seen.includes(objectId(q.metadata))).sort(byAge).at(-1)!;
      const id = objectId(newest.metadata);
      if (!reported.has(id)) {
        problems.push({
          kind: "IPPool", id, field: "spec.overflowPoolRef.name", reason: "OverflowCycle",
          message: `overflow pools form a cycle: ${seen.join(" -> ")} -> ${start}`,
        });
      }
      for (const s of seen) reported.add(s);
    }
  }
  return problems;
}

/**
 * Problems the candidate would bring if admitted now (admission webhook): the candidate counts as
 * the newest object, so any clash is its own.
 */
export function problemsFor(candidate: MailfleetObject, world: World): Problem[] {
  const id = objectId(candidate.metadata);
  const newest = { ...candidate, metadata: { ...candidate.metadata, creationTimestamp: "9999-12-31T23:59:59Z" } };
  const without = <T extends MailfleetObject>(list: T[]) => list.filter((o) => objectId(o.metadata) !== id || o.kind !== candidate.kind);
  const next: World = {
    pools: without(world.pools),
    domains: without(world.domains),
    schedules: without(world.schedules),
    secrets: world.secrets,
  };
  if (newest.kind === "IPPool") next.pools.push(newest as IPPool);
  if (newest.kind === "SendingDomain") next.domains.push(newest as SendingDomain);
  if (newest.kind === "WarmupSchedule") next.schedules.push(newest as WarmupSchedule);
  return findProblems(next).filter((p) => p.id === id && p.kind === candidate.kind);
}
