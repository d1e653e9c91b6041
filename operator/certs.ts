// Certificates the operator makes itself: the admission webhook's CA and serving certificate, and a
// self-signed STARTTLS certificate for pools that name none. node:crypto makes the keys but cannot
// write X.509, hence node-forge for the certificate (as test/env/pki.ts does; no dependencies).
import { X509Certificate, generateKeyPair, randomBytes } from "node:crypto";
import { isIP } from "node:net";
import forge from "node-forge";

const DAY = 86_400_000;

export type KeyAndCert = { certPem: string; keyPem: string };

function rsaKey(): Promise<{ keyPem: string; privateKey: forge.pki.rsa.PrivateKey; publicKey: forge.pki.PublicKey }> {
  return new Promise((resolve, reject) => {
    generateKeyPair("rsa", { modulusLength: 2048, privateKeyEncoding: { type: "pkcs1", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } },
      (err, _pub, keyPem) => {
        if (err) return reject(err);
        const privateKey = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
        resolve({ keyPem, privateKey, publicKey: forge.pki.setRsaPublicKey(privateKey.n, privateKey.e) });
      });
  });
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  return b.toString("hex");
}

function validity(cert: forge.pki.Certificate, now: number, days: number): void {
  cert.validity.notBefore = new Date(now - 3_600_000);
  cert.validity.notAfter = new Date(now + days * DAY);
}

function altNames(hosts: string[]) {
  return hosts.map((h) => (isIP(h) ? { type: 7, ip: h } : { type: 2, value: h }));
}

export async function createCA(commonName: string, o: { now?: number; days?: number } = {}): Promise<KeyAndCert> {
  const k = await rsaKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = k.publicKey;
  cert.serialNumber = serial();
  validity(cert, o.now ?? Date.now(), o.days ?? 3650);
  cert.setSubject([{ name: "commonName", value: commonName }]);
  cert.setIssuer([{ name: "commonName", value: commonName }]);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, critical: true },
    { name: "keyUsage", keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: "subjectKeyIdentifier" },
  ]);
  cert.sign(k.privateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: k.keyPem };
}

/** A serving certificate for hosts (DNS names or IPs), signed by ca, or self-signed when ca is absent. */
export async function issueServing(hosts: string[], o: { ca?: KeyAndCert; now?: number; days?: number } = {}): Promise<KeyAndCert> {
  const k = await rsaKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = k.publicKey;
  cert.serialNumber = serial();
  validity(cert, o.now ?? Date.now(), o.days ?? 365);
  cert.setSubject([{ name: "commonName", value: hosts[0] ?? "mailfleet" }]);
  const caCert = o.ca ? forge.pki.certificateFromPem(o.ca.certPem) : undefined;
  cert.setIssuer(caCert ? caCert.subject.attributes : [{ name: "commonName", value: hosts[0] ?? "mailfleet" }]);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", serverAuth: true },
    { name: "subjectAltName", altNames: altNames(hosts) },
    ...(caCert ? [{ name: "authorityKeyIdentifier", keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() }] : []),
  ]);
  const signer = o.ca ? (forge.pki.privateKeyFromPem(o.ca.keyPem) as forge.pki.rsa.PrivateKey) : k.privateKey;
  cert.sign(signer, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: k.keyPem };
}

/**
 * Why a certificate must be (re)issued, or undefined: unreadable, expiring within a third of its
 * lifetime (cert-manager's default renewal point), not yet valid, or missing one of the hosts.
 */
export function renewalReason(certPem: string | undefined, hosts: string[], now: number): string | undefined {
  if (!certPem) return "absent";
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    return "unreadable";
  }
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (now < from) return "not yet valid";
  if (now > to - (to - from) / 3) return "expiring";
  for (const h of hosts) {
    const ok = isIP(h) ? cert.checkIP(h) !== undefined : cert.checkHost(h) !== undefined;
    if (!ok) return `does not name ${h}`;
  }
  return undefined;
}

/** Whether certPem was signed by caPem. */
export function signedBy(certPem: string, caPem: string): boolean {
  try {
    return new X509Certificate(certPem).verify(new X509Certificate(caPem).publicKey);
  } catch {
    return false;
  }
}

export function notAfter(certPem: string): number {
  return Date.parse(new X509Certificate(certPem).validTo);
}
