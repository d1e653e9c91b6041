// classifyDeliveryError: failures the relay itself meets before or instead of a reply (DNS, TCP,
// TLS, null MX), plus errors that carry a remote reply (nodemailer's responseCode/response).
//
// Local failures have no reply code, so each kind gets the code and enhanced status a DSN for it
// would carry (as Postfix does: connection refused -> 4.4.1, DNS server failure -> 4.4.3, null MX
// -> 556 5.1.10 per RFC 7505). That keeps the invariant of classifyReply: permanent exactly when
// the code is 5xx. Only authoritative "this domain takes no mail" answers are permanent.
import { classifyReply, decide } from "./classify-reply.ts";
import { parseReply } from "./parse-reply.ts";
import { detectProvider } from "./providers.ts";
import type { ReplyClass, ReplyClassification } from "./types.ts";

export interface DeliveryError {
  /** Node or nodemailer error code: ECONNREFUSED, ETIMEDOUT, ENOTFOUND, ESERVFAIL, ETLS, ... */
  code?: string;
  message: string;
  /** SMTP reply code when the error carries a remote reply. */
  responseCode?: number | string;
  /** The remote reply text (nodemailer puts the whole reply here). */
  response?: string;
}

interface LocalKind {
  id: string;
  class: ReplyClass;
  code: string;
  enhanced: string;
  errCodes?: RegExp;
  message?: RegExp;
}

// Tried in order; the first whose error code or message matches decides.
const LOCAL_KINDS: readonly LocalKind[] = [
  {
    id: "local-null-mx",
    class: "bad-domain",
    code: "556",
    enhanced: "5.1.10",
    errCodes: /^E?NULL_?MX$/i,
    message: /null mx/i,
  },
  {
    // NXDOMAIN, or the domain exists with neither MX nor address records (RFC 5321 §5.1).
    id: "local-nxdomain",
    class: "bad-domain",
    code: "550",
    enhanced: "5.1.2",
    errCodes: /^(?:ENOTFOUND|NXDOMAIN|ENODATA|EAI_NONAME|ENONAME|EBADNAME|ENOMX)$/i,
    message: /nxdomain|no such domain|domain (?:name )?not found|host (?:or domain name )?not found|no mx (?:or a |or address )?records?/i,
  },
  {
    id: "local-dns-temporary",
    class: "routing-error",
    code: "451",
    enhanced: "4.4.3",
    errCodes: /^(?:ESERVFAIL|SERVFAIL|EAI_AGAIN|ETIMEOUT|EREFUSED|EBADRESP|EFORMERR|ECONNREFUSED_DNS|EDNS)$/i,
    message: /servfail|dns (?:lookup )?(?:failed|timeout|timed out|error)|temporary failure in name resolution/i,
  },
  {
    id: "local-tls",
    class: "routing-error",
    code: "421",
    enhanced: "4.7.5",
    errCodes: /^(?:ETLS|ERR_SSL_\w+|ERR_TLS_\w+|CERT_\w+|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_\w+|ERR_OSSL_\w+|EPROTO)$/i,
    message: /\btls\b|\bssl\b|handshake|certificate/i,
  },
  {
    id: "local-loop",
    class: "routing-error",
    code: "554",
    enhanced: "5.4.6",
    errCodes: /^ELOOP$/i,
    message: /loops? back to myself|mail loop|routing loop/i,
  },
  {
    id: "local-connection",
    class: "routing-error",
    code: "421",
    enhanced: "4.4.1",
    errCodes: /^(?:ECONNREFUSED|ECONNRESET|ECONNABORTED|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EHOSTDOWN|ENETDOWN|EPIPE|ESOCKET|ECONNECTION|EADDRNOTAVAIL|ECONNCLOSED)$/i,
    message: /connection (?:refused|reset|timed out|closed)|timed? ?out|unreachable|socket|no route/i,
  },
  { id: "local-protocol", class: "protocol-error", code: "421", enhanced: "4.5.0", errCodes: /^(?:EPROTOCOL|EENVELOPE|EMESSAGE)$/i },
  { id: "local-auth", class: "policy", code: "530", enhanced: "5.7.0", errCodes: /^EAUTH$/i },
];

export function classifyDeliveryError(err: DeliveryError): ReplyClassification {
  if (!err || typeof err !== "object") throw new TypeError("classifyDeliveryError: err must be an object with a message");
  const message = String(err.message ?? "");
  const response = typeof err.response === "string" ? err.response.trim() : "";
  const responseCode = err.responseCode === undefined ? "" : String(err.responseCode);

  // A remote reply wins: the receiver said what went wrong.
  if (response || /^[2-5]\d\d$/.test(responseCode)) {
    const text = response || message;
    const reply = responseCode && !text.startsWith(responseCode) ? `${responseCode} ${text}` : text;
    return classifyReply(reply);
  }

  const code = String(err.code ?? "");
  const kind =
    LOCAL_KINDS.find((k) => code && k.errCodes?.test(code)) ?? LOCAL_KINDS.find((k) => k.message?.test(message));
  // An error without response fields whose message quotes a reply ("Message failed: 550 5.1.1 ...").
  const quoted = parseReply(message);
  if (quoted.code && !kind?.errCodes?.test(code)) return classifyReply(message);

  if (kind) {
    const provider = detectProvider(message);
    return {
      class: kind.class,
      permanent: kind.code.startsWith("5"),
      code: kind.code,
      enhanced: kind.enhanced,
      ...(provider ? { provider } : {}),
      rule: kind.id,
    };
  }

  // Unknown local error: read its words as a temporary failure on our side.
  const d = decide({ ...quoted, code: "" }, "4");
  return {
    class: d.class,
    permanent: false,
    code: "",
    ...(quoted.enhanced ? { enhanced: quoted.enhanced } : {}),
    ...(d.provider ? { provider: d.provider } : {}),
    rule: d.rule === "fallback-4xx" ? "local-unknown" : d.rule,
  };
}
