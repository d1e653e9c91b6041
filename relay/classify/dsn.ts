// classifyDsn: an RFC 3464 delivery status notification (multipart/report;
// report-type=delivery-status) -> one classified entry per failed or delayed recipient.
import { decide } from "./classify-reply.ts";
import { findPart, parseOriginalHeaders, parseReport, rawHeaders } from "./mime.ts";
import { parseReply } from "./parse-reply.ts";
import { cleanAddress, first, parseFieldGroups, stripType } from "./status-fields.ts";
import type { ParsedReply, ReplyClass } from "./types.ts";

export interface DsnRecipient {
  /** Final-Recipient (or Original-Recipient), without its address type. */
  recipient: string;
  /** failed | delayed (lowercase). */
  action: string;
  /** RFC 3463 status, e.g. '5.1.1' ('' when the DSN has none). */
  status: string;
  /** Diagnostic-Code without its type, e.g. '550 5.1.1 <bob@example.org>: User unknown'. */
  diagnosticCode?: string;
  /** Remote-MTA without its type. */
  remoteMta?: string;
  class: ReplyClass;
  /** RFC 3464: only Action "failed" is final; "delayed" reports may be followed by others. */
  permanent: boolean;
  originalEnvelopeId?: string;
  /** Local part of the address this DSN was sent to (our VERP return path), to map it back. */
  verp?: string;
  /** The remote's basic reply code, from the Diagnostic-Code, when it has one. */
  code?: string;
  provider?: string;
  rule: string;
}

const STATUS_RE = /\b([245]\.\d{1,3}\.\d{1,3})\b/;

function localPart(address: string | undefined): string | undefined {
  const a = cleanAddress(address);
  if (!a) return undefined;
  const at = a.lastIndexOf("@");
  const lp = (at > 0 ? a.slice(0, at) : a).trim();
  return lp === "" ? undefined : lp;
}

export async function classifyDsn(raw: Buffer | string): Promise<DsnRecipient[]> {
  const { mail, parts } = await parseReport(raw, "classifyDsn");
  const statusPart = findPart(parts, "message/delivery-status", "message/global-delivery-status");
  if (!statusPart) {
    throw new Error("classifyDsn: not a delivery status notification (no message/delivery-status part)");
  }
  const groups = parseFieldGroups(statusPart.content.toString("utf8"));
  const isRecipient = (g: Map<string, string[]>) => g.has("final-recipient") || g.has("original-recipient");
  const perMessage = groups.find((g) => !isRecipient(g));
  const originalEnvelopeId = first(perMessage, "original-envelope-id");

  // Where the DSN was delivered: the receiving MTA's envelope headers first, then the DSN's To:,
  // then the Return-Path of the returned original message.
  const headers = rawHeaders(mail);
  let verp =
    localPart(headers["x-original-to"]) ??
    localPart(headers["delivered-to"]) ??
    localPart(headers["envelope-to"]) ??
    localPart(mail.to && !Array.isArray(mail.to) ? mail.to.value[0]?.address : undefined);
  if (!verp) {
    const original = findPart(parts, "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers");
    if (original) verp = localPart(rawHeaders(await parseOriginalHeaders(original))["return-path"]);
  }

  const out: DsnRecipient[] = [];
  for (const g of groups.filter(isRecipient)) {
    const recipient = cleanAddress(stripType(first(g, "final-recipient") ?? first(g, "original-recipient"))) ?? "";
    const action = (first(g, "action") ?? "").toLowerCase().replace(/\s*\(.*$/, "");
    // delivered / relayed / expanded are not failures; this classifier reports failures only.
    if (action === "delivered" || action === "relayed" || action === "expanded") continue;
    const status = STATUS_RE.exec(first(g, "status") ?? "")?.[1] ?? "";
    const diagnosticCode = stripType(first(g, "diagnostic-code"));
    const remoteMta = stripType(first(g, "remote-mta"));

    const p: ParsedReply = diagnosticCode
      ? parseReply(diagnosticCode)
      : { code: "", enhanced: "", text: "", full: "" };
    // The remote's own enhanced code is the more specific statement; the Status field (written by
    // the reporting MTA) fills in when the diagnostic has none.
    if (!p.enhanced && status) p.enhanced = status;
    if (remoteMta) p.full = `${p.full} ${remoteMta}`.trim();
    const permanent = action === "failed";
    const severity = action === "failed" ? "5" : action === "delayed" ? "4" : (p.code[0] ?? status[0] ?? "");
    const d = decide(p, severity);
    out.push({
      recipient,
      action,
      status,
      ...(diagnosticCode ? { diagnosticCode } : {}),
      ...(remoteMta ? { remoteMta } : {}),
      class: d.class === "protocol-error" && d.rule === "not-a-reply" ? (permanent ? "other" : "transient") : d.class,
      permanent,
      ...(originalEnvelopeId ? { originalEnvelopeId } : {}),
      ...(verp ? { verp } : {}),
      ...(p.code ? { code: p.code } : {}),
      ...(d.provider ? { provider: d.provider } : {}),
      rule: d.rule,
    });
  }
  return out;
}
