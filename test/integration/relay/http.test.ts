// The HTTP injection API with the same rules as SMTP: Basic auth over TLS only, trusted networks,
// sender and From domains, suppression, size, durability before the reply; one-click unsubscribe;
// /metrics, /healthz, /readyz. Addresses: relay 127.0.44.1, trusted 127.0.45.0/24, untrusted 127.0.46.5.
import { test } from "node:test";
import assert from "node:assert/strict";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { domainPlan, makeDkimKeys, makePlan, PASSWORD, startRelayFixture, eventually } from "./fixture.ts";

const HOST = "127.0.44.1";
const TRUSTED = "127.0.45.9";
const UNTRUSTED = "127.0.46.5";

interface Res { status: number; body: any; headers: Record<string, string | string[] | undefined> }

function call(o: { port: number; method?: string; path: string; body?: unknown; raw?: string; tls?: string; auth?: string; from?: string }): Promise<Res> {
  return new Promise((resolve, reject) => {
    const payload = o.raw ?? (o.body === undefined ? undefined : JSON.stringify(o.body));
    const opts = {
      host: HOST, port: o.port, method: o.method ?? (payload === undefined ? "GET" : "POST"), path: o.path, localAddress: o.from ?? TRUSTED,
      headers: { ...(payload !== undefined ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}), ...(o.auth ? { authorization: `Basic ${Buffer.from(o.auth).toString("base64")}` } : {}) },
      agent: false as const,
      ...(o.tls ? { ca: o.tls, servername: "relay.mailfleet.test" } : {}),
    };
    const req = (o.tls ? httpsRequest : httpRequest)(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let body: unknown = text;
        try { body = JSON.parse(text); } catch { /* text */ }
        resolve({ status: res.statusCode ?? 0, body, headers: res.headers });
      });
    });
    req.on("error", reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

test("HTTP injection API", { timeout: 600_000 }, async (t) => {
  const keys = makeDkimKeys("example.com", ["rsa"]);
  const plan = await makePlan({
    domains: [
      domainPlan("example.com", { listUnsubscribe: { mode: "OneClick", url: "https://unsub.example.com/u/{token}" }, suppression: { onSubmit: "Refuse", complaintTtlMs: 0, unsubscribeTtlMs: 86_400_000, hardBounceTtlMs: 0 } }, keys),
      domainPlan("other.example"),
    ],
    networks: [{ cidr: "127.0.45.0/24", domains: ["example.com"] }],
    credentials: [{ username: "app", domains: ["example.com"] }],
  });
  const f = await startRelayFixture(t, { host: HOST, plan, keys });
  const port = f.http.port;
  const msg = (o: Record<string, unknown> = {}) => ({ envelope: { from: "news@example.com", to: ["a@gmail.test"] }, subject: "hi", text: "hello", ...o });

  await t.test("health, readiness and metrics over plain HTTP", async () => {
    assert.equal((await call({ port, path: "/healthz" })).status, 200);
    const r = await call({ port, path: "/readyz" });
    assert.equal(r.status, 200);
    assert.deepEqual({ plan: r.body.plan, nats: r.body.nats }, { plan: true, nats: true });
    const m = await call({ port, path: "/metrics" });
    assert.match(String(m.body), /mailfleet_relay_nats_connected\{[^}]*\} 1/);
    assert.match(String(m.body), /mailfleet_relay_plan_loaded\{[^}]*\} 1/);
  });

  await t.test("a trusted network injects JSON; 202 with the queue id once stored", async () => {
    const r = await call({ port, path: "/v1/messages", body: msg({ headers: { "X-Campaign-ID": "c1" } }) });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    assert.match(r.body.queueId, /^[0-9a-z]{20}$/);
    const env = (await f.envelopes()).find((e) => e.id === r.body.queueId);
    assert.ok(env, "stored before the reply");
    assert.equal(env.submitter, "net:127.0.45.0/24");
    const body = (await f.body(env)).toString();
    assert.match(body, /^DKIM-Signature: /);
    assert.match(body, /^Subject: hi\r\n/m);
    assert.match(body, /^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n/m);
  });

  await t.test("raw MIME (base64) is accepted as is, with the same From rule", async () => {
    const raw = "From: news@example.com\r\nTo: a@gmail.test\r\nSubject: raw\r\nMessage-ID: <raw-1@example.com>\r\n\r\nraw body\r\n";
    const r = await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com", to: ["a@gmail.test"] }, raw: Buffer.from(raw).toString("base64") } });
    assert.equal(r.status, 202);
    const again = await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com", to: ["a@gmail.test"] }, raw: Buffer.from(raw).toString("base64") } });
    assert.equal(again.body.queueId, r.body.queueId, "idempotent retry");
    assert.equal(again.body.duplicate, true);
    const bad = "From: boss@other.example\r\nTo: a@gmail.test\r\n\r\nx\r\n";
    const r2 = await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com", to: ["a@gmail.test"] }, raw: Buffer.from(bad).toString("base64") } });
    assert.equal(r2.status, 403);
    assert.equal(r2.body.error.enhanced, "5.7.1");
  });

  await t.test("a message over the server's max payload (1 MiB) goes to the object store", async () => {
    const raw = `From: news@example.com\r\nTo: a@gmail.test\r\nSubject: large\r\n\r\n${("y".repeat(998) + "\r\n").repeat(1500)}`;
    const r = await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com", to: ["a@gmail.test"] }, raw: Buffer.from(raw).toString("base64") } });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const env = (await f.envelopes()).find((e) => e.id === r.body.queueId)!;
    assert.deepEqual(env.body, { object: env.id });
    const body = await f.body(env);
    assert.ok(body.length > 1_500_000);
    assert.equal(env.size, body.length);
    assert.match(body.toString("latin1"), /^DKIM-Signature: /);
  });

  await t.test("untrusted without credentials: 401; Basic over plain HTTP refused; Basic over TLS works", async () => {
    const r = await call({ port, path: "/v1/messages", body: msg(), from: UNTRUSTED });
    assert.equal(r.status, 401);
    const plain = await call({ port, path: "/v1/messages", body: msg(), from: UNTRUSTED, auth: `app:${PASSWORD}` });
    assert.equal(plain.status, 401);
    assert.match(plain.body.error.message, /TLS/);
    const wrong = await call({ port, path: "/v1/messages", body: msg(), from: UNTRUSTED, auth: "app:nope", tls: f.caPem });
    assert.equal(wrong.status, 401);
    const ok = await call({ port, path: "/v1/messages", body: msg(), from: UNTRUSTED, auth: `app:${PASSWORD}`, tls: f.caPem });
    assert.equal(ok.status, 202, JSON.stringify(ok.body));
    const env = (await f.envelopes()).find((e) => e.id === ok.body.queueId)!;
    assert.equal(env.submitter, "http:app");
    const other = await call({ port, path: "/v1/messages", body: msg({ envelope: { from: "x@other.example", to: ["a@gmail.test"] } }), from: UNTRUSTED, auth: `app:${PASSWORD}`, tls: f.caPem });
    assert.equal(other.status, 403);
  });

  await t.test("bad input names the field (400); oversize 413; suppressed 422", async () => {
    const r = await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com" }, text: "x" } });
    assert.equal(r.status, 400);
    assert.match(r.body.error.message, /envelope\.to/);
    assert.equal((await call({ port, path: "/v1/messages", raw: "{nope" })).status, 400);
    assert.equal((await call({ port, path: "/v1/messages", body: msg({ envelope: { from: "news@example.com", to: ["not an address"] } }) })).status, 400);
    assert.match((await call({ port, path: "/v1/messages", body: { envelope: { from: "news@example.com", to: ["a@gmail.test"] } } })).body.error.message, /raw, text or html/);
    const big = await call({ port, path: "/v1/messages", body: msg({ text: "x".repeat(3 * 1024 * 1024) }) });
    assert.equal(big.status, 413);
    await f.acceptor.suppressions.add({ scope: { global: true }, address: "bounced@gmail.test", reason: "hard-bounce" });
    const s = await call({ port, path: "/v1/messages", body: msg({ envelope: { from: "news@example.com", to: ["bounced@gmail.test"] } }) });
    assert.equal(s.status, 422);
    assert.match(s.body.error.message, /suppressed/);
  });

  await t.test("one-click unsubscribe: POST with the token suppresses that recipient for that domain", async () => {
    const r = await call({ port, path: "/v1/messages", body: msg({ envelope: { from: "news@example.com", to: ["leaver@gmail.test"] } }) });
    const env = (await f.envelopes()).find((e) => e.id === r.body.queueId)!;
    const url = /List-Unsubscribe: <https:\/\/unsub\.example\.com\/u\/([^>]+)>/.exec((await f.body(env)).toString())![1]!;
    assert.equal((await call({ port, method: "GET", path: `/v1/unsubscribe/${url}` })).status, 405);
    const u = await call({ port, path: `/v1/unsubscribe/${url}`, raw: "List-Unsubscribe=One-Click" });
    assert.equal(u.status, 200);
    const hit = await f.acceptor.suppressions.check("example.com", "leaver@gmail.test");
    assert.equal(hit?.reason, "unsubscribe");
    assert.ok(hit?.expiresAt, "TTL from the plan's unsubscribeTtlMs");
    assert.equal(await f.acceptor.suppressions.check("other.example", "leaver@gmail.test"), null, "per sending domain");
    assert.equal((await call({ port, path: "/v1/unsubscribe/AAAA", raw: "List-Unsubscribe=One-Click" })).status, 404);
    const again = await call({ port, path: "/v1/messages", body: msg({ envelope: { from: "news@example.com", to: ["leaver@gmail.test"] } }) });
    assert.equal(again.status, 422);
    const ev = await eventually("unsubscribed event", async () => (await f.events()).find((e) => e.data.type === "unsubscribed"));
    assert.equal(ev.data.qid, r.body.queueId);
    assert.deepEqual(ev.data.rcpts, ["leaver@gmail.test"]);
  });

  await t.test("readyz turns 503 when NATS goes away, and back", async () => {
    await f.nats.kill(0);
    await eventually("readyz 503", async () => (await call({ port, path: "/readyz" })).status === 503);
    const r = await call({ port, path: "/v1/messages", body: msg() });
    assert.equal(r.status, 503);
    assert.equal(r.body.error.code, 452);
    assert.equal(r.headers["retry-after"], "30");
    await f.nats.restart(0);
    await eventually("readyz 200", async () => (await call({ port, path: "/readyz" })).status === 200);
    assert.equal((await call({ port, path: "/v1/messages", body: msg() })).status, 202);
  });
});
