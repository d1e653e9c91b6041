// Provider-specific rules: replies whose meaning is fixed by a provider's own marker ([TSS04],
// RP-001, 4.7.650, (S3150), [CS01], RL000010, ...) or by wording only that provider uses.
// They are tried first because their wording would mislead the generic rules (Gmail's 4.7.28 text
// says "unsolicited" and "SPF domain", Yahoo's [TSS04] says "volume").
//
// Sources: shared/reference/providers.md §2.1-2.5 and §3.5 (Google's, Yahoo's and Microsoft's
// published tables, KumoMTA shaping rules), sisimai rb-sisimai lib/sisimai/rhost/{google,
// microsoft,yahooinc,mimecast}.rb, KumoMTA assets/community/bounces.toml and
// examples/smart-sink-docker/policy/responses.toml, smtp.codes and Bento pages for Apple/Orange.
import type { Rule } from "../types.ts";

export const PROVIDER_RULES: readonly Rule[] = [
  // --- Gmail / Google Workspace -------------------------------------------------------------
  // "550 5.7.28 / 550 5.7.1 ... unusual rate of unsolicited mail ... blocked": a hard stop for the IP.
  {
    id: "gmail-unusual-rate-blocked",
    class: "reputation-block",
    provider: "gmail",
    code: /^5/,
    text: [/unusual (?:rate|amount) of (?:unsolicited )?e?mail/i],
  },
  // 421 4.7.28 (older: 421 4.7.0) "... unusual rate of [unsolicited] mail originating from your
  // IP address / DKIM domain / SPF domain ... temporarily rate limited": Gmail's throttle signal.
  {
    id: "gmail-unusual-rate",
    class: "rate-limited",
    provider: "gmail",
    text: [/unusual (?:rate|amount) of (?:unsolicited )?e?mail/i],
  },
  { id: "gmail-4.7.28", class: "rate-limited", provider: "gmail", code: /^4/, enhanced: /^4\.7\.28$/ },
  // 421 4.7.28 "... exceeded its quota for sending messages with the same Message-ID".
  { id: "gmail-same-message-id", class: "rate-limited", provider: "gmail", text: [/same message-id/i] },
  // 421 4.7.0 "Try again later, closing connection." (DoS protection at HELO).
  {
    id: "gmail-try-again-closing",
    class: "rate-limited",
    provider: "gmail",
    code: /^421$/,
    text: [/^try again later, closing connection/i],
  },
  { id: "gmail-ip-not-whitelisted", class: "policy", provider: "gmail", text: [/ip not in whitelist/i] },
  // 550 5.7.1 "The IP you're using to send mail is not authorized to send email directly to our
  // servers": the IP is classed as end-user/dynamic space, i.e. it is blocked as a source.
  {
    id: "gmail-not-authorized-direct",
    class: "reputation-block",
    provider: "gmail",
    text: [/not authori[sz]ed to send e?mail directly to our servers/i],
  },
  { id: "gmail-ipv6-guidelines", class: "auth-failure", provider: "gmail", text: [/ipv6 sending guidelines/i] },
  {
    id: "gmail-relay-quota",
    class: "rate-limited",
    provider: "gmail",
    text: [/(?:daily|peak) smtp relay (?:sending )?limit|daily (?:user )?sending (?:quota|limit)/i],
  },
  // 550 5.7.1 "The user or domain that you are sending to (or from) has a policy that prohibited the mail".
  { id: "gmail-domain-policy", class: "policy", provider: "gmail", text: [/has a policy that prohibited/i] },
  // 421 4.7.0 "... suspicious due to the nature of the content or the links within".
  { id: "gmail-content-links", class: "spam-content", provider: "gmail", text: [/nature of the content/i] },
  // 452 4.5.3 "Domain policy size per transaction exceeded, please try this recipient in a separate
  // transaction": split the recipients, like "too many recipients".
  { id: "gmail-policy-size", class: "rate-limited", provider: "gmail", text: [/policy size per transaction/i] },
  // 552 5.2.2 "The recipient's inbox is out of storage space and inactive": treated as hard.
  {
    id: "gmail-full-and-inactive",
    class: "inactive-mailbox",
    provider: "gmail",
    text: [/out of storage space and inactive/i],
  },
  // 421 4.7.0 "Connection expired, try reconnecting" / 451 4.4.2 "Timeout - closing connection".
  {
    id: "gmail-connection-expired",
    class: "routing-error",
    provider: "gmail",
    text: [/connection expired, try reconnecting|timeout - closing connection/i],
  },

  // --- Yahoo / AOL ---------------------------------------------------------------------------
  // [TS02] "unusual traffic patterns from your server": KumoMTA cuts the rate (providers.md §3.5).
  { id: "yahoo-ts02", class: "rate-limited", provider: "yahoo", text: [/\[TS02\]/] },
  // [GL01] "Message from <ip> temporarily deferred": volume-based deferral.
  { id: "yahoo-gl01", class: "rate-limited", provider: "yahoo", text: [/\[GL0\d\]/] },
  // [TSS04]/[TS04]/[IPTS04] "temporarily deferred due to unexpected volume or user complaints",
  // [TSS05]/[IPTS05], [TS01] complaints, [TS03] and 553 5.7.2 [TSS09]/[TSS11] "permanently
  // deferred": reputation deferrals and blocks (Yahoo's own KumoMTA rule suspends the IP for 2 h).
  { id: "yahoo-ts", class: "reputation-block", provider: "yahoo", text: [/\[(?:TSS?|IPTS)\d\d\]/] },
  // 553 5.7.1 [BL21]/[BL23]: the IP is on a Spamhaus list.
  { id: "yahoo-bl", class: "reputation-block", provider: "yahoo", text: [/\[BL\d\d\]/] },
  // 554 "Message not allowed - [PH01] Email not accepted for policy reasons": PH* are content codes.
  { id: "yahoo-ph", class: "spam-content", provider: "yahoo", text: [/\[PH\d\d\]/] },
  // 421 "Message from <ip> temporarily deferred - 4.16.50" (older Yahoo volume deferral).
  { id: "yahoo-deferred-4.16", class: "rate-limited", provider: "yahoo", text: [/temporarily deferred - 4\.16\.\d+/i] },
  // 451/554 "Message temporarily deferred due to unresolvable RFC.5321 from domain": our MAIL FROM
  // domain does not resolve.
  { id: "yahoo-unresolvable-from", class: "policy", provider: "yahoo", text: [/unresolvable rfc\.?\s?5321/i] },
  // 554 "delivery error: dd This user doesn't have a yahoo.com account".
  {
    id: "yahoo-no-account",
    class: "invalid-recipient",
    provider: "yahoo",
    text: [/this user doesn'?t have an? \S+ account/i],
  },
  // 554 "delivery error: dd user@yahoo.com is no longer valid. [-20]".
  { id: "yahoo-no-longer-valid", class: "inactive-mailbox", provider: "yahoo", text: [/\bdd \S+ is no longer valid/i] },
  // 451 "Resources temporarily unavailable. Please try again later [#4.16.1]".
  { id: "yahoo-resources", class: "transient", provider: "yahoo", text: [/\[#4\.16\.\d+\]/] },

  // --- Microsoft (Outlook.com / Exchange Online Protection) ---------------------------------
  // 451 4.7.650 / 4.7.651 "The mail server [ip] has been temporarily rate limited due to IP
  // reputation (S775/S3114)": the cause is reputation, the throttle is the symptom.
  { id: "microsoft-ip-reputation-throttle", class: "reputation-block", provider: "microsoft", enhanced: /^4\.7\.65\d$/ },
  // 550 5.7.1 "Unfortunately, messages from [ip] weren't sent ... part of their network is on our
  // block list (S3150)"; also S3140/AS3150.
  {
    id: "microsoft-network-blocklist",
    class: "reputation-block",
    provider: "microsoft",
    text: [/part of their network is on our block ?list|\((?:A?S)31[45]0\)/i],
  },
  // 550 5.7.606-649 "Access denied, banned sending IP [x]": IP on Microsoft's blocked-senders list.
  {
    id: "microsoft-banned-ip",
    class: "reputation-block",
    provider: "microsoft",
    enhanced: /^5\.7\.(?:60[6-9]|6[1-4]\d)$/,
  },
  {
    id: "microsoft-banned",
    class: "reputation-block",
    provider: "microsoft",
    text: [/banned sending ip|access denied, banned sender|spam abuse detected|customer block ?list|tenant has exceeded threshold|traffic not accepted from this ip/i],
  },
  { id: "microsoft-5.7.5xx-ban", class: "reputation-block", provider: "microsoft", enhanced: /^5\.7\.(?:50[1237]|511|513|7[0-4]\d)$/ },
  // 550 5.7.515 "Access denied, sending domain [D] does not meet the required authentication level".
  { id: "microsoft-5.7.515", class: "auth-failure", provider: "microsoft", enhanced: /^5\.7\.515$/ },
  { id: "microsoft-5.7.509", class: "auth-failure", provider: "microsoft", enhanced: /^5\.7\.509$/ },
  // 421 RP-001/002/003: per-IP rate, per-connection rate and connection limits.
  { id: "microsoft-rp", class: "rate-limited", provider: "microsoft", text: [/\bRP-00\d\b/] },
  // 550 SC-001..004 (policy/reputation, namespace mining, open proxy, complaints), DY-001/002
  // (dynamic or compromised IP), OU-001/002: all IP-level blocks.
  { id: "microsoft-sc-dy-ou", class: "reputation-block", provider: "microsoft", text: [/\b(?:SC|DY|OU)-00\d\b/] },
  // 451 4.7.850-899 "Access denied, please try again later": IP restricted for suspicious activity.
  { id: "microsoft-suspicious-ip", class: "reputation-block", provider: "microsoft", enhanced: /^4\.7\.8[5-9]\d$/ },
  // 451 4.7.500-699 (ASxxx) "Access denied, please try again later" / "Server busy. Please try
  // again later from [ip]": IP throttling when an IP's volume changes against its history.
  { id: "microsoft-ip-throttle", class: "rate-limited", provider: "microsoft", enhanced: /^4\.7\.[56]\d\d$/ },
  {
    id: "microsoft-server-busy-from",
    class: "rate-limited",
    provider: "microsoft",
    text: [/server busy\. please try again later from/i],
  },
  // 550 5.2.121 / 5.2.122 per-hour receive limits, 5.7.508 IPv6 range limits, 4.3.2 recipient
  // thread limit, "submission quota exceeded".
  {
    id: "microsoft-receive-limits",
    class: "rate-limited",
    provider: "microsoft",
    text: [/per hour message receive limit|exceeded permitted limits within|recipient thread limit exceeded|submission quota exceeded|daily limit for message recipients|exceeded their limit for/i],
  },
  { id: "microsoft-5.2.12x", class: "rate-limited", provider: "microsoft", enhanced: /^[45]\.2\.12[12]$/ },
  // "Connection refused from [ip] due to exceed max concurrent connections. IB007"
  { id: "microsoft-ib007", class: "rate-limited", provider: "microsoft", text: [/\bIB007\b/] },
  // 550 5.4.1 "Recipient address rejected: Access denied. AS(201806281)" and 5.7.504: directory-based
  // edge blocking, i.e. the recipient does not exist in the tenant.
  { id: "microsoft-dbeb", class: "invalid-recipient", provider: "microsoft", enhanced: /^5\.(?:4\.1|7\.504)$/, text: [/access denied/i] },
  { id: "microsoft-banned-recipient", class: "inactive-mailbox", provider: "microsoft", text: [/access denied, banned recipient/i] },
  // 550 5.1.10 "RESOLVER.ADR.RecipientNotFound" (Exchange uses 5.1.10 here, not for null MX).
  {
    id: "microsoft-resolver-not-found",
    class: "invalid-recipient",
    provider: "microsoft",
    text: [/resolver\.adr\.(?:ex)?recip(?:ient)?notfound|recipient not found by smtp address lookup/i],
  },
  { id: "microsoft-nonexistent-domain", class: "bad-domain", provider: "microsoft", text: [/smtpsend\.dns\.nonexistentdomain/i] },
  { id: "microsoft-bad-helo", class: "policy", provider: "microsoft", text: [/access denied, bad helo/i] },
  { id: "microsoft-no-ipv6", class: "policy", provider: "microsoft", text: [/does not accept e?mail over ipv6/i] },
  { id: "microsoft-unregistered-domains", class: "policy", provider: "microsoft", text: [/unregistered domains/i] },
  { id: "microsoft-suspicious-remote", class: "routing-error", provider: "microsoft", text: [/suspiciousremoteservererror/i] },
  { id: "microsoft-pfa-busy", class: "transient", provider: "microsoft", text: [/pfa agent busy/i] },
  { id: "microsoft-quarantined", class: "spam-content", provider: "microsoft", text: [/content filter agent quarantined/i] },

  // --- Apple iCloud -------------------------------------------------------------------------
  // [CS01]/[CS02] "Message rejected due to local policy": Cloudmark content/spam filtering.
  { id: "apple-cs", class: "spam-content", provider: "apple", text: [/\[CS0\d\]/] },
  // [HM07]/[HM08] "Message rejected due to local policy": sender/IP reputation.
  { id: "apple-hm", class: "reputation-block", provider: "apple", text: [/\[HM\d\d\]/] },
  // 421 [HCM1] "Your mail from x was deferred" (KumoMTA community rule suspends 15 min).
  { id: "apple-hcm", class: "rate-limited", provider: "apple", text: [/\[HCM\d\]/] },
  // 451 [BS02] "Temporary server error".
  { id: "apple-bs", class: "transient", provider: "apple", text: [/\[BS\d\d\]/] },

  // --- Comcast, Orange, QQ / NetEase --------------------------------------------------------
  { id: "comcast-rl", class: "rate-limited", provider: "comcast", text: [/\bRL0\d{4,6}\b/] },
  { id: "comcast-bl", class: "reputation-block", provider: "comcast", text: [/\bBL0\d{4,6}\b/] },
  // 421 "Trop de connexions ... Too many connections, slow down. OFR004_104"; 421 "Service refuse.
  // Veuillez essayer plus tard ... OFR004_105" (soft block: slow down and retry).
  { id: "orange-connections", class: "rate-limited", provider: "orange", text: [/trop de connexions/i] },
  { id: "orange-service-refused", class: "rate-limited", provider: "orange", code: /^4/, text: [/service refus[eé]/i] },
  { id: "qq-frequency", class: "rate-limited", provider: "qq", text: [/frequency limited/i] },
  { id: "qq-content", class: "spam-content", provider: "qq", text: [/mail content denied/i] },
  { id: "netease-spam", class: "spam-content", provider: "netease", text: [/\bDT:SPM\b/] },
  { id: "netease-rbl", class: "reputation-block", provider: "netease", text: [/\b(?:DT:RBL|HL:REP|HL:MEP|HL:IPB)\b/] },
  { id: "netease-limits", class: "rate-limited", provider: "netease", text: [/\b(?:RP|HL|MI):[A-Z]{3}\b/] },

  // --- B2B gateways -------------------------------------------------------------------------
  // Mimecast 451 "Internal resource(s) temporarily unavailable": greylisting (or poor reputation).
  {
    id: "mimecast-greylist",
    class: "greylisted",
    provider: "mimecast",
    code: /^4/,
    text: [/internal resources? (?:are )?temporarily unavailable/i],
  },
  { id: "mimecast-ip-reputation", class: "reputation-block", provider: "mimecast", text: [/local ct ip reputation/i] },
  { id: "mimecast-account-concurrency", class: "rate-limited", provider: "mimecast", text: [/account service is temporarily unavailable/i] },
  {
    id: "mimecast-policy",
    class: "policy",
    provider: "mimecast",
    text: [/sender address blocked|anti-spoofing policy|content examination policy|host network,? not allowed|envelope blocked|hostname is not authori[sz]ed|account (?:in|out)bounds disabled/i],
  },
  { id: "mimecast-busy", class: "transient", provider: "mimecast", text: [/unable to process (?:connection|command|an email) at this time/i] },
  // Proofpoint "554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=x".
  {
    id: "proofpoint-ip-block",
    class: "reputation-block",
    provider: "proofpoint",
    text: [/ipcheck\.proofpoint\.com|proofpoint\.com\/dnsbl-lookup/i],
  },
  // Barracuda "blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/?..."
  {
    id: "barracuda-brbl",
    class: "reputation-block",
    provider: "barracuda",
    text: [/barracuda ?(?:reputation|central)|barracudacentral\.org|barracudanetworks\.com\/reputation/i],
  },
  // Barracuda appliance "550 permanent failure for one or more recipients (x:blocked)": the
  // message scored as spam.
  { id: "barracuda-blocked", class: "spam-content", provider: "barracuda", text: [/permanent failure for one or more recipients \([^)]*:blocked\)/i] },
  // Cisco Secure Email (IronPort) HAT reject for a poor SenderBase/Talos score.
  {
    id: "cisco-hat-reject",
    class: "reputation-block",
    provider: "cisco",
    text: [/your access to (?:this|submit messages to this) (?:e-?)?mail system has been rejected|senderbase|talosintelligence/i],
  },
];
