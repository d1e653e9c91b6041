// parseArf: an RFC 5965 feedback report (multipart/report; report-type=feedback-report) -> the
// fields the inbound listener needs to turn it into a complaint event.
import { findPart, parseOriginalHeaders, parseReport, rawHeaders } from "./mime.ts";
import { cleanAddress, first, parseFieldGroups, stripType, type FieldGroup } from "./status-fields.ts";

export interface ArfOriginalHeaders {
  messageId?: string;
  from?: string;
  to?: string;
  subject?: string;
  date?: string;
  /** Gmail-style Feedback-ID (a:b:c:SenderId), set by us when sending. */
  feedbackId?: string;
  /** Our envelope sender (VERP) as the receiver recorded it. */
  returnPath?: string;
  /** Every header of the original message: lowercase name -> unfolded value (first occurrence). */
  all: Record<string, string>;
}

export interface ArfReport {
  /** abuse | fraud | virus | other | not-spam | auth-failure (lowercase). */
  feedbackType: string;
  userAgent: string;
  version: string;
  originalMailFrom?: string;
  /** First Original-Rcpt-To (the field may repeat: see originalRcptTos). */
  originalRcptTo?: string;
  originalRcptTos: string[];
  sourceIp?: string;
  arrivalDate?: string;
  /** First Reported-Domain (the field may repeat: see reportedDomains). */
  reportedDomain?: string;
  reportedDomains: string[];
  reportingMta?: string;
  originalEnvelopeId?: string;
  incidents?: number;
  authenticationResults: string[];
  reportedUris: string[];
  originalHeaders: ArfOriginalHeaders;
}

function all(g: FieldGroup, name: string): string[] {
  return (g.get(name) ?? []).map((v) => v.trim()).filter((v) => v !== "");
}

export async function parseArf(raw: Buffer | string): Promise<ArfReport> {
  const { parts } = await parseReport(raw, "parseArf");
  const reportPart = findPart(parts, "message/feedback-report");
  if (!reportPart) throw new Error("parseArf: not an ARF report (no message/feedback-report part)");

  // The report is one group; tolerate stray blank lines by merging every group.
  const g: FieldGroup = new Map();
  for (const group of parseFieldGroups(reportPart.content.toString("utf8"))) {
    for (const [k, v] of group) g.set(k, [...(g.get(k) ?? []), ...v]);
  }
  const feedbackType = first(g, "feedback-type")?.toLowerCase();
  if (!feedbackType) throw new Error("parseArf: the feedback report has no Feedback-Type field");

  const rcpts = all(g, "original-rcpt-to").map((v) => cleanAddress(v)!).filter(Boolean);
  const domains = all(g, "reported-domain");
  const incidents = Number(first(g, "incidents"));

  const original = findPart(parts, "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers");
  const originalHeaders: ArfOriginalHeaders = { all: {} };
  if (original) {
    const mail = await parseOriginalHeaders(original);
    const h = rawHeaders(mail);
    originalHeaders.all = h;
    const set = (k: keyof Omit<ArfOriginalHeaders, "all">, v: string | undefined) => {
      if (v) originalHeaders[k] = v;
    };
    set("messageId", mail.messageId ?? h["message-id"]);
    set("from", mail.from?.value[0]?.address || h["from"]);
    set("to", (mail.to && !Array.isArray(mail.to) ? mail.to.value[0]?.address : undefined) || h["to"]);
    set("subject", mail.subject ?? h["subject"]);
    set("date", h["date"]);
    set("feedbackId", h["feedback-id"]);
    set("returnPath", cleanAddress(h["return-path"]));
  }

  const report: ArfReport = {
    feedbackType,
    userAgent: first(g, "user-agent") ?? "",
    version: first(g, "version") ?? "",
    originalRcptTos: rcpts,
    reportedDomains: domains,
    authenticationResults: all(g, "authentication-results"),
    reportedUris: all(g, "reported-uri"),
    originalHeaders,
  };
  const opt = {
    originalMailFrom: cleanAddress(first(g, "original-mail-from")),
    originalRcptTo: rcpts[0],
    sourceIp: first(g, "source-ip"),
    arrivalDate: first(g, "arrival-date") ?? first(g, "received-date"),
    reportedDomain: domains[0],
    reportingMta: stripType(first(g, "reporting-mta")),
    originalEnvelopeId: first(g, "original-envelope-id"),
    incidents: Number.isFinite(incidents) && first(g, "incidents") !== undefined ? incidents : undefined,
  };
  for (const [k, v] of Object.entries(opt)) if (v !== undefined) (report as unknown as Record<string, unknown>)[k] = v;
  return report;
}
