// MailboxProvider: cluster-scoped knowledge of one mailbox provider or B2B gateway (like
// cert-manager's ClusterIssuer): how to recognise its recipients (MX rollup), how fast each lane
// (source IP x provider) may send, and what to do when it answers with a given reply.
import { z } from "zod";
import { commonStatus, dnsName, duration, fraction, k8s, rate, unique } from "./common.ts";

export const REPLY_CLASSES = [
  "invalid-recipient",
  "inactive-mailbox",
  "mailbox-full",
  "bad-domain",
  "rate-limited",
  "reputation-block",
  "auth-failure",
  "spam-content",
  "policy",
  "message-too-large",
  "greylisted",
  "routing-error",
  "protocol-error",
  "transient",
  "other",
] as const;
export const replyClass = z.enum(REPLY_CLASSES);
export type ReplyClass = z.infer<typeof replyClass>;

export const RULE_ACTIONS = ["SlowDown", "SuspendLane", "SuspendProvider", "CapConnections", "Bounce", "Classify"] as const;

const replyMatch = k8s(
  z.object({
    code: z.string().regex(/^[245][0-9][0-9]$/, "must be a 3-digit SMTP reply code such as 421").optional()
      .describe("Basic reply code, e.g. 421."),
    enhancedCode: z.string().max(16).regex(/^[245]\.[0-9]{1,3}\.[0-9]{1,3}$/, "must be an enhanced status code such as 4.7.28").optional()
      .describe("Enhanced status code (RFC 3463), e.g. 4.7.28."),
    text: z.string().max(512).optional()
      .describe("Regular expression (case-insensitive) the reply text must contain, e.g. \\[TSS04\\]."),
    class: replyClass.optional().describe("Class the classifier gave the reply."),
  }),
  { cel: [{
    rule: "has(self.code) || has(self.enhancedCode) || has(self.text) || has(self.class)", message: "match needs at least one of code, enhancedCode, text or class",
    holds: (m) => m.code !== undefined || m.enhancedCode !== undefined || m.text !== undefined || m.class !== undefined,
  }] },
);

export const responseRule = k8s(
  z.object({
    name: z.string().min(1).max(63).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be a lower-case name").describe("Rule name, shown in status and metrics."),
    match: replyMatch,
    action: z.enum(RULE_ACTIONS).describe(
      "SlowDown multiplies the lane's rate by factor; SuspendLane or SuspendProvider stop sending for duration; " +
        "CapConnections limits the lane to connections; Bounce fails the message at once; Classify only sets the class.",
    ),
    factor: z.number().gt(0).lt(1).optional().describe("SlowDown: multiply the lane's message rate by this (0 < factor < 1)."),
    duration: duration.optional().describe("How long the action holds before the lane recovers gradually."),
    connections: z.number().int().min(1).max(1000).optional().describe("CapConnections: the connection cap."),
    classifyAs: replyClass.optional().describe("Override the reply's class (for Classify and Bounce)."),
  }),
  {
    cel: [
      { rule: "self.action != 'SlowDown' || has(self.factor)", message: "SlowDown needs factor", fieldPath: ".factor", holds: (r) => r.action !== "SlowDown" || r.factor !== undefined },
      {
        rule: "!(self.action in ['SlowDown', 'SuspendLane', 'SuspendProvider', 'CapConnections']) || has(self.duration)", message: "this action needs duration", fieldPath: ".duration",
        holds: (r) => !["SlowDown", "SuspendLane", "SuspendProvider", "CapConnections"].includes(r.action) || r.duration !== undefined,
      },
      { rule: "self.action != 'CapConnections' || has(self.connections)", message: "CapConnections needs connections", fieldPath: ".connections", holds: (r) => r.action !== "CapConnections" || r.connections !== undefined },
      { rule: "self.action != 'Classify' || has(self.classifyAs)", message: "Classify needs classifyAs", fieldPath: ".classifyAs", holds: (r) => r.action !== "Classify" || r.classifyAs !== undefined },
    ],
  },
);
export type ResponseRule = z.infer<typeof responseRule>;

export const laneShaping = z.object({
  maxConnections: z.number().int().min(1).max(1000).default(5).describe("Concurrent connections per lane across the fleet."),
  messagesPerConnection: z.number().int().min(1).max(100000).default(100).describe("Messages sent on one connection before it is closed."),
  messageRate: rate.optional().describe("Messages per period per lane across the fleet, e.g. 600/min."),
  connectionRate: rate.optional().describe("New connections per period per lane, e.g. 30/min."),
  recipientsPerMessage: z.number().int().min(1).max(1000).default(50).describe("Recipients per SMTP transaction."),
  tls: z.enum(["Opportunistic", "Required"]).default("Opportunistic").describe("Required: never send in clear text to this provider."),
});

export const providerLimits = z.object({
  messageRate: rate.optional().describe("Messages per period to this provider from the whole fleet."),
  maxConnections: z.number().int().min(1).max(100000).optional().describe("Connections to this provider from the whole fleet."),
});

export const mailboxProviderSpec = k8s(
  z.object({
    displayName: z.string().max(128).optional(),
    match: z.object({
      domains: z.array(dnsName("recipient domain")).max(512).default([]).describe("Recipient domains that belong to this provider."),
      mxSuffixes: z.array(dnsName("MX host suffix")).max(64).default([])
        .describe("MX host name suffixes (MX rollup): a recipient domain whose MX ends in one of these belongs here."),
    }).default({ domains: [], mxSuffixes: [] }).describe("How recipients are recognised. The provider named default matches what nothing else does."),
    shaping: laneShaping.default({ maxConnections: 5, messagesPerConnection: 100, recipientsPerMessage: 50, tls: "Opportunistic" }),
    limits: providerLimits.optional().describe("Limits on the provider as a whole; the tightest applicable limit wins."),
    responseRules: k8s(z.array(responseRule).max(64).superRefine(unique("name")).default([]), {
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["name"],
    }).describe("Evaluated in order; the first match applies."),
    feedbackLoop: z.enum(["ARF", "None"]).default("None")
      .describe("ARF: the provider sends per-complaint reports (Yahoo, Microsoft JMRP). None: complaints are invisible (Gmail, Apple)."),
    recovery: z.object({
      step: fraction.default(0.1).describe("After an action ends, the rate grows back by this share of the limit per interval (additive increase)."),
      interval: duration.default("1m"),
    }).default({ step: 0.1, interval: "1m" }),
  }),
  {},
);

export const mailboxProviderStatus = z.object({
  ...commonStatus,
  lanes: z.number().int().min(0).optional().describe("Lanes (source IP x this provider) in the fleet plan."),
  activeRules: z.number().int().min(0).optional().describe("Response rules in force now on some lane."),
});

export type MailboxProviderSpec = z.infer<typeof mailboxProviderSpec>;
export type MailboxProviderSpecInput = z.input<typeof mailboxProviderSpec>;
