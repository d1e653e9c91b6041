// What every controller reads: the informer caches of the mailfleet kinds, their parsed form (zod,
// defaults applied, memoised per cached object) and the cross-object problems
// (operator/plan/problems.ts), recomputed when the objects they depend on change. When the set of
// problems an object has changes, its controller is told, so a conflict created by one object is
// reported on the other promptly.
import { isDeepStrictEqual } from "node:util";
import { ValidationError, validateObject } from "../../api/validate.ts";
import type { IPPool, MailboxProvider, MailfleetObject, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { type Problem, findProblems } from "../plan/problems.ts";
import type { Cache as Informer } from "../runtime/informer.ts";
import type { KubeObject } from "../runtime/types.ts";

export type Informers = {
  domains: Informer;
  pools: Informer;
  schedules: Informer;
  providers: Informer;
  secrets: Informer;
  deployments: Informer;
  statefulsets: Informer;
  services: Informer;
  serviceaccounts: Informer;
  pdbs: Informer;
  hpas: Informer;
  networkpolicies: Informer;
  scaledobjects?: Informer;
  webhooks: Informer;
};

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: ValidationError };

export class World {
  readonly inf: Informers;
  private readonly parsedCache = new WeakMap<KubeObject, Parsed<MailfleetObject>>();
  private problemsVersion = -1;
  private version = 0;
  private problemsByObject = new Map<string, Problem[]>();
  private timer: NodeJS.Timeout | undefined;
  /** Called for "Kind:namespace/name" whose problems changed. */
  onProblemsChanged: ((kind: Problem["kind"], id: string) => void) | undefined;

  private readonly listCache = new Map<Informer, { version: number; list: MailfleetObject[] }>();
  private readonly listVersion = new Map<Informer, number>();

  constructor(inf: Informers) {
    this.inf = inf;
    const bump = () => this.changed();
    // Problems depend on specs (and on objects coming and going), never on status.
    const specBump = (a: KubeObject, b: KubeObject) => {
      if (a.metadata.generation !== b.metadata.generation || a.metadata.deletionTimestamp !== b.metadata.deletionTimestamp) bump();
    };
    for (const i of [inf.domains, inf.pools, inf.schedules]) i.on({ add: bump, update: specBump, delete: bump });
    for (const i of [inf.domains, inf.pools, inf.schedules, inf.providers]) {
      const v = () => this.listVersion.set(i, (this.listVersion.get(i) ?? 0) + 1);
      i.on({ add: v, update: v, delete: v });
    }
    inf.domains.addIndex("pool", (d) => [`${d.metadata.namespace}/${(d.spec as { poolRef?: { name?: string } } | undefined)?.poolRef?.name ?? ""}`]);
    inf.secrets.addIndex("domain", (s) => {
      const l = s.metadata.labels?.["mailfleet.io/sendingdomain"];
      return l ? [`${s.metadata.namespace}/${l}`] : [];
    });
    // Only the set of Secrets matters to the rules (a reference to one that does not exist), and
    // only Secrets a person made can be referenced.
    const userSecret = (s: KubeObject) => s.metadata.labels?.["app.kubernetes.io/managed-by"] !== "mailfleet-operator" && bump();
    inf.secrets.on({ add: userSecret, delete: userSecret });
  }

  private changed(): void {
    this.version++;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refreshProblems();
    }, 50);
    this.timer.unref();
  }

  parse<T extends MailfleetObject>(raw: KubeObject): Parsed<T> {
    let p = this.parsedCache.get(raw);
    if (!p) {
      try {
        // Only what people write is validated (and copied with defaults); status is the
        // operator's own and is used as served (one fewer deep copy of every object).
        const { status, ...rest } = raw;
        const value = validateObject(rest);
        if (status !== undefined) (value as { status?: unknown }).status = status;
        p = { ok: true, value };
      } catch (err) {
        if (!(err instanceof ValidationError)) throw err;
        p = { ok: false, error: err };
      }
      this.parsedCache.set(raw, p);
    }
    return p as Parsed<T>;
  }

  /** The valid (parsed) objects of a kind; the list is kept until that kind's cache changes. */
  private valid<T extends MailfleetObject>(inf: Informer): T[] {
    const version = this.listVersion.get(inf) ?? 0;
    const hit = this.listCache.get(inf);
    if (hit && hit.version === version) return hit.list as T[];
    const out: T[] = [];
    for (const raw of inf.list()) {
      const p = this.parse<T>(raw);
      if (p.ok) out.push(p.value);
    }
    this.listCache.set(inf, { version, list: out });
    return out;
  }

  pools(): IPPool[] { return this.valid<IPPool>(this.inf.pools); }
  domains(): SendingDomain[] { return this.valid<SendingDomain>(this.inf.domains); }
  schedules(): WarmupSchedule[] { return this.valid<WarmupSchedule>(this.inf.schedules); }
  providers(): MailboxProvider[] { return this.valid<MailboxProvider>(this.inf.providers); }

  pool(namespace: string, name: string): IPPool | undefined {
    const raw = this.inf.pools.get(namespace, name);
    if (!raw) return undefined;
    const p = this.parse<IPPool>(raw);
    return p.ok ? p.value : undefined;
  }

  /** namespace/name of every Secret that exists (reference checks). */
  secretIds(): Set<string> {
    return new Set(this.inf.secrets.list().map((s) => `${s.metadata.namespace}/${s.metadata.name}`));
  }

  private refreshProblems(): void {
    if (this.problemsVersion === this.version) return;
    this.problemsVersion = this.version;
    const all = findProblems({ pools: this.pools(), domains: this.domains(), schedules: this.schedules(), secrets: this.secretIds() });
    const next = new Map<string, Problem[]>();
    for (const p of all) {
      const k = `${p.kind}:${p.id}`;
      next.set(k, [...(next.get(k) ?? []), p]);
    }
    const before = this.problemsByObject;
    this.problemsByObject = next;
    for (const k of new Set([...before.keys(), ...next.keys()])) {
      if (isDeepStrictEqual(before.get(k), next.get(k))) continue;
      const i = k.indexOf(":");
      this.onProblemsChanged?.(k.slice(0, i) as Problem["kind"], k.slice(i + 1));
    }
  }

  /** The problems charged to one object, as of the caches now. */
  problemsOf(kind: Problem["kind"], id: string): Problem[] {
    this.refreshProblems();
    return this.problemsByObject.get(`${kind}:${id}`) ?? [];
  }

  /** The pool and every pool its overflow leads to (stops at a cycle). */
  overflowChain(namespace: string, name: string): IPPool[] {
    const out: IPPool[] = [];
    const seen = new Set<string>();
    let cur: string | undefined = name;
    while (cur && !seen.has(cur)) {
      seen.add(cur);
      const p = this.pool(namespace, cur);
      if (!p) break;
      out.push(p);
      cur = p.spec.overflowPoolRef?.name;
    }
    return out;
  }

  /** Pools whose mail can reach `pool` (itself, and pools overflowing into it, directly or not). */
  poolsFeeding(namespace: string, name: string): IPPool[] {
    const out: IPPool[] = [];
    for (const raw of this.inf.pools.list(namespace)) {
      const p = this.parse<IPPool>(raw);
      if (p.ok && this.overflowChain(namespace, p.value.metadata.name).some((q) => q.metadata.name === name)) out.push(p.value);
    }
    return out;
  }

  /** Domains whose mail the pool's relays may send (their keys belong in its keyring). */
  domainsSentBy(namespace: string, name: string): SendingDomain[] {
    const feeding = new Set(this.poolsFeeding(namespace, name).map((p) => p.metadata.name));
    feeding.add(name);
    const out: SendingDomain[] = [];
    for (const pool of feeding) {
      for (const raw of this.inf.domains.byIndex("pool", `${namespace}/${pool}`)) {
        const p = this.parse<SendingDomain>(raw);
        if (p.ok) out.push(p.value);
      }
    }
    return out;
  }
}
