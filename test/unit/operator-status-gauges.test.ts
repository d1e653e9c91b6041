// Operator gauges read at scrape time (operator/runtime/metrics.ts): unverified DNS records per
// SendingDomain (alert MailfleetDnsNotVerified) and the NATS connection (MailfleetNatsUnreachable),
// with the names and labels charts/mailfleet/METRICS.md lists.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Metrics, unverifiedRecords } from "../../operator/runtime/metrics.ts";

const sd = (name: string, domain: string, verified?: boolean[]) => ({
  metadata: { namespace: "mail", name },
  spec: { domain },
  ...(verified ? { status: { dnsRecords: verified.map((v) => ({ verified: v })) } } : {}),
});

describe("operator status gauges", () => {
  it("counts the records each domain's status lists that are not verified; a domain without records yet has no series", () => {
    assert.deepEqual(unverifiedRecords([sd("a", "a.example.com", [true, false, false]), sd("b", "b.example.com", [true, true]), sd("c", "c.example.com")]), [
      { sendingdomain: "mail/a", domain: "a.example.com", unverified: 2 },
      { sendingdomain: "mail/b", domain: "b.example.com", unverified: 0 },
    ]);
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
