// IPPool: source addresses with one purpose (transactional, marketing, a tenant), the schedule
// they warm on, where volume over quota goes, and the relay workload that sends from them.
import { z } from "zod";
import {
  commonStatus, dnsName, duration, fraction, freeform, ipAddress, k8s, localRef, objectName, quantity, unique,
} from "./common.ts";
import { providerLimits } from "./mailboxprovider.ts";

// Same fields, units and checks as a MailboxProvider's spec.limits (its schema pieces, described
// for an address): the fleet shaper applies both the same way, the tightest applicable limit winning.
export const addressLimits = z.object({
  messageRate: providerLimits.shape.messageRate.describe("Messages per period from this address to all providers together, by every relay, e.g. 2000/h."),
  maxConnections: providerLimits.shape.maxConnections.describe("Concurrent connections from this address to all providers together, by every relay."),
});

export const poolAddress = z.object({
  address: ipAddress.describe("The sending address."),
  hostname: dnsName("EHLO name").describe("EHLO name; its A/AAAA must point back at the address and the address's PTR at it (FCrDNS)."),
  nodeName: objectName.optional().describe("HostNetwork egress: the node that owns the address. Empty: any node whose interfaces carry it."),
  limits: addressLimits.optional().describe(
    "Limits on the address as a whole, across all providers (its per-provider lanes keep their own limits); the tightest applicable limit wins. " +
      "Receivers judge a source IP's reputation by all its traffic, so this caps an address's total, e.g. while it warms.",
  ),
});
export type PoolAddress = z.infer<typeof poolAddress>;

export const EGRESS_MODES = ["HostNetwork", "PerAddress"] as const;

const relaySpec = k8s(
  z.object({
    workload: z.enum(["Deployment", "StatefulSet"]).default("Deployment")
      .describe("Relays keep no state of their own (mail is in JetStream), so a Deployment is the default."),
    replicas: z.number().int().min(0).max(1000).default(2)
      .describe("HostNetwork: relays for the pool. PerAddress: relays per address."),
    autoscaling: k8s(
      z.object({
        minReplicas: z.number().int().min(1).max(1000),
        maxReplicas: z.number().int().min(1).max(1000),
        targetCPUUtilizationPercentage: z.number().int().min(1).max(100).default(70),
        targetQueueDepth: z.number().int().min(1).max(10_000_000).optional()
          .describe("Ready messages per relay to aim for (KEDA ScaledObject on queue lag when KEDA is installed)."),
      }),
      { cel: [{ rule: "self.minReplicas <= self.maxReplicas", message: "minReplicas must not exceed maxReplicas", fieldPath: ".minReplicas", holds: (a) => a.minReplicas <= a.maxReplicas }] },
    ).optional(),
    image: z.string().max(512).optional().describe("Relay image; default is the operator's configured relay image."),
    resources: freeform.optional().describe("Container resources (requests, limits)."),
    nodeSelector: k8s(z.record(z.string(), z.string()), {}).optional(),
    tolerations: z.array(freeform).max(32).optional(),
    submission: z.object({
      port: z.number().int().min(1).max(65535).default(587),
      tlsSecretRef: localRef.optional().describe("kubernetes.io/tls Secret for STARTTLS; absent: the operator makes a self-signed one."),
      maxMessageSize: quantity.default("25Mi").describe("Largest message accepted (SIZE)."),
    }).default({ port: 587, maxMessageSize: "25Mi" }),
    inboundPort: z.number().int().min(1).max(65535).default(25).describe("Port of the inbound listener for bounces and feedback reports."),
    terminationGracePeriodSeconds: z.number().int().min(0).max(86400).default(60)
      .describe("Time a relay has to finish transactions in flight when it is drained."),
  }),
  { cel: [{ rule: "self.workload == oldSelf.workload", message: "relay.workload is immutable: create a new pool to switch workload kinds", fieldPath: ".workload" }] },
);

export const ipPoolSpec = k8s(
  z.object({
    addresses: k8s(z.array(poolAddress).min(1).max(256).superRefine(unique("address")), {
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["address"],
    }),
    warmupScheduleRef: localRef.optional().describe("WarmupSchedule the addresses warm on; absent: the addresses are already warm."),
    overflowPoolRef: localRef.optional().describe("Pool of warm addresses that takes volume over this pool's quota."),
    egress: k8s(
      z.object({
        mode: z.enum(EGRESS_MODES).default("HostNetwork").describe(
          "HostNetwork: relays use the node's network and bind the pool addresses their node carries. " +
            "PerAddress: one relay Deployment per address, labelled for an egress gateway that maps it to the address.",
        ),
        bindAddress: z.boolean().default(true).describe("Bind the address as the local address of outbound connections (false when a gateway translates)."),
      }),
      { cel: [{ rule: "self.mode == oldSelf.mode", message: "egress.mode is immutable: create a new pool and move the domains" }] },
    ).default({ mode: "HostNetwork", bindAddress: true }),
    relay: relaySpec.default({
      workload: "Deployment", replicas: 2, submission: { port: 587, maxMessageSize: "25Mi" }, inboundPort: 25, terminationGracePeriodSeconds: 60,
    }),
    reputation: z.object({
      window: duration.default("24h").describe("Window over which rates are judged."),
      warnBounceRate: fraction.default(0.05),
      pauseBounceRate: fraction.default(0.1),
      warnComplaintRate: fraction.default(0.001),
      pauseComplaintRate: fraction.default(0.005),
      resumeAfter: duration.default("24h").describe("A paused lane resumes (at a lower stage) after this, unless held by hand."),
      blocklists: z.array(dnsName("DNSBL zone")).max(16).default([]).describe("DNS blocklist zones to check each address against, e.g. zen.spamhaus.org."),
    }).default({
      window: "24h", warnBounceRate: 0.05, pauseBounceRate: 0.1, warnComplaintRate: 0.001, pauseComplaintRate: 0.005, resumeAfter: "24h", blocklists: [],
    }),
  }),
  {},
);

/** Whether a lane sends: Healthy and Throttled send (Throttled slower), the others do not. */
export const LANE_STATES = ["Healthy", "Throttled", "Suspended", "Blocked", "Paused"] as const;
export type LaneState = (typeof LANE_STATES)[number];

export const laneStatus = z.object({
  address: z.string().max(45),
  provider: z.string().max(253),
  state: z.enum(LANE_STATES),
  stage: z.number().int().min(0).optional().describe("Index of the warm-up stage (0-based); absent when the pool does not warm up."),
  day: z.number().int().min(0).optional().describe("Qualifying warm-up days completed."),
  dailyQuota: z.number().int().min(0).optional(),
  hourlyQuota: z.number().int().min(0).optional(),
  sentToday: z.number().int().min(0).optional().describe("Recipients attempted at the provider in the current warm-up day."),
  bounceRate: z.number().min(0).max(1).optional(),
  deferralRate: z.number().min(0).max(1).optional(),
  complaintRate: z.number().min(0).max(1).nullable().optional().describe("null: the provider sends no complaint reports (blind gate)."),
  failedDays: z.number().int().min(0).optional().describe("Consecutive warm-up days whose gates failed."),
  stageStartedDay: z.number().int().min(0).optional().describe("Warm-up day on which the current stage began."),
  held: z.boolean().optional().describe("A person holds the lane's warm-up stage."),
  decision: z.string().max(64).optional().describe("Last warm-up decision: Advanced, Held, SteppedBack, Paused, Resumed, Manual."),
  reason: z.string().max(1024).optional(),
  rule: z.string().max(63).optional().describe("Response rule in force on the lane."),
  until: z.string().max(40).optional().describe("When the rule or suspension ends (RFC 3339)."),
  manual: z.boolean().optional().describe("A person suspended or held this lane; automation leaves it alone until released."),
});
export type LaneStatus = z.infer<typeof laneStatus>;

export const addressStatus = z.object({
  address: z.string().max(45),
  hostname: z.string().max(253),
  ptr: z.array(z.string().max(253)).max(16).optional().describe("PTR names found for the address."),
  forwardConfirmed: z.boolean().describe("The PTR name resolves back to the address and matches the EHLO name."),
  listed: z.array(z.string().max(253)).max(16).optional().describe("DNS blocklists that list the address."),
  message: z.string().max(1024).optional(),
});

export const ipPoolStatus = z.object({
  ...commonStatus,
  replicas: z.number().int().min(0).optional(),
  readyReplicas: z.number().int().min(0).optional(),
  selector: z.string().max(1024).optional().describe("Label selector of the pool's relay pods (for the scale subresource)."),
  addresses: z.array(addressStatus).max(256).optional(),
  lanes: z.array(laneStatus).max(8192).optional(),
  lanesHealthy: z.number().int().min(0).optional(),
  lanesTotal: z.number().int().min(0).optional(),
  warmupDay: z.string().max(40).optional().describe("Start of the current warm-up day (RFC 3339)."),
});

export type IPPoolSpec = z.infer<typeof ipPoolSpec>;
export type IPPoolStatus = z.infer<typeof ipPoolStatus>;
