// Routing decisions: provider classification (domain, MX rollup), envelope splitting, backoff.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { ProviderPlan } from "../../api/plan.ts";
import { providerFor, hostMatches } from "../../relay/routing/provider.ts";
import { groupByDomain, splitEnvelope, nullMxReply, type RouteDecision } from "../../relay/routing/split.ts";
import { nextAttempt, retryDelayMs } from "../../relay/delivery/backoff.ts";
import type { Envelope } from "../../relay/queue/envelope.ts";
import { Router, recipientsPerTransaction } from "../../relay/routing/router.ts";
import { quotaProvidersOf } from "../../relay/plan/index.ts";

function provider(name: string, domains: string[], mxSuffixes: string[], rpm = 50): ProviderPlan {
  return {
    name, domains, mxSuffixes,
    lane: { maxConnections: 2, messagesPerConnection: 10, messageRate: null, connectionRate: null, recipientsPerMessage: rpm, tlsRequired: false },
    limits: { messageRate: null, maxConnections: null }, rules: [], feedbackLoop: false, recovery: { step: 0.1, intervalMs: 60_000 },
  };
}

const providers = [
  provider("google", ["gmail.com", "googlemail.com"], ["google.com", "googlemail.com"]),
  provider("microsoft", ["outlook.com"], ["mail.protection.outlook.com"]),
  provider("outlook-consumer", [], ["olc.protection.outlook.com"]),
  provider("default", [], []),
];

test("hostMatches works on label boundaries only", () => {
  assert.ok(hostMatches("aspmx.l.google.com", "google.com"));
  assert.ok(hostMatches("google.com.", ".google.com"));
  assert.ok(!hostMatches("notgoogle.com", "google.com"));
});

test("provider by recipient domain, then by MX rollup, else default", () => {
  assert.equal(providerFor(providers, "gmail.com", []), "google");
  assert.equal(providerFor(providers, "mail.gmail.com", []), "google");
  const ws = [{ host: "aspmx.l.google.com", preference: 1 }, { host: "alt1.aspmx.l.google.com", preference: 5 }];
  assert.equal(providerFor(providers, "acme.example", ws), "google");
  assert.equal(providerFor(providers, "other.example", ws), "google", "two domains on one MX suffix share the provider");
  assert.equal(providerFor(providers, "x.example", [{ host: "x-example.mail.protection.outlook.com", preference: 0 }]), "microsoft");
  assert.equal(providerFor(providers, "y.example", [{ host: "mx.y.example", preference: 10 }]), "default");
});

test("MX rollup needs every lowest-preference host to match; backups do not count", () => {
  const mixed = [{ host: "aspmx.l.google.com", preference: 1 }, { host: "mx.self.example", preference: 1 }];
  assert.equal(providerFor(providers, "a.example", mixed), "default");
  const backup = [{ host: "aspmx.l.google.com", preference: 1 }, { host: "backup.secondary.example", preference: 50 }];
  assert.equal(providerFor(providers, "b.example", backup), "google");
  const overlap = [{ host: "x.olc.protection.outlook.com", preference: 1 }];
  assert.equal(providerFor([...providers, provider("outlook-all", [], ["protection.outlook.com"])], "c.example", overlap), "outlook-consumer", "longest suffix wins");
});

function env(rcpts: string[], extra: Partial<Envelope> = {}): Envelope {
  return {
    v: 1, id: "0123456789abcdefghjk", part: 0, pool: "mail/p", domain: "sender.test", mailFrom: "app@sender.test",
    returnPath: "b-0123456789abcdefghjk@bounces.sender.test", rcpts, body: { subject: "mf.body.0123456789abcdefghjk" },
    size: 100, submitter: "net:127.0.0.0/8", acceptedAt: 1000, attempts: 0, ...extra,
  };
}

test("split: part numbers per domain are deterministic and disjoint", () => {
  const rcpts = ["a@x.test", "b@y.test", "c@x.test", "d@x.test", "e@z.test"];
  assert.deepEqual(groupByDomain(rcpts).map((g) => [g.domain, g.base, g.rcpts.length]), [["x.test", 1, 3], ["y.test", 4, 1], ["z.test", 5, 1]]);
  const decide = (d: string): RouteDecision =>
    d === "z.test" ? { kind: "bounce", reply: nullMxReply(d) } : { kind: "deliver", provider: d === "x.test" ? "google" : "default", mx: [`mx.${d}`], recipientsPerMessage: 2 };
  const r = splitEnvelope(env(rcpts), decide);
  assert.deepEqual(r.parts.map((p) => [p.part, p.provider, p.rcpts]), [[1, "google", ["a@x.test", "c@x.test"]], [2, "google", ["d@x.test"]], [4, "default", ["b@y.test"]]]);
  assert.equal(r.bounces.length, 1);
  assert.equal(r.bounces[0]!.part, 5);
  assert.equal(r.bounces[0]!.class, "bad-domain");
  // a second run with one recipient per message gives different chunks but never reuses a number
  const r2 = splitEnvelope(env(rcpts), (d) => ({ ...(decide(d) as { kind: "deliver"; provider: string; mx: string[] }), kind: "deliver", recipientsPerMessage: 1 }));
  assert.deepEqual(r2.parts.map((p) => p.part), [1, 2, 3, 4, 5]);
});

test("split: domains routed earlier are skipped, failed DNS waits", () => {
  const r = splitEnvelope(env(["a@x.test", "b@y.test"], { routed: ["x.test"] }), (d) =>
    d === "y.test" ? { kind: "retry", reply: "451 4.4.3 later" } : { kind: "deliver", provider: "default", mx: [], recipientsPerMessage: 5 });
  assert.equal(r.parts.length, 0);
  assert.deepEqual(r.retry, [{ domain: "y.test", rcpts: ["b@y.test"], reply: "451 4.4.3 later" }]);
});

test("a pool warming a provider sends one recipient per transaction to it (quotas count recipients, slots count transactions)", () => {
  const lane = (provider: string, dailyQuota: number | null, hourlyQuota: number | null = null) => ({
    address: "192.0.2.1", provider, state: "Healthy" as const, shape: providers[0]!.lane, dailyQuota, hourlyQuota, stage: dailyQuota === null ? null : 0,
  });
  const pool = (lanes: ReturnType<typeof lane>[]) => ({
    id: "mail/p", namespace: "mail", name: "p", addresses: [], egress: { mode: "PerAddress" as const, bindAddress: true }, overflowPool: null, warmup: null, lanes,
  });
  const google = providers[0]!;
  assert.equal(recipientsPerTransaction(google, quotaProvidersOf(undefined)), 50);
  assert.equal(recipientsPerTransaction(google, quotaProvidersOf(pool([lane("google", null)]))), 50);
  assert.equal(recipientsPerTransaction(google, quotaProvidersOf(pool([lane("microsoft", 100), lane("google", null)]))), 50, "another provider's quota");
  assert.equal(recipientsPerTransaction(google, quotaProvidersOf(pool([lane("google", 100)]))), 1);
  assert.equal(recipientsPerTransaction(google, quotaProvidersOf(pool([lane("google", null, 10)]))), 1, "an hourly quota alone");
  // Through the route decision and the split: 3 gmail recipients, 3 parts.
  const d = Router.decision("gmail.com", { kind: "mx", hosts: [{ host: "gmail-smtp-in.l.google.com", preference: 5 }] }, providers, quotaProvidersOf(pool([lane("google", 100)])));
  assert.deepEqual(d.kind === "deliver" && d.recipientsPerMessage, 1);
  const env = { id: "q1", part: 0, rcpts: ["a@gmail.com", "b@gmail.com", "c@gmail.com"] } as unknown as Envelope;
  assert.equal(splitEnvelope(env, () => d).parts.length, 3);
  const bulk = Router.decision("gmail.com", { kind: "mx", hosts: [{ host: "gmail-smtp-in.l.google.com", preference: 5 }] }, providers, quotaProvidersOf(pool([lane("google", null)])));
  assert.equal(splitEnvelope(env, () => bulk).parts.length, 1);
});

test("backoff: exponential with jitter, capped, last try at expiry", () => {
  const p = { expiryMs: 100_000, retryBaseMs: 1000, retryMaxMs: 8000 };
  assert.equal(retryDelayMs(1, p, () => 0), 500);
  assert.equal(retryDelayMs(1, p, () => 1), 1000);
  assert.equal(retryDelayMs(3, p, () => 1), 4000);
  assert.equal(retryDelayMs(10, p, () => 1), 8000);
  for (let i = 0; i < 100; i++) {
    const d = retryDelayMs(4, p);
    assert.ok(d >= 4000 && d <= 8000);
  }
  assert.deepEqual(nextAttempt(0, 1, 99_900, p, () => 1), { at: 100_000 });
  assert.deepEqual(nextAttempt(0, 5, 100_000, p), { expired: true });
});
