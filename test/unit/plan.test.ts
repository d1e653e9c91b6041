import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parsePlan } from "../../api/plan.ts";
import { parseManifests } from "../../api/validate.ts";
import type { IPPool, MailboxProvider, MailfleetObject, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { type CompileInput, compilePlan } from "../../operator/plan/compile.ts";
import { problemsFor } from "../../operator/plan/problems.ts";

const root = join(import.meta.dirname, "..", "..");
const NOW = Date.parse("2026-11-27T12:00:00Z");

function examples(): MailfleetObject[] {
  const out: MailfleetObject[] = [];
  for (const f of readdirSync(join(root, "examples")).filter((f) => f.endsWith(".yaml")).sort()) {
    out.push(...parseManifests(readFileSync(join(root, "examples", f), "utf8")).mailfleet);
  }
  // Objects as the API server would return them: created one second apart, in file order.
  out.forEach((o, i) => (o.metadata.creationTimestamp = new Date(Date.parse("2026-11-01T00:00:00Z") + i * 1000).toISOString()));
  return out;
}

function input(objs: MailfleetObject[], extra: Partial<CompileInput> = {}): CompileInput {
  return {
    providers: objs.filter((o): o is MailboxProvider => o.kind === "MailboxProvider"),
    schedules: objs.filter((o): o is WarmupSchedule => o.kind === "WarmupSchedule"),
    pools: objs.filter((o): o is IPPool => o.kind === "IPPool"),
    domains: objs.filter((o): o is SendingDomain => o.kind === "SendingDomain"),
    credentials: [{ namespace: "mail", secretName: "app-smtp", username: "app", hash: "scrypt$16384$8$1$c2FsdA==$aGFzaA==" }],
    previous: null,
    now: NOW,
    ...extra,
  };
}

describe("plan compiler", () => {
  it("compiles the examples into a valid plan", () => {
    const { plan, problems } = compilePlan(input(examples()));
    assert.deepEqual(problems, []);
    parsePlan(JSON.parse(JSON.stringify(plan)));
    assert.equal(plan.pools.length, 2);
    assert.equal(plan.domains.length, 3);
    const providers = plan.providers.map((p) => p.name);
    assert.ok(providers.includes("default") && providers.includes("google"));
    const marketing = plan.pools.find((p) => p.id === "mail/marketing")!;
    assert.equal(marketing.lanes.length, 2 * plan.providers.length);
    const gmail = marketing.lanes.find((l) => l.address === "127.0.1.11" && l.provider === "google")!;
    assert.deepEqual([gmail.stage, gmail.dailyQuota, gmail.hourlyQuota], [0, 20, 5]);
    const yahoo = marketing.lanes.find((l) => l.provider === "yahoo")!;
    assert.deepEqual([yahoo.dailyQuota, yahoo.hourlyQuota], [50, 5]);
    const transactional = plan.pools.find((p) => p.id === "mail/transactional")!;
    assert.equal(transactional.lanes[0]!.dailyQuota, null, "a pool without a schedule has no warm-up quota");
    assert.deepEqual(plan.submitters.credentials[0]!.domains, ["example.com", "news.example.com"]);
    assert.ok(plan.submitters.networks.some((n) => n.cidr === "127.0.0.0/8" && n.domains.length === 3));
  });

  it("revision depends on content only", () => {
    const a = compilePlan(input(examples())).plan;
    const b = compilePlan(input(examples(), { now: NOW + 3_600_000 })).plan;
    assert.equal(a.revision, b.revision);
    assert.notEqual(a.generatedAt, b.generatedAt);
    const objs = examples();
    (objs.find((o) => o.kind === "IPPool") as IPPool).spec.addresses.push({ address: "127.0.1.3", hostname: "mta3.mail.example.com" });
    assert.notEqual(compilePlan(input(objs)).plan.revision, a.revision);
  });

  it("the newer of two pools claiming an address does not take effect, and keeps its last good entry", () => {
    const objs = examples();
    const first = compilePlan(input(objs)).plan;
    const intruder = structuredClone(objs.find((o) => o.kind === "IPPool" && o.metadata.name === "marketing") as IPPool);
    intruder.metadata.name = "intruder";
    intruder.metadata.creationTimestamp = "2026-11-20T00:00:00Z";
    intruder.spec.addresses = [{ address: "127.0.1.1", hostname: "x.example.com" }];
    const { plan, problems } = compilePlan(input([...objs, intruder], { previous: first }));
    assert.equal(problems.length, 1);
    assert.equal(problems[0]!.reason, "AddressConflict");
    assert.equal(problems[0]!.id, "mail/intruder");
    assert.equal(problems[0]!.field, "spec.addresses[0].address");
    assert.ok(!plan.pools.some((p) => p.id === "mail/intruder"));
    assert.equal(plan.pools.length, 2);

    // A pool that was good and turns bad keeps the entry from the plan in force.
    const broken = structuredClone(objs);
    const mk = broken.find((o) => o.kind === "IPPool" && o.metadata.name === "marketing") as IPPool;
    mk.spec.warmupScheduleRef = { name: "missing" };
    const after = compilePlan(input(broken, { previous: first }));
    assert.equal(after.problems[0]!.reason, "MissingReference");
    assert.deepEqual(after.plan.pools.find((p) => p.id === "mail/marketing"), first.pools.find((p) => p.id === "mail/marketing"));
  });

  it("refuses a second declaration of a domain (webhook view)", () => {
    const objs = examples();
    const dup = structuredClone(objs.find((o) => o.kind === "SendingDomain") as SendingDomain);
    dup.metadata.name = "dup";
    const problems = problemsFor(dup, input(objs));
    assert.equal(problems[0]!.reason, "DomainConflict");
    assert.match(problems[0]!.message, /already declared by SendingDomain mail\/example-com/);
  });

  it("detects overflow cycles", () => {
    const objs = examples();
    const tx = objs.find((o) => o.kind === "IPPool" && o.metadata.name === "transactional") as IPPool;
    tx.spec.overflowPoolRef = { name: "marketing" };
    const { problems } = compilePlan(input(objs));
    assert.equal(problems.length, 1);
    assert.equal(problems[0]!.reason, "OverflowCycle");
  });

  it("address limits reach pools[].addresses[].limits, converted as provider limits are", () => {
    const objs = examples();
    const mk = objs.find((o) => o.kind === "IPPool" && o.metadata.name === "marketing") as IPPool;
    const [a11, a12] = mk.spec.addresses as [IPPool["spec"]["addresses"][number], IPPool["spec"]["addresses"][number]];
    a11.limits = { messageRate: "2000/h", maxConnections: 10 };
    a12.limits = { maxConnections: 3 };
    const google = objs.find((o) => o.kind === "MailboxProvider" && o.metadata.name === "google") as MailboxProvider;
    google.spec.limits = { messageRate: "2000/h", maxConnections: 10 };
    const { plan, problems } = compilePlan(input(objs));
    assert.deepEqual(problems, []);
    parsePlan(JSON.parse(JSON.stringify(plan)));
    const addrs = plan.pools.find((p) => p.id === "mail/marketing")!.addresses;
    assert.deepEqual(addrs.find((a) => a.address === "127.0.1.11")!.limits, { messageRate: { count: 2000, periodMs: 3_600_000 }, maxConnections: 10 });
    assert.deepEqual(addrs.find((a) => a.address === "127.0.1.11")!.limits, plan.providers.find((p) => p.name === "google")!.limits, "same spec, same plan limits");
    assert.deepEqual(addrs.find((a) => a.address === "127.0.1.12")!.limits, { messageRate: null, maxConnections: 3 });
    // Without limits (or with an empty object) an address has no limits key: the plan and its
    // revision stay what they were before the field existed.
    a12.limits = {};
    const again = compilePlan(input(objs)).plan;
    assert.ok(!("limits" in again.pools.find((p) => p.id === "mail/marketing")!.addresses.find((a) => a.address === "127.0.1.12")!));
    for (const a of again.pools.find((p) => p.id === "mail/transactional")!.addresses) assert.ok(!("limits" in a), a.address);
    delete a11.limits;
    delete a12.limits;
    delete google.spec.limits;
    assert.equal(compilePlan(input(objs)).plan.revision, compilePlan(input(examples())).plan.revision);
  });

  it("a manual suspension wins and ends on time", () => {
    const objs = examples();
    const mk = objs.find((o) => o.kind === "IPPool" && o.metadata.name === "marketing") as IPPool;
    const until = new Date(NOW + 600_000).toISOString();
    mk.metadata.annotations = { "mailfleet.io/lane-overrides": JSON.stringify({ "127.0.1.11/google": { state: "Suspended", until, reason: "incident 42" } }) };
    const r = compilePlan(input(objs));
    const lane = r.plan.pools.find((p) => p.id === "mail/marketing")!.lanes.find((l) => l.address === "127.0.1.11" && l.provider === "google")!;
    assert.deepEqual([lane.state, lane.manual, lane.reason], ["Suspended", true, "incident 42"]);
    assert.equal(r.nextChangeAt, NOW + 600_000);
    const later = compilePlan(input(objs, { now: NOW + 600_001 }));
    const lane2 = later.plan.pools.find((p) => p.id === "mail/marketing")!.lanes.find((l) => l.address === "127.0.1.11" && l.provider === "google")!;
    assert.equal(lane2.state, "Healthy");
  });
});
