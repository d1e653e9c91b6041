// What the relay adds to (and removes from) a submitted header before signing. Pure: header bytes
// and settings in, header bytes out.
//
// Submission headers (documented in relay/README.md), read and then removed from the stored
// message so customer-internal ids do not reach recipients:
//   X-Campaign-ID, X-Customer-ID, X-Mail-Type   -> Feedback-ID: <campaign>:<customer>:<type>:<senderId>
// Also removed: Bcc (RFC 5322 3.6.3: must not reach the To/Cc recipients), Return-Path (the final
// MTA writes it), and, when the domain's List-Unsubscribe mode is not None, the client's own
// List-Unsubscribe fields (ours replace them). Added when missing: Message-ID, Date.
import type { DomainPlan } from "../../api/plan.ts";
import { parseHeaders, type ParsedHeader, type ParsedHeaders } from "./mailauth.ts";
import { unsubscribeToken } from "./unsubscribe.ts";

export const SUBMISSION_HEADERS = ["x-campaign-id", "x-customer-id", "x-mail-type"];
const ALWAYS_REMOVED = new Set(["bcc", "return-path", ...SUBMISSION_HEADERS]);
const LIST_FIELDS = new Set(["list-unsubscribe", "list-unsubscribe-post"]);

/** A field's value: unfolded, trimmed. */
export function fieldValue(h: ParsedHeader): string {
  const line = h.line.toString("latin1");
  const colon = line.indexOf(":");
  return line.slice(colon + 1).replace(/\r\n/g, "").trim();
}

export function findFields(parsed: ParsedHeaders, key: string): ParsedHeader[] {
  return parsed.parsed.filter((h) => h.key === key);
}

/** Feedback-ID parts: Gmail splits on ':', so keep each part to a safe token. */
function fbPart(v: string | undefined): string {
  return (v ?? "").replace(/[^A-Za-z0-9._-]/g, "").slice(0, 64);
}

/** RFC 5322 date-time in UTC. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, "+0000");
}

export interface ComposeInput {
  parsed: ParsedHeaders;
  domain: DomainPlan;
  qid: string;
  nowMs: number;
  /** The one recipient this copy is for (OneClick with a token), if any. */
  rcpt?: string;
  /** The unsubscribe token key; without it OneClick falls back to Mailto, or no header. */
  unsubscribeKey?: Buffer;
}

export interface Composed {
  header: Buffer;
  parsed: ParsedHeaders;
  /** Whether a one-click header naming `rcpt` was added. */
  oneClick: boolean;
  messageId: string;
}

/** Feedback-ID value from submission headers, or undefined when the domain sets no sender id. */
export function feedbackId(parsed: ParsedHeaders, senderId: string | null): string | undefined {
  if (!senderId) return undefined;
  const get = (k: string) => { const f = findFields(parsed, k)[0]; return f ? fieldValue(f) : undefined; };
  return `${fbPart(get("x-campaign-id"))}:${fbPart(get("x-customer-id"))}:${fbPart(get("x-mail-type"))}:${fbPart(senderId)}`;
}

export function composeHeader(input: ComposeInput): Composed {
  const { parsed, domain, qid, nowMs } = input;
  const lu = domain.listUnsubscribe;
  const replaceList = lu.mode !== "None";
  const added: string[] = [];
  const fb = feedbackId(parsed, domain.feedbackIdSender);
  if (fb) added.push(`Feedback-ID: ${fb}`);

  let messageId = "";
  const mid = findFields(parsed, "message-id")[0];
  if (mid) messageId = fieldValue(mid);
  else {
    messageId = `<${qid}.${nowMs.toString(36)}@${domain.domain}>`;
    added.push(`Message-ID: ${messageId}`);
  }
  if (!findFields(parsed, "date").length) added.push(`Date: ${rfc5322Date(nowMs)}`);

  let oneClick = false;
  const mailto = lu.mailto ? `<mailto:${lu.mailto}?subject=unsubscribe>` : undefined;
  if (lu.mode === "OneClick" && lu.url && input.rcpt && input.unsubscribeKey) {
    const token = unsubscribeToken(input.unsubscribeKey, domain.domain, input.rcpt, qid);
    const url = lu.url.includes("{token}") ? lu.url.replaceAll("{token}", token) : `${lu.url}${lu.url.includes("?") ? "&" : "?"}t=${token}`;
    added.push(`List-Unsubscribe: <${url}>${mailto ? `, ${mailto}` : ""}`, "List-Unsubscribe-Post: List-Unsubscribe=One-Click");
    oneClick = true;
  } else if (replaceList && mailto) {
    // Mailto mode, or OneClick without a token key: the mailto form still lets recipients leave.
    added.push(`List-Unsubscribe: ${mailto}`);
  }

  const kept = parsed.parsed.filter((h) => !(h.key && (ALWAYS_REMOVED.has(h.key) || (replaceList && LIST_FIELDS.has(h.key)) || (fb && h.key === "feedback-id"))));
  const chunks: Buffer[] = [];
  for (const h of kept) chunks.push(h.line, Buffer.from("\r\n"));
  for (const a of added) chunks.push(Buffer.from(a + "\r\n", "latin1"));
  const header = Buffer.concat(chunks);
  return { header, parsed: parseHeaders(header), oneClick, messageId };
}
