import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { renderCrdFiles } from "../../api/gen-crds.ts";
import { parseDuration, parseQuantity, parseRate } from "../../api/units.ts";
import { ValidationError, parseManifests, validateObject } from "../../api/validate.ts";

const root = join(import.meta.dirname, "..", "..");

describe("CRDs", () => {
  it("crds/ matches the zod schemas (run npm run gen:crds when this fails)", () => {
    const expected = renderCrdFiles();
    const onDisk = readdirSync(join(root, "crds")).filter((f) => f.endsWith(".yaml")).sort();
    assert.deepEqual(onDisk, [...expected.keys()].sort());
    for (const [file, text] of expected) {
      assert.ok(readFileSync(join(root, "crds", file), "utf8") === text, `crds/${file} is stale: run npm run gen:crds`);
    }
  });
});

describe("examples", () => {
  it("every example manifest validates", () => {
    const kinds = new Map<string, number>();
    for (const f of readdirSync(join(root, "examples")).filter((f) => f.endsWith(".yaml"))) {
      const { mailfleet } = parseManifests(readFileSync(join(root, "examples", f), "utf8"));
      for (const o of mailfleet) kinds.set(o.kind, (kinds.get(o.kind) ?? 0) + 1);
    }
    assert.equal(kinds.get("IPPool"), 2);
    assert.equal(kinds.get("SendingDomain"), 3);
    assert.ok((kinds.get("WarmupSchedule") ?? 0) >= 1);
    assert.ok((kinds.get("MailboxProvider") ?? 0) >= 8);
  });
});

describe("validation names the field", () => {
  const pool = (spec: unknown) => ({ apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "p", namespace: "n" }, spec });
  it("malformed IP", () => {
    assert.throws(
      () => validateObject(pool({ addresses: [{ address: "300.1.2.3", hostname: "a.example.com" }] })),
      (e: unknown) => e instanceof ValidationError && e.message.includes("spec.addresses[0].address"),
    );
  });
  it("address limits: the provider limits' checks and messages, at the address's field", () => {
    const withLimits = (limits: unknown) => pool({ addresses: [{ address: "192.0.2.1", hostname: "a.example.com", limits }] });
    assert.throws(() => validateObject(withLimits({ messageRate: "lots" })), /spec\.addresses\[0\]\.limits\.messageRate: must be a rate such as 600\/min/);
    assert.throws(() => validateObject(withLimits({ maxConnections: 0 })), /spec\.addresses\[0\]\.limits\.maxConnections/);
    const provider = { apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: { name: "default" }, spec: { limits: { maxConnections: 0 } } };
    // The message after the field path is the provider's, word for word.
    const after = (o: unknown, field: string): string => {
      try {
        validateObject(o);
      } catch (e) {
        const m = (e as Error).message;
        assert.ok(m.includes(field), m);
        return m.slice(m.indexOf(field) + field.length);
      }
      return assert.fail(`${field}: accepted`);
    };
    assert.equal(after(withLimits({ maxConnections: 0 }), "spec.addresses[0].limits.maxConnections"), after(provider, "spec.limits.maxConnections"));
    assert.equal(validateObject(withLimits({ messageRate: "2000/h", maxConnections: 10 })).kind, "IPPool");
  });
  it("maxMessageSize: a whole number of bytes or a quantity the relay can read", () => {
    const withSize = (maxMessageSize: unknown) => pool({ addresses: [{ address: "192.0.2.1", hostname: "a.example.com" }], relay: { submission: { maxMessageSize } } });
    for (const bad of ["abc", "25 Mi", "1e3", "", 1.5, 0, -1]) {
      assert.throws(() => validateObject(withSize(bad)), /spec\.relay\.submission\.maxMessageSize/, JSON.stringify(bad));
    }
    for (const good of ["25Mi", "1.5Gi", "10M", "1000", 26214400]) assert.equal(validateObject(withSize(good)).kind, "IPPool", JSON.stringify(good));
  });
  it("shrinking schedule", () => {
    const obj = {
      apiVersion: "mailfleet.io/v1alpha1", kind: "WarmupSchedule", metadata: { name: "w", namespace: "n" },
      spec: { stages: [{ day: 1, daily: 100 }, { day: 2, daily: 50 }] },
    };
    assert.throws(() => validateObject(obj), /spec\.stages\[1\]\.daily: stages must not shrink/);
  });
  it("provider without match unless named default", () => {
    const p = (name: string) => ({ apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: { name }, spec: {} });
    assert.throws(() => validateObject(p("acme")), /spec\.match/);
    assert.equal(validateObject(p("default")).kind, "MailboxProvider");
  });
});

describe("units", () => {
  it("parses durations, rates and quantities", () => {
    assert.equal(parseDuration("1h30m"), 5_400_000);
    assert.equal(parseDuration("7d"), 604_800_000);
    assert.deepEqual(parseRate("600/min"), { count: 600, periodMs: 60_000 });
    assert.deepEqual(parseRate("20/s"), { count: 20, periodMs: 1000 });
    assert.equal(parseQuantity("25Mi"), 25 * 1024 * 1024);
    assert.throws(() => parseRate("-5/min"), /invalid rate/);
    assert.throws(() => parseDuration("soon"), /invalid duration/);
  });
});
