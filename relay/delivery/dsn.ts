// Delivery status notifications (RFC 3464) for the submitter: multipart/report with a human part,
// a message/delivery-status part and the original headers (or the whole message for RET=FULL).
//
// Hand-written rather than through nodemailer's MailComposer: the report needs a top-level
// multipart/report with a report-type parameter and a message/delivery-status part whose body is
// fields, which MailComposer has no way to express; the structure is fixed and small.
import { randomBytes } from "node:crypto";

export interface DsnRecipient {
  rcpt: string;
  /** failed | delayed */
  action: "failed" | "delayed";
  /** RFC 3463 status, e.g. 5.1.1 */
  status: string;
  /** The remote reply, for Diagnostic-Code: smtp; ... */
  diagnostic?: string;
  remoteMta?: string;
  lastAttempt?: number;
  originalRcpt?: string;
}

export interface DsnInput {
  /** The relay's host name (Reporting-MTA). */
  reportingMta: string;
  /** From: MAILER-DAEMON@<this>. */
  returnPathDomain: string;
  /** The submitter's original envelope sender. */
  to: string;
  qid: string;
  envid?: string;
  arrivalDate: number;
  recipients: DsnRecipient[];
  /** The original message (headers are always included; the body too when full). */
  original: Buffer;
  full: boolean;
  now: number;
  /** Why, in words (expiry, permanent failure). */
  reason: string;
}

/** The header block of a message (up to the first empty line), with CRLF line ends. */
export function headerBlock(raw: Buffer): string {
  const text = raw.toString("latin1");
  const m = /\r?\n\r?\n/.exec(text);
  const head = m ? text.slice(0, m.index) : text;
  return head.replace(/\r?\n/g, "\r\n") + "\r\n";
}

function fold(field: string): string {
  return field.replace(/[\r\n]+/g, " ");
}

function statusOf(reply: string | undefined, permanent: boolean): string {
  const m = /\b([245])\.(\d{1,3})\.(\d{1,3})\b/.exec(reply ?? "");
  if (m) return `${m[1]}.${m[2]}.${m[3]}`;
  return permanent ? "5.0.0" : "4.0.0";
}

export function dsnStatus(reply: string | undefined, permanent: boolean): string {
  const s = statusOf(reply, permanent);
  // A failed DSN carries a 5.x.x status: an expiry after 4xx replies is reported as 5.x.x (RFC 3464).
  return permanent && s.startsWith("4") ? `5${s.slice(1)}` : s;
}

export function buildDsn(d: DsnInput): Buffer {
  const boundary = `=_mf_${randomBytes(12).toString("hex")}`;
  const date = new Date(d.now).toUTCString().replace("GMT", "+0000");
  const from = `MAILER-DAEMON@${d.returnPathDomain}`;
  const crlf = "\r\n";
  const human = [
    `This is the mail system at ${d.reportingMta}.`,
    "",
    `Your message (queue id ${d.qid}) could not be delivered to ${d.recipients.length === 1 ? "one recipient" : `${d.recipients.length} recipients`}.`,
    d.reason,
    "",
    ...d.recipients.map((r) => `<${r.rcpt}>: ${r.diagnostic ?? r.status}`),
    "",
  ].join(crlf);
  const perMessage = [
    `Reporting-MTA: dns; ${d.reportingMta}`,
    `X-Mailfleet-Queue-ID: ${d.qid}`,
    ...(d.envid ? [`Original-Envelope-Id: ${fold(d.envid)}`] : []),
    `Arrival-Date: ${new Date(d.arrivalDate).toUTCString().replace("GMT", "+0000")}`,
  ].join(crlf);
  const perRcpt = d.recipients
    .map((r) =>
      [
        ...(r.originalRcpt ? [`Original-Recipient: rfc822; ${r.originalRcpt}`] : []),
        `Final-Recipient: rfc822; ${r.rcpt}`,
        `Action: ${r.action}`,
        `Status: ${r.status}`,
        ...(r.remoteMta ? [`Remote-MTA: dns; ${r.remoteMta}`] : []),
        ...(r.diagnostic ? [`Diagnostic-Code: smtp; ${fold(r.diagnostic)}`] : []),
        ...(r.lastAttempt ? [`Last-Attempt-Date: ${new Date(r.lastAttempt).toUTCString().replace("GMT", "+0000")}`] : []),
      ].join(crlf),
    )
    .join(crlf + crlf);
  const originalPart = d.full
    ? [`Content-Type: message/rfc822`, `Content-Transfer-Encoding: 8bit`, "", d.original.toString("latin1").replace(/\r?\n/g, crlf)].join(crlf)
    : [`Content-Type: text/rfc822-headers`, `Content-Transfer-Encoding: 8bit`, "", headerBlock(d.original)].join(crlf);
  const msg = [
    `From: Mail Delivery System <${from}>`,
    `To: <${d.to}>`,
    `Subject: Undelivered Mail Returned to Sender`,
    `Date: ${date}`,
    `Message-ID: <dsn.${d.qid}.${randomBytes(6).toString("hex")}@${d.returnPathDomain}>`,
    `Auto-Submitted: auto-replied`,
    `MIME-Version: 1.0`,
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    "",
    "This is a MIME-encapsulated message.",
    "",
    `--${boundary}`,
    `Content-Type: text/plain; charset=us-ascii`,
    `Content-Description: Notification`,
    "",
    human,
    `--${boundary}`,
    `Content-Type: message/delivery-status`,
    `Content-Description: Delivery report`,
    "",
    perMessage,
    "",
    perRcpt,
    "",
    `--${boundary}`,
    originalPart,
    `--${boundary}--`,
    "",
  ].join(crlf);
  return Buffer.from(msg, "latin1");
}
