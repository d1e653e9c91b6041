// Typed access to the parts of mailauth the signer composes (relay/accept/dkim.ts says why it
// does not call dkimSign itself). mailauth ships no types for these modules.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export interface ParsedHeader {
  /** Lower-cased field name. */
  key: string | null;
  casedKey: string | undefined;
  /** The whole field, folded lines joined by CRLF, without the final CRLF. */
  line: Buffer;
}
export interface ParsedHeaders {
  parsed: ParsedHeader[];
  original: Buffer;
}
interface SigningHeaderLines {
  keys: string;
  headers: ParsedHeader[];
}

const tools = require("mailauth/lib/tools.js") as {
  parseHeaders(buf: Buffer): ParsedHeaders;
  getSigningHeaderLines(parsed: ParsedHeader[], fieldNames: string): SigningHeaderLines;
  formatSignatureHeaderLine(type: string, values: Record<string, unknown>, folded: boolean): string;
  defaultDKIMFieldNames: string;
};
const header = require("mailauth/lib/dkim/header/index.js") as {
  generateCanonicalizedHeader(
    type: string,
    lines: SigningHeaderLines,
    options: Record<string, unknown>,
  ): { canonicalizedHeader: Buffer; dkimHeaderOpts: Record<string, unknown> };
};
const body = require("mailauth/lib/dkim/body/index.js") as {
  dkimBody(canon: string, algo: string, maxLength: number | false): { update(b: Buffer): void; digest(enc: "base64"): string };
};

export const parseHeaders = tools.parseHeaders;
export const getSigningHeaderLines = tools.getSigningHeaderLines;
export const formatSignatureHeaderLine = tools.formatSignatureHeaderLine;
export const defaultDKIMFieldNames = tools.defaultDKIMFieldNames;
export const generateCanonicalizedHeader = header.generateCanonicalizedHeader;
export const dkimBody = body.dkimBody;
