// Splits one SMTP reply (possibly multi-line, possibly wrapped in a log or DSN prefix) into its
// basic code, enhanced status code and text.
import type { ParsedReply } from "./types.ts";

// RFC 5321 basic codes are 2yz-5yz (y is 0-5 in the RFC; some MTAs use others, e.g. 498).
const BASIC = "[2-5]\\d\\d";
// RFC 3463 enhanced codes: class 2/4/5, subject 0-7, detail up to 3 digits. Subject 0-7 keeps out
// Yahoo's internal "[#4.16.1]"; the look-arounds keep out IP addresses and "4.16.55.1".
const ENHANCED = "[245]\\.[0-7]\\.\\d{1,3}";
const ENHANCED_RE = new RegExp(`^#?(${ENHANCED})(?![\\d.]*\\d)`);
const ENHANCED_ANYWHERE_RE = new RegExp(`(?<![\\w.])#?(${ENHANCED})(?!\\.?\\d)`);

// "smtp; 550 ..." (DSN Diagnostic-Code), "X-Postfix; ..." and friends.
const DIAGNOSTIC_TYPE_RE = /^(?:smtp|esmtp|x-postfix|x-unix|x-local|x-exim|x-qmail|x-sendmail|mailbox|x-[\w-]+)\s*;\s*/i;
// A reply quoted inside a log line or a bounce text: "host mx said: 550 ...",
// "SMTP error from remote mail server after RCPT TO:<x>: 550 ...", "Remote host said: 554 ...".
const QUOTED_REPLY_RE = new RegExp(
  `(?:\\bsaid|\\breplied|\\bresponse|\\bresponded|\\bserver\\s+reply|\\bcommand|>|\\))\\s*:\\s*(${BASIC})(?=[ \\-,]|$)`,
  "i",
);

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// Replies are at most a few lines of 512 octets (RFC 5321 §4.5.3.1.5); anything past this is not
// read, which bounds the matching cost of hostile or runaway input.
const MAX_INPUT = 8192;

export function parseReply(input: string): ParsedReply {
  const full = String(input ?? "")
    .slice(0, MAX_INPUT)
    .replace(/[\r\n\t\f\v]+/g, " ")
    .replace(/ {2,}/g, " ")
    .trim();
  // Exchange NDR bodies wrap the reply as "#550 5.1.1 ... ##".
  let rest = full.replace(DIAGNOSTIC_TYPE_RE, "").replace(/^#(?=\d{3}\b)/, "");

  let code = "";
  const lead = new RegExp(`^(${BASIC})(?=[ \\-,]|$)[ \\-,]?`).exec(rest);
  if (lead) {
    code = lead[1]!;
    rest = rest.slice(lead[0].length);
  } else {
    const quoted = QUOTED_REPLY_RE.exec(rest);
    if (quoted) {
      code = quoted[1]!;
      rest = rest.slice(quoted.index + quoted[0].length).replace(/^[ \-,]/, "");
    }
  }

  let enhanced = "";
  const lead2 = ENHANCED_RE.exec(rest.trimStart());
  if (lead2) {
    enhanced = lead2[1]!;
    rest = rest.trimStart().slice(lead2[0].length);
  } else {
    // Some receivers put the enhanced code later: "553 Mail from x not allowed - 5.7.1 [BL23] ...".
    const later = ENHANCED_ANYWHERE_RE.exec(rest);
    if (later) enhanced = later[1]!;
  }

  // Multi-line replies joined with spaces repeat "550-5.1.1 " (or "550 5.1.1 ") before each line:
  // drop those repeats so patterns can span the original line breaks (KumoMTA does the same).
  if (code) {
    const cont = new RegExp(
      `(^|\\s)${code}[ \\-,](?:#?${enhanced ? escapeRe(enhanced) : ENHANCED}(?=\\s|$))?`,
      "g",
    );
    rest = rest.replace(cont, "$1");
  }
  const text = rest.replace(/\s{2,}/g, " ").trim();
  return { code, enhanced, text, full };
}
