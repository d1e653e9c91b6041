// The fleet plan: one key, recompiled (operator/plan/compile.ts) whenever a mailfleet object or a
// credential Secret changes, published to NATS KV only when its revision changes, and recompiled
// at the compiler's nextChangeAt (a suspension ending, say). The plan in force is read from KV
// once at start: the compiler keeps its entries for objects that are now invalid or paused.
import { hashPassword } from "../../api/password.ts";
import type { Plan } from "../../api/plan.ts";
import { type Credential, compilePlan } from "../plan/compile.ts";
import type { PlanStore } from "../plan/store.ts";
import type { Result } from "../runtime/controller.ts";
import type { KubeObject } from "../runtime/types.ts";
import type { Context } from "./context.ts";

export const PLAN_KEY_NAME = "fleet";

export class PlanController {
  private readonly store: PlanStore;
  private previous: Plan | null | undefined;
  private readonly hashes = new Map<string, { version: string; username: string; hash: string }>();
  published: string | undefined;
  private lastInputs = "";
  private dueAt: number | null = null;

  constructor(store: PlanStore) {
    this.store = store;
  }

  /** The plan last published or read (null: none yet). */
  current(): Plan | null {
    return this.previous ?? null;
  }

  /** Credentials of every basic-auth Secret a SendingDomain names, hashed (and cached per Secret version). */
  private async credentials(ctx: Context): Promise<Credential[]> {
    const out: Credential[] = [];
    const seen = new Set<string>();
    for (const d of ctx.world.domains()) {
      const ns = d.metadata.namespace!;
      for (const c of d.spec.senders.credentials) {
        const id = `${ns}/${c.secretRef.name}`;
        if (seen.has(id)) continue;
        seen.add(id);
        const s: KubeObject | undefined = ctx.inf.secrets.get(ns, c.secretRef.name);
        const data = (s?.data ?? {}) as Record<string, string>;
        if (!s || !data.username || !data.password) continue;
        const username = Buffer.from(data.username, "base64").toString("utf8");
        const version = `${s.metadata.uid}/${s.metadata.resourceVersion}`;
        let h = this.hashes.get(id);
        if (!h || h.version !== version || h.username !== username) {
          // Salted with the Secret's identity so the plan does not change from one compile to the next.
          const hash = await hashPassword(Buffer.from(data.password, "base64").toString("utf8"), `${s.metadata.uid}${username}`);
          h = { version, username, hash };
          this.hashes.set(id, h);
        }
        out.push({ namespace: ns, secretName: c.secretRef.name, username, hash: h.hash });
      }
    }
    for (const id of [...this.hashes.keys()]) if (!seen.has(id)) this.hashes.delete(id);
    return out;
  }

  /**
   * What the plan depends on, cheaply: a domain's status changes often (DNS checks, conditions) but
   * only its keys matter to the plan; every other input is taken whole (resourceVersion).
   */
  private inputs(ctx: Context): string {
    const parts: string[] = [];
    const rv = (o: { metadata: { uid?: string; resourceVersion?: string } }) => `${o.metadata.uid}@${o.metadata.resourceVersion}`;
    for (const o of ctx.inf.providers.list()) parts.push(rv(o));
    for (const o of ctx.inf.schedules.list()) parts.push(rv(o));
    for (const o of ctx.inf.pools.list()) parts.push(rv(o));
    for (const d of ctx.inf.domains.list()) {
      const st = (d.status ?? {}) as { dkim?: { selector: string; state: string }[] };
      parts.push(`${d.metadata.uid}:${d.metadata.generation}:${d.metadata.deletionTimestamp ?? ""}:${JSON.stringify(d.metadata.annotations ?? {})}:${(st.dkim ?? []).map((k) => `${k.selector}=${k.state}`).join(",")}`);
      const sp = (d.spec ?? {}) as { senders?: { credentials?: { secretRef?: { name?: string } }[] }; webhooks?: { secretRef?: { name?: string } }[] };
      for (const ref of [...(sp.senders?.credentials ?? []), ...(sp.webhooks ?? [])]) {
        const s = ref.secretRef?.name ? ctx.inf.secrets.get(d.metadata.namespace, ref.secretRef.name) : undefined;
        parts.push(s ? rv(s) : `-${ref.secretRef?.name}`);
      }
    }
    return parts.join("|");
  }

  async reconcile(ctx: Context): Promise<Result> {
    const inputs = this.inputs(ctx);
    const now0 = ctx.now();
    // Nothing it depends on changed and no time-driven change is due: the plan is the same.
    if (this.previous !== undefined && inputs === this.lastInputs && (this.dueAt === null || now0 < this.dueAt)) {
      return this.dueAt !== null ? { requeueAfterMs: Math.max(this.dueAt - now0, 500) } : undefined;
    }
    if (this.previous === undefined) {
      this.previous = await this.store.read();
      this.published = this.previous?.revision;
      if (this.previous) ctx.log.info("read the plan in force", { revision: this.previous.revision });
    }
    const now = ctx.now();
    const result = compilePlan({
      providers: ctx.world.providers(),
      schedules: ctx.world.schedules(),
      pools: ctx.world.pools(),
      domains: ctx.world.domains(),
      credentials: await this.credentials(ctx),
      secrets: ctx.world.secretIds(),
      previous: this.previous,
      now,
    });
    const plan = result.plan;
    if (plan.revision !== this.published) {
      const bytes = await this.store.publish(plan);
      ctx.metrics.planRevision.reset();
      ctx.metrics.planRevision.set({ revision: plan.revision }, 1);
      ctx.metrics.planPublished.set(now / 1000);
      ctx.metrics.planBytes.set(bytes);
      ctx.log.info("published the fleet plan", {
        revision: plan.revision, previous: this.published, bytes, pools: plan.pools.length, domains: plan.domains.length, problems: result.problems.length,
      });
      this.published = plan.revision;
      this.previous = plan;
    } else if (ctx.metrics) {
      ctx.metrics.planRevision.reset();
      ctx.metrics.planRevision.set({ revision: plan.revision }, 1);
    }
    this.lastInputs = inputs;
    this.dueAt = result.nextChangeAt;
    if (result.nextChangeAt !== null) return { requeueAfterMs: Math.max(result.nextChangeAt - now, 500) };
  }
}
