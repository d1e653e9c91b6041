// RFC 8058 one-click unsubscribe tokens.
//
// A token names one recipient of one sending domain (and the message's queue id, for the event), so the unsubscribe it triggers suppresses
// exactly that address for that domain. It is authenticated encryption (AES-256-GCM) rather than
// a bare HMAC over the clear address, so the recipient's address does not appear in URLs that
// proxies and logs keep. The key is the file `unsubscribe.key` in the pool's Secret (any length;
// a 32-byte random value is right); `unsubscribe.previous.key` is still accepted when verifying,
// so a rotation does not break links in mail already sent. The first byte of a token names the
// key (a byte of its hash), so verification does not try both.
//
// One message is stored once; a token is per recipient. So in OneClick mode a message with
// several recipients is stored as one copy per recipient (each with its own header and DKIM
// signature) — see relay/accept/acceptor.ts. Bulk mail is one recipient per message in practice,
// so this costs nothing in the common case, and it is the only way the header can both name the
// recipient and be covered by DKIM (Gmail shows the button only then).
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";

const VERSION = 1;

function keyId(key: Buffer): number {
  return createHash("sha256").update(key).digest()[0]!;
}
function aesKey(key: Buffer): Buffer {
  return Buffer.from(hkdfSync("sha256", key, Buffer.alloc(0), "mailfleet unsubscribe v1", 32));
}

export function unsubscribeToken(key: Buffer, domain: string, rcpt: string, qid = ""): string {
  const iv = randomBytes(12);
  const c = createCipheriv("aes-256-gcm", aesKey(key), iv);
  const plain = Buffer.from(`${domain.toLowerCase()}\n${rcpt.toLowerCase()}${qid ? `\n${qid}` : ""}`, "utf8");
  const enc = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([Buffer.from([VERSION, keyId(key)]), iv, enc, c.getAuthTag()]).toString("base64url");
}

/** The domain and recipient a token names, or null when no key opens it. */
export function verifyUnsubscribeToken(keys: Buffer[], token: string): { domain: string; rcpt: string; qid?: string } | null {
  let raw: Buffer;
  try {
    raw = Buffer.from(token, "base64url");
  } catch {
    return null;
  }
  if (raw.length < 2 + 12 + 16 + 3 || raw[0] !== VERSION) return null;
  const key = keys.find((k) => keyId(k) === raw[1]);
  if (!key) return null;
  try {
    const d = createDecipheriv("aes-256-gcm", aesKey(key), raw.subarray(2, 14));
    d.setAuthTag(raw.subarray(raw.length - 16));
    const plain = Buffer.concat([d.update(raw.subarray(14, raw.length - 16)), d.final()]).toString("utf8");
    const [domain, rcpt, qid] = plain.split("\n");
    if (!domain || !rcpt) return null;
    return { domain, rcpt, ...(qid ? { qid } : {}) };
  } catch {
    return null;
  }
}
