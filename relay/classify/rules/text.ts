// Generic text rules: phrases whose meaning does not depend on who sent them. Ordered so that the
// cause wins over the symptom when a reply mentions both (see rules/index.ts for the full order):
//   greylisting > message format > authentication > TLS > reputation/blocklists > spam content >
//   rate limits > mailbox full > size > inactive > sender policy > bad domain >
//   unknown recipient > routing > relay/policy > protocol > temporary conditions.
// e.g. Gmail "421 4.7.26 ... rate limited because it is unauthenticated" is auth-failure, not
// rate-limited; "451 4.7.650 ... rate limited due to IP reputation" is reputation-block;
// "554 5.7.1 Client host blocked using zen.spamhaus.org" is reputation-block, not spam-content.
//
// Phrases collected from: providers.md §2, sisimai lib/sisimai/reason/*.rb (userunknown,
// mailboxfull, hostunknown, ratelimited, toomanyconn, badreputation, blocked, spamdetected,
// authfailure, norelaying, networkerror, policyviolation, suspend, mesgtoobig, rejected,
// securityerror, systemerror), KumoMTA assets/community/bounces.toml, PHP-Bounce-Handler
// bounce_responses.php, Postfix/Exim/Sendmail/qmail reply texts.
import type { Rule } from "../types.ts";

const TEMP = /^(?:4|$)/; // temporary replies, or text with no code at all

export const TEXT_RULES: readonly Rule[] = [
  // --- greylisting --------------------------------------------------------------------------
  {
    id: "greylisted",
    class: "greylisted",
    code: TEMP,
    text: [/gr[ae]y-?list(?:ed|ing)?\b|postgrey|come back (?:later|in \d)|is not yet authori[sz]ed to deliver mail/i],
  },
  // A bare "451 4.7.1 Please try again later" (rspamd, postgrey-style policy servers) with nothing
  // else said is the classic greylisting reply; any other wording falls to the transient rules.
  {
    id: "greylisted-try-later",
    class: "greylisted",
    code: /^45[01]$/,
    enhanced: /^(?:|4\.7\.\d+|4\.2\.0)$/,
    text: [/^(?:<[^>]*>:?\s*)?(?:recipient address rejected:\s*)?(?:please\s+)?(?:try|retry)(?:\s+again)?\s+later[.!]?(?:\s*\(\w+\))?$/i],
  },

  // --- message format (RFC 5322 violations): before authentication ("Duplicate header
  // 'DKIM-Signature'") and spam (Gmail adds "to reduce the amount of spam sent to Gmail") ---
  {
    id: "message-format",
    class: "protocol-error",
    text: [
      /rfc ?(?:5322|2822|822)(?![;\w])|not rfc compliant|missing (?:a valid |the )?(?:address in )?(?:from|message-id|date)\b|multiple addresses in from|duplicate headers?|encoded-word syntax|disallowed header|(?:blank|empty|missing|invalid) from:? (?:address|header|domain)|not allowed as a from|provide a valid from|from: domain is invalid|mail message is malformed|malformed (?:message|header|mime)|bare (?:lf|<lf>|line ?feeds?|cr)\b|barelinefeeds|invalid characters/i,
    ],
    unless: [/aligned|alignment/i],
  },

  // --- authentication: SPF, DKIM, DMARC, sender PTR ----------------------------------------
  {
    id: "auth-dmarc",
    class: "auth-failure",
    text: [/\bdmarc\b/i],
  },
  {
    id: "auth-spf-dkim",
    class: "auth-failure",
    text: [/\bspf\b|sender policy framework|\bdkim\b|domainkeys/i],
  },
  {
    id: "auth-unauthenticated",
    class: "auth-failure",
    text: [
      /sender is unauthenticated|unauthenticated (?:e-?mail|mail|message|sender)s? (?:from|is|are)|authenticate with (?:either )?(?:spf|dkim)|(?:fails?|failed) to pass (?:spf|dkim|authentication) checks?|does not have authentication information|required authentication level|not aligned with|domain alignment|compauth=fail|authentication-results: .*\bfail\b/i,
    ],
  },
  {
    id: "auth-ptr",
    class: "auth-failure",
    text: [
      /\bptr\b|reverse (?:dns|hostname|lookup|dns lookup|name)|\brdns\b|fcrdns|cannot find your (?:reverse )?hostname|client host rejected: cannot find|ip name lookup failed|cannot resolve your address|no reverse|reverse-dns|forward dns entry does not point/i,
    ],
  },

  // --- TLS ----------------------------------------------------------------------------------
  {
    id: "tls-handshake",
    class: "routing-error",
    text: [/tls handshake|handshake fail|ssl routines|certificate verify failed|tls negotiation failed|cannot start tls/i],
  },
  {
    id: "tls-required",
    class: "policy",
    text: [
      /\b(?:starttls|tls|ssl)\b.{0,40}\b(?:required|first|needed|must|mandatory)\b|(?:requires?|must use|must issue|not using) (?:a )?(?:starttls|tls|ssl|encryption|secure connection)|encryption (?:is )?(?:required|needed)|requires? encryption|(?:dane|mta-sts)\b|tlsa-invalid|dnssec-invalid|certificate-(?:host-mismatch|expired)|must support tls|(?:senders to )?use tls|(?:over|using|use) (?:a )?(?:tls|ssl|secure) connection/i,
    ],
  },

  // --- reputation and blocklists ------------------------------------------------------------
  {
    id: "reputation",
    class: "reputation-block",
    text: [
      /reputation|sender ?score|spamhaus|spamcop|\bsorbs\b|barracuda|cloudmark|abuseat|\bcbl\b|\bpsbl\b|uceprotect|mailspike|ivmsip|\bsurbl\b|\buribl\b|\bdnsbl\b|\brbl\b|\bdbl\b|black ?list(?:ed)?|block ?list(?:ed|ing)?|blocked using (?!spam pattern)|listed (?:at|on|in|by)|is listed|on our (?:block|black) ?list|banned (?:ip|sending|sender|network|host)|\b(?:ip|host|network|server)\b(?: address)?[^.;]{0,30}?\b(?:has been|is|was|are|been)\s+(?:\w+\s+)?(?:blocked|banned|blacklisted|blocklisted)|\d{1,3}(?:\.\d{1,3}){3}\]?\)? (?:has been|is|was) (?:\w+ )?(?:blocked|banned|blacklisted|blocklisted)|\b(?:ip|host|network|server)(?: address)? \S+ (?:blocked|banned|blacklisted|blocklisted)\b|(?:dynamic|residential|dial-?up|dsl|cable) ip|dynamic(?:ally assigned)? (?:ip|address|range)|hosts with dynamic ip|generic (?:dns|ptr|hostname)|open (?:proxy|relay) (?:detected|listed)|rejecting open proxy|poor reputation|bad reputation|invalid ip for sending|client host (?:\[[^\]]*\] )?rejected: access denied|user complaints|too many complaints|complaint rate/i,
    ],
    unless: [/\burl\b|\blinks?\b|in (?:the |your )?message body|contained in the message|directory|allow ?list|white ?list|allowed senders/i],
  },

  // --- spam or malicious content ------------------------------------------------------------
  {
    id: "spam-content",
    class: "spam-content",
    text: [
      /(?<!\b(?:from|of|against) )\bspam\b|spamm(?:er|ing)|probability of (?:being )?spam|spam-like|unsolicited|\bube\b|bulk (?:e-?)?mail|junk ?mail|\bjunk\b|virus|malware|malicious|phish|trojan|infected|eicar|content (?:rejected|filter|denied|restrictions)|message content|rejecting (?:banned|mail) content|(?:illegal|prohibited|banned|blocked|dangerous|unsafe|executable) (?:attachment|file|content)|attachment (?:type |extension |file )?(?:is |are )?(?:not allowed|rejected|blocked|forbidden|prohibited)|potential security issue|suspicious (?:content|link|url|message)|message (?:looks|seems|appears) (?:like|to be)|scored (?:as|too high)|\bscore\b.{0,20}\b(?:exceed|too high|threshold)|spamassassin|rspamd|mail score|message ?scoring|url (?:in|within) (?:the |this )?(?:message|email)|(?:url|link)s? (?:is |are )?(?:listed|blocked|blacklisted)|uribl|surbl|message filtered/i,
    ],
  },

  // --- rate limits --------------------------------------------------------------------------
  {
    id: "rate-limited",
    class: "rate-limited",
    text: [
      /rate[- ]?limit|too many (?:bad commands|open connections|connections|concurrent|login attempts|auth(?:entication)? attempts|simultaneous|sessions|smtp sessions|recipients|rcpt|messages|mails?|emails?|errors|invalid recipients|hosts|requests|transactions|commands)|too much (?:mail|email|traffic)|(?:receiving|sending|sent) (?:e?mail |messages )?(?:too (?:quickly|fast)|at a rate)|too (?:fast|quickly)|slow down|try again slower|throttl|frequency limit|(?:connection|concurrency|session|message|sending|recipient|hourly|daily)(?: rate)? limit (?:exceeded|reached)|(?:exceeded|reached|exceeds) (?:the |your |its |our )?(?:\w+ )?(?:connection|concurrency|session|sending|message|rate|recipient|hourly|daily|per-?\w+)(?: rate)? limits?|(?:maximum|max)(?: number of)? (?:connections|concurrent|messages? per|message per|recipients|rcpts|sessions|emails? per)|per[- ](?:hour|day|minute|second|connection|session) (?:limit|quota)|(?:sending|message|daily|hourly|outbound) quota|quota (?:for sending|of messages)|excessive (?:volume|traffic|connections|messages)|unexpected volume|unusual (?:traffic|volume)|volume (?:limit|of mail)|deferred due to (?:excessive|high) volume|received too many messages|(?:message|sending|connection|recipient|volume|rate) threshold (?:exceeded|reached)|exceed(?:ed|s)? max concurrent|resources? exhausted for this (?:ip|client)/i,
    ],
    unless: [/too many messages (?:on the server|in (?:the |their |this )?(?:mailbox|folder))|(?:message|mail|email)s? (?:size|length)|size limit|too large/i],
  },

  // --- mailbox full -------------------------------------------------------------------------
  {
    id: "mailbox-full",
    class: "mailbox-full",
    text: [
      /mailbox (?:is )?full|full mailbox|mail ?box (?:has )?exceeded|mailbox size limit|mailfolder is full|inbox is full|over (?:the )?(?:allowed )?quota|overquota|quota (?:exceeded|violation|usage exceeded)|exceeded (?:its |their |the )?(?:\w+ )?quota|(?:disk|storage|mailbox|mail|user|account|maildir) quota|out of (?:storage|disk) space|(?:not enough|insufficient) (?:storage|disk) space|exceeded storage allocation|storage (?:allocation|limit) exceeded|user has too many messages|has exhausted allowed storage|exceeds allowed size|boite (?:du destinataire )?pleine|postfach voll|casella piena|user has exceeded|mailbox limit|(?:account |mailbox )?storage (?:limit|quota)/i,
    ],
    unless: [/insufficient system storage/i],
  },

  // --- message too large --------------------------------------------------------------------
  {
    id: "message-too-large",
    class: "message-too-large",
    text: [
      /too (?:big|large)|(?:message|mail|email|data|file) (?:size|length) (?:exceeds|exceeded|too|limit|is (?:too|larger|over))|size (?:limit|exceeds|exceeded)|maximum (?:e-?mail |message |allowed |data )?size|exceeds? (?:the )?(?:\w+ )?(?:size|length) limit|(?:message|email) (?:is )?larger than|number of attachments|bytes per individual header|header (?:size|length)|message size/i,
    ],
  },

  // --- inactive / disabled mailbox ----------------------------------------------------------
  {
    id: "inactive-mailbox",
    class: "inactive-mailbox",
    text: [
      /\b(?:account|mailbox|mail ?box|user|address|recipient|e-?mail)\b[^.;,]{0,40}\b(?:is |has been |was )?(?:disabled|deactivated|suspended|inactive|frozen|locked|expired|closed|archived|dormant|not active|no longer active|blocked due to inactivity)\b|\b(?:disabled|inactive|suspended|deactivated|dormant|closed|expired|locked) (?:account|mailbox|user|recipient|address)\b|user suspended|suspend(?:ed)? the service|temporar(?:y|ily) locked|not (?:currently )?(?:being )?accepted for this mailbox|is no longer valid|account (?:is )?not (?:activated|active)/i,
    ],
    unless: [/(?:your|sender|sending) (?:account|address)|domain|\bip\b/i],
  },

  // --- sender policy (before domain and recipient rules: "Sender address rejected: Domain not
  // found" is about our MAIL FROM, not the recipient) --------------------------------------
  {
    id: "sender-rejected",
    class: "policy",
    text: [
      /sender (?:address |domain )?(?:rejected|denied|invalid|blocked|refused|not (?:allowed|authori[sz]ed|permitted|accepted))|sender verif(?:y|ication) (?:failed|failure)|verification failed for|could not verify sender|domain of sender (?:address )?|sender domain (?:must|does not|not found|resolve)|envelope sender|(?:invalid|bad|unknown|unverified) sender|mail from (?:address )?(?:rejected|refused|denied|not allowed)|null sender|empty envelope sender|fully qualified (?:sender|email address) required|returned mail not accepted|batv|backscatter|unrouteable sender|sender is spammer|not a registered gateway user|sender address .{0,60}not a valid/i,
    ],
  },

  // --- bad domain ---------------------------------------------------------------------------
  {
    id: "bad-domain",
    class: "bad-domain",
    text: [
      /(?:recipient |mail |e-?mail )?domain (?:name )?(?:not found|does not exist|doesn'?t exist|is not reachable|must exist|lookup failed|unknown)|no such domain|unknown (?:recipient )?domain|host (?:or domain name )?(?:not found|unknown)|unknown host|(?:null|no) mx\b|no mx (?:record|host)|domain does not accept mail|does not accept mail|unrouteable (?:mail )?(?:domain|address)|couldn'?t find any host|name or service not known|nxdomain|able to find the recipient domain|dns error|no valid mx|mx (?:record )?(?:lookup )?fail/i,
    ],
    unless: [/try again|servfail|temporar|helo|client host|sender|\b(?:invalid|unknown) (?:account|user|mailbox|recipient)\b/i],
  },

  // --- unknown recipient --------------------------------------------------------------------
  {
    id: "invalid-recipient",
    class: "invalid-recipient",
    text: [
      /user(?:name)? unknown|unknown (?:user|recipient|mailbox|address|local ?part|e-?mail|account|alias|or illegal)|no such (?:user|mailbox|recipient|address|person|account|e-?mail|local user)|(?:user|mailbox|recipient|address|account|e-?mail(?: address)?|person|addressee)\b[^.;]{0,40}\b(?:does not|doesn'?t|do not|did not) exist|does not exist|not exists?\b|(?:user|mailbox|recipient|address|account|e-?mail) (?:was )?not found|unknown in (?:local recipient|virtual (?:mailbox|alias)|relay recipient)|invalid (?:recipient|mailbox|address|user|account|e-?mail address)|(?:is )?not a (?:valid|known) (?:user|mailbox|recipient|address|e-?mail)|recipient address rejected: (?:access denied|undeliverable|invalid|unknown|user)|undeliverable address|address (?:rejected|invalid|unknown)|bad (?:destination )?(?:mailbox|address|recipient)|no (?:mail ?box|account) (?:here|by that name|available|found)|not our customer|recipient (?:unrecogni[sz]ed|rejected|not (?:valid|allowed|accepted|ok|local))|unrecogni[sz]ed recipient|i cannot deliver mail for|no longer accepts mail|mailbox not present|addressee unknown|mailbox name (?:not allowed|invalid)|utilisateur inconnu|destinatario (?:sconosciuto|errato|inesistente)|benutzer unbekannt|no existe|user not local|unable to find alias|no valid recipients|not listed in (?:domino|public) directory|address syntax|recipient address .{0,60}not a valid/i,
    ],
    unless: [/sender/i],
  },
  // RFC 5321's 550 text "Requested action not taken: mailbox unavailable" (Outlook.com, GMX) means
  // the mailbox does not exist; the same words on a 450 are its "mailbox busy" reply.
  {
    id: "invalid-recipient-unavailable",
    class: "invalid-recipient",
    code: /^(?:5|$)/,
    text: [/(?:mailbox|recipient|account) (?:is )?(?:currently )?unavailable/i],
    unless: [/sender|temporar/i],
  },

  // --- routing and connection problems ------------------------------------------------------
  {
    id: "routing-dns-temporary",
    class: "routing-error",
    text: [/host not found, try again|name service error.*try again|temporary (?:dns|lookup) failure|temporary failure in name resolution|servfail|dns (?:lookup )?(?:timeout|timed out|temporary)/i],
  },
  {
    id: "routing",
    class: "routing-error",
    text: [
      /\bloops?\b|mail ?loop|looping|too many hops|hop count|no route to host|(?:network|host) is unreachable|unreachable|connection (?:refused|timed out|reset|dropped|closed|lost|failed|expired)|lost connection|timed? ?out|timeout|(?:could|can)(?:not|'t) connect|(?:unable|failed) to connect|no answer from|not responding|unable to route|no route|routing error|delivery time expired|message (?:has )?expired|queue expired|expired in queue|too long in (?:the )?queue|in the queue too long|(?:establish|open) (?:an )?smtp connection|retry time(?:out)? exceeded|retry timeout|maximum delivery (?:time|attempts)|could not be delivered within|numerous attempts|all mx hosts|mx (?:host )?(?:is )?(?:unavailable|misconfigured|points)|smtp (?:transaction|conversation) (?:failed|aborted)|remote server (?:closed|disconnected)|broken pipe|incorrect hostname used for inbound/i,
    ],
  },

  // --- relaying and other receiver policy ---------------------------------------------------
  {
    id: "relay-denied",
    class: "policy",
    text: [
      /relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited|refused)|(?:unable|not allowed|attempt) to relay|we do not relay|open relay|allowed rcpthosts|not configured to relay|relay (?:access|not)|authentication (?:is )?required|requires? authentication|(?:isn'?t|not) allowed to relay|(?:must|please) authenticate|smtp auth|client was not authenticated|not authenticated to send|submitter failed to authenticate|credentials (?:invalid|for relay)|invalid credentials|username and password not accepted|mail relay denied/i,
    ],
  },
  {
    id: "policy",
    class: "policy",
    text: [
      /polic(?:y|ies)|prohibit|not authori[sz]ed|unauthori[sz]ed|not permitted|administrative(?:ly)? (?:prohibit|denied|restrict)|delivery not authorized|restricted|not allowed to (?:send|deliver|receive)|only accepts? mail from|members[- ]only|not accepting (?:mail|messages) from|helo command rejected|bad helo|helo (?:name|hostname) (?:rejected|invalid|required)|blocked senders?|envelope rejected|access denied|you are not allowed|no (?:external|outside) (?:mail|senders)|does not accept (?:mail|messages) from/i,
    ],
  },

  // --- protocol and message syntax ----------------------------------------------------------
  {
    id: "protocol",
    class: "protocol-error",
    text: [
      /syntax|bad sequence|out of sequence|command (?:not )?(?:recogni[sz]ed|unrecognized|understood|implemented)|unrecogni[sz]ed command|unknown command|not implemented|invalid command|line too long|bare (?:lf|<lf>|line ?feed|cr)|invalid characters|pipelining|need (?:rcpt|mail|helo|ehlo|data)|(?:mail|rcpt|helo|ehlo) first|send hello first|no data after bdat|rfc ?(?:5322|5321|2822|822)|not rfc compliant|malformed|missing (?:a valid |the )?(?:from|message-id|date|to)\b|multiple addresses in from|duplicate headers?|invalid header|header error|headers? (?:are|is) (?:not|invalid)|encoded-word syntax|disallowed header|(?:blank|empty|missing|invalid) from:? (?:address|header|domain)|not allowed as a from|provide a valid from|from: domain is invalid|8-?bit (?:data|mime|characters)|smtputf8|non-ascii|protocol (?:error|violation)|argument (?:not permitted|invalid|is invalid)|invalid (?:argument|parameter)s?|parameters? (?:not )?(?:recogni[sz]ed|supported|invalid)/i,
    ],
  },

  // --- temporary conditions at the receiver (only for 4xx or code-less text) -----------------
  {
    id: "transient",
    class: "transient",
    code: TEMP,
    text: [
      /temporar(?:y|ily)|try (?:again )?later|please retry|retry later|busy|overload|load (?:is )?too high|resources? (?:temporarily )?unavailable|insufficient (?:system )?(?:storage|resources)|service (?:not )?(?:temporarily )?(?:available|unavailable)|local (?:error|problem)|internal (?:server )?error|(?:system|server) (?:error|problem)|deferred|shutting down|maintenance|has been delayed|will be retried|not accepting (?:network )?messages|queue file write error/i,
    ],
  },
];
