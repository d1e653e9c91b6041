// The fleet plan: the compact document the operator publishes to NATS KV and every relay applies
// live. It is the contract between control plane and data plane, so it is versioned:
//
// - `schema` carries the major version; the operator writes one KV key per major it serves
//   (PLAN_KEY), so relays of two versions can each read theirs during a rollout.
// - Within a major, changes are additive only; relays parse with loose objects and ignore fields
//   they do not know.
// - `revision` is a hash of the content: it changes exactly when the content does.
//
// The plan holds no secrets: DKIM keys and webhook secrets reach relays through the pool's
// mounted Secret (keyName below names the file); submission passwords appear only as scrypt hashes.
import { z } from "zod";

export const PLAN_SCHEMA = "mailfleet.io/plan/v1";
export const PLAN_BUCKET = "mailfleet-plan";
export const PLAN_KEY = "v1";

const rate = z.object({ count: z.number().int().min(1), periodMs: z.number().int().min(1) }).loose();

export const planRule = z.object({
  name: z.string(),
  code: z.string().optional(),
  enhancedCode: z.string().optional(),
  text: z.string().optional(),
  class: z.string().optional(),
  action: z.enum(["SlowDown", "SuspendLane", "SuspendProvider", "CapConnections", "Bounce", "Classify"]),
  factor: z.number().optional(),
  durationMs: z.number().int().optional(),
  connections: z.number().int().optional(),
  classifyAs: z.string().optional(),
}).loose();
export type PlanRule = z.infer<typeof planRule>;

export const laneShape = z.object({
  maxConnections: z.number().int().min(1),
  messagesPerConnection: z.number().int().min(1),
  messageRate: rate.nullable(),
  connectionRate: rate.nullable(),
  recipientsPerMessage: z.number().int().min(1),
  tlsRequired: z.boolean(),
}).loose();
export type LaneShape = z.infer<typeof laneShape>;

export const providerPlan = z.object({
  name: z.string(),
  domains: z.array(z.string()),
  mxSuffixes: z.array(z.string()),
  lane: laneShape,
  limits: z.object({ messageRate: rate.nullable(), maxConnections: z.number().int().nullable() }).loose(),
  rules: z.array(planRule),
  feedbackLoop: z.boolean(),
  recovery: z.object({ step: z.number(), intervalMs: z.number().int() }).loose(),
}).loose();
export type ProviderPlan = z.infer<typeof providerPlan>;

export const LANE_SENDING_STATES = ["Healthy", "Throttled", "Suspended", "Blocked", "Paused"] as const;

/** One lane (source address x provider) as it may send now. */
export const lanePlan = z.object({
  address: z.string(),
  provider: z.string(),
  state: z.enum(LANE_SENDING_STATES),
  shape: laneShape,
  /** Warm-up quota per warm-up day and per hour (a day cut in 24); null: no warm-up limit. */
  dailyQuota: z.number().int().min(0).nullable(),
  hourlyQuota: z.number().int().min(0).nullable(),
  stage: z.number().int().nullable(),
  until: z.string().optional(),
  reason: z.string().optional(),
  manual: z.boolean().optional(),
}).loose();
export type LanePlan = z.infer<typeof lanePlan>;

export const poolPlan = z.object({
  id: z.string().describe("namespace/name"),
  namespace: z.string(),
  name: z.string(),
  addresses: z.array(z.object({
    address: z.string(),
    hostname: z.string(),
    nodeName: z.string().optional(),
    /** Limits on the address as a whole, across its lanes and the fleet (the tightest applicable limit wins). */
    limits: z.object({ messageRate: rate.nullable().optional(), maxConnections: z.number().int().min(1).nullable().optional() }).loose().optional(),
  }).loose()),
  egress: z.object({ mode: z.enum(["HostNetwork", "PerAddress"]), bindAddress: z.boolean() }).loose(),
  overflowPool: z.string().nullable(),
  /**
   * Warm-up windows: day n starts at dayZero + n * periodMs. quotaUntil: the lanes' quotas are the
   * warm-up engine's for the day that ends then; after it a quota lane sends nothing until a plan
   * with the next day's quotas arrives (a lane stepped back must not spend its old, larger quota in
   * the new day). Absent: no engine has decided yet; the quotas hold every day.
   */
  warmup: z.object({ periodMs: z.number().int().min(1), dayZero: z.number().int(), quotaUntil: z.number().int().optional() }).loose().nullable(),
  lanes: z.array(lanePlan),
}).loose();
export type PoolPlan = z.infer<typeof poolPlan>;

export const dkimKeyPlan = z.object({
  selector: z.string(),
  algorithm: z.enum(["rsa-sha256", "ed25519-sha256"]),
  keyName: z.string().describe("File name in the pool's mounted relay Secret."),
}).loose();

export const domainPlan = z.object({
  id: z.string().describe("namespace/name of the SendingDomain"),
  domain: z.string(),
  pool: z.string(),
  returnPathDomain: z.string(),
  verp: z.boolean(),
  dkim: z.array(dkimKeyPlan),
  listUnsubscribe: z.object({ mode: z.enum(["None", "OneClick", "Mailto"]), url: z.string().optional(), mailto: z.string().optional() }).loose(),
  feedbackIdSender: z.string().nullable(),
  notifySender: z.boolean(),
  suppression: z.object({
    onSubmit: z.enum(["Refuse", "Drop"]),
    complaintTtlMs: z.number().int(),
    unsubscribeTtlMs: z.number().int(),
    hardBounceTtlMs: z.number().int(),
  }).loose(),
  submitRate: rate.nullable(),
  webhooks: z.array(z.object({ name: z.string(), url: z.string(), events: z.array(z.string()), keyName: z.string() }).loose()),
  /**
   * Set while the domain is paused on its bounce or complaint rates (SendingDomain
   * status.reputation): its mail is still accepted, and relays hold its parts in the queue, unsent,
   * until `until` (RFC 3339). Absent: the domain sends.
   */
  paused: z.object({ until: z.string(), reason: z.string() }).loose().optional(),
}).loose();
export type DomainPlan = z.infer<typeof domainPlan>;

export const submitterPlan = z.object({
  credentials: z.array(z.object({
    username: z.string(),
    /** scrypt$N$r$p$saltB64$hashB64 */
    hash: z.string(),
    domains: z.array(z.string()),
  }).loose()),
  networks: z.array(z.object({ cidr: z.string(), domains: z.array(z.string()) }).loose()),
}).loose();
export type SubmitterPlan = z.infer<typeof submitterPlan>;

export const deliveryPlan = z.object({
  expiryMs: z.number().int().min(1),
  retryBaseMs: z.number().int().min(1),
  retryMaxMs: z.number().int().min(1),
  idempotencyWindowMs: z.number().int().min(0),
}).loose();

export const plan = z.object({
  schema: z.literal(PLAN_SCHEMA),
  revision: z.string(),
  generatedAt: z.string(),
  providers: z.array(providerPlan),
  pools: z.array(poolPlan),
  domains: z.array(domainPlan),
  submitters: submitterPlan,
  delivery: deliveryPlan,
}).loose();
export type Plan = z.infer<typeof plan>;

export const DEFAULT_DELIVERY = {
  expiryMs: 5 * 86_400_000,
  retryBaseMs: 60_000,
  retryMaxMs: 4 * 3_600_000,
  idempotencyWindowMs: 10 * 60_000,
};

/** Parse a plan read from KV; throws a zod error naming the field when it is not one. */
export function parsePlan(value: unknown): Plan {
  return plan.parse(value);
}
