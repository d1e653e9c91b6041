// A relay (acceptance side) against a real nats-server, for the relay integration tests: the plan
// published to KV as the operator would, DKIM keys and an unsubscribe key in a "mounted Secret"
// directory, a submission certificate from a test CA, and helpers to read what JetStream holds.
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { setTimeout as sleep } from "node:timers/promises";
import type { TestContext } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { PLAN_BUCKET, PLAN_KEY, PLAN_SCHEMA, DEFAULT_DELIVERY, type Plan, type DomainPlan } from "../../../api/plan.ts";
import { hashPassword } from "../../../api/password.ts";
import { loadRelayConfig } from "../../../relay/config.ts";
import { startRelay, type Relay } from "../../../relay/main.ts";
import { Acceptor } from "../../../relay/accept/acceptor.ts";
import { HttpServer } from "../../../relay/http/server.ts";
import { PlanWatcher } from "../../../relay/plan/watcher.ts";
import { SubmissionServer } from "../../../relay/submission/server.ts";
import { createLogger } from "../../../relay/runtime/logger.ts";
import { decodeEnvelope, type Envelope } from "../../../relay/queue/envelope.ts";
import { STREAM_BODY, STREAM_QUEUE, STREAM_EVENTS } from "../../../relay/queue/topology.ts";
import { startNats, type Nats } from "../../env/nats.ts";
import { freePort, startProcess, type ManagedProcess } from "../../env/proc.ts";
import { createCA, issueCert } from "../../env/pki.ts";
import type { DnsRecord } from "../../env/peers/dns.ts";

export const POOL = "mail/pool-a";
export const PASSWORD = "correct horse battery staple";

export interface DkimKey {
  domain: string;
  selector: string;
  algorithm: "rsa-sha256" | "ed25519-sha256";
  keyName: string;
  privatePem: string;
  /** The DNS TXT record for it. */
  txt: DnsRecord;
}

export function makeDkimKeys(domain: string, kinds: ("rsa" | "ed25519")[] = ["rsa", "ed25519"]): DkimKey[] {
  return kinds.map((k) => {
    const selector = k === "rsa" ? "mfr1" : "mfe1";
    const { privateKey, publicKey } = k === "rsa" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : generateKeyPairSync("ed25519");
    const spki = publicKey.export({ type: "spki", format: "der" });
    // RFC 8463: an Ed25519 p= is the raw 32-byte key (the SPKI DER ends with it).
    const p = k === "rsa" ? spki.toString("base64") : spki.subarray(spki.length - 32).toString("base64");
    return {
      domain, selector, algorithm: k === "rsa" ? "rsa-sha256" : "ed25519-sha256",
      keyName: `dkim.${domain}.${selector}.pem`,
      privatePem: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
      txt: { type: "TXT", name: `${selector}._domainkey.${domain}`, value: `v=DKIM1; k=${k}; p=${p}` },
    };
  });
}

export function domainPlan(domain: string, o: Partial<DomainPlan> = {}, keys: DkimKey[] = []): DomainPlan {
  return {
    id: `mail/${domain}`, domain, pool: POOL, returnPathDomain: `bounces.${domain}`, verp: true,
    dkim: keys.map((k) => ({ selector: k.selector, algorithm: k.algorithm, keyName: k.keyName })),
    listUnsubscribe: { mode: "None" }, feedbackIdSender: null, notifySender: false,
    suppression: { onSubmit: "Refuse", complaintTtlMs: 0, unsubscribeTtlMs: 0, hardBounceTtlMs: 0 },
    submitRate: null, webhooks: [], ...o,
  };
}

export async function makePlan(o: {
  domains: DomainPlan[];
  credentials?: { username: string; password?: string; domains: string[] }[];
  networks?: { cidr: string; domains: string[] }[];
  delivery?: Partial<Plan["delivery"]>;
  revision?: string;
}): Promise<Plan> {
  const credentials = await Promise.all((o.credentials ?? []).map(async (c) => ({
    username: c.username, hash: await hashPassword(c.password ?? PASSWORD, `test/${c.username}`), domains: c.domains,
  })));
  return {
    schema: PLAN_SCHEMA,
    revision: o.revision ?? `r${Date.now()}${Math.random().toString(36).slice(2, 6)}`,
    generatedAt: new Date().toISOString(),
    providers: [],
    pools: [{ id: POOL, namespace: "mail", name: "pool-a", addresses: [], egress: { mode: "HostNetwork", bindAddress: false }, overflowPool: null, warmup: null, lanes: [] }],
    domains: o.domains,
    submitters: { credentials, networks: o.networks ?? [] },
    delivery: { ...DEFAULT_DELIVERY, ...(o.delivery ?? {}) },
  };
}

export interface RelayFixture {
  dir: string;
  nats: Nats;
  relay: Relay;
  /** A separate client connection for the test's own reads and writes. */
  nc: NatsConnection;
  jsm: JetStreamManager;
  acceptor: Acceptor;
  submission: SubmissionServer;
  http: HttpServer;
  host: string;
  secretsDir: string;
  tlsDir: string;
  caPem: string;
  logs: string[];
  publishPlan(plan: Plan | Buffer, gzip?: boolean): Promise<void>;
  /** Waits until the relay runs this plan revision. */
  waitPlan(revision: string): Promise<void>;
  /** Every envelope on MF_QUEUE route subjects. */
  envelopes(): Promise<Envelope[]>;
  body(env: Envelope): Promise<Buffer>;
  events(): Promise<{ subject: string; data: any }[]>;
  streamCount(stream: string): Promise<number>;
}

export async function eventually<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false && v !== null) return v;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

export async function startRelayFixture(t: TestContext, o: {
  host: string;
  plan: Plan;
  keys?: DkimKey[];
  nodes?: 1 | 3;
  replicas?: number;
  tls?: boolean;
  unsubscribeKey?: boolean;
  env?: Record<string, string>;
  /** smtp-server's 100 ms pause before the greeting (main.ts turns it off). */
  earlyTalkerDelay?: boolean;
}): Promise<RelayFixture> {
  const dir = mkdtempSync(join(tmpdir(), "mf-relay-"));
  const nats = await startNats({ dir: join(dir, "nats"), nodes: o.nodes ?? 1, syncAlways: true });
  const secretsDir = join(dir, "secrets");
  const tlsDir = join(dir, "tls");
  mkdirSync(secretsDir, { recursive: true });
  mkdirSync(tlsDir, { recursive: true });
  for (const k of o.keys ?? []) writeFileSync(join(secretsDir, k.keyName), k.privatePem, { mode: 0o600 });
  if (o.unsubscribeKey !== false) writeFileSync(join(secretsDir, "unsubscribe.key"), "test-unsubscribe-key-0123456789abcdef");
  const ca = await createCA("mailfleet test CA");
  let caPem = "";
  if (o.tls !== false) {
    const leaf = await issueCert(ca, { commonName: "relay.mailfleet.test", dnsNames: ["relay.mailfleet.test", "localhost"], ipAddresses: [o.host], server: true });
    writeFileSync(join(tlsDir, "tls.crt"), leaf.certPem);
    writeFileSync(join(tlsDir, "tls.key"), leaf.keyPem);
    chmodSync(join(tlsDir, "tls.key"), 0o600);
    caPem = ca.certPem;
  }
  const nc = await connect({ servers: nats.urls });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const kv = await new Kvm(js).create(PLAN_BUCKET, { history: 1, replicas: o.replicas ?? 1 });
  const publishPlan = async (plan: Plan | Buffer, gzip = true) => {
    const bytes = Buffer.isBuffer(plan) ? plan : Buffer.from(JSON.stringify(plan));
    await kv.put(PLAN_KEY, Buffer.isBuffer(plan) || !gzip ? bytes : gzipSync(bytes));
  };
  await publishPlan(o.plan);

  const logs: string[] = [];
  const config = loadRelayConfig({
    MAILFLEET_NATS_URL: nats.urls.join(","), MAILFLEET_POOL: POOL, MAILFLEET_RELAY_ID: "relay-test",
    MAILFLEET_SECRETS_DIR: secretsDir, MAILFLEET_TLS_DIR: tlsDir, MAILFLEET_LISTEN_ADDRESS: o.host,
    MAILFLEET_SUBMISSION_PORT: "0", MAILFLEET_HTTP_PORT: "0", MAILFLEET_STREAM_REPLICAS: String(o.replicas ?? 1),
    MAILFLEET_MAX_MESSAGE_SIZE: "2Mi", MAILFLEET_LOG_LEVEL: "debug", ...(o.env ?? {}),
  });
  const acceptor = new Acceptor();
  const submission = new SubmissionServer(acceptor, { earlyTalkerDelay: o.earlyTalkerDelay ?? false });
  const http = new HttpServer(acceptor);
  const relay = await startRelay({
    config,
    log: createLogger({ level: "debug", write: (l) => { logs.push(l); if (process.env.MAILFLEET_TEST_LOGS) process.stderr.write(l + "\n"); } }),
    components: [new PlanWatcher(), acceptor, submission, http],
  });
  t.after(async () => {
    await relay.shutdown("test end").catch(() => {});
    await nc.close().catch(() => {});
    await nats.stop();
    if (!process.env.MAILFLEET_KEEP_STATE) rmSync(dir, { recursive: true, force: true });
  });
  await relay.ctx.planHolder.ready(30_000);

  const fetchAll = async (stream: string, filter: string) => {
    const out: { subject: string; data: Uint8Array }[] = [];
    const info = await jsm.streams.info(stream);
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      try {
        const m = await jsm.streams.getMessage(stream, { seq });
        if (m && (filter === ">" || m.subject.startsWith(filter))) out.push({ subject: m.subject, data: m.data });
      } catch { /* deleted */ }
    }
    return out;
  };
  return {
    dir, nats, relay, nc, jsm, acceptor, submission, http, host: o.host, secretsDir, tlsDir, caPem, logs, publishPlan,
    async waitPlan(revision) {
      await eventually(`plan ${revision}`, async () => relay.ctx.plan()?.revision === revision, 30_000);
    },
    async envelopes() {
      return (await fetchAll(STREAM_QUEUE, "mf.q.")).filter((m) => m.subject.endsWith(".route")).map((m) => decodeEnvelope(m.data));
    },
    async body(env) {
      const ref = env.body as { subject?: string; object?: string };
      if (ref.subject) return Buffer.from((await jsm.streams.getMessage(STREAM_BODY, { last_by_subj: ref.subject }))!.data);
      const obj = await relay.ctx.large.get(ref.object!);
      const chunks: Uint8Array[] = [];
      const reader = obj!.data.getReader();
      for (;;) { const { done, value } = await reader.read(); if (done) break; chunks.push(value); }
      return Buffer.concat(chunks);
    },
    async events() {
      return (await fetchAll(STREAM_EVENTS, "mf.ev.")).map((m) => ({ subject: m.subject, data: JSON.parse(Buffer.from(m.data).toString("utf8")) }));
    },
    async streamCount(stream) {
      return (await jsm.streams.info(stream)).state.messages;
    },
  };
}

export interface RelayProcess {
  proc: ManagedProcess;
  submissionPort: number;
  httpPort: number;
  logFile: string;
}

/**
 * The relay as its own process (`node relay/main.ts`), as a Pod runs it: for SIGKILL and SIGTERM
 * tests. Uses the fixture's NATS, Secret and TLS directories; waits for /readyz.
 */
export async function startRelayProcess(t: TestContext, f: RelayFixture, o: { name?: string; env?: Record<string, string> } = {}): Promise<RelayProcess> {
  const submissionPort = await freePort(f.host);
  const httpPort = await freePort(f.host);
  const name = o.name ?? "relay-proc";
  const logFile = join(f.dir, `${name}.log`);
  const root = join(import.meta.dirname, "..", "..", "..");
  const proc = startProcess({
    name, command: join(root, "node_modules", ".bin", "node"), args: [join(root, "relay", "main.ts")], logFile, cwd: root,
    env: {
      ...process.env,
      // A relay of another pool: it accepts for the plan's domains (their pool is mail/pool-a, so
      // envelopes go to pool-a's queue) while its own delivery side works on pool-b's queue and
      // leaves what this test checks alone. No inbound listener.
      MAILFLEET_NATS_URL: f.nats.urls.join(","), MAILFLEET_POOL: "mail/pool-b", MAILFLEET_RELAY_ID: name, MAILFLEET_INBOUND_PORT: "0",
      MAILFLEET_SECRETS_DIR: f.secretsDir, MAILFLEET_TLS_DIR: f.tlsDir, MAILFLEET_LISTEN_ADDRESS: f.host,
      MAILFLEET_SUBMISSION_PORT: String(submissionPort), MAILFLEET_HTTP_PORT: String(httpPort),
      MAILFLEET_STREAM_REPLICAS: String(f.relay.ctx.config.MAILFLEET_STREAM_REPLICAS), MAILFLEET_MAX_MESSAGE_SIZE: "2Mi", MAILFLEET_LOG_LEVEL: "info",
      ...(o.env ?? {}),
    },
  });
  t.after(() => proc.stop(5000));
  await eventually(`${name} /readyz`, async () => {
    if (proc.exitCode() !== undefined) throw new Error(`${name} exited: ${proc.exitCode()}`);
    const { request } = await import("node:http");
    return new Promise<boolean>((resolve) => {
      const req = request({ host: f.host, port: httpPort, path: "/readyz", agent: false, timeout: 2000 }, (res) => { res.resume(); resolve(res.statusCode === 200); });
      req.on("error", () => resolve(false));
      req.end();
    });
  }, 60_000);
  return { proc, submissionPort, httpPort, logFile };
}
