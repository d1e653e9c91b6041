// Rules on status codes alone, used only when no text rule matched.
//
// ENHANCED_RULES: RFC 3463 / IANA "SMTP Enhanced Status Codes" registry entries whose meaning is
// specific enough to decide the class (x.1.1 bad mailbox, x.2.2 mailbox full, x.7.26 auth ...).
// They come after the text rules because receivers reuse codes loosely (Yahoo sends 5.7.9 for both
// "unauthenticated" and "policy reasons", Gmail 5.2.1 for "receiving mail at a rate", Exchange
// 5.1.10 for "recipient not found"), but before the vague words of WEAK_TEXT_RULES.
// Mapping follows the registry and KumoMTA's assets/bounce_classifier/iana.toml.
//
// WEAK_ENHANCED_RULES: the catch-all details (x.7.0, x.7.1, x.1.0, x.5.x ...).
// BASIC_CODE_RULES: RFC 5321 basic codes with a fixed meaning (500-504 syntax, 530 auth required,
// 521/556 domain accepts no mail, 551/553 mailbox name). Anything left is transient (4xx) or
// other (5xx), see classify-reply.ts.
import type { Rule } from "../types.ts";

export const ENHANCED_RULES: readonly Rule[] = [
  { id: "x.1.1", class: "invalid-recipient", enhanced: /^[45]\.1\.1$/ }, // bad destination mailbox
  { id: "x.1.2", class: "bad-domain", enhanced: /^[45]\.1\.2$/ }, // bad destination system
  { id: "x.1.3", class: "invalid-recipient", enhanced: /^[45]\.1\.3$/ }, // bad mailbox syntax
  { id: "x.1.4", class: "invalid-recipient", enhanced: /^[45]\.1\.4$/ }, // mailbox ambiguous
  { id: "x.1.6", class: "inactive-mailbox", enhanced: /^[45]\.1\.6$/ }, // moved, no forwarding
  { id: "x.1.7-8", class: "policy", enhanced: /^[45]\.1\.[78]$/ }, // bad sender address / system
  { id: "x.1.10", class: "bad-domain", enhanced: /^[45]\.1\.10$/ }, // null MX (RFC 7505)
  { id: "x.2.1", class: "inactive-mailbox", enhanced: /^[45]\.2\.1$/ }, // mailbox disabled
  { id: "x.2.2", class: "mailbox-full", enhanced: /^[45]\.2\.2$/ },
  { id: "x.2.3", class: "message-too-large", enhanced: /^[45]\.2\.3$/ }, // per-mailbox length limit
  { id: "x.2.4", class: "invalid-recipient", enhanced: /^[45]\.2\.4$/ }, // list expansion problem
  { id: "x.3.4", class: "message-too-large", enhanced: /^[45]\.3\.4$/ },
  { id: "x.4.1-2", class: "routing-error", enhanced: /^[45]\.4\.[12]$/ }, // no answer, bad connection
  { id: "x.4.3", class: "routing-error", enhanced: /^[45]\.4\.3$/ }, // directory (DNS) failure
  { id: "x.4.4", class: "routing-error", enhanced: /^[45]\.4\.4$/ }, // unable to route
  { id: "x.4.5", class: "transient", enhanced: /^[45]\.4\.5$/ }, // mail system congestion
  { id: "x.4.6-7", class: "routing-error", enhanced: /^[45]\.4\.[67]$/ }, // loop, expired
  { id: "x.5.3", class: "rate-limited", enhanced: /^[45]\.5\.3$/ }, // too many recipients
  { id: "x.5.1-5", class: "protocol-error", enhanced: /^[45]\.5\.[1-5]$/ }, // command, syntax, args
  { id: "x.6", class: "protocol-error", enhanced: /^[45]\.6\.\d+$/ }, // media / content encoding
  { id: "x.7.13", class: "inactive-mailbox", enhanced: /^[45]\.7\.13$/ }, // user account disabled
  { id: "x.7.16", class: "message-too-large", enhanced: /^[45]\.7\.16$/ }, // too big for priority
  { id: "x.7.17", class: "invalid-recipient", enhanced: /^[45]\.7\.17$/ }, // mailbox owner changed
  { id: "x.7.18", class: "bad-domain", enhanced: /^[45]\.7\.18$/ }, // domain owner changed
  // 20-22 DKIM, 23-24 SPF, 25 reverse DNS, 26 multiple auth checks, 29 ARC.
  { id: "x.7.20-26", class: "auth-failure", enhanced: /^[45]\.7\.(?:2[0-6]|29)$/ },
  { id: "x.7.27", class: "policy", enhanced: /^[45]\.7\.27$/ }, // sender address has null MX
  { id: "x.7.28", class: "rate-limited", enhanced: /^[45]\.7\.28$/ }, // mail flood detected
  { id: "x.7.30", class: "policy", enhanced: /^[45]\.7\.30$/ }, // REQUIRETLS needed
  // 2-12, 14, 15, 19: list expansion, security features, crypto, credentials, encryption, trust.
  { id: "x.7.security", class: "policy", enhanced: /^[45]\.7\.(?:[2-9]|1[0-2]|14|15|19)$/ },
];

// Vague words: only consulted when neither a specific phrase nor a specific code decided.
export const WEAK_TEXT_RULES: readonly Rule[] = [
  {
    id: "weak-ip-blocked",
    class: "reputation-block",
    text: [/\b(?:ip|client|host|server|network|connection|mta)\b(?:[^.;]|\.(?=\d)){0,40}\b(?:blocked|banned|refused|rejected|denied)\b/i],
  },
  { id: "weak-blocked", class: "policy", text: [/\b(?:blocked|denied|refused|forbidden|not allowed|rejected by)\b/i] },
];

export const WEAK_ENHANCED_RULES: readonly Rule[] = [
  { id: "x.1.0", class: "invalid-recipient", enhanced: /^[45]\.1\.\d+$/ },
  { id: "x.4.other", class: "routing-error", enhanced: /^[45]\.4\.\d+$/ },
  { id: "x.5.other", class: "protocol-error", enhanced: /^[45]\.5\.\d+$/ },
  { id: "x.7.other", class: "policy", enhanced: /^[45]\.7\.\d+$/ }, // x.7.0, x.7.1, vendor x.7.nnn
];

export const BASIC_CODE_RULES: readonly Rule[] = [
  { id: "500-504", class: "protocol-error", code: /^50[0-4]$|^555$/, enhanced: /^(?:|[45]\.5\.\d+)$/ }, // syntax, unknown command, sequence
  { id: "530-538", class: "policy", code: /^53[0-8]$/ }, // authentication or TLS required
  { id: "521-556", class: "bad-domain", code: /^(?:521|556)$/ }, // host / domain does not accept mail
  { id: "551-553", class: "invalid-recipient", code: /^55[13]$/ }, // user not local / mailbox name not allowed
];
