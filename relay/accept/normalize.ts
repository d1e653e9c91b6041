// Line endings and the header/body split of a submitted message.
//
// SMTP smuggling: smtp-server ends DATA only at <CRLF>.<CRLF>, so `\n.\r\n`, `\r\n.\n` and
// `\r.\r` stay inside the message. What we store must not let a later hop end the message
// early either: every bare CR and bare LF becomes CRLF here, before DKIM signing. A line that is
// then a lone "." is an ordinary line that the delivery client dot-stuffs (RFC 5321 4.5.2), so no
// receiver can split it.
const CR = 0x0d;
const LF = 0x0a;

/** Returns the message with every line ending CRLF (the input itself when it already is). */
export function normalizeLineEndings(buf: Buffer): Buffer {
  // Fast path: scan for a bare CR or LF; most clients send clean CRLF.
  let bare = -1;
  for (let i = buf.indexOf(LF); i !== -1; i = buf.indexOf(LF, i + 1)) {
    if (i === 0 || buf[i - 1] !== CR) { bare = i; break; }
  }
  if (bare === -1) {
    for (let i = buf.indexOf(CR); i !== -1; i = buf.indexOf(CR, i + 1)) {
      if (buf[i + 1] !== LF) { bare = i; break; }
    }
  }
  if (bare === -1) return buf;
  const out = Buffer.allocUnsafe(buf.length * 2);
  let o = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (c === CR) {
      out[o++] = CR; out[o++] = LF;
      if (buf[i + 1] === LF) i++;
    } else if (c === LF) {
      out[o++] = CR; out[o++] = LF;
    } else {
      out[o++] = c;
    }
  }
  return out.subarray(0, o);
}

/**
 * Splits a CRLF-normalised message at the blank line. `header` includes the CRLF ending its last
 * field; `body` starts after the blank line. A message without a blank line is all header.
 */
export function splitMessage(buf: Buffer): { header: Buffer; body: Buffer } {
  if (buf.length >= 2 && buf[0] === CR && buf[1] === LF) return { header: buf.subarray(0, 0), body: buf.subarray(2) };
  const i = buf.indexOf("\r\n\r\n");
  if (i === -1) {
    const header = buf.length && !buf.subarray(-2).equals(Buffer.from("\r\n")) ? Buffer.concat([buf, Buffer.from("\r\n")]) : buf;
    return { header, body: Buffer.alloc(0) };
  }
  return { header: buf.subarray(0, i + 2), body: buf.subarray(i + 4) };
}
