// mailfleet send-test: submits a test message through a relay of the sender's pool (SMTP
// submission: STARTTLS, AUTH when credentials are given, else as a trusted network) and follows its
// events until each recipient is delivered, deferred or bounced.
//
// Which relay: --via, else in the local fleet the relay runner's list (<state>/runner/relays.json),
// else a ready relay Pod of the pool (its address: the node's on host networking).
// TLS: with AUTH the relay's certificate must verify (system CAs, or the pool's submission TLS
// Secret read from the cluster, pinned), so a password never goes to an impostor; --insecure
// skips that. Without AUTH, STARTTLS is opportunistic, as between MTAs.
import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import type { PeerCertificate } from "node:tls";
import { checkServerIdentity, rootCertificates } from "node:tls";
import nodemailer from "nodemailer";
import { DeliverPolicy } from "@nats-io/jetstream";
import type { Command } from "../command.ts";
import { UsageError } from "../command.ts";
import { COMMON_USAGE, durationFlag, emailArg, parseWith, stringFlag } from "../lib/flags.ts";
import { withFleet, type Fleet } from "../lib/fleet.ts";
import { getPool, listDomains } from "../lib/resources.ts";
import { age, clip, print, printJson } from "../lib/output.ts";
import { RESOURCES } from "../../operator/runtime/kube.ts";
import { selfSignedTlsName } from "../../operator/render/pool.ts";
import { STREAM_EVENTS } from "../../relay/queue/topology.ts";
import { QUEUE_ID_RE } from "../../relay/queue/envelope.ts";
import type { MailEvent } from "../../relay/delivery/events.ts";

const usage = `usage: mailfleet send-test --from ADDR --to ADDR [--to ADDR]... [--via HOST[:PORT]]
                          [--user NAME --password-env VAR | --auth-secret NS/NAME] [--subject TEXT]
                          [--timeout DUR] [--follow-deferred] [--no-follow] [--insecure] [common options]

  Submits a small test message through a relay of the sending domain's pool and follows its
  events (MF_EVENTS) until every recipient was delivered, deferred or bounced.
  Exit 0 when all were delivered; 1 when one was deferred or bounced, or nothing happened in time.

  --from ADDR         envelope and header sender; its domain must be a sending domain
  --to ADDR           recipient (repeatable)
  --via HOST[:PORT]   submit here (default: a relay of the pool: in the local fleet from the relay
                      runner's list, else a ready relay Pod's address; port: the pool's, 587)
  --user NAME         AUTH as NAME; the password is read from the environment variable named by
                      --password-env (default MAILFLEET_SMTP_PASSWORD), never from the command line
  --auth-secret S     AUTH with the username and password of the kubernetes.io/basic-auth Secret S
                      (NAMESPACE/NAME, as listed in the SendingDomain's senders.credentials)
                      Without AUTH the relay must trust this machine's address (senders.trustedNetworks).
  --subject TEXT      (default "mailfleet send-test <time>")
  --timeout DUR       how long to follow events (default 2m)
  --follow-deferred   keep following after a deferral, until delivered or bounced
  --no-follow         stop after the relay accepted the message (print its queue id)
  --insecure          do not verify the relay's certificate even with AUTH

${COMMON_USAGE}`;

export interface Relay {
  host: string;
  port: number;
  /** What it is, for messages. */
  what: string;
}

/** Ready relays of a pool from the local relay runner's list. */
export function runnerRelays(registryPath: string, pool: string): Relay[] {
  if (!existsSync(registryPath)) return [];
  try {
    const reg = JSON.parse(readFileSync(registryPath, "utf8")) as { relays?: { pod: string; namespace: string; listenAddress?: string; submissionPort?: number; ready?: boolean; terminating?: boolean; env?: Record<string, string> }[] };
    return (reg.relays ?? [])
      .filter((r) => r.env?.MAILFLEET_POOL === pool && r.ready && !r.terminating && r.listenAddress)
      .map((r) => ({ host: r.listenAddress!, port: r.submissionPort ?? 587, what: `relay ${r.namespace}/${r.pod} (local fleet)` }));
  } catch {
    return [];
  }
}

function parseVia(s: string): Relay {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+)(?::(\d{1,5}))?$/.exec(s);
  if (!m || (m[2] && (Number(m[2]) < 1 || Number(m[2]) > 65535))) throw new UsageError(`--via must be HOST or HOST:PORT, got "${s}"`);
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port: m[2] ? Number(m[2]) : 587, what: "--via" };
}

type Outcome = "delivered" | "deferred" | "bounced" | "expired" | "suppressed" | "dropped";
const FINAL: Outcome[] = ["delivered", "bounced", "expired", "suppressed", "dropped"];

export const command: Command = {
  summary: "submit a test message through a relay and follow it until delivered, deferred or bounced",
  usage,
  async run(args) {
    const { values, positionals, common } = parseWith(args, {
      from: { type: "string" },
      to: { type: "string", multiple: true },
      via: { type: "string" },
      user: { type: "string" },
      "password-env": { type: "string" },
      "auth-secret": { type: "string" },
      subject: { type: "string" },
      timeout: { type: "string" },
      "follow-deferred": { type: "boolean", default: false },
      "no-follow": { type: "boolean", default: false },
      insecure: { type: "boolean", default: false },
    });
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const from = emailArg("--from", stringFlag(values, "from"));
    const to = ((values.to as string[] | undefined) ?? []).map((t) => emailArg("--to", t));
    if (!to.length) throw new UsageError("--to is required (an address to send the test message to)");
    const via = stringFlag(values, "via");
    const relayFlag = via ? parseVia(via) : undefined;
    const user = stringFlag(values, "user");
    const passwordEnv = stringFlag(values, "password-env") ?? "MAILFLEET_SMTP_PASSWORD";
    const authSecret = stringFlag(values, "auth-secret");
    if (user && authSecret) throw new UsageError("give --user or --auth-secret, not both");
    if (values["password-env"] !== undefined && !user) throw new UsageError("--password-env goes with --user");
    if (authSecret && !/^[a-z0-9-]+\/[a-z0-9.-]+$/.test(authSecret)) throw new UsageError(`--auth-secret must be NAMESPACE/NAME, got "${authSecret}"`);
    let password: string | undefined;
    if (user) {
      password = process.env[passwordEnv];
      if (!password) throw new UsageError(`--user needs the password in the environment variable ${passwordEnv}`);
    }
    const timeoutMs = durationFlag(values, "timeout") ?? 120_000;
    const subject = stringFlag(values, "subject") ?? `mailfleet send-test ${new Date().toISOString()}`;
    const follow = values["no-follow"] !== true;
    const followDeferred = values["follow-deferred"] === true;
    const domain = from.slice(from.lastIndexOf("@") + 1).toLowerCase();

    return withFleet(common, async (fleet) => {
      const { pool } = await poolOf(fleet, domain);
      const relay = relayFlag ?? (await pickRelay(fleet, pool));
      let auth: { user: string; pass: string } | undefined;
      if (user) auth = { user, pass: password! };
      if (authSecret) auth = await secretCredentials(fleet, authSecret);
      const tls = auth && values.insecure !== true ? await tlsTrust(fleet, pool) : { rejectUnauthorized: false };
      const json = common.output === "json";
      const log = (line: string) => { if (!json) print(line); };
      log(`submitting to ${relay.host}:${relay.port} (${relay.what}) for pool ${pool}, ${auth ? `AUTH as ${auth.user} after STARTTLS` : "without AUTH (as a trusted network), STARTTLS if offered"}`);

      // Follow from before the submission: the accepted event is stored before the 250.
      const h = follow ? await fleet.nats() : undefined;
      const started = Date.now();
      const consumer = h
        ? await h.js.consumers.get(STREAM_EVENTS, { filter_subjects: "mf.ev.>", deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(started - 1000).toISOString() }).catch((e: Error) => {
          throw new Error(/stream not found/i.test(e.message) ? `NATS has no ${STREAM_EVENTS} stream: no relay has started on this NATS` : e.message);
        })
        : undefined;
      const transport = nodemailer.createTransport({
        host: relay.host,
        port: relay.port,
        secure: false,
        requireTLS: !!auth,
        name: hostname(),
        connectionTimeout: 15_000,
        greetingTimeout: 15_000,
        socketTimeout: 30_000,
        tls,
        ...(auth ? { auth } : {}),
      });
      let response: string;
      try {
        const info = await transport.sendMail({
          envelope: { from, to },
          from,
          to,
          subject,
          text: `Test message from mailfleet send-test (${hostname()}, ${new Date().toISOString()}).\n`,
          headers: { "X-Mailfleet-Test": "1" },
        });
        response = info.response;
      } catch (e) {
        await consumer?.delete().catch(() => {});
        const err = e as Error & { response?: string; code?: string; responseCode?: number };
        if (err.responseCode) throw new Error(`the relay at ${relay.host}:${relay.port} refused the message: ${err.response ?? err.message}`);
        throw new Error(`could not submit to ${relay.host}:${relay.port} (${relay.what}): ${err.code ? `${err.code}: ` : ""}${err.message}${relay.what === "--via" ? "" : "; pass --via HOST:PORT to choose the relay (e.g. after kubectl port-forward)"}`);
      } finally {
        transport.close();
      }
      const qid = /queued as ([0-9a-z]{20})\b/i.exec(response)?.[1]?.toLowerCase();
      log(`${response.trim()}`);
      if (!qid || !QUEUE_ID_RE.test(qid)) {
        await consumer?.delete().catch(() => {});
        throw new Error(`the relay accepted the message but its reply carries no queue id: "${response.trim()}"`);
      }
      if (!consumer) {
        if (json) printJson({ qid, relay: `${relay.host}:${relay.port}`, response: response.trim(), result: "accepted", events: [] });
        return 0;
      }
      const outcome = new Map<string, { type: Outcome; event: MailEvent }>();
      const events: MailEvent[] = [];
      const want = to.map((t) => t.toLowerCase());
      const deadline = started + timeoutMs;
      const done = () => want.every((r) => {
        const o = outcome.get(r);
        return o && (FINAL.includes(o.type) || (!followDeferred && o.type === "deferred"));
      });
      try {
        while (!done() && Date.now() < deadline) {
          const batch = await consumer.fetch({ max_messages: 100, expires: Math.max(1000, Math.min(5000, deadline - Date.now())) });
          for await (const m of batch) {
            let e: MailEvent;
            try { e = m.json<MailEvent>(); } catch { continue; }
            if (e.qid !== qid) continue;
            events.push(e);
            log(`  ${age(Date.parse(e.time) - started).padStart(6)}  ${e.type.padEnd(10)} ${describeEvent(e)}`);
            for (const r of e.rcpts) {
              const k = r.toLowerCase();
              if (["delivered", "deferred", "bounced", "expired", "suppressed", "dropped"].includes(e.type)) {
                const prev = outcome.get(k);
                if (!prev || !FINAL.includes(prev.type)) outcome.set(k, { type: e.type as Outcome, event: e });
              }
            }
            if (done()) break;
          }
        }
      } finally {
        await consumer.delete().catch(() => {});
      }
      const per = want.map((r) => ({ rcpt: r, outcome: outcome.get(r)?.type ?? null, reply: outcome.get(r)?.event.reply ?? null }));
      const all = (t: Outcome) => per.every((p) => p.outcome === t);
      const result = all("delivered") ? "delivered" : per.some((p) => p.outcome === null) ? "timeout" : per.some((p) => p.outcome && ["bounced", "expired", "suppressed", "dropped"].includes(p.outcome)) ? "failed" : "deferred";
      if (json) {
        printJson({ qid, relay: `${relay.host}:${relay.port}`, response: response.trim(), result, recipients: per, events });
      } else {
        const pending = per.filter((p) => p.outcome === null).map((p) => p.rcpt);
        print(result === "delivered" ? `delivered to ${per.length === 1 ? per[0]!.rcpt : `all ${per.length} recipients`} (queue id ${qid})`
          : result === "timeout" ? `no outcome for ${pending.join(", ")} within ${age(timeoutMs)} (queue id ${qid}; \`mailfleet queue show ${qid}\` shows where it is)`
          : per.map((p) => `${p.rcpt}: ${p.outcome}${p.reply ? ` (${clip(p.reply, 100)})` : ""}`).join("\n"));
      }
      return result === "delivered" ? 0 : 1;
    });
  },
};

function describeEvent(e: MailEvent): string {
  const bits = [
    e.rcpts.join(","),
    e.source ? `from ${e.source}` : "",
    e.mx ? `to ${e.mx}${e.tls ? " (TLS)" : ""}` : "",
    e.provider ? `[${e.provider}]` : "",
    e.reply ? clip(e.reply, 90)! : "",
    e.retryAt ? `retry ${e.retryAt}` : "",
  ];
  return bits.filter(Boolean).join(" ");
}

async function poolOf(fleet: Fleet, domain: string): Promise<{ pool: string }> {
  const plan = await fleet.plan().catch(() => undefined);
  const d = plan?.domains.find((x) => x.domain.toLowerCase() === domain);
  if (d) return { pool: d.pool };
  const sds = await listDomains(fleet);
  const sd = sds.find((x) => x.spec.domain.toLowerCase() === domain);
  if (!sd) throw new Error(`${domain} is not a sending domain (domains: ${sds.map((x) => x.spec.domain).join(", ") || "none"})`);
  return { pool: `${sd.metadata.namespace}/${sd.spec.poolRef.name}` };
}

async function pickRelay(fleet: Fleet, pool: string): Promise<Relay> {
  const local = fleet.target.local;
  if (local) {
    const reg = local.runner?.registry ?? join(local.stateDir, "runner", "relays.json");
    const relays = runnerRelays(reg, pool);
    if (relays.length) return relays[Math.floor(Math.random() * relays.length)]!;
    throw new Error(`no ready relay of pool ${pool} in the local fleet (${reg}); \`mailfleet status\` shows the pool's relays`);
  }
  const p = await getPool(fleet, pool);
  const kube = await fleet.kube();
  const pods = await kube.request<{ items: { metadata: { name: string }; status?: { podIP?: string; conditions?: { type: string; status: string }[] } }[] }>(
    "GET", `/api/v1/namespaces/${p.metadata.namespace}/pods`, { query: { labelSelector: `mailfleet.io/pool=${p.metadata.name}` } },
  );
  const ready = pods.items.filter((x) => x.status?.podIP && x.status.conditions?.some((c) => c.type === "Ready" && c.status === "True"));
  if (!ready.length) throw new Error(`no ready relay Pod of pool ${pool}; pass --via HOST:PORT`);
  const pod = ready[Math.floor(Math.random() * ready.length)]!;
  return { host: pod.status!.podIP!, port: p.spec.relay.submission.port, what: `relay Pod ${p.metadata.namespace}/${pod.metadata.name}` };
}

async function secretCredentials(fleet: Fleet, ref: string): Promise<{ user: string; pass: string }> {
  const [ns, name] = ref.split("/") as [string, string];
  const kube = await fleet.kube();
  const s = await kube.get<{ data?: Record<string, string> }>(RESOURCES.Secret, ns, name);
  if (!s) throw new Error(`Secret ${ref} not found`);
  const user = s.data?.username && Buffer.from(s.data.username, "base64").toString();
  const pass = s.data?.password && Buffer.from(s.data.password, "base64").toString();
  if (!user || !pass) throw new Error(`Secret ${ref} has no username and password (a kubernetes.io/basic-auth Secret has both)`);
  return { user, pass };
}

/**
 * TLS options that verify the relay: system CAs plus the pool's submission certificate from its
 * Secret, which is trusted exactly (pinned by fingerprint: a self-signed certificate names the
 * pool's EHLO hosts, not the address we connect to).
 */
async function tlsTrust(fleet: Fleet, pool: string): Promise<Record<string, unknown>> {
  let pinned: string | undefined;
  let ca: string[] | undefined;
  try {
    const p = await getPool(fleet, pool);
    const name = p.spec.relay.submission.tlsSecretRef?.name ?? selfSignedTlsName(p.metadata.name);
    const s = await (await fleet.kube()).get<{ data?: Record<string, string> }>(RESOURCES.Secret, p.metadata.namespace, name);
    const crt = s?.data?.["tls.crt"] && Buffer.from(s.data["tls.crt"], "base64").toString();
    if (crt) {
      const leaf = new X509Certificate(crt);
      pinned = leaf.fingerprint256;
      // `ca` replaces the system's CAs, so they are listed too.
      ca = [...rootCertificates, crt, ...(s?.data?.["ca.crt"] ? [Buffer.from(s.data["ca.crt"], "base64").toString()] : [])];
    }
  } catch {
    /* not readable: system CAs only */
  }
  return {
    rejectUnauthorized: true,
    ...(ca ? { ca } : {}),
    checkServerIdentity: (host: string, cert: PeerCertificate) => {
      if (pinned && cert.fingerprint256 === pinned) return undefined;
      return checkServerIdentity(host, cert);
    },
  };
}
