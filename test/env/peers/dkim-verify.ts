// An independent DKIM verifier on the receiving side: Debian's python3-dkim (python3-nacl for
// Ed25519), resolving keys through the test DNS server. It shares no code with our signer
// (mailauth), so a passing check means the signature is right, not merely self-consistent.

import { fileURLToPath } from 'node:url';
import { PeerError, run } from './common.ts';

const COMPONENT = 'dkim-verify (python3-dkim)';
const SCRIPT = fileURLToPath(new URL('./dkim_verify.py', import.meta.url));
// Debian's interpreter, where python3-dkim lives: PATH may lead to another Python (pyenv).
const PYTHON = '/usr/bin/python3';

export interface DkimSignatureResult {
  /** d= (signing domain) */
  d: string;
  /** s= (selector) */
  s: string;
  /** a= (rsa-sha256, ed25519-sha256, ...) */
  a: string;
  ok: boolean;
  /** Why it failed ('' when ok): body hash mismatch, key not found, ... */
  reason: string;
}

export interface DkimResult {
  /** True when the message has at least one DKIM-Signature and every one verifies. */
  ok: boolean;
  /** One entry per DKIM-Signature, topmost first. */
  signatures: DkimSignatureResult[];
}

/**
 * Verifies every DKIM-Signature of `rawMessage` (CRLF or LF line ends), fetching keys from
 * `dnsServer` ("127.x.y.z" or "127.x.y.z:port").
 */
export async function verifyDkim(rawMessage: Buffer | string, dnsServer: string): Promise<DkimResult> {
  if (!/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}(:\d{1,5})?$/.test(dnsServer)) {
    throw new PeerError(COMPONENT, `dnsServer must be "127.x.y.z" or "127.x.y.z:port", got ${JSON.stringify(dnsServer)}`);
  }
  // -I: isolated mode, so PYTHONPATH/PYTHONHOME and user site-packages of the caller cannot
  // swap in another dkim module; -B: no __pycache__ in the source tree.
  const { stdout } = await run(COMPONENT, PYTHON, ['-I', '-B', SCRIPT, dnsServer], {
    input: rawMessage,
    timeoutMs: 60_000,
  }).catch((err: PeerError) => {
    throw /No module named/.test(err.message)
      ? new PeerError(COMPONENT, `python3-dkim / python3-dnspython / python3-nacl missing: run test/env/install-debian.sh\n${err.message}`)
      : err;
  });
  try {
    return JSON.parse(stdout) as DkimResult;
  } catch {
    throw new PeerError(COMPONENT, `unexpected output: ${stdout.slice(0, 500)}`);
  }
}
