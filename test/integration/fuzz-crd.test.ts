// Fuzzing the custom-resource validation (fast-check): near-valid and invalid objects of all four
// kinds, made by mutating valid ones (a field removed, a value of the wrong type, a number at or
// past its bounds, a string from the field's family that may or may not be valid: addresses,
// CIDRs, DNS names, durations, rates, URLs, reply codes; lists emptied, grown past their limit,
// with a duplicate), run through api/validate.ts (zod) and through a real kube-apiserver with the
// CRDs from crds/ (dry-run create: schema, CEL). Invariants: the two agree on valid vs invalid,
// and every refusal names a field.
//
// Where they legitimately differ the difference is documented in api/README.md ("zod and the API
// server") and left out of the comparison here (KNOWN_DIFFERENCES below, each with its reason).
// Budget: MAILFLEET_CRD_FUZZ_RUNS objects against the API server (default 200), 10x that against
// zod alone; MAILFLEET_FUZZ_SEED replays a failure (the seed is printed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { ValidationError, validateObject } from "../../api/validate.ts";
import { startControlPlane, type ControlPlane } from "../env/controlplane.ts";

const ROOT = join(import.meta.dirname, "..", "..");
const NS = "fuzz";
type J = any;

// ---- valid objects to start from ----------------------------------------------------------------

const meta = (name: string, namespaced = true) => ({ name, ...(namespaced ? { namespace: NS } : {}) });
const BASES: J[] = [
  {
    apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: meta("google", false),
    spec: {
      displayName: "Google (Gmail and Workspace)",
      match: { domains: ["gmail.com", "googlemail.com"], mxSuffixes: ["google.com"] },
      shaping: { maxConnections: 5, messagesPerConnection: 50, messageRate: "600/min", connectionRate: "30/min", recipientsPerMessage: 50, tls: "Required" },
      limits: { messageRate: "100000/h", maxConnections: 200 },
      responseRules: [
        { name: "unusual-rate", match: { enhancedCode: "4.7.28" }, action: "SuspendLane", duration: "10m" },
        { name: "reputation", match: { code: "421", text: "low reputation" }, action: "SlowDown", factor: 0.25, duration: "1h" },
        { name: "cap", match: { class: "rate-limited" }, action: "CapConnections", connections: 2, duration: "30m" },
        { name: "auth", match: { enhancedCode: "5.7.26" }, action: "Classify", classifyAs: "auth-failure" },
        { name: "bounce", match: { code: "550" }, action: "Bounce" },
      ],
      feedbackLoop: "None",
      recovery: { step: 0.1, interval: "1m" },
    },
  },
  { apiVersion: "mailfleet.io/v1alpha1", kind: "MailboxProvider", metadata: meta("default", false), spec: { shaping: { maxConnections: 2 } } },
  {
    apiVersion: "mailfleet.io/v1alpha1", kind: "WarmupSchedule", metadata: meta("standard"),
    spec: {
      period: "24h",
      stages: [{ day: 1, daily: 50 }, { day: 2, daily: 100, hourly: 20 }, { day: 5, daily: 800 }, { day: 30, daily: 175000 }],
      providers: [{ provider: "google", stages: [{ day: 1, daily: 20, hourly: 5 }, { day: 3, daily: 100 }] }],
      advance: { minUsage: 0.5, maxBounceRate: 0.05, maxDeferralRate: 0.2, maxComplaintRate: 0.001, minSample: 20 },
      onFailure: { action: "StepBack", stepBackAfter: 2, stepBackBy: 1 },
    },
  },
  {
    apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: meta("marketing"),
    spec: {
      addresses: [{ address: "192.0.2.11", hostname: "mta11.news.example.com", nodeName: "node-a", limits: { messageRate: "2000/h", maxConnections: 8 } }, { address: "2001:db8::12", hostname: "mta12.news.example.com" }],
      warmupScheduleRef: { name: "standard" },
      overflowPoolRef: { name: "transactional" },
      egress: { mode: "PerAddress", bindAddress: false },
      relay: {
        workload: "Deployment", replicas: 2,
        autoscaling: { minReplicas: 1, maxReplicas: 4, targetCPUUtilizationPercentage: 70, targetQueueDepth: 1000 },
        image: "registry.example.com/mailfleet/relay:1.0", resources: { requests: { cpu: "100m" } }, nodeSelector: { "mail/egress": "true" },
        tolerations: [{ key: "mail", operator: "Exists" }],
        submission: { port: 587, tlsSecretRef: { name: "relay-tls" }, maxMessageSize: "25Mi" },
        inboundPort: 25, terminationGracePeriodSeconds: 60,
      },
      reputation: { window: "24h", warnBounceRate: 0.05, pauseBounceRate: 0.1, warnComplaintRate: 0.001, pauseComplaintRate: 0.005, resumeAfter: "24h", blocklists: ["zen.spamhaus.org"] },
    },
  },
  {
    apiVersion: "mailfleet.io/v1alpha1", kind: "SendingDomain", metadata: meta("news"),
    spec: {
      domain: "news.example.com",
      poolRef: { name: "marketing" },
      dkim: { keyTypes: ["RSA2048", "Ed25519"], selectorPrefix: "mf", rotationPeriod: "2160h", overlap: "168h" },
      returnPath: { domain: "bounces.news.example.com", verp: true, mxHosts: ["mx1.example.com"] },
      spf: { include: ["_spf.google.com"], policy: "~all" },
      dmarc: { policy: "quarantine", rua: ["mailto:dmarc@example.com"], alignment: "relaxed", publish: true },
      listUnsubscribe: { mode: "OneClick", url: "https://unsub.example.com/u/{token}", mailto: "unsub@example.com" },
      feedbackId: { senderId: "mfleet01" },
      senders: { credentials: [{ secretRef: { name: "app" } }], trustedNetworks: ["10.0.0.0/8", "2001:db8::/32"], rateLimit: "100/s" },
      bounces: { notifySender: true },
      suppression: { onSubmit: "Refuse", complaintTTL: "8760h", unsubscribeTTL: "8760h", hardBounceTTL: "2160h" },
      webhooks: [{ name: "events", url: "https://hooks.example.com/mail", secretRef: { name: "hook", key: "secret" }, events: ["delivered", "bounced"] }],
    },
  },
];

// ---- value families: strings a field of that kind might be given, valid or nearly -----------------

const FAMILIES: Record<string, (string | number | boolean | null | J)[]> = {
  ip: ["192.0.2.1", "10.0.0.256", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "010.1.1.1", "1.2.3", "2001:db8::/32", " 192.0.2.1", "192.0.2.1\n", "0.0.0.0", "[::1]", "2001:0db8:0000::1", "1.2.3.4.5", "", "::"],
  cidr: ["10.0.0.0/8", "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/ 8", "::/0", "::1/128", "::1/129", "fe80::1%eth0/64", "10.0.0.0", "0.0.0.0/0", "::ffff:1.2.3.4/120", "010.0.0.0/8", "10.0.0.0/-1", ""],
  dns: ["mail.example.com", "Example.com", "ex_ample.com", "-a.com", "a-.com", "a..b", "a.b.", "xn--bcher-kva.example", `${"a".repeat(63)}.com`, `${"a".repeat(64)}.com`, `${"a.".repeat(126)}ab`, `${"a.".repeat(126)}abc`, "münchen.de", "a.com\n", " a.com", "com", "1.2.3.4", "", "a"],
  name: ["ok", "Bad", "a_b", "a.b", "-a", "a-", "a".repeat(253), "a".repeat(254), "", "0", "a b", "default"],
  rulename: ["ok", "Bad", "a.b", "-a", "a".repeat(63), "a".repeat(64), "", "a_b"],
  duration: ["90s", "1h30m", "1.5h", "0s", "0", "10", "1d", "1w", "-1h", "1h ", "1H", "", "5ms", "1.h", "2160h", "1e3s", "1h1h1h", "9".repeat(33)],
  rate: ["600/min", "1/s", "0/s", "01/s", "10/second", "5/hours", "10/ s", "100000/day", "9999999999/h", "10000000000/h", "1/sec", "1/minute", "1/hour", "1/Min", "/s", ""],
  url: ["https://x.test/u/{token}", "http://x.test/hook", "https://", "https://x test", "https://x.test/\u00a0", "https://x.test/<a>", "ftp://x.test", "https://x.test\n", "https://x.test/\u2003", `https://x.test/${"p".repeat(1020)}`],
  email: ["a@b.test", "a@@b", "a b@c.test", "mailto:a@b.test", "a@b\u00a0c", "a@b\u2028c", "@b.test", "a@", `${"a".repeat(320)}@b`],
  rua: ["mailto:dmarc@example.com", "dmarc@example.com", "mailto:a b@c", "mailto:a@b\u00a0c", "mailto:@b", "mailto:a@"],
  code: ["421", "999", "42", "4210", " 421", "199", "550"],
  enhanced: ["4.7.28", "4.7.1000", "6.0.0", "4.7", "5.7.1 ", "4.07.28"],
  selector: ["mf", "MF", "m-f", "-mf", "mf-", "a".repeat(24), "a".repeat(25), ""],
  senderId: ["mfleet01", "a.b_c-d", "a:b", "", "a".repeat(64), "a".repeat(65)],
  key: ["secret", "a.b_c-d", "a/b", "", "a b"],
  quantity: ["25Mi", "1.5Gi", "10M", "abc", "25 Mi", 1.5, -1, 26214400, "x".repeat(33), "1e3", ""],
  text: ["", "x", "\\[TSS04\\]", "(unclosed", "😀".repeat(70), "é".repeat(129), "a".repeat(512), "a".repeat(513), "😀".repeat(300)],
  display: ["", "Google", "😀".repeat(64), "😀".repeat(65), "é".repeat(128), "é".repeat(129), "a\nb"],
};

/** The family of the value at a path, from the key naming it (or its list's key). */
function familyOf(path: (string | number)[]): string | undefined {
  const keys = path.filter((p): p is string => typeof p === "string");
  const key = keys[keys.length - 1] ?? "";
  const parent = keys[keys.length - 2] ?? "";
  if (key === "address") return "ip";
  if (key === "trustedNetworks") return "cidr";
  if (["hostname", "domain", "domains", "mxSuffixes", "blocklists", "mxHosts", "include"].includes(key)) return "dns";
  if (key === "name" && parent === "responseRules") return "rulename";
  if (["name", "nodeName", "provider"].includes(key)) return "name";
  if (/Rate$/.test(key) && typeof path[path.length - 1] === "string" && ["messageRate", "connectionRate"].includes(key)) return "rate";
  if (key === "rateLimit") return "rate";
  if (["period", "duration", "interval", "window", "resumeAfter", "rotationPeriod", "overlap", "complaintTTL", "unsubscribeTTL", "hardBounceTTL"].includes(key)) return "duration";
  if (key === "url") return "url";
  if (key === "mailto") return "email";
  if (key === "rua") return "rua";
  if (key === "code") return "code";
  if (key === "enhancedCode") return "enhanced";
  if (key === "selectorPrefix") return "selector";
  if (key === "senderId") return "senderId";
  if (key === "key") return "key";
  if (key === "maxMessageSize") return "quantity";
  if (key === "text" || key === "image") return "text";
  if (key === "displayName") return "display";
  return undefined;
}

const NUMBERS = [0, -1, 1, 1.5, 0.5, 2, 63, 64, 100, 101, 1000, 1001, 65535, 65536, 86400, 86401, 100000, 100001, 1e8, 1e8 + 1, 1e9, 2 ** 53, -0.1, 1e21, 0.999, 1.0000001];
const WRONG_TYPES: J[] = ["x", 1, true, null, [], {}, "1", ["x"], { a: 1 }];

// ---- mutations --------------------------------------------------------------------------------------

type Mutation = { at: number; op: number; pick: number };

function paths(v: J, prefix: (string | number)[] = []): (string | number)[][] {
  const out: (string | number)[][] = [];
  if (Array.isArray(v)) v.forEach((x, i) => { out.push([...prefix, i]); out.push(...paths(x, [...prefix, i])); });
  else if (v && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      if (prefix.length === 0 && (k === "apiVersion" || k === "kind")) continue;
      if (prefix.length === 1 && prefix[0] === "metadata" && k !== "name") continue;
      // metadata is Kubernetes' (ObjectMeta), not ours: only its name is mutated.
      if (!(prefix.length === 0 && k === "metadata")) out.push([...prefix, k]);
      out.push(...paths(x, [...prefix, k]));
    }
  }
  return out;
}

function getAt(v: J, p: (string | number)[]): J {
  return p.reduce((o, k) => (o == null ? undefined : o[k]), v);
}

/** Applies one mutation; returns what it did (for the report). */
function mutate(obj: J, m: Mutation): string {
  const all = paths(obj);
  if (all.length === 0) return "nothing";
  const p = all[m.at % all.length]!;
  const parent = getAt(obj, p.slice(0, -1));
  const last = p[p.length - 1]!;
  const cur = parent[last];
  const where = p.join(".");
  const fam = familyOf(p);
  switch (m.op % 9) {
    case 0: // remove
      if (Array.isArray(parent)) parent.splice(last as number, 1);
      else delete parent[last];
      return `removed ${where}`;
    case 1: // wrong type
      parent[last] = structuredClone(WRONG_TYPES[m.pick % WRONG_TYPES.length]);
      return `${where} = ${JSON.stringify(parent[last])}`;
    case 2: case 3: case 4: // a value of the field's family (or a boundary number)
      if (typeof cur === "number") parent[last] = NUMBERS[m.pick % NUMBERS.length];
      else if (fam) { const f = FAMILIES[fam]!; parent[last] = structuredClone(f[m.pick % f.length]); }
      else if (typeof cur === "string") parent[last] = [cur.toUpperCase(), "", ` ${cur}`, `${cur}\n`, "x".repeat(300), "😀".repeat(200)][m.pick % 6];
      else if (typeof cur === "boolean") parent[last] = !cur;
      else parent[last] = structuredClone(WRONG_TYPES[m.pick % WRONG_TYPES.length]);
      return `${where} = ${JSON.stringify(parent[last]).slice(0, 80)}`;
    case 5: // lists: empty, duplicate, or grown past a limit
      if (Array.isArray(cur)) {
        const n = m.pick % 3;
        if (n === 0) parent[last] = [];
        else if (n === 1 && cur.length) cur.push(structuredClone(cur[0]));
        else if (cur.length) parent[last] = Array.from({ length: [9, 17, 33, 65, 101, 257, 513][m.pick % 7]! }, (_, i) => (typeof cur[0] === "object" ? structuredClone(cur[i % cur.length]) : cur[i % cur.length]));
        return `${where}: ${["emptied", "duplicated first", "grown"][n]} (${(parent[last] as J[]).length})`;
      }
      parent[last] = null;
      return `${where} = null`;
    case 6: // strings from any family (a value where another kind of value belongs)
      { const fams = Object.values(FAMILIES); const f = fams[m.pick % fams.length]!; parent[last] = structuredClone(f[Math.floor(m.pick / fams.length) % f.length]); }
      return `${where} = ${JSON.stringify(parent[last]).slice(0, 80)}`;
    case 7: // objects: drop every optional-looking key but one
      if (cur && typeof cur === "object" && !Array.isArray(cur)) {
        const keys = Object.keys(cur);
        const keep = keys[m.pick % keys.length];
        parent[last] = keep === undefined ? {} : { [keep]: cur[keep] };
        return `${where} reduced to {${keep ?? ""}}`;
      }
      parent[last] = null;
      return `${where} = null`;
    default: // enum and CEL cross-field: swap a string with a sibling's value
      { const sib = Array.isArray(parent) ? parent : Object.values(parent); const other = sib[m.pick % sib.length]; parent[last] = structuredClone(other); }
      return `${where} = sibling ${JSON.stringify(parent[last]).slice(0, 60)}`;
  }
}

const caseArb = fc.record({
  base: fc.nat(),
  name: fc.nat(),
  mutations: fc.array(fc.record({ at: fc.nat(), op: fc.nat(), pick: fc.nat() }), { minLength: 0, maxLength: 3 }),
});
type Case = typeof caseArb extends fc.Arbitrary<infer C> ? C : never;

function build(c: Case): { obj: J; did: string[] } {
  const base = BASES[c.base % BASES.length]!;
  const obj = structuredClone(base);
  // distinct names so dry runs never collide; MailboxProvider "default" keeps its name
  if (obj.metadata.name !== "default") obj.metadata.name = `fz-${c.name % 100000}`;
  const did = c.mutations.map((m) => mutate(obj, m));
  return { obj, did };
}

// ---- the two validators ------------------------------------------------------------------------------

type Verdict = { ok: boolean; fields: string[]; message: string };

function zodVerdict(obj: J): Verdict {
  try {
    validateObject(structuredClone(obj));
    return { ok: true, fields: [], message: "" };
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    return { ok: false, fields: e.issues.map((i) => i.path), message: e.message };
  }
}

async function apiVerdict(cp: ControlPlane, obj: J): Promise<Verdict> {
  const plural = { MailboxProvider: "mailboxproviders", WarmupSchedule: "warmupschedules", IPPool: "ippools", SendingDomain: "sendingdomains" }[obj.kind as string];
  const path = obj.kind === "MailboxProvider" ? `/apis/mailfleet.io/v1alpha1/${plural}` : `/apis/mailfleet.io/v1alpha1/namespaces/${NS}/${plural}`;
  const r = await cp.request("POST", `${path}?dryRun=All`, obj);
  if (r.status === 201) return { ok: true, fields: [], message: "" };
  if (r.status !== 422 && r.status !== 400) throw new Error(`API server answered ${r.status}: ${r.body.slice(0, 500)}`);
  const message = String(r.json().message ?? r.body);
  // Field paths ("spec.addresses[0].address: Invalid value"), or for a value that does not even
  // decode, the Go field ("cannot unmarshal number into Go struct field ObjectMeta.name").
  const fields = [...message.matchAll(/\b((?:spec|metadata)(?:[.[][^:\s]*)?):/g), ...message.matchAll(/Go struct field (\S+) of type/g)].map((m) => m[1]!);
  return { ok: false, fields, message };
}

/** A refusal names a field: zod issues carry a path; the API server's message a field path. */
function namesAField(v: Verdict): boolean {
  return v.fields.length > 0 && v.fields.every((f) => f.length > 0);
}

// Where zod and the API server may legitimately disagree (documented in api/README.md): a
// function of the object that says why, or undefined.
const KNOWN_DIFFERENCES: ((obj: J, zod: Verdict, api: Verdict) => string | undefined)[] = [];

function explained(obj: J, z: Verdict, a: Verdict): string | undefined {
  for (const k of KNOWN_DIFFERENCES) {
    const why = k(obj, z, a);
    if (why) return why;
  }
  return undefined;
}

// ---- the tests ------------------------------------------------------------------------------------------

const seed = Number(process.env.MAILFLEET_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const apiRuns = Number(process.env.MAILFLEET_CRD_FUZZ_RUNS ?? 200);

test("custom-resource validation: zod alone, every refusal names a field", () => {
  for (const b of BASES) assert.equal(zodVerdict(b).ok, true, `base ${b.kind}/${b.metadata.name}: ${zodVerdict(b).message}`);
  try {
    fc.assert(fc.property(caseArb, (c) => {
      const { obj, did } = build(c);
      const z = zodVerdict(obj);
      if (!z.ok) assert.ok(namesAField(z), `zod refused ${did.join("; ")} without naming a field: ${z.message}`);
    }), { seed, numRuns: apiRuns * 10 });
  } catch (e) {
    throw new Error(`replay: MAILFLEET_FUZZ_SEED=${seed}: ${(e as Error).message}`, { cause: e });
  }
});

test("custom-resource validation: zod and the real API server (CRD schema and CEL) agree", { timeout: 900_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "mailfleet-fuzz-crd-"));
  const cp = await startControlPlane({ dir, crdsDir: join(ROOT, "crds") });
  t.after(async () => {
    await cp.stop();
    if (!process.env.MAILFLEET_KEEP_STATE) await rm(dir, { recursive: true, force: true });
  });
  assert.equal((await cp.request("POST", "/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: NS } })).status, 201);
  for (const b of BASES) {
    const a = await apiVerdict(cp, b);
    assert.ok(a.ok, `base ${b.kind}/${b.metadata.name} refused by the API server: ${a.message}`);
  }
  t.diagnostic(`fast-check seed ${seed} (MAILFLEET_FUZZ_SEED=${seed} replays it), ${apiRuns} objects`);
  const stats = { valid: 0, invalid: 0, explained: new Map<string, number>() };
  try {
    await fc.assert(fc.asyncProperty(caseArb, async (c) => {
      const { obj, did } = build(c);
      const z = zodVerdict(obj);
      const a = await apiVerdict(cp, obj);
      const what = `${obj.kind} after ${did.join("; ") || "no mutation"}`;
      if (z.ok !== a.ok) {
        const why = explained(obj, z, a);
        if (why) {
          stats.explained.set(why, (stats.explained.get(why) ?? 0) + 1);
          return;
        }
        assert.fail(`${what}: zod says ${z.ok ? "valid" : `invalid (${z.message})`}, the API server ${a.ok ? "valid" : `invalid (${a.message})`}`);
      }
      if (a.ok) stats.valid++;
      else {
        stats.invalid++;
        assert.ok(namesAField(z), `${what}: zod's refusal names no field: ${z.message}`);
        assert.ok(namesAField(a), `${what}: the API server's refusal names no field: ${a.message}`);
      }
    }), { seed, numRuns: apiRuns });
  } catch (e) {
    throw new Error(`replay: MAILFLEET_FUZZ_SEED=${seed}: ${(e as Error).message}`, { cause: e });
  }
  t.diagnostic(`${stats.valid} valid and ${stats.invalid} invalid by both; known differences: ${JSON.stringify([...stats.explained])}`);
  assert.ok(stats.valid > 0 && stats.invalid > 0, "both valid and invalid objects were generated");
});
