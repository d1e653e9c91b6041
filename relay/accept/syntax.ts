// What a submitted message's header section must look like before the relay checks its From field
// and signs it. The relay does not parse MIME bodies (broken boundaries and deep nesting pass
// through untouched: receivers judge them), but the header section is where the From check and
// what a receiver or mail reader shows must agree, so anything two parsers could read differently
// is refused instead of passed on:
//   - NUL anywhere (RFC 5322 and RFC 6152 forbid it; parsers disagree on it: "Fr\0om:" is a
//     continuation line to one and a From field to another),
//   - a line in the header section that is neither a field ("name:", the name printable ASCII
//     without colon, obsolete space before the colon allowed) nor a folded continuation (to the
//     relay's parser it continues the field above; many receivers end the header section there),
//   - a header section over MAX_HEADER_BYTES (what the big receivers refuse anyway: Exchange
//     Online 256 KB; Gmail answers 552 5.3.4 too).
// Pure: bytes in, the refusal (or null) out.

export const MAX_HEADER_BYTES = 256 * 1024;

export interface SyntaxProblem {
  code: number;
  enhanced: string;
  text: string;
}

const FIELD = /^[\x21-\x39\x3b-\x7e]+[ \t]*:/;

/**
 * The problem with a message, or null. `raw` is the message as received, `header` its header
 * section after line endings were normalised (each line ends CRLF).
 */
export function messageProblem(raw: Buffer, header: Buffer): SyntaxProblem | null {
  if (raw.indexOf(0) !== -1) return { code: 554, enhanced: "5.6.0", text: "Message contains NUL characters" };
  if (header.length > MAX_HEADER_BYTES) {
    return { code: 552, enhanced: "5.3.4", text: `Message header size exceeds the limit (${MAX_HEADER_BYTES} bytes)` };
  }
  let start = 0;
  for (let line = 1; start < header.length; line++) {
    let end = header.indexOf("\r\n", start);
    if (end === -1) end = header.length;
    const first = header[start];
    const folded = first === 0x20 || first === 0x09;
    if (folded ? line === 1 : !FIELD.test(header.subarray(start, Math.min(end, start + 1000)).toString("latin1"))) {
      return { code: 554, enhanced: "5.6.0", text: `Malformed header field at line ${line}` };
    }
    start = end + 2;
  }
  return null;
}
