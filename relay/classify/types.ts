// Shared types of the SMTP reply classifier (relay/classify).

/** Every class the classifier can return, in no particular order. */
export const REPLY_CLASSES = [
  "invalid-recipient", // the mailbox does not exist
  "inactive-mailbox", // the mailbox exists but is disabled, suspended or dormant
  "mailbox-full",
  "bad-domain", // the recipient domain or its MX does not exist, or it has a null MX
  "rate-limited", // the receiver asks us to slow down (messages, connections, recipients)
  "reputation-block", // the sending IP or domain is blocklisted or has a poor reputation
  "auth-failure", // SPF, DKIM, DMARC (or the sender's PTR/FCrDNS) failed or is missing
  "spam-content", // the message itself was judged spam, phishing or malicious
  "policy", // relaying denied, sender/recipient policy, TLS or SMTP AUTH required
  "message-too-large",
  "greylisted",
  "routing-error", // loops, no route, connection problems, expiry in transit
  "protocol-error", // SMTP or message syntax, command sequence; also "not a reply at all"
  "transient", // any other temporary failure
  "other", // any other permanent failure
] as const;

export type ReplyClass = (typeof REPLY_CLASSES)[number];

export interface ReplyClassification {
  class: ReplyClass;
  /** True exactly when the basic reply code is 5xx. */
  permanent: boolean;
  /** The three-digit basic reply code, or '' when the input carries none. */
  code: string;
  /** The RFC 3463 enhanced status code (e.g. '5.1.1'), when present. */
  enhanced?: string;
  /** Marker of the receiving provider, when recognised ('gmail', 'yahoo', 'microsoft', ...). */
  provider?: string;
  /** Id of the rule that decided the class (see rules/*.ts), for explaining a decision. */
  rule: string;
}

/**
 * One classification rule. A rule matches when every criterion it sets matches; `text` matches
 * when any of its patterns does, `unless` vetoes the rule when any of its patterns does.
 * Rules are data: see rules/index.ts for the order in which the tables are tried.
 */
export interface Rule {
  /** Stable, unique id; returned as `rule` so a decision can be traced back to its row. */
  id: string;
  class: ReplyClass;
  /** Tested against the basic code ('' when none), e.g. /^4/ or /^55[04]$/. */
  code?: RegExp;
  /** Tested against the enhanced status code ('' when none), e.g. /^[45]\.7\.26$/. */
  enhanced?: RegExp;
  /** Tested against the reply text (codes and continuation prefixes removed, spaces collapsed). */
  text?: RegExp[];
  unless?: RegExp[];
  /** Provider marker reported when this rule decides. */
  provider?: string;
}

/** A reply split into its parts; what the rules are matched against. */
export interface ParsedReply {
  code: string;
  enhanced: string;
  text: string;
  /** The whole input, whitespace collapsed: used for provider markers (host names in prefixes). */
  full: string;
}
