// Operator gauges read at scrape time (operator/runtime/metrics.ts): unverified DNS records per
// SendingDomain (alert MailfleetDnsNotVerified), its reputation pause and rates
// (MailfleetSendingDomainPaused) and the NATS connection (MailfleetNatsUnreachable),
// with the names and labels charts/mailfleet/METRICS.md lists.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Metrics, domainReputation, unverifiedRecords } from "../../operator/runtime/metrics.ts";

const sd = (name: string, domain: string, verified?: boolean[]) => ({
  metadata: { namespace: "mail", name },
  spec: { domain },
  ...(verified ? { status: { dnsRecords: verified.map((v) => ({ verified: v })) } } : {}),
});

/** A SendingDomain whose status has the reputation the warm-up engine writes (none when omitted). */
const rep = (name: string, domain: string, reputation?: Record<string, unknown>) => ({
  metadata: { namespace: "mail", name },
  spec: { domain },
  status: reputation ? { reputation } : { dnsRecords: [] },
});

describe("operator status gauges", () => {
  it("counts the records each domain's status lists that are not verified; a domain without records yet has no series", () => {
    assert.deepEqual(unverifiedRecords([sd("a", "a.example.com", [true, false, false]), sd("b", "b.example.com", [true, true]), sd("c", "c.example.com")]), [
      { sendingdomain: "mail/a", domain: "a.example.com", unverified: 2 },
      { sendingdomain: "mail/b", domain: "b.example.com", unverified: 0 },
    ]);
  });

  it("turns each domain's reputation into paused and its rates; no reputation yet, an absent or a null rate give no value", () => {
    assert.deepEqual(domainReputation([
      rep("a", "a.example.com", { state: "Paused", until: "2030-01-01T00:00:00Z", reason: "bounce rate 9% reached the pause threshold 8%", attempted: 500, bounceRate: 0.09, complaintRate: 0.0004 }),
      rep("b", "b.example.com", { state: "Healthy", attempted: 200, bounceRate: 0.01, complaintRate: null }),
      rep("c", "c.example.com", { state: "Healthy", attempted: 0 }),
      rep("d", "d.example.com"),
      sd("e", "e.example.com"),
    ]), [
      { sendingdomain: "mail/a", domain: "a.example.com", paused: true, bounceRate: 0.09, complaintRate: 0.0004 },
      { sendingdomain: "mail/b", domain: "b.example.com", paused: false, bounceRate: 0.01 },
      { sendingdomain: "mail/c", domain: "c.example.com", paused: false },
    ]);
  });

  it("exports paused, bounce and complaint rate per domain, current at each scrape", async () => {
    const m = new Metrics();
    let domains = [
      rep("a", "a.example.com", { state: "Paused", until: "2030-01-01T00:00:00Z", attempted: 500, bounceRate: 0.09, complaintRate: 0.0004 }),
      rep("b", "b.example.com", { state: "Healthy", attempted: 200, bounceRate: 0.01, complaintRate: null }),
      rep("d", "d.example.com"),
    ];
    m.sources.domainReputation = () => domainReputation(domains);
    let text = await m.registry.metrics();
    assert.match(text, /^mailfleet_operator_domain_paused\{sendingdomain="mail\/a",domain="a\.example\.com"\} 1$/m);
    assert.match(text, /^mailfleet_operator_domain_paused\{sendingdomain="mail\/b",domain="b\.example\.com"\} 0$/m);
    assert.match(text, /^mailfleet_operator_domain_bounce_rate\{sendingdomain="mail\/a",domain="a\.example\.com"\} 0\.09$/m);
    assert.match(text, /^mailfleet_operator_domain_bounce_rate\{sendingdomain="mail\/b",domain="b\.example\.com"\} 0\.01$/m);
    assert.match(text, /^mailfleet_operator_domain_complaint_rate\{sendingdomain="mail\/a",domain="a\.example\.com"\} 0\.0004$/m);
    assert.doesNotMatch(text, /^mailfleet_operator_domain_complaint_rate\{sendingdomain="mail\/b"/m, "a null complaint rate has no series");
    assert.doesNotMatch(text, /sendingdomain="mail\/d"/, "a domain without a reputation yet has no series");
    // The pause ends: a at 0, b deleted.
    domains = [rep("a", "a.example.com", { state: "Healthy", attempted: 0 })];
    text = await m.registry.metrics();
    assert.match(text, /^mailfleet_operator_domain_paused\{sendingdomain="mail\/a",domain="a\.example\.com"\} 0$/m);
    assert.doesNotMatch(text, /^mailfleet_operator_domain_(bounce|complaint)_rate\{/m, "rates the status no longer has go");
    assert.doesNotMatch(text, /sendingdomain="mail\/b"/, "a deleted domain's series go");
  });

  it("exports them on /metrics from their sources, current at each scrape", async () => {
    const m = new Metrics();
    let domains = [sd("a", "a.example.com", [false, false])];
    let up = false;
    m.sources.domainRecords = () => unverifiedRecords(domains);
    m.sources.natsConnected = () => up;
    let text = await m.registry.metrics();
    assert.match(text, /^mailfleet_operator_domain_records_unverified\{sendingdomain="mail\/a",domain="a\.example\.com"\} 2$/m);
    assert.match(text, /^mailfleet_operator_nats_connected 0$/m);
    domains = [sd("b", "b.example.com", [true])];
    up = true;
    text = await m.registry.metrics();
    assert.doesNotMatch(text, /sendingdomain="mail\/a"/, "a deleted domain's series goes");
    assert.match(text, /^mailfleet_operator_domain_records_unverified\{sendingdomain="mail\/b",domain="b\.example\.com"\} 0$/m);
    assert.match(text, /^mailfleet_operator_nats_connected 1$/m);
  });
});
