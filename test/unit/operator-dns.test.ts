// DNS records a SendingDomain needs, their verification over injected lookups, forward-confirmed
// reverse DNS of pool addresses, DKIM keys and the rotation state machine.
import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import { describe, it } from "node:test";
import { validateObject } from "../../api/validate.ts";
import type { DkimSelectorStatus, SendingDomain } from "../../api/v1alpha1/index.ts";
import { rotate, selectorName, type RotationSpec } from "../../operator/dkim/rotation.ts";
import { KeyFactory, publicFromPrivate } from "../../operator/dkim/keys.ts";
import { checkAddress, dnsblName, expandIPv6 } from "../../operator/dns/fcrdns.ts";
import { desiredRecords, ipv4Blocks, type RecordsInput } from "../../operator/dns/records.ts";
import { type Lookup, type RRType, spfProbes, verifyRecords } from "../../operator/dns/verify.ts";

function domain(spec: Record<string, unknown>): SendingDomain {
  return validateObject({ apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: { name: "d", namespace: "mail" }, spec }) as SendingDomain;
}

/** A zone in memory, answering like dns.promises (ENOTFOUND for absent names, ENODATA for absent types). */
function zone(records: { type: RRType | "PTR"; name: string; value: string | string[]; priority?: number }[]): Lookup & { asked: string[] } {
  const asked: string[] = [];
  const err = (code: string) => Object.assign(new Error(code), { code });
  return {
    asked,
    async resolve(name, type) {
      asked.push(`${type} ${name}`);
      const byName = records.filter((r) => r.name === name);
      if (!byName.length) throw err("ENOTFOUND");
      const rs = byName.filter((r) => r.type === type);
      if (!rs.length) throw err("ENODATA");
      if (type === "TXT") return rs.map((r) => (Array.isArray(r.value) ? r.value : [r.value]));
      if (type === "MX") return rs.map((r) => ({ exchange: r.value as string, priority: r.priority ?? 10 }));
      return rs.map((r) => r.value);
    },
    async reverse(address) {
      const rs = records.filter((r) => r.type === "PTR" && r.name === address);
      if (!rs.length) throw err("ENOTFOUND");
      return rs.map((r) => r.value as string);
    },
  };
}

const input = (spec: Record<string, unknown>, extra: Partial<RecordsInput> = {}): RecordsInput => ({
  spec: domain(spec).spec,
  addresses: [{ address: "192.0.2.10", hostname: "mta1.example.com" }, { address: "192.0.2.11", hostname: "mta2.example.com" }, { address: "2001:db8::1", hostname: "mta6.example.com" }],
  mxHosts: ["mta1.example.com", "mta2.example.com"],
  dkim: [{ selector: "mf20261127r", keyType: "RSA2048", publicKey: "MIIBIjANBgkq" }, { selector: "mf20261127e", keyType: "Ed25519", publicKey: "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=" }],
  ...extra,
});

describe("DNS records to publish", () => {
  it("lists SPF, DKIM per selector, DMARC, and the return-path MX and SPF", () => {
    const recs = desiredRecords(input({
      domain: "example.com", poolRef: { name: "p" }, spf: { include: ["spf.protection.outlook.com"], policy: "-all" },
      dmarc: { policy: "quarantine", rua: ["mailto:dmarc@example.com"] },
    }));
    assert.deepEqual(recs, [
      { purpose: "spf", type: "TXT", name: "example.com", value: "v=spf1 ip4:192.0.2.10/31 ip6:2001:db8::1 include:spf.protection.outlook.com -all" },
      { purpose: "dkim", type: "TXT", name: "mf20261127e._domainkey.example.com", value: "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", selector: "mf20261127e" },
      { purpose: "dkim", type: "TXT", name: "mf20261127r._domainkey.example.com", value: "v=DKIM1; k=rsa; p=MIIBIjANBgkq", selector: "mf20261127r" },
      { purpose: "dmarc", type: "TXT", name: "_dmarc.example.com", value: "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com; adkim=r; aspf=r" },
      { purpose: "return-path-mx", type: "MX", name: "bounces.example.com", value: "mta1.example.com", priority: 10 },
      { purpose: "return-path-mx", type: "MX", name: "bounces.example.com", value: "mta2.example.com", priority: 10 },
      { purpose: "return-path-spf", type: "TXT", name: "bounces.example.com", value: "v=spf1 ip4:192.0.2.10/31 ip6:2001:db8::1 -all" },
    ]);
  });

  it("uses returnPath.mxHosts when given, and lists no DMARC record when the organisation publishes its own", () => {
    const recs = desiredRecords(input({ domain: "example.com", poolRef: { name: "p" }, returnPath: { domain: "rp.example.com", mxHosts: ["in.example.com"] }, dmarc: { publish: false } }));
    assert.equal(recs.some((r) => r.purpose === "dmarc"), false);
    assert.deepEqual(recs.filter((r) => r.type === "MX").map((r) => [r.name, r.value]), [["rp.example.com", "in.example.com"]]);
  });

  it("packs contiguous IPv4 addresses into the fewest CIDR blocks", () => {
    const many = Array.from({ length: 200 }, (_, i) => `10.1.${Math.floor(i / 250)}.${(i % 250) + 1}`);
    assert.deepEqual(ipv4Blocks(many), ["10.1.0.1", "10.1.0.2/31", "10.1.0.4/30", "10.1.0.8/29", "10.1.0.16/28", "10.1.0.32/27", "10.1.0.64/26", "10.1.0.128/26", "10.1.0.192/29", "10.1.0.200"]);
    const blocks = ipv4Blocks(many);
    const covered = blocks.reduce((n, b) => n + 2 ** (32 - Number(b.split("/")[1] ?? 32)), 0);
    assert.equal(covered, 200, "exactly the addresses, no more");
    assert.deepEqual(ipv4Blocks(["10.0.0.255", "10.0.1.0"]), ["10.0.0.255", "10.0.1.0"]);
    assert.deepEqual(spfProbes("v=spf1 ip4:10.0.0.0/30 ip4:10.0.0.9 ip6:::1 -all"), ["10.0.0.0", "10.0.0.3", "10.0.0.9", "::1"]);
  });
});

describe("DNS verification", () => {
  const spec = { domain: "example.com", poolRef: { name: "p" }, dmarc: { policy: "reject", rua: ["mailto:r@example.com"] } };
  const recs = desiredRecords(input(spec, { addresses: [{ address: "192.0.2.10", hostname: "mta1.example.com" }], mxHosts: ["mta1.example.com"] }));
  const value = (purpose: string) => recs.find((r) => r.purpose === purpose)!.value;

  it("verifies every record when DNS has them (TXT strings joined, MX case and trailing dot ignored)", async () => {
    const dkim = recs.filter((r) => r.purpose === "dkim");
    const z = zone([
      { type: "TXT", name: "example.com", value: value("spf") },
      ...dkim.map((r) => ({ type: "TXT" as const, name: r.name, value: [r.value.slice(0, 20), r.value.slice(20)] })),
      { type: "TXT", name: "_dmarc.example.com", value: "v=DMARC1; p=reject; rua=mailto:r@example.com,mailto:other@x.org" },
      { type: "MX", name: "bounces.example.com", value: "MTA1.example.com." },
      { type: "TXT", name: "bounces.example.com", value: "v=spf1 ip4:192.0.2.0/24 -all" },
    ]);
    const out = await verifyRecords(recs, z);
    assert.deepEqual(out.filter((r) => !r.verified), []);
    assert.equal(new Set(z.asked).size, z.asked.length, "each name and type asked once");
  });

  it("says what to publish when records are missing or wrong", async () => {
    const z = zone([
      { type: "TXT", name: "example.com", value: ["v=spf1 ip4:198.51.100.1 -all"] },
      { type: "TXT", name: "_dmarc.example.com", value: "v=DMARC1; p=none" },
      { type: "TXT", name: "bounces.example.com", value: "v=spf1 -all" },
      { type: "TXT", name: "bounces.example.com", value: "v=spf1 ip4:192.0.2.10 -all" },
    ]);
    const out = await verifyRecords(recs, z);
    const msg = (purpose: string) => out.find((r) => r.purpose === purpose)!.message ?? "";
    assert.ok(out.every((r) => !r.verified));
    assert.match(msg("spf"), /does not authorise 192\.0\.2\.10 \(fail\)/);
    assert.match(msg("dkim"), /no DKIM record at .*_domainkey\.example\.com: publish TXT/);
    assert.match(msg("dmarc"), /p=none, expected p=reject/);
    assert.match(msg("return-path-mx"), /bounces\.example\.com has no MX mta1\.example\.com: publish MX bounces\.example\.com 10 mta1\.example\.com/);
    assert.match(msg("return-path-spf"), /2 SPF records at bounces\.example\.com/);
  });

  it("follows include: as receivers do", async () => {
    const z = zone([
      { type: "TXT", name: "example.com", value: "v=spf1 include:_spf.example.net -all" },
      { type: "TXT", name: "_spf.example.net", value: "v=spf1 ip4:192.0.2.0/25 -all" },
    ]);
    const out = await verifyRecords(recs.filter((r) => r.purpose === "spf"), z);
    assert.equal(out[0]!.verified, true);
  });

  it("reports a failing server as a lookup failure, not as a missing record", async () => {
    const failing: Lookup = {
      resolve: async () => { throw Object.assign(new Error("timeout"), { code: "ETIMEOUT" }); },
      reverse: async () => [],
    };
    const out = await verifyRecords(recs.slice(0, 1), failing);
    assert.match(out[0]!.message!, /failed \(ETIMEOUT\); will retry/);
  });
});

describe("forward-confirmed reverse DNS", () => {
  it("confirms when the PTR names the EHLO host and the host resolves back", async () => {
    const z = zone([{ type: "PTR", name: "192.0.2.10", value: "mta1.example.com" }, { type: "A", name: "mta1.example.com", value: "192.0.2.10" }]);
    const r = await checkAddress({ address: "192.0.2.10", hostname: "mta1.example.com" }, z);
    assert.deepEqual(r, { address: "192.0.2.10", hostname: "mta1.example.com", ptr: ["mta1.example.com"], forwardConfirmed: true });
  });

  it("says what is wrong otherwise", async () => {
    const z = zone([{ type: "PTR", name: "192.0.2.10", value: "other.example.com" }, { type: "A", name: "mta1.example.com", value: "192.0.2.99" }]);
    const r = await checkAddress({ address: "192.0.2.10", hostname: "mta1.example.com" }, z);
    assert.equal(r.forwardConfirmed, false);
    assert.match(r.message!, /PTR of 192\.0\.2\.10 is other\.example\.com, not the EHLO name mta1\.example\.com/);
    assert.match(r.message!, /resolves to 192\.0\.2\.99, not 192\.0\.2\.10/);
    const none = await checkAddress({ address: "192.0.2.10", hostname: "mta1.example.com" }, zone([]));
    assert.match(none.message!, /has no PTR record/);
    assert.match(none.message!, /publish mta1\.example\.com A 192\.0\.2\.10/);
  });

  it("checks DNS blocklists", async () => {
    assert.equal(dnsblName("192.0.2.10", "zen.example"), "10.2.0.192.zen.example");
    assert.equal(expandIPv6("2001:db8::1").join(":"), "2001:0db8:0000:0000:0000:0000:0000:0001");
    assert.match(dnsblName("2001:db8::1", "bl.example"), /^1\.0\.0\.0\.(0\.){20}8\.b\.d\.0\.1\.0\.0\.2\.bl\.example$/);
    const z = zone([
      { type: "PTR", name: "192.0.2.10", value: "mta1.example.com" }, { type: "A", name: "mta1.example.com", value: "192.0.2.10" },
      { type: "A", name: "10.2.0.192.bl.example", value: "127.0.0.2" },
    ]);
    const r = await checkAddress({ address: "192.0.2.10", hostname: "mta1.example.com" }, z, ["bl.example", "clean.example"]);
    assert.deepEqual(r.listed, ["bl.example"]);
    assert.equal(r.forwardConfirmed, true);
    assert.match(r.message!, /listed on bl\.example/);
  });
});

describe("DKIM keys", () => {
  it("generates RSA-2048 and Ed25519 keys as PKCS#8 PEM with their DNS p= values", async () => {
    const f = new KeyFactory(2);
    const ready: string[] = [];
    assert.equal(f.take("rsa", "RSA2048", () => ready.push("rsa")), "pending");
    assert.equal(f.take("ed", "Ed25519", () => ready.push("ed")), "pending");
    while (ready.length < 2) await new Promise((r) => setTimeout(r, 20));
    for (const [id, type] of [["rsa", "RSA2048"], ["ed", "Ed25519"]] as const) {
      const k = f.take(id, type, () => {});
      assert.ok(typeof k === "object" && !(k instanceof Error));
      assert.match(k.privatePem, /^-----BEGIN PRIVATE KEY-----/);
      assert.deepEqual(publicFromPrivate(k.privatePem), { keyType: type, publicKey: k.publicKey });
      // The p= value verifies a signature made with the private key (what a receiver does).
      const data = Buffer.from("header hash");
      const pub = type === "Ed25519"
        ? createPublicKey({ key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(k.publicKey, "base64")]), format: "der", type: "spki" })
        : createPublicKey({ key: Buffer.from(k.publicKey, "base64"), format: "der", type: "spki" });
      const alg = type === "Ed25519" ? null : "sha256";
      assert.ok(verify(alg, data, pub, sign(alg, data, createPrivateKey(k.privatePem))));
      f.release(id);
    }
    assert.equal(f.queued(), 0);
  });

  it("refuses keys DKIM cannot use", () => {
    assert.throws(() => publicFromPrivate("not a key"), /not a PEM private key/);
  });
});

describe("DKIM rotation", () => {
  const DAY = 86_400_000;
  const spec: RotationSpec = { keyTypes: ["RSA2048"], selectorPrefix: "mf", rotationPeriodMs: 90 * DAY, overlapMs: 7 * DAY };
  const t0 = Date.parse("2026-01-01T00:00:00Z");
  const secretName = (s: string) => `d-dkim-${s}`;
  const step = (current: DkimSelectorStatus[], now: number, verified: string[] = [], s = spec) =>
    rotate({ spec: s, now, current, verified: (x) => verified.includes(x), secretName });

  it("makes the first key Active at once", () => {
    const r = step([], t0);
    assert.deepEqual(r.generate, [{ selector: "mf20260101r", keyType: "RSA2048", secretName: "d-dkim-mf20260101r" }]);
    assert.deepEqual(r.next.map((s) => [s.selector, s.state]), [["mf20260101r", "Active"]]);
    assert.equal(r.nextAt, t0 + 90 * DAY, "next change: rotation due");
  });

  it("publishes a new selector after rotationPeriod, switches only once it verifies, retires the old one for the overlap", () => {
    let cur = step([], t0).next;
    assert.equal(step(cur, t0 + 89 * DAY).generate.length, 0);
    const due = t0 + 90 * DAY;
    const r1 = step(cur, due);
    assert.deepEqual(r1.next.map((s) => [s.selector, s.state]), [["mf20260101r", "Active"], ["mf20260401r", "Published"]]);
    cur = r1.next;
    // Not in DNS yet: signing stays on the old key, however long it takes.
    const r2 = step(cur, due + 30 * DAY);
    assert.deepEqual(r2.next.map((s) => s.state), ["Active", "Published"]);
    assert.equal(r2.generate.length, 0);
    // Verified: switch.
    const r3 = step(cur, due + 31 * DAY, ["mf20260401r"]);
    assert.deepEqual(r3.next.map((s) => [s.selector, s.state]), [["mf20260401r", "Active"], ["mf20260101r", "Retiring"]]);
    assert.deepEqual(r3.changes.map((c) => `${c.selector}:${c.from}->${c.to}`), ["mf20260101r:Active->Retiring", "mf20260401r:Published->Active"]);
    const retireAt = due + 38 * DAY;
    assert.equal(r3.next[1]!.retireAt, new Date(retireAt).toISOString().replace(".000", ""));
    cur = r3.next;
    assert.equal(step(cur, retireAt - 1).removed.length, 0);
    const r4 = step(cur, retireAt);
    assert.deepEqual(r4.removed, [{ selector: "mf20260101r", secretName: "d-dkim-mf20260101r" }]);
    assert.deepEqual(r4.next.map((s) => s.selector), ["mf20260401r"]);
  });

  it("names a second key of the same day distinctly, and never rotates with period 0", () => {
    assert.equal(selectorName("mf", "Ed25519", t0, new Set(["mf20260101e"])), "mf20260101e2");
    const never = { ...spec, rotationPeriodMs: 0 };
    const cur = step([], t0, [], never).next;
    const r = step(cur, t0 + 10_000 * DAY, [], never);
    assert.equal(r.generate.length, 0);
    assert.equal(r.nextAt, null);
  });

  it("retires the selectors of a key type no longer asked for, and adds the new type", () => {
    const cur = step([], t0).next;
    const r = step(cur, t0 + DAY, [], { ...spec, keyTypes: ["Ed25519"] });
    assert.deepEqual(r.next.map((s) => [s.keyType, s.state]), [["Ed25519", "Active"], ["RSA2048", "Retiring"]]);
  });

  it("hands over to the user's own key", () => {
    const cur = step([], t0).next;
    const r = rotate({ spec, now: t0 + DAY, current: cur, verified: () => false, secretName, ownKeys: [{ selector: "s1", keyType: "RSA2048", secretName: "mine" }] });
    assert.deepEqual(r.next.map((s) => [s.selector, s.state, s.secretName]), [["s1", "Active", "mine"], ["mf20260101r", "Retiring", "d-dkim-mf20260101r"]]);
    const again = rotate({ spec, now: t0 + 2 * DAY, current: r.next, verified: () => false, secretName, ownKeys: [{ selector: "s1", keyType: "RSA2048", secretName: "mine" }] });
    assert.deepEqual(again.changes, [], "steady");
  });
});
