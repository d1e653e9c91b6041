// The four kinds of mailfleet.io/v1alpha1: their schemas and how the CRD presents them
// (scope, names, printer columns, subresources). The CRD YAML under crds/ is generated from this.
import { z } from "zod";
import { API_VERSION, type CelRule, GROUP, objectName, VERSION } from "./common.ts";
import { ipPoolSpec, ipPoolStatus } from "./ippool.ts";
import { mailboxProviderSpec, mailboxProviderStatus } from "./mailboxprovider.ts";
import { sendingDomainSpec, sendingDomainStatus } from "./sendingdomain.ts";
import { warmupScheduleSpec, warmupScheduleStatus } from "./warmupschedule.ts";

export type PrinterColumn = {
  name: string;
  type: "string" | "integer" | "number" | "boolean" | "date";
  jsonPath: string;
  priority?: number;
  description?: string;
};

export type KindDef = {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  scope: "Namespaced" | "Cluster";
  spec: z.ZodType;
  status: z.ZodType;
  columns: PrinterColumn[];
  /** CEL rules at the object root (they may read metadata.name). */
  rootRules?: CelRule[];
  scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string };
};

const ready: PrinterColumn[] = [
  { name: "Ready", type: "string", jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
  { name: "Reason", type: "string", jsonPath: '.status.conditions[?(@.type=="Ready")].reason' },
];
const age: PrinterColumn = { name: "Age", type: "date", jsonPath: ".metadata.creationTimestamp" };

export const KINDS = {
  MailboxProvider: {
    kind: "MailboxProvider",
    plural: "mailboxproviders",
    singular: "mailboxprovider",
    shortNames: ["mbp"],
    scope: "Cluster",
    spec: mailboxProviderSpec,
    status: mailboxProviderStatus,
    rootRules: [{
      rule: "self.metadata.name == 'default' || size(self.spec.match.domains) + size(self.spec.match.mxSuffixes) > 0",
      message: "spec.match needs at least one domain or MX suffix (only the provider named default matches everything else)",
      fieldPath: ".spec.match",
    }],
    columns: [
      { name: "Display", type: "string", jsonPath: ".spec.displayName" },
      { name: "Lanes", type: "integer", jsonPath: ".status.lanes" },
      { name: "Active Rules", type: "integer", jsonPath: ".status.activeRules" },
      ...ready,
      age,
    ],
  },
  WarmupSchedule: {
    kind: "WarmupSchedule",
    plural: "warmupschedules",
    singular: "warmupschedule",
    shortNames: ["wus"],
    scope: "Namespaced",
    spec: warmupScheduleSpec,
    status: warmupScheduleStatus,
    columns: [
      { name: "Period", type: "string", jsonPath: ".spec.period" },
      { name: "Stages", type: "integer", jsonPath: ".status.stages" },
      { name: "Full Volume Day", type: "integer", jsonPath: ".status.fullVolumeDay" },
      { name: "Pools", type: "integer", jsonPath: ".status.pools" },
      ...ready,
      age,
    ],
  },
  IPPool: {
    kind: "IPPool",
    plural: "ippools",
    singular: "ippool",
    shortNames: ["ipp"],
    scope: "Namespaced",
    spec: ipPoolSpec,
    status: ipPoolStatus,
    columns: [
      { name: "Egress", type: "string", jsonPath: ".spec.egress.mode" },
      { name: "Relays", type: "integer", jsonPath: ".status.readyReplicas", description: "Ready relays" },
      { name: "Lanes", type: "integer", jsonPath: ".status.lanesTotal" },
      { name: "Healthy", type: "integer", jsonPath: ".status.lanesHealthy", description: "Healthy lanes" },
      { name: "Schedule", type: "string", jsonPath: ".spec.warmupScheduleRef.name", priority: 1 },
      { name: "Overflow", type: "string", jsonPath: ".spec.overflowPoolRef.name", priority: 1 },
      ...ready,
      age,
    ],
    scale: { specReplicasPath: ".spec.relay.replicas", statusReplicasPath: ".status.replicas", labelSelectorPath: ".status.selector" },
  },
  SendingDomain: {
    kind: "SendingDomain",
    plural: "sendingdomains",
    singular: "sendingdomain",
    shortNames: ["sd"],
    scope: "Namespaced",
    spec: sendingDomainSpec,
    status: sendingDomainStatus,
    columns: [
      { name: "Domain", type: "string", jsonPath: ".spec.domain" },
      { name: "Pool", type: "string", jsonPath: ".spec.poolRef.name" },
      { name: "DNS", type: "string", jsonPath: ".status.recordsVerified", description: "Verified DNS records" },
      ...ready,
      { name: "Selector", type: "string", jsonPath: '.status.dkim[?(@.state=="Active")].selector', priority: 1 },
      age,
    ],
  },
} satisfies Record<string, KindDef>;

export type KindName = keyof typeof KINDS;
export { API_VERSION, GROUP, VERSION };

// Names as the API server checks them for custom resources (RFC 1123 subdomain; a namespace is an
// RFC 1123 label), so a manifest zod passes is not refused for its name.
const objectMeta = z.object({
  name: objectName,
  namespace: z.string().max(63).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a lower-case RFC 1123 label").optional(),
  uid: z.string().optional(),
  generation: z.number().int().optional(),
  resourceVersion: z.string().optional(),
  creationTimestamp: z.string().optional(),
  deletionTimestamp: z.string().optional(),
  labels: z.record(z.string(), z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  finalizers: z.array(z.string()).optional(),
}).loose();

/** The whole object (apiVersion, kind, metadata, spec, status) for runtime validation. */
export function objectSchema<K extends KindName>(name: K) {
  const def = KINDS[name];
  return z.object({
    apiVersion: z.literal(API_VERSION),
    kind: z.literal(def.kind),
    metadata: objectMeta,
    spec: def.spec as (typeof KINDS)[K]["spec"],
    status: (def.status as (typeof KINDS)[K]["status"]).optional(),
  });
}
