// SendingDomain: a domain the fleet sends as, the pool it sends from, its DKIM keys and DNS
// records, and who may submit mail as it.
import { z } from "zod";
import { cidr, commonStatus, dnsDomain, dnsName, duration, k8s, localRef, objectName, unique } from "./common.ts";

export const DKIM_KEY_TYPES = ["RSA2048", "Ed25519"] as const;
export const dkimKeyType = z.enum(DKIM_KEY_TYPES);
export type DkimKeyType = z.infer<typeof dkimKeyType>;

export const WEBHOOK_EVENTS = ["accepted", "delivered", "deferred", "bounced", "complained", "unsubscribed", "suppressed"] as const;

const dkimSpec = k8s(
  z.object({
    keyTypes: k8s(z.array(dkimKeyType).min(1).max(2).superRefine(unique()).default(["RSA2048", "Ed25519"]), { "x-kubernetes-list-type": "set" })
      .describe("Sign with each: RSA-2048 (every receiver) and Ed25519 (RFC 8463, smaller and faster)."),
    selectorPrefix: z.string().min(1).max(24).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, "must be lower-case letters, digits and dashes")
      .default("mf").describe("Selectors are <prefix><yyyymmdd><r|e>."),
    rotationPeriod: duration.default("2160h").describe("Make a new key this long after the active one was made (2160h = 90 days). 0s: never."),
    overlap: duration.default("168h").describe("How long a retired selector stays published after signing moved on."),
    secretRef: localRef.optional().describe(
      "Bring your own key: a Secret with rsa.pem and/or ed25519.pem (PKCS#8) and selector names in rsa.selector / ed25519.selector. " +
        "Absent: the operator generates and rotates keys.",
    ),
  }),
  {},
);

const listUnsubscribe = k8s(
  z.object({
    mode: z.enum(["None", "OneClick", "Mailto"]).default("None")
      .describe("OneClick: RFC 8058 List-Unsubscribe with https URL and List-Unsubscribe-Post (required by Gmail and Yahoo for bulk mail)."),
    url: z.string().max(1024).regex(/^https:\/\/[!-;=?-~]+$/, "must be an https URL").optional()
      .describe("One-click endpoint; {token} is replaced by a signed token naming the recipient and domain."),
    mailto: z.string().max(320).regex(/^[!-;=?A-~]+@[!-;=?A-~]+$/, "must be an email address").optional(),
  }),
  {
    cel: [
      { rule: "self.mode != 'OneClick' || has(self.url)", message: "OneClick needs an https url", fieldPath: ".url", holds: (l) => l.mode !== "OneClick" || l.url !== undefined },
      { rule: "self.mode != 'Mailto' || has(self.mailto)", message: "Mailto needs mailto", fieldPath: ".mailto", holds: (l) => l.mode !== "Mailto" || l.mailto !== undefined },
    ],
  },
);

export const sendingDomainSpec = k8s(
  z.object({
    domain: k8s(dnsName("sending domain"), {
      cel: [{ rule: "self == oldSelf", message: "domain is immutable: create a new SendingDomain" }],
    }).describe("The From domain; it is also the DKIM d= domain."),
    poolRef: localRef.describe("IPPool the domain sends from."),
    dkim: dkimSpec.default({ keyTypes: ["RSA2048", "Ed25519"], selectorPrefix: "mf", rotationPeriod: "2160h", overlap: "168h" }),
    returnPath: z.object({
      domain: dnsName("return-path domain").optional()
        .describe("Envelope sender domain (bounces go here); default bounces.<domain>. It needs MX and SPF records."),
      verp: z.boolean().default(true).describe("Encode the queue id and recipient in the envelope sender so asynchronous bounces map back."),
      mxHosts: z.array(dnsName("MX host")).max(8).optional().describe("MX hosts for the return-path domain; default the pool's EHLO names."),
    }).default({ verp: true }),
    spf: z.object({
      include: z.array(dnsDomain("SPF include")).max(8).default([]).describe("Other senders of this domain, e.g. _spf.google.com."),
      policy: z.enum(["~all", "-all"]).default("~all"),
    }).default({ include: [], policy: "~all" }),
    dmarc: z.object({
      policy: z.enum(["none", "quarantine", "reject"]).default("none"),
      rua: z.array(z.string().max(320).regex(/^mailto:[!-?A-~]+@[!-?A-~]+$/, "must be mailto:address")).max(4).default([]),
      alignment: z.enum(["relaxed", "strict"]).default("relaxed"),
      publish: z.boolean().default(true).describe("false: the organisation publishes DMARC itself; no record is listed."),
    }).default({ policy: "none", rua: [], alignment: "relaxed", publish: true }),
    listUnsubscribe: listUnsubscribe.default({ mode: "None" }),
    feedbackId: z.object({
      senderId: z.string().min(1).max(64).regex(/^[A-Za-z0-9._-]+$/, "letters, digits, dot, dash, underscore"),
    }).optional().describe("Adds Feedback-ID: <campaign>:<customer>:<mailtype>:<senderId> for Gmail's feedback loop."),
    senders: z.object({
      credentials: k8s(z.array(z.object({ secretRef: localRef.describe("kubernetes.io/basic-auth Secret (username, password).") })).max(32).default([]), {})
        .describe("Clients that authenticate (AUTH PLAIN/LOGIN after STARTTLS) may send as this domain."),
      trustedNetworks: k8s(z.array(cidr).max(64).superRefine(unique()).default([]), { "x-kubernetes-list-type": "set" })
        .describe("Clients from these networks may send as this domain without AUTH (like Postfix mynetworks)."),
      rateLimit: z.string().max(24).regex(/^[1-9][0-9]{0,9}\/(s|sec|second|m|min|minute|h|hour|d|day)$/, "must be a rate such as 100/s").optional()
        .describe("Messages per period one credential or network may submit."),
    }).default({ credentials: [], trustedNetworks: [] }),
    bounces: z.object({
      notifySender: z.boolean().default(false).describe("Send a DSN (RFC 3464) to the submitter's original envelope sender."),
    }).default({ notifySender: false }),
    suppression: z.object({
      onSubmit: z.enum(["Refuse", "Drop"]).default("Refuse").describe("Refuse: 550 at RCPT for a suppressed recipient. Drop: accept and drop with an event."),
      complaintTTL: duration.default("8760h"),
      unsubscribeTTL: duration.default("8760h"),
      hardBounceTTL: duration.default("2160h"),
    }).default({ onSubmit: "Refuse", complaintTTL: "8760h", unsubscribeTTL: "8760h", hardBounceTTL: "2160h" }),
    webhooks: k8s(
      z.array(z.object({
        name: objectName,
        url: z.string().max(1024).regex(/^https?:\/\/[!-;=?-~]+$/, "must be an http(s) URL"),
        secretRef: z.object({ name: objectName, key: z.string().min(1).max(253) }).describe("HMAC-SHA256 signing secret."),
        events: z.array(z.enum(WEBHOOK_EVENTS)).min(1).max(7).default(["delivered", "bounced", "complained", "unsubscribed"]),
      })).max(8).superRefine(unique("name")).default([]),
      { "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"] },
    ),
  }),
  {},
);

export const DNS_RECORD_PURPOSES = ["spf", "dkim", "dmarc", "return-path-mx", "return-path-spf"] as const;

export const dnsRecordStatus = z.object({
  purpose: z.enum(DNS_RECORD_PURPOSES),
  type: z.enum(["TXT", "MX", "CNAME"]),
  name: z.string().max(253),
  value: z.string().max(4096),
  priority: z.number().int().min(0).max(65535).optional(),
  selector: z.string().max(63).optional(),
  verified: z.boolean(),
  message: z.string().max(1024).optional(),
});
export type DnsRecordStatus = z.infer<typeof dnsRecordStatus>;

export const DKIM_SELECTOR_STATES = ["Published", "Active", "Retiring"] as const;

export const dkimSelectorStatus = z.object({
  selector: z.string().max(63),
  keyType: dkimKeyType,
  state: z.enum(DKIM_SELECTOR_STATES).describe("Published: in DNS, waiting to verify. Active: signing. Retiring: still published, no longer signing."),
  secretName: z.string().max(253),
  createdAt: z.string().max(40),
  activatedAt: z.string().max(40).optional(),
  retireAt: z.string().max(40).optional().describe("Retiring: when the record may be removed."),
});
export type DkimSelectorStatus = z.infer<typeof dkimSelectorStatus>;

/** The domain's sending reputation, judged by the warm-up engine over its pool's reputation window. */
export const domainReputationStatus = z.object({
  state: z.enum(["Healthy", "Paused"]).describe("Paused: relays hold the domain's mail in the queue (still accepted) until `until`."),
  until: z.string().max(40).optional().describe("When the pause ends (RFC 3339)."),
  reason: z.string().max(1024).optional(),
  warning: z.string().max(1024).optional().describe("A rate above its warning threshold, below the pause threshold."),
  attempted: z.number().int().min(0).optional().describe("Recipients attempted at providers over the window."),
  bounceRate: z.number().min(0).max(1).optional(),
  complaintRate: z.number().min(0).max(1).nullable().optional().describe("null: no provider the domain sent to sends complaint reports."),
});
export type DomainReputationStatus = z.infer<typeof domainReputationStatus>;

export const sendingDomainStatus = z.object({
  ...commonStatus,
  reputation: domainReputationStatus.optional(),
  pool: z.string().max(253).optional(),
  dnsRecords: z.array(dnsRecordStatus).max(32).optional(),
  dkim: z.array(dkimSelectorStatus).max(16).optional(),
  recordsVerified: z.string().max(16).optional().describe("Verified records over records, e.g. 5/6."),
  lastDnsCheck: z.string().max(40).optional(),
});

export type SendingDomainSpec = z.infer<typeof sendingDomainSpec>;
export type SendingDomainStatus = z.infer<typeof sendingDomainStatus>;
