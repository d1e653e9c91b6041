// MX resolution by address family (relay/routing/resolver.ts): a lane asks for the MX hosts'
// addresses of its own family, and the two families are cached apart.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MxResolver } from "../../relay/routing/resolver.ts";
import type { DnsAnswer, DnsClient } from "../../relay/routing/dns.ts";

/** A zone as name -> type -> values; counts queries by "name/type". */
function zone(records: Record<string, Record<string, unknown[]>>) {
  const asked: string[] = [];
  const client = {
    async query(name: string, type: string): Promise<DnsAnswer> {
      asked.push(`${name}/${type}`);
      const byType = records[name];
      if (!byType) return { rcode: "NXDOMAIN", server: "x", authorities: [], answers: [] };
      return { rcode: "NOERROR", server: "x", authorities: [], answers: (byType[type] ?? []).map((data) => ({ name, type, ttl: 300, data })) } as DnsAnswer;
    },
  } as unknown as DnsClient;
  return { client, asked };
}

describe("resolver: address families", () => {
  it("A and AAAA answers are asked for and cached apart", async () => {
    const z = zone({ "mx.a.test": { A: ["192.0.2.1"], AAAA: ["2001:db8::1"] } });
    const r = new MxResolver({ client: z.client });
    assert.deepEqual(await r.addresses("mx.a.test"), ["192.0.2.1"]);
    assert.deepEqual(await r.addresses("mx.a.test", 6), ["2001:db8::1"]);
    assert.deepEqual(await r.addresses("MX.A.test.", 4), ["192.0.2.1"]);
    assert.deepEqual(await r.addresses("mx.a.test", 6), ["2001:db8::1"]);
    assert.deepEqual(z.asked, ["mx.a.test/A", "mx.a.test/AAAA"], "each family asked once");
  });

  it("implicit MX: a domain without MX whose only address is AAAA still takes mail (RFC 5321 §5.1)", async () => {
    const z = zone({ "v6.test": { AAAA: ["2001:db8::25"] }, "none.test": { TXT: ["x"] } });
    const r = new MxResolver({ client: z.client });
    assert.deepEqual(await r.route("v6.test"), { kind: "implicit", hosts: [{ host: "v6.test", preference: 0 }] });
    assert.deepEqual(await r.addresses("v6.test", 6), ["2001:db8::25"]);
    assert.deepEqual(await r.addresses("v6.test", 4), []);
    // The route's AAAA answer serves the IPv6 lookup; the IPv4 one asks (and finds none).
    assert.deepEqual(z.asked, ["v6.test/MX", "v6.test/A", "v6.test/AAAA", "v6.test/A"]);
    assert.deepEqual(await r.route("none.test"), { kind: "nomail" });
  });
});
