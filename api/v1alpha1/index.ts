// Typed objects of mailfleet.io/v1alpha1, as the operator, relays and CLI see them after parsing
// (defaults applied).
import type { z } from "zod";
import type { ipPoolSpec, ipPoolStatus } from "./ippool.ts";
import type { mailboxProviderSpec, mailboxProviderStatus } from "./mailboxprovider.ts";
import type { sendingDomainSpec, sendingDomainStatus } from "./sendingdomain.ts";
import type { warmupScheduleSpec, warmupScheduleStatus } from "./warmupschedule.ts";

export * from "./common.ts";
export * from "./ippool.ts";
export * from "./kinds.ts";
export * from "./mailboxprovider.ts";
export * from "./sendingdomain.ts";
export * from "./warmupschedule.ts";

export type ObjectMeta = {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
};

type Obj<K extends string, S extends z.ZodType, T extends z.ZodType> = {
  apiVersion: "mailfleet.io/v1alpha1";
  kind: K;
  metadata: ObjectMeta;
  spec: z.output<S>;
  status?: z.output<T>;
};

export type MailboxProvider = Obj<"MailboxProvider", typeof mailboxProviderSpec, typeof mailboxProviderStatus>;
export type WarmupSchedule = Obj<"WarmupSchedule", typeof warmupScheduleSpec, typeof warmupScheduleStatus>;
export type IPPool = Obj<"IPPool", typeof ipPoolSpec, typeof ipPoolStatus>;
export type SendingDomain = Obj<"SendingDomain", typeof sendingDomainSpec, typeof sendingDomainStatus>;
export type MailfleetObject = MailboxProvider | WarmupSchedule | IPPool | SendingDomain;

/** Annotation that stops reconciliation of one object (incidents, GitOps hand-offs). */
export const PAUSED_ANNOTATION = "mailfleet.io/paused";
/** Annotation holding manual lane overrides on an IPPool: JSON {"<address>/<provider>": LaneOverride}. */
export const LANE_OVERRIDES_ANNOTATION = "mailfleet.io/lane-overrides";

export type LaneOverride = {
  /** Suspended: the lane does not send until released (or until `until`). */
  state?: "Suspended";
  until?: string;
  /** Freeze the warm-up stage. */
  hold?: boolean;
  /** Set the warm-up stage (0-based index). */
  stage?: number;
  reason?: string;
  by?: string;
};

export function laneKey(address: string, provider: string): string {
  return `${address}/${provider}`;
}

/** namespace/name, the id of a namespaced object (or name for cluster-scoped ones). */
export function objectId(meta: ObjectMeta): string {
  return meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
}
