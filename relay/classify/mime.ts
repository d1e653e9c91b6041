// The MIME side of DSN and ARF parsing, through mailparser: the report's parts, as raw content.
import { simpleParser, type ParsedMail, type MailParserOptions } from "mailparser";

export interface ReportPart {
  contentType: string;
  content: Buffer;
}

export interface Report {
  mail: ParsedMail;
  parts: ReportPart[];
}

// keepDeliveryStatus: hand message/delivery-status over as a part instead of appending it to the
// text body. ignoreEmbedded (a mailsplit option mailparser passes through; not in its typings):
// keep an attached message/rfc822 as one raw part, so its headers can be read exactly.
const OPTIONS = { keepDeliveryStatus: true, ignoreEmbedded: true, skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true, skipTextLinks: true } as MailParserOptions;

export async function parseReport(raw: Buffer | string, what: string): Promise<Report> {
  if (typeof raw !== "string" && !Buffer.isBuffer(raw)) throw new TypeError(`${what}: raw must be a Buffer or a string`);
  if (raw.length === 0) throw new Error(`${what}: the message is empty`);
  const mail = await simpleParser(raw, OPTIONS);
  const parts = mail.attachments.map((a) => ({ contentType: a.contentType.toLowerCase(), content: a.content }));
  return { mail, parts };
}

/** Header fields of an attached message (message/rfc822) or header block (text/rfc822-headers). */
export async function parseOriginalHeaders(part: ReportPart): Promise<ParsedMail> {
  let content = part.content;
  // text/rfc822-headers is a header block without a body: end it so it parses as headers.
  if (part.contentType === "text/rfc822-headers") content = Buffer.concat([content, Buffer.from("\n\n")]);
  return simpleParser(content, OPTIONS);
}

export function findPart(parts: ReportPart[], ...types: string[]): ReportPart | undefined {
  for (const t of types) {
    const p = parts.find((x) => x.contentType === t);
    if (p) return p;
  }
  return undefined;
}

/** Every header line of a parsed message: lowercase name -> unfolded raw value (first wins). */
export function rawHeaders(mail: ParsedMail): Record<string, string> {
  const out: Record<string, string> = {};
  for (const { key, line } of mail.headerLines) {
    if (key in out) continue;
    const colon = line.indexOf(":");
    out[key] = line.slice(colon + 1).replace(/\r?\n[ \t]+/g, " ").trim();
  }
  return out;
}
