// The CLI's pure parts: tables, ages, TXT splitting and zone lines, queue subjects, selections,
// release targets, lane-state merging, override edits, warm-up rows, and where the fleet is found.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { age, table, when } from "../../cli/lib/output.ts";
import { quote, txtStrings, zoneLines } from "../../cli/lib/zone.ts";
import { parseQueueSubject } from "../../cli/lib/queue.ts";
import { editOverrides, laneViews } from "../../cli/lib/lanes.ts";
import { common, durationFlag } from "../../cli/lib/flags.ts";
import { resolveTarget } from "../../cli/lib/fleet.ts";
import { matches, parseSelection, type Item } from "../../cli/commands/queue/select.ts";
import { releaseTarget } from "../../cli/commands/queue/act.ts";
import { warmupLanes } from "../../cli/commands/warmup.ts";
import { runnerRelays } from "../../cli/commands/send-test.ts";
import { UsageError } from "../../cli/command.ts";
import type { Envelope } from "../../relay/queue/envelope.ts";
import type { IPPool, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import type { LanePlan } from "../../api/plan.ts";

test("table: aligned columns, capital headers, '-' for empty cells, no trailing spaces", () => {
  const t = table(["pool", "relays", "note"], [["mail/a", "1/2", undefined], ["mail/bb", 10, "x"]]);
  assert.equal(t, ["POOL     RELAYS  NOTE", "mail/a   1/2     -", "mail/bb  10      x"].join("\n"));
});

test("age and when", () => {
  assert.equal(age(45_000), "45s");
  assert.equal(age(192_000), "3m12s");
  assert.equal(age(7_500_000), "2h5m");
  assert.equal(age(3 * 86_400_000 + 4 * 3_600_000), "3d4h");
  assert.equal(when(10_000 + 120_000, 10_000), "in 2m");
  assert.equal(when(new Date(0).toISOString(), 60_000), "1m ago");
  assert.equal(when(undefined, 0), undefined);
});

test("TXT values are cut into 255-byte strings on character boundaries", () => {
  const key = "v=DKIM1; k=rsa; p=" + "A".repeat(392);
  const parts = txtStrings(key);
  assert.deepEqual(parts.map((p) => p.length), [255, 155]);
  assert.equal(parts.join(""), key);
  assert.deepEqual(txtStrings(""), [""]);
  const multi = txtStrings("é".repeat(200)); // 2 bytes each
  assert.ok(multi.every((p) => Buffer.byteLength(p) <= 255));
  assert.equal(multi.join(""), "é".repeat(200));
  assert.equal(quote('a"b\\c'), '"a\\"b\\\\c"');
});

test("zone lines: absolute names, TTL, MX priority, multi-string TXT in parentheses", () => {
  const lines = zoneLines([
    { purpose: "spf", type: "TXT", name: "example.com", value: "v=spf1 ip4:192.0.2.1 ~all" },
    { purpose: "dkim", type: "TXT", name: "s._domainkey.example.com", value: "p=" + "B".repeat(300) },
    { purpose: "return-path-mx", type: "MX", name: "bounces.example.com", value: "mta1.example.com", priority: 10 },
  ], 300);
  assert.match(lines[0]!, /^example\.com\.\s+300 IN TXT\s+"v=spf1 ip4:192\.0\.2\.1 ~all"$/);
  assert.match(lines[1]!, /^s\._domainkey\.example\.com\.\s+300 IN TXT\s+\( "p=B{253}"$/);
  assert.match(lines[2]!, /^\s+"B{47}" \)$/);
  assert.match(lines[3]!, /^bounces\.example\.com\.\s+300 IN MX\s+10 mta1\.example\.com\.$/);
});

test("queue subjects", () => {
  assert.deepEqual(parseQueueSubject("mf.q.mail_transactional.route"), { pool: "mail/transactional", kind: "route" });
  assert.deepEqual(parseQueueSubject("mf.q.mail_t~x.ready.gmx-webde"), { pool: "mail/t.x", kind: "ready", provider: "gmx-webde" });
  assert.deepEqual(parseQueueSubject("mf.q.mail_p.sched.0123456789abcdefghjk.3"), { pool: "mail/p", kind: "sched", qid: "0123456789abcdefghjk", part: 3 });
  assert.deepEqual(parseQueueSubject("mf.q.mail_p.held"), { pool: "mail/p", kind: "held" });
  assert.equal(parseQueueSubject("mf.ev.mail_p.delivered"), null);
  assert.equal(parseQueueSubject("mf.q.mail_p.ready"), null);
});

function env(over: Partial<Envelope> = {}): Envelope {
  return {
    v: 1, id: "0123456789abcdefghjk", part: 1, pool: "mail/p", domain: "example.com", mailFrom: "a@example.com", returnPath: "b@bounces.example.com",
    rcpts: ["Bob@Gmail.com"], rcptDomain: "gmail.com", provider: "google", body: { subject: "mf.body.x" }, size: 1, submitter: "net:127.0.0.0/8",
    acceptedAt: 0, attempts: 0, ...over,
  } as Envelope;
}
function item(kind: Item["kind"], e: Envelope, headers: Record<string, string> = {}): Item {
  return { seq: 1, subject: `mf.q.mail_p.${kind}`, kind, pool: "mail/p", storedAt: 0, headers, data: new Uint8Array(), env: e, ...(kind === "ready" ? { provider: e.provider! } : {}) };
}

test("selection: every given criterion must match; recipients case-insensitively", () => {
  const sel = (v: Record<string, unknown>, kinds: Item["kind"][] = ["ready", "held", "sched", "route"]) => parseSelection(v, kinds);
  const it = item("ready", env());
  assert.ok(matches(it, sel({})));
  assert.ok(matches(it, sel({ provider: ["google"], domain: ["EXAMPLE.com"] })));
  assert.ok(!matches(it, sel({ provider: ["yahoo"] })));
  assert.ok(matches(it, sel({ rcpt: ["bob@gmail.com"] })));
  assert.ok(matches(it, sel({ "rcpt-domain": ["gmail.com"] })));
  assert.ok(!matches(it, sel({ "rcpt-domain": ["yahoo.com"] })));
  assert.ok(!matches(it, sel({}, ["held"])), "kind not selected");
  // A part 0 (not routed): recipient domains come from the recipients.
  const p0 = item("route", env({ part: 0, rcptDomain: undefined, provider: undefined, rcpts: ["x@a.test", "y@b.test"] }));
  assert.ok(matches(p0, sel({ "rcpt-domain": ["b.test"] })));
  assert.ok(!matches(p0, sel({ provider: ["google"] })));
  assert.throws(() => sel({ qid: ["nope"] }), UsageError);
  assert.throws(() => sel({ rcpt: ["nope"] }), UsageError);
});

test("release goes back where a part was held from; a deferred part keeps its retry time", () => {
  const now = 1_000_000;
  assert.deepEqual(releaseTarget(item("held", env(), { "Mailfleet-Held-From": "mf.q.mail_p.ready.google" }), now), { subject: "mf.q.mail_p.ready.google" });
  const deferred = item("held", env({ notBefore: now + 60_000 }), { "Mailfleet-Held-From": "mf.q.mail_p.sched.0123456789abcdefghjk.1", "Mailfleet-Schedule-Target": "mf.q.mail_p.ready.google" });
  assert.deepEqual(releaseTarget(deferred, now), { subject: "mf.q.mail_p.sched.0123456789abcdefghjk.1", schedule: { at: new Date(now + 60_000), target: "mf.q.mail_p.ready.google" } });
  const due = item("held", env({ notBefore: now - 1 }), { "Mailfleet-Held-From": "mf.q.mail_p.sched.0123456789abcdefghjk.1" });
  assert.deepEqual(releaseTarget(due, now), { subject: "mf.q.mail_p.ready.google" });
  // No header (an older copy): from the envelope.
  assert.deepEqual(releaseTarget(item("held", env({ part: 0, provider: undefined })), now), { subject: "mf.q.mail_p.route" });
});

function pool(annotations: Record<string, string> = {}, lanes: NonNullable<IPPool["status"]>["lanes"] = []): IPPool {
  return {
    apiVersion: "mailfleet.io/v1alpha1", kind: "IPPool", metadata: { name: "p", namespace: "mail", annotations },
    spec: { addresses: [{ address: "192.0.2.1", hostname: "a.example" }] } as IPPool["spec"], status: { lanes },
  } as IPPool;
}
const shape = { maxConnections: 1, messagesPerConnection: 1, messageRate: null, connectionRate: null, recipientsPerMessage: 1, tlsRequired: false };
const lp = (provider: string, over: Partial<LanePlan> = {}): LanePlan => ({ address: "192.0.2.1", provider, state: "Healthy", shape, dailyQuota: null, hourlyQuota: null, stage: null, ...over });

test("lane views: plan (manual) wins, then shaper rules, then status; pending overrides", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  const views = laneViews({
    pool: pool({ "mailfleet.io/lane-overrides": JSON.stringify({ "192.0.2.1/yahoo": { state: "Suspended" } }) }, [
      { address: "192.0.2.1", provider: "apple", state: "Blocked", until: "2026-01-02T00:00:00Z", reason: "listed" },
    ]),
    plan: { lanes: [lp("google", { state: "Suspended", manual: true, reason: "by hand" }), lp("microsoft"), lp("yahoo"), lp("apple")] } as never,
    rules: [
      { pool: "mail/p", address: "192.0.2.1", provider: "microsoft", state: "Throttled", rule: "slow", action: "SlowDown", until: "2026-01-01T01:00:00Z", factor: 0.25, maxConnections: 1 },
      { pool: "mail/p", address: "192.0.2.1", provider: "google", state: "Suspended", rule: "unusual", action: "SuspendLane", until: "2026-01-01T00:10:00Z", factor: 0, maxConnections: 0 },
    ],
    now,
  });
  const by = Object.fromEntries(views.map((v) => [v.provider, v]));
  assert.deepEqual([by.google!.state, by.google!.source, by.google!.reason, by.google!.rule], ["Suspended", "manual", "by hand", "unusual"]);
  assert.deepEqual([by.microsoft!.state, by.microsoft!.source, by.microsoft!.rule, by.microsoft!.factor], ["Throttled", "shaper", "slow", 0.25]);
  assert.deepEqual([by.apple!.state, by.apple!.source, by.apple!.reason], ["Blocked", "status", "listed"]);
  assert.deepEqual([by.yahoo!.state, by.yahoo!.pending], ["Healthy", "suspension not in the plan yet"]);
  assert.equal(by.google!.pending, "resume not in the plan yet", "the plan is suspended by hand but the annotation no longer says so");
});

test("override edits: merge, null removes a field, a lane left with nothing is removed", () => {
  let o = editOverrides({}, "a/g", { state: "Suspended", until: "2026-01-01T00:00:00Z", reason: "r", by: "me" });
  assert.deepEqual(o, { "a/g": { state: "Suspended", until: "2026-01-01T00:00:00Z", reason: "r", by: "me" } });
  o = editOverrides(o, "a/g", { hold: true });
  o = editOverrides(o, "a/g", { state: null, until: null });
  assert.deepEqual(o, { "a/g": { reason: "r", by: "me", hold: true } });
  o = editOverrides(o, "a/g", { hold: null });
  assert.deepEqual(o, {});
});

test("warm-up rows: plan first, status for what only the engine knows, the schedule's next stage", () => {
  const schedule = {
    spec: { stages: [{ day: 1, daily: 50 }, { day: 3, daily: 200 }], providers: [{ provider: "google", stages: [{ day: 1, daily: 20, hourly: 5 }] }] },
  } as unknown as WarmupSchedule;
  const rows = warmupLanes({
    addresses: ["192.0.2.1"], providers: ["default", "google"], schedule,
    status: [{ address: "192.0.2.1", provider: "default", state: "Healthy", stage: 0, day: 1, sentToday: 30, bounceRate: 0.01, decision: "Counted", reason: "day 1 used 60%" }],
    plan: [lp("default", { stage: 0, dailyQuota: 50, hourlyQuota: 5 }), lp("google", { stage: 0, dailyQuota: 20, hourlyQuota: 5 })],
    overrides: { "192.0.2.1/google": { hold: true, by: "me" } },
    reserved: new Map([["192.0.2.1/default", 31]]),
  });
  assert.deepEqual(rows[0], {
    address: "192.0.2.1", provider: "default", stage: 0, stageSource: "plan", day: 1, dailyQuota: 50, hourlyQuota: 5, sentToday: 30, reservedToday: 31,
    bounceRate: 0.01, deferralRate: null, complaintRate: null, failedDays: null, held: false, decision: "Counted", reason: "day 1 used 60%",
    next: { stage: 1, day: 3, daily: 200, inDays: 1 },
  });
  assert.deepEqual([rows[1]!.held, rows[1]!.heldBy, rows[1]!.next, rows[1]!.sentToday, rows[1]!.day], [true, "me", null, null, null]);
});

test("flags: output format and durations are checked", () => {
  assert.equal(common({}).output, "table");
  assert.throws(() => common({ output: "yaml" }), /-o\/--output must be json or table/);
  assert.equal(durationFlag({ for: "2h" }, "for"), 7_200_000);
  assert.throws(() => durationFlag({ for: "2x" }, "for"), /--for must be a duration/);
});

test("where the fleet is: flags, then KUBECONFIG, then the running local fleet, then ~/.kube/config", () => {
  const empty = mkdtempSync(join(tmpdir(), "mf-cli-unit-"));
  const base = { output: "table" as const, stateDir: undefined };
  let t = resolveTarget({ ...base, kubeconfig: "/x/kc", nats: "nats://a:1,nats://b:2" }, {});
  assert.deepEqual([t.kubeSource, t.kubeconfigPath, t.natsUrls, t.natsSource], ["--kubeconfig", "/x/kc", ["nats://a:1", "nats://b:2"], "--nats"]);
  t = resolveTarget({ output: "table" }, { KUBECONFIG: "/y/kc", MAILFLEET_NATS_URL: "nats://c:3", MAILFLEET_STATE_DIR: empty });
  assert.deepEqual([t.kubeSource, t.natsUrls, t.natsSource], ["KUBECONFIG", ["nats://c:3"], "MAILFLEET_NATS_URL"]);
  // A state file whose processes are not running is not "the local fleet".
  writeFileSync(join(empty, "local.json"), JSON.stringify({ version: 1, stateDir: empty, kubeconfig: "/z", nats: "nats://d:4", natsUrls: ["nats://d:4"], pids: { "kube-apiserver": 999_999_999 }, commands: {} }));
  t = resolveTarget({ output: "table" }, { MAILFLEET_STATE_DIR: empty, HOME: empty });
  assert.equal(t.kubeSource, "~/.kube/config");
  assert.equal(t.natsUrls, undefined);
  assert.throws(() => resolveTarget({ output: "table", stateDir: empty }, {}), /no local fleet runs in/);
});

test("relays of a pool from the runner's list: ready, not terminating, that pool", () => {
  const dir = mkdtempSync(join(tmpdir(), "mf-cli-unit-"));
  const f = join(dir, "relays.json");
  const r = (pod: string, poolId: string, over = {}) => ({ pod, namespace: "mail", listenAddress: `127.0.200.${pod.length}`, submissionPort: 587, ready: true, terminating: false, env: { MAILFLEET_POOL: poolId }, ...over });
  writeFileSync(f, JSON.stringify({ version: 1, relays: [r("a", "mail/t"), r("bb", "mail/t", { ready: false }), r("ccc", "mail/m"), r("dddd", "mail/t", { terminating: true })] }));
  assert.deepEqual(runnerRelays(f, "mail/t").map((x) => x.host), ["127.0.200.1"]);
  assert.deepEqual(runnerRelays(join(dir, "none.json"), "mail/t"), []);
});
