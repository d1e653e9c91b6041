// The chart's monitoring, checked with real Prometheus tools:
//   (a) promtool check rules on the PrometheusRule the chart renders;
//   (b) promtool test rules: charts/mailfleet/tests/rules/*.yaml fire each alert on synthetic bad
//       series and keep it quiet on healthy ones;
//   (c) a real Prometheus scraping a running local fleet that carries traffic, with scrape
//       configurations equivalent to the chart's PodMonitors: every dashboard panel query, its
//       template variables substituted, returns at least one series (see fleet.test section below).
import assert from "node:assert/strict";
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import nodemailer from "nodemailer";
import { parse, parseAllDocuments, stringify } from "yaml";
import { DASHBOARDS, VARIABLES } from "../../charts/dashboards.ts";
import { encodeEnvelope, newQueueId, verpAddress } from "../../relay/queue/envelope.ts";
import { subjects } from "../../relay/queue/topology.ts";
import { CHART_DIR, PROJECT_ROOT, renderChart, renderRules, type K8sObject } from "../env/chart.ts";
import { defaultKwokStagesPath, startControlPlane, type ControlPlane } from "../env/controlplane.ts";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle } from "../env/peers/dns.ts";
import { startPostfix, type PostfixHandle } from "../env/peers/postfix.ts";
import { promtool, startPrometheus, type PrometheusHandle, type ScrapeConfig } from "../env/peers/prometheus.ts";
import { childEnv, freePorts, startProcess, type ManagedProcess } from "../env/proc.ts";
import { writeRunnerKwokStages } from "../env/runner/kwok-stages.ts";
import { LISTEN_ADDRESS_ANNOTATION, startRunner, type Runner } from "../env/runner/runner.ts";
import { podMonitorRelabelings, podTargets } from "../env/podmonitor.ts";

describe("alerts with promtool", () => {
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mf-rules-"));
    // The test files name this file in rule_files.
    writeFileSync(join(dir, "mailfleet-rules.yaml"), stringify(await renderRules(), { lineWidth: 0 }));
    for (const f of readdirSync(join(CHART_DIR, "tests", "rules"))) copyFileSync(join(CHART_DIR, "tests", "rules", f), join(dir, f));
  });
  after(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

  it("promtool check rules accepts the rendered PrometheusRule", async () => {
    const r = await promtool(["check", "rules", join(dir, "mailfleet-rules.yaml")]);
    assert.ok(r.ok, `${r.stdout}${r.stderr}`);
    const n = readdirSync(join(CHART_DIR, "prometheus_rules")).length;
    assert.match(r.stdout, new RegExp(`SUCCESS: ${n} rules found`));
  });

  it("promtool test rules: every alert fires on bad series and stays quiet on healthy ones", async () => {
    const files = readdirSync(join(CHART_DIR, "tests", "rules")).filter((f) => f.endsWith(".yaml")).sort();
    assert.ok(files.length > 0);
    for (const f of files) {
      const r = await promtool(["test", "rules", f], { cwd: dir, timeoutMs: 300_000 });
      assert.ok(r.ok, `promtool test rules ${f}:\n${r.stdout}${r.stderr}`);
    }
  });

  it("the rule tests would catch a wrong threshold (they are not vacuous)", async () => {
    // Render with a bounce-rate threshold above the tests' 10%: the firing case must now fail.
    writeFileSync(join(dir, "mailfleet-rules.yaml"), stringify(await renderRules(["monitoring.prometheusRule.thresholds.bounceRate=0.5"]), { lineWidth: 0 }));
    try {
      const r = await promtool(["test", "rules", "rates.yaml"], { cwd: dir, timeoutMs: 300_000 });
      assert.equal(r.ok, false, "rates.yaml passed against a 50% threshold");
      assert.match(r.stdout + r.stderr, /MailfleetBounceRateHigh/);
    } finally {
      writeFileSync(join(dir, "mailfleet-rules.yaml"), stringify(await renderRules(), { lineWidth: 0 }));
    }
  });
});

// ---------------------------------------------------------------------------------------------
// (c) Dashboards against a live fleet.
//
// The fleet, from the pieces test/env has (until `npm start`'s fleet module exists, then this should
// use it): the local control plane (kwok nodes, the relay runner's stages), NATS, the CRDs, the
// examples/ manifests, the operator as a process with the flags the chart renders and the chart's
// RBAC (its ServiceAccount's token), the relay runner playing the kubelet for the relay Pods, dnsmasq
// serving the providers' MX records and Postfix as their MX hosts (replies that defer, bounce and
// trigger response rules), and traffic: SMTP submission to the relays when they listen for it,
// otherwise messages put on the pools' route queues exactly as acceptance stores them.
//
// Prometheus scrapes it with what the chart's PodMonitors select: the relay PodMonitor becomes a
// kubernetes_sd pod job against the local API server with the relabelings prometheus-operator
// generates (keep by the selector's labels and the port name, job from jobLabel, namespace, pod,
// container, endpoint); the one local difference is the address, which comes from the runner's
// listen-address annotation (kwok's pod IPs are not reachable). The operator runs as a process, so
// its target is static, with the labels its PodMonitor would give it.
//
// Every panel query of every dashboard, its variables substituted with the values their own
// queries return, must return at least one series. A query may come back empty only because of
// something this test can name: a series METRICS.md marks "proposed", or a relay listener the
// relays do not start yet; those are reported as todo with the reason, anything else fails.
// ---------------------------------------------------------------------------------------------

const FLEET_NS = "mailfleet";
const FLEET_RELEASE = "mf";
const FLEET_DNS = "127.0.53.32";
/** Provider MX hosts (Postfix listeners) and the recipient domains that lead to them. */
const MXS = [
  { domain: "gmail.com", mx: "gmail-smtp-in.l.google.com", address: "127.0.32.1", tls: true },
  { domain: "yahoo.com", mx: "mta5.am0.yahoodns.net", address: "127.0.32.2", tls: false },
  { domain: "outlook.com", mx: "outlook-com.olc.protection.outlook.com", address: "127.0.32.3", tls: false },
  { domain: "example.net", mx: "mx.example.net", address: "127.0.32.4", tls: false },
];
/** Sending domains of examples/30-domains.yaml and their pools. */
const SENDERS = [
  { domain: "example.com", pool: "mail/transactional" },
  { domain: "news.example.com", pool: "mail/marketing" },
];

/** Series names METRICS.md marks proposed (no component exports them yet). */
function proposedSeries(): Set<string> {
  const rows = readFileSync(join(CHART_DIR, "METRICS.md"), "utf8").split("\n").filter((l) => l.startsWith("| `"));
  return new Set(rows.filter((l) => /\| proposed \|/.test(l)).map((l) => /^\| `([^`]+)`/.exec(l)![1]!));
}


/** Grafana's substitution for a multi-value variable: a regex alternation of the values. */
function regexOf(values: string[]): string {
  return values.length === 1 ? values[0]!.replace(/[.*+?^${}()|[\]\\]/g, "\\\\$&") : `(${values.map((v) => v.replace(/[.*+?^${}()|[\]\\]/g, "\\\\$&")).join("|")})`;
}

function substitute(expr: string, vars: Record<string, string[]>): string {
  return expr
    .replaceAll("$__rate_interval", "1m")
    .replaceAll("$__interval", "15s")
    .replaceAll("$__range", "15m")
    .replace(/\$([a-z_]+)/g, (m, name: string) => (vars[name] ? regexOf(vars[name]!) : m));
}

describe("dashboards against a live fleet", { timeout: 3_600_000 }, () => {
  let dir: string;
  let cp: ControlPlane;
  let nats: Nats;
  let dns: DnsHandle;
  let pf: PostfixHandle;
  let operator: ManagedProcess;
  let runner: Runner;
  let prom: PrometheusHandle;
  let nc: NatsConnection;
  let operatorMetricsPort = 0;
  let sdTimer: NodeJS.Timeout | undefined;
  const stopTraffic = new AbortController();
  let traffic: Promise<void> | undefined;
  const sent = { smtp: 0, queued: 0, refused: 0, reports: 0, errors: [] as string[] };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mf-fleet-"));
    chmodSync(dir, 0o755);
    const kwokConfig = writeRunnerKwokStages(join(dir, "kwok-stages.yaml"), defaultKwokStagesPath());
    // Two nodes: the HostNetwork pool runs one relay per node.
    cp = await startControlPlane({ dir: join(dir, "kube"), withControllers: true, nodes: 2, crdsDir: join(PROJECT_ROOT, "crds"), kwokConfig });
    nats = await startNats({ dir: join(dir, "nats") });
    nc = await connect({ servers: nats.urls });
    dns = await startDns({
      dir: join(dir, "dns"), address: FLEET_DNS,
      records: MXS.flatMap((m) => [
        { type: "MX" as const, name: m.domain, value: m.mx, priority: 10 },
        { type: "A" as const, name: m.mx, value: m.address },
      ]),
    });
    pf = await startPostfix({
      dir: join(dir, "postfix"),
      domains: MXS.map((m) => m.domain),
      listeners: MXS.map((m) => ({
        address: m.address, hostname: m.mx, tlsOffered: m.tls,
        rejectRecipients: [
          { pattern: /^unknown-/, reply: "550 5.1.1 The email account that you tried to reach does not exist" },
          { pattern: /^busy-/, reply: "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages" },
          // Yahoo's deferral that its MailboxProvider's "ts02" rule slows the lane down for.
          { pattern: /^ts02-/, reply: "421 4.7.0 [TS02] Messages from 127.0.1.1 temporarily deferred due to unexpected volume or user complaints" },
        ],
      })),
    });

    const apply = async (o: any) => {
      const r = await cp.request("PATCH", `${pathOf(o)}?fieldManager=fleet-test&force=true`, JSON.stringify(o), "application/apply-patch+yaml");
      assert.ok(r.status === 200 || r.status === 201, `apply ${o.kind} ${o.metadata.name}: ${r.status} ${r.body}`);
    };
    const docs = (f: string) => parseAllDocuments(readFileSync(join(PROJECT_ROOT, "examples", f), "utf8")).map((d) => d.toJS()).filter(Boolean);
    await apply({ apiVersion: "v1", kind: "Namespace", metadata: { name: FLEET_NS } });
    for (const f of readdirSync(join(PROJECT_ROOT, "examples")).sort()) {
      for (const o of docs(f)) {
        // HostNetwork egress: on real nodes each relay sends from the pool addresses on its
        // node's interfaces. Here every 127.x address is on every "node", so say which kwok node
        // owns which address (spec.addresses[].nodeName), as a cluster with fixed IPs would.
        if (o.kind === "IPPool" && o.spec.egress?.mode === "HostNetwork") {
          o.spec.addresses = o.spec.addresses.map((a: any, i: number) => ({ ...a, nodeName: cp.nodes[i % cp.nodes.length] }));
        }
        await apply(o);
      }
    }

    // The operator with the chart's RBAC and the chart's flags (plus what differs out of a cluster).
    const chart = await renderChart({ release: FLEET_RELEASE, namespace: FLEET_NS });
    for (const o of chart.filter((x) => ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].includes(x.kind) && !x.metadata.name.endsWith("-providers"))) await apply(o);
    const sa = chart.find((x) => x.kind === "ServiceAccount" && !x.metadata.name.endsWith("-providers"))!.metadata.name;
    const operatorKubeconfig = join(dir, "operator.kubeconfig");
    writeFileSync(operatorKubeconfig, await cp.kubeconfigForServiceAccount(FLEET_NS, sa, 7200));
    const [metricsPort, webhookPort] = await freePorts(2);
    operatorMetricsPort = metricsPort!;
    const chartArgs = (chart.find((x) => x.kind === "Deployment")!.spec.template.spec.containers[0].args as string[])
      .map((a) => a.replace("$(POD_NAME)", `${FLEET_RELEASE}-mailfleet-local`))
      .filter((a) => !/^--(nats|nats-replicas|metrics-port|webhook-port|relay-image)=/.test(a));
    operator = startProcess({
      name: "operator", command: process.execPath, cwd: PROJECT_ROOT, logFile: join(dir, "operator.log"), env: childEnv(),
      args: [join(PROJECT_ROOT, "operator", "main.ts"), ...chartArgs,
        `--kubeconfig=${operatorKubeconfig}`, `--nats=${nats.urls.join(",")}`, "--nats-replicas=1",
        `--metrics-port=${metricsPort}`, "--metrics-host=127.0.0.1", `--webhook-port=${webhookPort}`, "--webhook-url-host=127.0.0.1",
        `--dns-servers=${FLEET_DNS}`, `--relay-env=MAILFLEET_DNS_SERVERS=${FLEET_DNS}`, "--relay-image=localhost/mailfleet-relay:dev",
        ...(process.env.MAILFLEET_TEST_LOG ? ["--relay-env=MAILFLEET_LOG_LEVEL=debug"] : [])],
    });
    runner = await startRunner({ kubeconfig: cp.kubeconfigPath, stateDir: join(dir, "runner") });

    // Relays of both pools running.
    await waitUntil("relays of both pools running", 300_000, () => {
      const pools = new Set(runner.relays().filter((r) => r.state === "running").map((r) => r.env.MAILFLEET_POOL));
      return SENDERS.every((s) => pools.has(s.pool));
    }, () => `operator log:\n${tail(join(dir, "operator.log"))}\nrelays: ${JSON.stringify(runner.relays().map((r) => [r.pod, r.state, r.reason, r.message]))}`);

    traffic = sendTraffic(stopTraffic.signal);

    // Prometheus with the chart's PodMonitors made into scrape jobs.
    const monitors = (await renderChart({ release: FLEET_RELEASE, namespace: FLEET_NS, set: ["monitoring.podMonitor.enabled=true"] })).filter((x) => x.kind === "PodMonitor");
    const relayPm = monitors.find((m) => m.metadata.name.endsWith("-relays"))!;
    const operatorPm = monitors.find((m) => m.metadata.name.endsWith("-operator"))!;
    const rulesFile = join(dir, "mailfleet-rules.yaml");
    writeFileSync(rulesFile, stringify(await renderRules(), { lineWidth: 0 }));
    // Discovery: Prometheus' own kubernetes_sd against the local API server when the build has it
    // (a Go-module build, MAILFLEET_PROMETHEUS_VERSION); otherwise the same pod targets written to
    // a file_sd file every 2 s from the API server. Either way the relabelings are the PodMonitor's.
    const nativeSd = Boolean(process.env.MAILFLEET_PROMETHEUS_VERSION);
    const sdFile = join(dir, "relay-pods.json");
    const writeTargets = async () => {
      const pods = (await cp.request("GET", "/api/v1/pods")).json().items;
      const next = JSON.stringify(podTargets(pods), null, 1);
      let prev = "";
      try { prev = readFileSync(sdFile, "utf8"); } catch { /* first time */ }
      if (next !== prev) writeFileSync(sdFile, next);
    };
    if (!nativeSd) {
      await writeTargets();
      sdTimer = setInterval(() => { writeTargets().catch(() => {}); }, 2000);
    }
    const relayJob: ScrapeConfig = {
      job_name: `podMonitor/${relayPm.metadata.namespace}/${relayPm.metadata.name}/0`,
      honor_labels: false,
      metrics_path: relayPm.spec.podMetricsEndpoints[0].path ?? "/metrics",
      ...(nativeSd
        ? { kubernetes_sd_configs: [{ role: "pod", kubeconfig_file: cp.kubeconfigPath }] }
        : { file_sd_configs: [{ files: [sdFile], refresh_interval: "2s" }] }),
      relabel_configs: podMonitorRelabelings(relayPm, { addressFromAnnotation: LISTEN_ADDRESS_ANNOTATION }),
    };
    prom = await startPrometheus({
      dir: join(dir, "prometheus"),
      scrapeInterval: "2s",
      ruleFiles: [rulesFile],
      scrapeConfigs: [
        relayJob,
        {
          // What the operator PodMonitor gives an operator pod: job from app.kubernetes.io/name, namespace, pod, container, endpoint.
          job_name: `podMonitor/${operatorPm.metadata.namespace}/${operatorPm.metadata.name}/0`,
          metrics_path: "/metrics",
          static_configs: [{ targets: [`127.0.0.1:${metricsPort}`], labels: { job: "mailfleet", namespace: FLEET_NS, pod: `${FLEET_RELEASE}-mailfleet-local`, container: "operator", endpoint: "metrics" } }],
        },
      ],
    });
    // Traffic until what the tests below check is there: series appear with the first scrapes and
    // events, rate windows ($__rate_interval = 1m) need two samples, rules one evaluation. At most
    // MAILFLEET_FLEET_SOAK_MS; the tests then report whatever is still missing.
    const soakUntil = Date.now() + Number(process.env.MAILFLEET_FLEET_SOAK_MS ?? 240_000);
    while (Date.now() < soakUntil) {
      const [panels, series, rules] = [await panelCheck(), await seriesCheck(), await ruleCheck()];
      const allRules = rules.count === readdirSync(join(CHART_DIR, "prometheus_rules")).length && !rules.problems.length;
      if (!panels.failures.length && !series.missing.length && !series.waiting.length && allRules) break;
      await sleep(5000);
    }
  });

  after(async () => {
    if (sdTimer) clearInterval(sdTimer);
    stopTraffic.abort();
    await traffic?.catch(() => {});
    await prom?.stop();
    await runner?.stop();
    await operator?.stop();
    await nc?.close();
    await pf?.stop();
    await dns?.stop();
    await nats?.stop();
    await cp?.stop();
    if (dir && !process.env.MAILFLEET_KEEP_STATE) rmSync(dir, { recursive: true, force: true });
  });

  function pathOf(o: any): string {
    const [group, version] = o.apiVersion.includes("/") ? o.apiVersion.split("/") : ["", o.apiVersion];
    const plural = ({ Namespace: "namespaces", Secret: "secrets", ServiceAccount: "serviceaccounts", ClusterRole: "clusterroles", ClusterRoleBinding: "clusterrolebindings", Role: "roles", RoleBinding: "rolebindings",
      MailboxProvider: "mailboxproviders", WarmupSchedule: "warmupschedules", IPPool: "ippools", SendingDomain: "sendingdomains" } as Record<string, string>)[o.kind];
    assert.ok(plural, `no plural for ${o.kind}`);
    const clusterScoped = ["Namespace", "ClusterRole", "ClusterRoleBinding", "MailboxProvider"].includes(o.kind);
    return `${group ? `/apis/${group}/${version}` : `/api/${version}`}${clusterScoped ? "" : `/namespaces/${o.metadata.namespace}`}/${plural}/${o.metadata.name}`;
  }

  async function waitUntil(what: string, timeoutMs: number, check: () => boolean | Promise<boolean>, detail: () => string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (operator?.exitCode() !== undefined) throw new Error(`the operator exited (${operator.exitCode()}):\n${tail(join(dir, "operator.log"))}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${detail()}`);
      await sleep(1000);
    }
  }

  /** A steady workload: every 2 s a batch per sending domain to every provider, with some
   * recipients that bounce, defer or trigger a response rule. */
  async function sendTraffic(signal: AbortSignal): Promise<void> {
    const js = jetstream(nc);
    let n = 0;
    while (!signal.aborted) {
      for (const s of SENDERS) {
        const rcpts = MXS.map((m) => `user${n % 7}@${m.domain}`);
        if (n % 3 === 0) rcpts.push(`unknown-${n}@gmail.com`);
        if (n % 4 === 0) rcpts.push(`busy-${n}@outlook.com`);
        if (n % 5 === 0) rcpts.push(`ts02-${n}@yahoo.com`);
        try {
          await sendOne(js, s, rcpts, n);
        } catch (e) {
          if (sent.errors.length < 20) sent.errors.push(String(e));
        }
      }
      try {
        // A sender the plan does not allow: refused at submission.
        if (n % 5 === 2) await refusedSubmission();
        // Feedback-loop complaints and asynchronous bounces about delivered mail, to the return-path
        // domain's MX: the relays' inbound listener.
        if (n % 5 === 4) await reportsAboutDelivered();
      } catch (e) {
        if (sent.errors.length < 20) sent.errors.push(String(e));
      }
      n++;
      await sleep(2000, undefined, { signal }).catch(() => {});
    }
  }

  async function refusedSubmission(): Promise<void> {
    const relay = runner.relays().find((r) => r.state === "running" && r.listenAddress && r.submissionPort && relayListens(r.logFile, "submission"));
    if (!relay) return;
    const t = nodemailer.createTransport({ host: relay.listenAddress, port: relay.submissionPort, secure: false, ignoreTLS: true, name: "client.test" });
    try {
      await t.sendMail({ from: "someone@not-ours.test", to: "user1@gmail.com", subject: "not allowed", text: "x" });
      sent.errors.push("a submission as not-ours.test was accepted");
    } catch (e) {
      if (/^5\d\d|^4\d\d/.test(String((e as { responseCode?: number }).responseCode ?? ""))) sent.refused++;
      else throw e;
    } finally {
      t.close();
    }
  }

  /** An ARF complaint and a DSN about messages Postfix received, sent to a relay's inbound port. */
  async function reportsAboutDelivered(): Promise<void> {
    const relay = runner.relays().find((r) => r.state === "running" && r.listenAddress && r.inboundPort && relayListens(r.logFile, "inbound"));
    if (!relay) return;
    const delivered = (await pf.deliveredMessages()).filter((m) => /^b-[0-9a-z]{20}@bounces\.example\.com$/.test(m.returnPath));
    const complained = delivered.find((m) => m.deliveredTo.endsWith("@yahoo.com"));
    const bounced = delivered.find((m) => m.deliveredTo.endsWith("@gmail.com"));
    const t = nodemailer.createTransport({ host: relay.listenAddress, port: relay.inboundPort, secure: false, ignoreTLS: true, name: "mx.reporter.test" });
    try {
      if (complained) {
        const original = complained.raw.toString("utf8").replace(/\r?\n/g, "\r\n");
        const arf = [
          "From: <feedback@yahoo.com>", "To: <fbl@bounces.example.com>", "Subject: FW: complaint", `Date: ${new Date().toUTCString()}`,
          "MIME-Version: 1.0", 'Content-Type: multipart/report; report-type=feedback-report; boundary="arf"', "",
          "--arf", "Content-Type: text/plain", "", "This is an abuse report.", "",
          "--arf", "Content-Type: message/feedback-report", "",
          "Feedback-Type: abuse", "User-Agent: fleet-test/1.0", "Version: 1", `Original-Mail-From: <${complained.returnPath}>`,
          `Original-Rcpt-To: <${complained.deliveredTo}>`, `Source-IP: ${complained.clientIp}`, "",
          "--arf", "Content-Type: message/rfc822", "", original, "--arf--", "",
        ].join("\r\n");
        await t.sendMail({ envelope: { from: "", to: ["fbl@bounces.example.com"] }, raw: arf });
        sent.reports++;
      }
      if (bounced) {
        const dsn = [
          "From: Mail Delivery System <MAILER-DAEMON@mx.reporter.test>", `To: <${bounced.returnPath}>`, "Subject: Undelivered Mail Returned to Sender", `Date: ${new Date().toUTCString()}`,
          "MIME-Version: 1.0", 'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn"', "",
          "--dsn", "Content-Type: text/plain", "", "The mailbox is gone.", "",
          "--dsn", "Content-Type: message/delivery-status", "",
          "Reporting-MTA: dns; mx.reporter.test", "", `Final-Recipient: rfc822; ${bounced.deliveredTo}`, "Action: failed", "Status: 5.1.1",
          "Diagnostic-Code: smtp; 550 5.1.1 The email account that you tried to reach does not exist", "",
          "--dsn--", "",
        ].join("\r\n");
        await t.sendMail({ envelope: { from: "", to: [bounced.returnPath] }, raw: dsn });
        sent.reports++;
      }
    } finally {
      t.close();
    }
  }

  async function sendOne(js: JetStreamClient, s: { domain: string; pool: string }, rcpts: string[], n: number): Promise<void> {
    const from = `app@${s.domain}`;
    const subject = `fleet ${s.domain} ${n}`;
    const relay = runner.relays().find((r) => r.state === "running" && r.env.MAILFLEET_POOL === s.pool && r.listenAddress && r.submissionPort && startedComponents(r.logFile));
    if (!relay) return; // not started yet (it creates the streams)
    if (startedComponents(relay.logFile)!.includes("submission")) {
      const t = nodemailer.createTransport({ host: relay.listenAddress, port: relay.submissionPort, secure: false, ignoreTLS: true, name: "client.test" });
      try {
        await t.sendMail({ from, to: rcpts, subject, text: `steady workload ${n}` });
        sent.smtp++;
      } finally {
        t.close();
      }
      return;
    }
    // Acceptance's own format: body in MF_BODY, envelope on the pool's route queue.
    const qid = newQueueId();
    const body = Buffer.from([`From: <${from}>`, `To: ${rcpts.map((r) => `<${r}>`).join(", ")}`, `Subject: ${subject}`, `Date: ${new Date().toUTCString()}`, `Message-ID: <${qid}@${s.domain}>`, "MIME-Version: 1.0", "Content-Type: text/plain", "", `steady workload ${n}`, ""].join("\r\n"));
    await js.publish(subjects.body(qid), body, { msgID: `body:${qid}` });
    await js.publish(subjects.route(s.pool), encodeEnvelope({
      v: 1, id: qid, part: 0, pool: s.pool, domain: s.domain, mailFrom: from, returnPath: verpAddress(qid, `bounces.${s.domain}`), rcpts,
      body: { subject: subjects.body(qid) }, size: body.length, submitter: "net:127.0.0.0/8", acceptedAt: Date.now(), attempts: 0,
    }), { msgID: qid });
    sent.queued++;
  }

  it("every dashboard panel query returns at least one series (variables substituted)", async (t) => {
    t.diagnostic(`traffic: ${sent.smtp} messages by SMTP submission, ${sent.queued} put on route queues, ${sent.refused} refused submissions, ${sent.reports} reports to inbound${sent.errors.length ? `; errors: ${sent.errors.slice(0, 3).join(" | ")}` : ""}`);
    const targets = await prom.targets();
    t.diagnostic(`targets: ${targets.map((x) => `${x.labels.job} ${x.scrapeUrl} ${x.health}${x.lastError ? ` (${x.lastError})` : ""}`).join("; ")}`);
    const components = relayComponents();
    t.diagnostic(`relay components: ${components.join(", ")}`);
    for (const c of ["submission", "http"]) assert.ok(components.includes(c), `the relays start their ${c} listener (components: ${components.join(", ")})`);

    const { failures, ok } = await panelCheck();
    t.diagnostic(`${ok} panel queries returned data`);
    assert.deepEqual(failures, [], "panel queries that returned nothing");
  });

  /** Every dashboard query, variables substituted: those that return nothing (or an error). */
  async function panelCheck(): Promise<{ failures: string[]; ok: number }> {
    const failures: string[] = [];
    let ok = 0;
    for (const d of DASHBOARDS) {
      const vars: Record<string, string[]> = {};
      for (const v of d.variables) {
        const m = /^label_values\((.+),\s*([a-z_]+)\)$/.exec(VARIABLES[v]!.query)!;
        const q = `count by (${m[2]}) (${substitute(m[1]!, vars)})`;
        const values = (await prom.query(q)).map((x) => x.metric[m[2]!]!).filter(Boolean).sort();
        if (values.length) vars[v] = values;
        else {
          failures.push(`${d.file} variable $${v}: ${VARIABLES[v]!.query} has no values`);
          vars[v] = [".+"];
        }
      }
      for (const row of d.rows) for (const p of row.panels) for (const target of p.targets) {
        const expr = substitute(target.expr, vars);
        let n = 0;
        let err = "";
        try { n = (await prom.query(expr)).length; } catch (e) { err = (e as Error).message; }
        if (n > 0) { ok++; continue; }
        failures.push(`${d.file} "${p.title}": ${err || "no series"} for ${expr}`);
      }
    }
    return { failures, ok };
  }

  it("every series METRICS.md lists is exported and in Prometheus (none left proposed)", async () => {
    const { missing, waiting } = await seriesCheck();
    assert.deepEqual(missing, [], "series METRICS.md says are exported but the live fleet does not have");
    assert.deepEqual(waiting, [], "proposed in METRICS.md and still not exported: export them or change the queries");
    assert.deepEqual([...proposedSeries()], [], "exported now: mark these exported in METRICS.md");
  });

  /** METRICS.md's series that neither Prometheus has nor a target declares, exported and proposed. */
  async function seriesCheck(): Promise<{ missing: string[]; waiting: string[] }> {
    const rows = readFileSync(join(CHART_DIR, "METRICS.md"), "utf8").split("\n").filter((l) => l.startsWith("| `"));
    // Declared by a target (# HELP) counts too: a labelled counter has no series until its first
    // event (mailfleet_operator_reconcile_errors_total stays empty while nothing fails).
    const declared = new Set<string>();
    for (const target of await prom.targets()) {
      const text = await fetch(target.scrapeUrl).then((r) => r.text(), () => "");
      for (const m of text.matchAll(/^# HELP (\S+)/gm)) declared.add(m[1]!);
    }
    const missing: string[] = [];
    const waiting: string[] = [];
    for (const row of rows) {
      const name = /^\| `([^`]+)`/.exec(row)![1]!;
      const n = (await prom.query(`count({__name__="${name}"})`)).length;
      if (n > 0 || declared.has(name.replace(/_(bucket|sum|count)$/, ""))) continue;
      (/\| proposed \|/.test(row) ? waiting : missing).push(name);
    }
    return { missing, waiting };
  }

  it("the chart's alerts evaluate without errors on the live series", async () => {
    const { count, problems } = await ruleCheck();
    assert.equal(count, readdirSync(join(CHART_DIR, "prometheus_rules")).length);
    assert.deepEqual(problems, []);
  });

  /** The loaded rules, and those not (yet) evaluated without error. */
  async function ruleCheck(): Promise<{ count: number; problems: string[] }> {
    const res = await fetch(`${prom.url}/api/v1/rules`).then((r) => r.json()) as any;
    const rules = res.data.groups.flatMap((g: any) => g.rules);
    return { count: rules.length, problems: rules.filter((r: any) => r.health !== "ok").map((r: any) => `${r.name}: ${r.lastError}`) };
  }

  it("the operator's metrics are scraped with the labels its PodMonitor gives", async () => {
    const s = await prom.waitForQuery("mailfleet_operator_leader", { timeoutMs: 60_000 });
    assert.equal(s[0]!.metric.job, "mailfleet");
    assert.equal(s[0]!.metric.namespace, FLEET_NS);
    assert.equal(Number(s[0]!.value![1]), 1, "the only replica leads");
  });

  function relayComponents(): string[] {
    const r = runner.relays().find((x) => x.state === "running");
    if (!r) return [];
    const m = /"msg":"relay started","components":(\[[^\]]*\])/.exec(readFileSync(r.logFile, "utf8"));
    return m ? JSON.parse(m[1]!) : [];
  }

  function startedComponents(logFile: string): string[] | undefined {
    const m = /"msg":"relay started","components":(\[[^\]]*\])/.exec(readFileSync(logFile, "utf8"));
    return m ? JSON.parse(m[1]!) as string[] : undefined;
  }

  function relayListens(logFile: string, component: string): boolean {
    return startedComponents(logFile)?.includes(component) ?? false;
  }
});

function tail(file: string, lines = 40): string {
  try { return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n"); } catch { return "(no log)"; }
}
