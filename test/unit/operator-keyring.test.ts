// The pool keyring's one-click unsubscribe key (operator/controllers/ippool.ts keyring()). Found by
// the local fleet: news.example.com (examples/30-domains.yaml, OneClick) sent every message
// without its one-click header, because no component ever put unsubscribe.key in the keyring the
// relays read (they warned "OneClick List-Unsubscribe without unsubscribe.key" on every message).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { keyring, UNSUBSCRIBE_KEYS } from "../../operator/controllers/ippool.ts";
import type { Context } from "../../operator/controllers/context.ts";
import type { IPPool, SendingDomain } from "../../api/v1alpha1/index.ts";

const pool = { metadata: { name: "marketing", namespace: "mail" }, spec: {} } as unknown as IPPool;
const domain = (mode: "None" | "Mailto" | "OneClick") =>
  ({ metadata: { name: "d", namespace: "mail" }, spec: { domain: "news.example.com", listUnsubscribe: { mode }, webhooks: [] }, status: {} }) as unknown as SendingDomain;

function ctx(domains: SendingDomain[], relaySecretData?: Record<string, string>): Context {
  return {
    world: { domainsSentBy: () => domains },
    inf: { secrets: { get: (_ns: string, name: string) => (name === "marketing-relay" && relaySecretData ? { data: relaySecretData } : undefined) } },
  } as unknown as Context;
}

describe("pool keyring: one-click unsubscribe key", () => {
  it("a pool with a OneClick domain gets a 32-byte key", () => {
    const { files } = keyring(ctx([domain("OneClick")]), pool);
    const key = files.get(UNSUBSCRIBE_KEYS[0]);
    assert.ok(key, "unsubscribe.key in the keyring");
    assert.equal(Buffer.from(key, "base64").length, 32);
  });

  it("the key the keyring has is kept (mail already sent carries links signed with it), and the previous one too", () => {
    const current = { [UNSUBSCRIBE_KEYS[0]]: Buffer.alloc(32, 7).toString("base64"), [UNSUBSCRIBE_KEYS[1]]: Buffer.alloc(32, 3).toString("base64") };
    const { files } = keyring(ctx([domain("OneClick")], current), pool);
    assert.equal(files.get(UNSUBSCRIBE_KEYS[0]), current[UNSUBSCRIBE_KEYS[0]]);
    assert.equal(files.get(UNSUBSCRIBE_KEYS[1]), current[UNSUBSCRIBE_KEYS[1]]);
  });

  it("no OneClick domain, no key", () => {
    assert.equal(keyring(ctx([domain("None")]), pool).files.size, 0);
    assert.equal(keyring(ctx([]), pool).files.size, 0);
  });

  it("a key made once is kept while no domain uses OneClick (switching back does not void links sent before)", () => {
    const made = keyring(ctx([domain("OneClick")]), pool).files.get(UNSUBSCRIBE_KEYS[0])!;
    assert.notEqual(made, keyring(ctx([domain("OneClick")]), pool).files.get(UNSUBSCRIBE_KEYS[0]), "random each time it is made");
    const kept = keyring(ctx([domain("Mailto")], { [UNSUBSCRIBE_KEYS[0]]: made }), pool).files;
    assert.equal(kept.get(UNSUBSCRIBE_KEYS[0]), made);
    assert.equal(keyring(ctx([domain("OneClick")], Object.fromEntries(kept)), pool).files.get(UNSUBSCRIBE_KEYS[0]), made);
  });
});
