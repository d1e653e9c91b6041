// Helpers for the delivery integration tests: a fleet plan to publish, envelopes and bodies put
// straight into NATS (as acceptance stores them), and a reader of the outcome events.
import { Kvm } from "@nats-io/kv";
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { createHash, randomBytes } from "node:crypto";
import { PLAN_BUCKET, PLAN_KEY, PLAN_SCHEMA, type DomainPlan, type LanePlan, type Plan, type PlanRule, type ProviderPlan } from "../../api/plan.ts";
import { encodeEnvelope, newQueueId, verpAddress, type Envelope } from "../../relay/queue/envelope.ts";
import { STREAM_EVENTS, subjects } from "../../relay/queue/topology.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";

export const POOL = "mail/outbound";

export type ProviderSpec = Partial<Omit<ProviderPlan, "lane">> & { name: string; lane?: Partial<ProviderPlan["lane"]> };

export interface PlanSpec {
  providers: ProviderSpec[];
  addresses: { address: string; hostname: string }[];
  domains?: Partial<DomainPlan>[];
  lanes?: Record<string, Partial<LanePlan>>;
  delivery?: Partial<Plan["delivery"]>;
  /** Trusted networks that may submit (acceptance), CIDR -> sending domains. */
  networks?: { cidr: string; domains: string[] }[];
  revision?: string;
}

export function provider(p: ProviderSpec): ProviderPlan {
  return {
    domains: [],
    mxSuffixes: [],
    limits: { messageRate: null, maxConnections: null },
    rules: [] as PlanRule[],
    feedbackLoop: false,
    recovery: { step: 0.5, intervalMs: 5000 },
    ...p,
    lane: { maxConnections: 2, messagesPerConnection: 20, messageRate: null, connectionRate: null, recipientsPerMessage: 10, tlsRequired: false, ...(p.lane ?? {}) },
  };
}

export function domainPlan(d: Partial<DomainPlan> & { domain: string }): DomainPlan {
  return {
    id: `mail/${d.domain}`,
    pool: POOL,
    returnPathDomain: `bounces.${d.domain}`,
    verp: true,
    dkim: [],
    listUnsubscribe: { mode: "None" },
    feedbackIdSender: null,
    notifySender: true,
    suppression: { onSubmit: "Refuse", complaintTtlMs: 86_400_000, unsubscribeTtlMs: 86_400_000, hardBounceTtlMs: 86_400_000 },
    submitRate: null,
    webhooks: [],
    ...d,
  };
}

export function makePlan(s: PlanSpec): Plan {
  const providers = s.providers.map(provider);
  if (!providers.some((p) => p.name === "default")) providers.push(provider({ name: "default" }));
  const lanes: LanePlan[] = s.addresses.flatMap((a) =>
    providers.map((p) => ({
      address: a.address, provider: p.name, state: "Healthy" as const, shape: p.lane, dailyQuota: null, hourlyQuota: null, stage: null,
      ...(s.lanes?.[`${a.address}/${p.name}`] ?? {}),
    })),
  );
  const content = {
    schema: PLAN_SCHEMA,
    generatedAt: new Date().toISOString(),
    providers,
    pools: [{
      id: POOL, namespace: "mail", name: "outbound", addresses: s.addresses, egress: { mode: "HostNetwork" as const, bindAddress: true },
      overflowPool: null, warmup: null, lanes,
    }],
    domains: (s.domains ?? [{ domain: "sender.test" }]).map((d) => domainPlan({ domain: "sender.test", ...d })),
    submitters: { credentials: [], networks: s.networks ?? [] },
    delivery: { expiryMs: 5 * 86_400_000, retryBaseMs: 1000, retryMaxMs: 4000, idempotencyWindowMs: 120_000, ...(s.delivery ?? {}) },
  };
  const revision = s.revision ?? createHash("sha256").update(JSON.stringify(content)).digest("hex").slice(0, 16);
  return { ...content, revision } as Plan;
}

export async function publishPlan(nc: NatsConnection, plan: Plan): Promise<void> {
  const kv = await new Kvm(jetstream(nc)).create(PLAN_BUCKET, { history: 1 });
  await kv.put(PLAN_KEY, JSON.stringify(plan));
}

export function message(o: { from: string; to: string[]; subject: string; id?: string; extraHeaders?: string[]; text?: string }): Buffer {
  const mid = o.id ?? `<${randomBytes(8).toString("hex")}@sender.test>`;
  return Buffer.from(
    [
      `From: <${o.from}>`,
      `To: ${o.to.map((t) => `<${t}>`).join(", ")}`,
      `Subject: ${o.subject}`,
      `Date: ${new Date().toUTCString()}`,
      `Message-ID: ${mid}`,
      ...(o.extraHeaders ?? []),
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "",
      o.text ?? `Hello from the delivery tests.\r\n${o.subject}\r\n`,
    ].join("\r\n"),
  );
}

export interface Submitted {
  qid: string;
  env: Envelope;
}

/** Stores a body and an accepted envelope the way acceptance does, onto the route queue. */
export async function submit(js: JetStreamClient, o: {
  rcpts: string[]; subject?: string; domain?: string; mailFrom?: string; body?: Buffer; dsn?: Envelope["dsn"]; acceptedAt?: number; qid?: string;
}): Promise<Submitted> {
  const qid = o.qid ?? newQueueId();
  const domain = o.domain ?? "sender.test";
  const mailFrom = o.mailFrom ?? `app@${domain}`;
  const body = o.body ?? message({ from: mailFrom, to: o.rcpts, subject: o.subject ?? `test ${qid}` });
  await js.publish(subjects.body(qid), body, { msgID: `body:${qid}` });
  const env: Envelope = {
    v: 1, id: qid, part: 0, pool: POOL, domain, mailFrom, returnPath: verpAddress(qid, `bounces.${domain}`), rcpts: o.rcpts,
    body: { subject: subjects.body(qid) }, size: body.length, submitter: "net:127.0.0.0/8", acceptedAt: o.acceptedAt ?? Date.now(), attempts: 0,
    ...(o.dsn ? { dsn: o.dsn } : {}),
  };
  await js.publish(subjects.route(POOL), encodeEnvelope(env), { msgID: `${qid}` });
  return { qid, env };
}

/** Every event on MF_EVENTS from now on, collected in order. */
export async function eventLog(nc: NatsConnection) {
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await jsm.streams.info(STREAM_EVENTS);
  const events: MailEvent[] = [];
  const c = await js.consumers.get(STREAM_EVENTS, { filter_subjects: [subjects.events], deliver_policy: DeliverPolicy.New });
  const iter = await c.consume();
  (async () => {
    for await (const m of iter) events.push(m.json<MailEvent>());
  })().catch(() => {});
  return {
    events,
    stop: () => iter.stop(),
    async waitFor(pred: (e: MailEvent) => boolean, what: string, timeoutMs = 120_000): Promise<MailEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.find(pred);
        if (e) return e;
        if (Date.now() > deadline) throw new Error(`timed out waiting for event: ${what}; have ${JSON.stringify(events.map((x) => [x.type, x.qid, x.rcpts, x.class, x.reply]))}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
}

export async function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 120_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
