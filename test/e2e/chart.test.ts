// charts/mailfleet: helm lint; helm template with the default values and with every optional part
// on (what each renders, CRDs equal to crds/, the operator's flags accepted by operator/config.ts,
// RBAC equal to operator/rbac.ts); wrong values refused with the key named; every rendered object
// applied by server-side dry run to a real kube-apiserver; helm install / upgrade / uninstall on the
// local control plane (kwok nodes make the operator's Deployment available), with the RBAC checked
// by SubjectAccessReview and the default MailboxProviders applied by the hook's own script under
// the hook's own ServiceAccount; CRDs and providers survive uninstall, and a new install adopts them.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it, before, after } from "node:test";
import { parse, parseAllDocuments } from "yaml";
import { FlagError, parseFlags } from "../../operator/config.ts";
import { clusterRules, namespaceRules, type PolicyRule } from "../../operator/rbac.ts";
import { webhookConfiguration } from "../../operator/controllers/webhook.ts";
import { CHART_DIR, MONITORING_API_VERSIONS, PROJECT_ROOT, helm, mustHelm, renderChart, renderChartError, type K8sObject } from "../env/chart.ts";
import { applyCRDsWithKubeconfig, startControlPlane, type ControlPlane } from "../env/controlplane.ts";
import { startNats } from "../env/nats.ts";
import { childEnv, freePorts, logTail, startProcess } from "../env/proc.ts";

const NS = "mailfleet";
const RELEASE = "mf";
const ALL_ON = "charts/mailfleet/ci/all-on-values.yaml";
const PODMONITOR = "charts/mailfleet/ci/podmonitor-values.yaml";
const FULLNAME = `${RELEASE}-mailfleet`;

const kinds = (objs: K8sObject[]) => objs.map((o) => o.kind).sort();
const byKind = (objs: K8sObject[], kind: string) => objs.filter((o) => o.kind === kind);
const one = (objs: K8sObject[], kind: string, name?: string) => {
  const found = objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `expected one ${kind}${name ? ` ${name}` : ""}, found ${found.length}`);
  return found[0]!;
};
const strip = (rules: PolicyRule[]) => rules.map(({ why: _w, ...r }) => r);
const ruleKey = (r: { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }) =>
  r.resources.map((res) => `${r.apiGroups.join(",")}|${res}|${[...r.verbs].sort().join(",")}|${(r.resourceNames ?? []).join(",")}`);

/** Every key of want is in got with the same value (objects recursively; arrays element-wise). */
function isSubset(want: unknown, got: unknown): boolean {
  if (Array.isArray(want)) return Array.isArray(got) && want.length === got.length && want.every((w, i) => isSubset(w, got[i]));
  if (want && typeof want === "object") return Boolean(got) && typeof got === "object" && Object.entries(want).every(([k, v]) => isSubset(v, (got as Record<string, unknown>)[k]));
  return want === got;
}

/** The operator container's args as the kubelet would pass them ($(POD_NAME) expanded). */
function operatorArgs(objs: K8sObject[]): string[] {
  const c = one(objs, "Deployment").spec.template.spec.containers[0];
  return (c.args as string[]).map((a) => a.replace("$(POD_NAME)", "mf-mailfleet-abc12-xyz"));
}

describe("charts/mailfleet offline", () => {
  it("helm lint --strict passes with the default values and every ci/ values file", async () => {
    for (const f of [undefined, ...readdirSync(join(CHART_DIR, "ci")).map((f) => `charts/mailfleet/ci/${f}`)]) {
      const r = await helm(["lint", "--strict", CHART_DIR, ...(f ? ["-f", join(PROJECT_ROOT, f)] : [])]);
      assert.equal(r.code, 0, `helm lint ${f ?? "(defaults)"}:\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /0 chart\(s\) failed/);
    }
  });

  it("default values: operator, RBAC, CRDs with the keep policy, the providers hook; no monitoring", async () => {
    const objs = await renderChart({ release: RELEASE, namespace: NS });
    assert.deepEqual(kinds(objs), [
      "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "ConfigMap",
      "CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition", "CustomResourceDefinition",
      "Deployment", "Job", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount", "ServiceAccount",
      "ValidatingWebhookConfiguration",
    ]);
    // The webhook registration is the chart's (uninstall removes it): what the operator would make,
    // less the CA bundle, which the operator sets (--webhook-config-from-chart).
    const vwc = one(objs, "ValidatingWebhookConfiguration");
    const theirs = webhookConfiguration({ enabled: true, port: 9443, configName: `${FULLNAME}-webhook`, secretName: `${FULLNAME}-webhook`, service: { namespace: NS, name: `${FULLNAME}-webhook`, port: 443 } }, undefined);
    assert.equal(vwc.metadata.name, theirs.metadata.name);
    assert.deepEqual(vwc.webhooks, theirs.webhooks);
    assert.ok(operatorArgs(objs).includes("--webhook-config-from-chart=true"));
    assert.deepEqual(byKind(await renderChart({ release: RELEASE, namespace: NS, set: ["webhook.enabled=false"] }), "ValidatingWebhookConfiguration"), []);
    const d = one(objs, "Deployment");
    assert.equal(d.spec.replicas, 2);
    const pod = d.spec.template.spec;
    assert.deepEqual(pod.securityContext, { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: { type: "RuntimeDefault" } });
    const c = pod.containers[0];
    assert.deepEqual(c.securityContext, { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
    for (const p of ["startupProbe", "livenessProbe", "readinessProbe"]) assert.ok(c[p]?.httpGet, `${p}`);
    assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, "resources");
    const args = operatorArgs(objs);
    for (const a of ["--leader-elect=true", `--lease-name=${FULLNAME}`, `--lease-namespace=${NS}`, "--webhook-port=9443", `--webhook-service=${FULLNAME}-webhook`, "--relay-image=mailfleet/relay:0.1.0"]) {
      assert.ok(args.includes(a), `operator args include ${a}: ${args.join(" ")}`);
    }
    for (const crd of byKind(objs, "CustomResourceDefinition")) {
      assert.equal(crd.metadata.annotations?.["helm.sh/resource-policy"], "keep", crd.metadata.name);
      assert.equal(crd.metadata.labels?.["app.kubernetes.io/instance"], RELEASE);
    }
    const job = one(objs, "Job");
    assert.match(job.metadata.annotations!["helm.sh/hook"]!, /post-install/);
    assert.match(job.metadata.annotations!["helm.sh/hook"]!, /post-upgrade/);
  });

  it("the CRD templates are the project's crds/ (only labels and the keep annotation added)", async () => {
    const rendered = byKind(await renderChart({ release: RELEASE, namespace: NS }), "CustomResourceDefinition");
    const files = readdirSync(join(PROJECT_ROOT, "crds")).filter((f) => f.endsWith(".yaml"));
    assert.equal(rendered.length, files.length);
    for (const f of files) {
      const want = parse(readFileSync(join(PROJECT_ROOT, "crds", f), "utf8"));
      const got = rendered.find((r) => r.metadata.name === want.metadata.name);
      assert.ok(got, `no rendered CRD ${want.metadata.name}`);
      assert.deepEqual(got.spec, want.spec, `${want.metadata.name}: spec differs from crds/${f}`);
      for (const [k, v] of Object.entries(want.metadata.labels ?? {})) assert.equal(got.metadata.labels?.[k], v);
    }
    assert.deepEqual(byKind(await renderChart({ set: ["crds.install=false"] }), "CustomResourceDefinition"), []);
    for (const crd of byKind(await renderChart({ set: ["crds.keep=false"] }), "CustomResourceDefinition")) {
      assert.equal(crd.metadata.annotations?.["helm.sh/resource-policy"], undefined);
    }
  });

  it("the ClusterRole and Roles are operator/rbac.ts's rules, namespaced when watchNamespaces is set", async () => {
    const objs = await renderChart({ release: RELEASE, namespace: NS });
    const cr = one(objs, "ClusterRole", FULLNAME);
    const want = strip(clusterRules({ webhookConfigName: `${FULLNAME}-webhook`, webhookConfigFromChart: true }));
    assert.deepEqual(cr.rules.flatMap(ruleKey).sort(), want.flatMap(ruleKey).sort());
    assert.deepEqual(one(objs, "Role", `${FULLNAME}-leader-election`).rules.flatMap(ruleKey).sort(), strip(namespaceRules({ leaseName: FULLNAME })).flatMap(ruleKey).sort());
    // The generated template keeps each rule's reason as a comment.
    const text = await mustHelm(["template", RELEASE, CHART_DIR, "-n", NS, "-s", "templates/rbac.yaml"]);
    for (const r of clusterRules({ webhookConfigName: "x", webhookConfigFromChart: true })) assert.ok(text.includes(`# ${r.why}`), `comment: ${r.why}`);

    const ns = await renderChart({ release: RELEASE, namespace: NS, valuesFiles: [PODMONITOR] });
    const roles = byKind(ns, "Role").filter((r) => r.metadata.name === FULLNAME);
    assert.deepEqual(roles.map((r) => r.metadata.namespace).sort(), ["mail-bulk", "mail-tx", NS]);
    const clusterWide = one(ns, "ClusterRole", FULLNAME).rules.flatMap((r: PolicyRule) => r.resources);
    for (const res of ["ippools", "secrets", "deployments"]) assert.ok(!clusterWide.includes(res), `${res} is not cluster-wide with watchNamespaces`);
    const merged = [...one(ns, "ClusterRole", FULLNAME).rules, ...roles[0]!.rules].flatMap(ruleKey).sort();
    assert.deepEqual(merged, want.flatMap(ruleKey).sort(), "cluster part + namespaced part = the operator's rules");
  });

  it("the operator accepts the chart's flags (operator/config.ts)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mf-flags-"));
    try {
      for (const valuesFiles of [[], [ALL_ON], [PODMONITOR]]) {
        const objs = await renderChart({ release: RELEASE, namespace: NS, valuesFiles });
        // The credentials file is a mounted Secret in the pod; here a file that exists.
        writeFileSync(join(dir, "nats.creds"), "-----BEGIN NATS USER JWT-----\n");
        const args = operatorArgs(objs).map((a) => a.replace(/^--nats-creds=.*$/, `--nats-creds=${join(dir, "nats.creds")}`));
        let cfg: ReturnType<typeof parseFlags>;
        try {
          cfg = parseFlags(args, { POD_NAMESPACE: NS, KUBERNETES_SERVICE_HOST: "10.96.0.1" });
        } catch (e) {
          assert.fail(`operator refuses the chart's flags (${valuesFiles.join(",") || "defaults"}): ${e instanceof FlagError ? e.message.split("\n")[0] : String(e)}`);
        }
        assert.equal(cfg.leaderElect, true);
        assert.equal(cfg.leaseName, FULLNAME);
        assert.equal(cfg.operatorNamespace, NS);
        assert.equal(cfg.webhook.serviceName, `${FULLNAME}-webhook`);
        assert.equal(cfg.webhook.configName, `${FULLNAME}-webhook`);
        assert.equal(cfg.webhook.configFromChart, true);
        assert.equal(cfg.metrics.port, 9400);
        if (valuesFiles.includes(PODMONITOR)) assert.deepEqual(cfg.namespaces, ["mail-tx", "mail-bulk"]);
        // relay.resources reaches the operator as the relays' default (an IPPool's own replaces it).
        assert.deepEqual(cfg.relay.resources, parse(readFileSync(join(CHART_DIR, "values.yaml"), "utf8")).relay.resources);
        if (valuesFiles.includes(ALL_ON)) {
          assert.deepEqual(cfg.relay.env, { MAILFLEET_LOG_LEVEL: "debug" });
          assert.equal(cfg.relay.natsCredsSecret, "mailfleet-relay-nats");
          assert.deepEqual(cfg.dnsServers, ["192.0.2.53", "192.0.2.54:5353"]);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("relay.resources: set, or unset with null, reaches the operator's --relay-resources", async () => {
    const flags = async (set: string[]) => parseFlags(operatorArgs(await renderChart({ release: RELEASE, namespace: NS, set })), { POD_NAMESPACE: NS, KUBERNETES_SERVICE_HOST: "10.96.0.1" }).relay.resources;
    assert.deepEqual(await flags(["relay.resources.requests.cpu=250m", "relay.resources.limits.memory=2Gi"]), { requests: { cpu: "250m", memory: "384Mi" }, limits: { memory: "2Gi" } });
    assert.equal(await flags(["relay.resources=null"]), undefined);
    assert.ok(!operatorArgs(await renderChart({ release: RELEASE, namespace: NS, set: ["relay.resources=null"] })).some((a) => a.startsWith("--relay-resources")));
  });

  it("every optional part on: monitors with the extra labels, the PrometheusRule, dashboards as labelled ConfigMaps", async () => {
    const objs = await renderChart({ release: RELEASE, namespace: NS, valuesFiles: [ALL_ON], apiVersions: MONITORING_API_VERSIONS });
    const sms = byKind(objs, "ServiceMonitor");
    assert.deepEqual(sms.map((s) => s.metadata.name).sort(), [`${FULLNAME}-operator`, `${FULLNAME}-relays`]);
    for (const m of [...sms, one(objs, "PrometheusRule")]) assert.equal(m.metadata.labels?.release, "kube-prometheus-stack", m.metadata.name);
    assert.deepEqual(byKind(objs, "PodMonitor"), []);
    const rule = one(objs, "PrometheusRule");
    const alerts = rule.spec.groups.flatMap((g: any) => g.rules);
    assert.equal(alerts.length, readdirSync(join(CHART_DIR, "prometheus_rules")).length);
    for (const a of alerts) {
      assert.ok(a.annotations.summary && a.annotations.description, a.alert);
      assert.match(a.annotations.runbook_url, new RegExp(`/docs/runbooks/${a.alert}\\.md$`));
      assert.equal(a.labels.team, "mail", `${a.alert}: alertLabels`);
    }
    const dashboards = byKind(objs, "ConfigMap").filter((c) => c.metadata.labels?.grafana_dashboard === "1");
    assert.equal(dashboards.length, readdirSync(join(CHART_DIR, "dashboards")).length);
    for (const cm of dashboards) {
      assert.equal(cm.metadata.annotations?.grafana_folder, "mailfleet");
      const [key] = Object.keys(cm.data);
      const json = JSON.parse(cm.data[key!]);
      assert.ok(json.uid && json.panels.length > 0, key);
    }
    const pm = byKind(await renderChart({ release: RELEASE, namespace: NS, valuesFiles: [PODMONITOR], apiVersions: MONITORING_API_VERSIONS }), "PodMonitor");
    assert.deepEqual(pm.map((p) => p.metadata.name).sort(), [`${FULLNAME}-operator`, `${FULLNAME}-relays`]);
    const relays = pm.find((p) => p.metadata.name.endsWith("-relays"))!;
    assert.deepEqual(relays.spec.namespaceSelector, { matchNames: ["mail-tx", "mail-bulk"] });
    // Excluding an alert leaves it out.
    const fewer = one(await renderChart({ set: ["monitoring.prometheusRule.enabled=true", "monitoring.prometheusRule.excludeRules={MailfleetRelayDown}"], apiVersions: MONITORING_API_VERSIONS }), "PrometheusRule");
    assert.ok(!fewer.spec.groups[0].rules.some((r: any) => r.alert === "MailfleetRelayDown"));
    assert.equal(fewer.spec.groups[0].rules.length, alerts.length - 1);
  });

  it("wrong values are refused with the key named", async () => {
    const cases: [string[], RegExp][] = [
      [["operator.replicas=two"], /operator\/replicas.*want integer/],
      [["operator.replicaz=2"], /at '\/operator'.*replicaz/],
      [["nats.url=http://nats:4222"], /\/nats\/url/],
      [["nats.replicas=2"], /\/nats\/replicas/],
      [["crds.install=maybe"], /\/crds\/install/],
      [["relay.env.log_level=debug"], /at '\/relay\/env'.*log_level/],
      [["relay.resources.limits.memory=1 GB"], /\/relay\/resources\/limits\/memory/],
      [["relay.resources.request.cpu=1"], /at '\/relay\/resources'.*request/],
      [["monitoring.prometheusRule.thresholds.bounceRate=5"], /\/monitoring\/prometheusRule\/thresholds\/bounceRate/],
      [["monitoring.prometheusRule.excludeRules={NoSuchAlert}"], /\/monitoring\/prometheusRule\/excludeRules\/0/],
      [["operator.logLevel=verbose"], /\/operator\/logLevel/],
      [["operator.resync=10 minutes"], /\/operator\/resync/],
      [["monitoring.serviceMonitor.enabled=true", "monitoring.podMonitor.enabled=true"], /monitoring\.serviceMonitor\.enabled and monitoring\.podMonitor\.enabled/],
      [["operator.replicas=2", "operator.leaderElection.enabled=false"], /operator\.leaderElection\.enabled/],
    ];
    for (const [set, want] of cases) {
      const err = await renderChartError({ set, apiVersions: MONITORING_API_VERSIONS });
      assert.match(err, want, `--set ${set.join(" ")}: ${err}`);
    }
    // Monitoring objects on a cluster without prometheus-operator: the value is named, not just the kind.
    assert.match(await renderChartError({ set: ["monitoring.podMonitor.enabled=true"], apiVersions: [] }), /monitoring\.podMonitor\.enabled is true but the cluster serves no monitoring\.coreos\.com\/v1 PodMonitor/);
  });
});

describe("charts/mailfleet on the local control plane", { timeout: 1_800_000 }, () => {
  let dir: string;
  let cp: ControlPlane;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "mf-chart-"));
    cp = await startControlPlane({ dir: join(dir, "kube"), withControllers: true, nodes: 1 });
    await applyCRDsWithKubeconfig(cp.kubeconfigPath, join(PROJECT_ROOT, "test", "fixtures", "prometheus-operator"));
    for (const name of [NS, "mail-tx", "mail-bulk"]) {
      const r = await cp.request("POST", "/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
      assert.equal(r.status, 201, r.body);
    }
  });
  after(async () => {
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const kube = (method: string, path: string, body?: unknown) => cp.request(method, path, body);

  // Raw requests, not @kubernetes/client-node's KubernetesObjectApi: that one serialises objects
  // through its typed models and drops keys it does not map (a CRD's x-kubernetes-int-or-string
  // among them), so what reached the server would not be what the chart rendered.
  const resources = new Map<string, { plural: string; namespaced: boolean }>();
  async function resourceFor(apiVersion: string, kind: string) {
    const key = `${apiVersion}/${kind}`;
    if (!resources.has(key)) {
      const r = await kube("GET", apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`);
      assert.equal(r.status, 200, `discovery of ${apiVersion}: ${r.body}`);
      for (const res of r.json().resources as { name: string; kind: string; namespaced: boolean }[]) {
        if (!res.name.includes("/")) resources.set(`${apiVersion}/${res.kind}`, { plural: res.name, namespaced: res.namespaced });
      }
    }
    const found = resources.get(key);
    assert.ok(found, `the API server serves no ${kind} in ${apiVersion}`);
    return found;
  }
  async function dryRunApply(o: K8sObject) {
    const r = await resourceFor(o.apiVersion, o.kind);
    const base = o.apiVersion.includes("/") ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
    const ns = r.namespaced ? `/namespaces/${o.metadata.namespace ?? NS}` : "";
    return cp.request("PATCH", `${base}${ns}/${r.plural}/${o.metadata.name}?dryRun=All&fieldManager=mailfleet-chart-test&force=true`, JSON.stringify(o), "application/apply-patch+yaml");
  }

  it("every rendered object passes a server-side dry run (defaults, all-on, podmonitor)", async () => {
    for (const valuesFiles of [[], [ALL_ON], [PODMONITOR]]) {
      const objs = await renderChart({ release: RELEASE, namespace: NS, valuesFiles, apiVersions: MONITORING_API_VERSIONS });
      const failures: string[] = [];
      for (const o of objs) {
        const r = await dryRunApply(o);
        if (r.status !== 200 && r.status !== 201) failures.push(`${o.kind} ${o.metadata.namespace ?? ""}/${o.metadata.name}: ${r.status} ${r.body}`);
      }
      assert.deepEqual(failures, [], `dry run with ${valuesFiles.join(",") || "defaults"}`);
      // Dry run created nothing.
      assert.equal((await kube("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ippools.mailfleet.io")).status, 404);
    }
  });

  it("helm install: the operator Deployment becomes available, RBAC allows what the operator needs, the hook applies the default providers", async () => {
    await mustHelm(["install", RELEASE, CHART_DIR, "-n", NS, "--wait", "--wait-for-jobs", "--timeout", "5m"], { kubeconfig: cp.kubeconfigPath, timeoutMs: 600_000 });
    const dep = (await kube("GET", `/apis/apps/v1/namespaces/${NS}/deployments/${FULLNAME}`)).json();
    assert.equal(dep.status.availableReplicas, 2, "2 replicas available");
    for (const crd of ["ippools", "sendingdomains", "warmupschedules", "mailboxproviders"]) {
      const r = (await kube("GET", `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd}.mailfleet.io`)).json();
      assert.equal(r.metadata.annotations["helm.sh/resource-policy"], "keep");
      assert.ok(r.status.conditions.some((c: any) => c.type === "Established" && c.status === "True"), `${crd} established`);
    }

    // What the operator's ServiceAccount may do: each of its rules, and not more.
    const sa = `system:serviceaccount:${NS}:${FULLNAME}`;
    const can = async (verb: string, resource: string, o: { group?: string; namespace?: string; name?: string; sub?: string } = {}) => {
      const [res, sub] = resource.split("/");
      const r = await kube("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        apiVersion: "authorization.k8s.io/v1", kind: "SubjectAccessReview",
        spec: { user: sa, groups: ["system:serviceaccounts", `system:serviceaccounts:${NS}`], resourceAttributes: { verb, resource: res, subresource: sub ?? o.sub, group: o.group ?? "", namespace: o.namespace, name: o.name } },
      });
      return r.json().status.allowed === true;
    };
    for (const rule of clusterRules({ webhookConfigName: `${FULLNAME}-webhook`, webhookConfigFromChart: true })) {
      for (const resource of rule.resources) for (const verb of rule.verbs) {
        const name = rule.resourceNames?.[0];
        assert.ok(await can(verb, resource, { group: rule.apiGroups[0], namespace: resource.startsWith("mailboxproviders") || /webhook|customresource|namespaces/.test(resource) ? undefined : "mail-tx", name }), `${verb} ${resource} (${rule.why})`);
      }
    }
    assert.ok(await can("update", "leases", { group: "coordination.k8s.io", namespace: NS, name: FULLNAME }), "renew its Lease");
    assert.ok(!(await can("update", "leases", { group: "coordination.k8s.io", namespace: NS, name: "someone-else" })), "not others' Leases");
    assert.ok(!(await can("patch", "validatingwebhookconfigurations", { group: "admissionregistration.k8s.io", name: "another-webhook" })), "not other webhooks");
    // The chart renders the webhook configuration; the operator only sets its CA bundle.
    assert.ok(!(await can("create", "validatingwebhookconfigurations", { group: "admissionregistration.k8s.io" })), "creates no webhook configuration");
    assert.ok(!(await can("delete", "validatingwebhookconfigurations", { group: "admissionregistration.k8s.io", name: `${FULLNAME}-webhook` })), "does not delete the chart's");
    assert.ok(!(await can("create", "pods", { namespace: "mail-tx" })), "no pods");
    assert.ok(!(await can("create", "clusterrolebindings", { group: "rbac.authorization.k8s.io" })), "no RBAC");
    assert.ok(!(await can("delete", "mailboxproviders", { group: "mailfleet.io", name: "google" })), "does not delete providers");

    // The hook Job ran on a kwok node (nothing executes there): run its script for real, with the
    // hook's ServiceAccount, its ConfigMap's files, against this API server.
    const cm = (await kube("GET", `/api/v1/namespaces/${NS}/configmaps/${FULLNAME}-providers`)).json();
    const work = join(dir, "providers-hook");
    mkdirSync(work, { recursive: true });
    writeFileSync(join(work, "providers.json"), cm.data["providers.json"]);
    writeFileSync(join(work, "apply-providers.mjs"), cm.data["apply-providers.mjs"]);
    const hookKc = parse(await cp.kubeconfigForServiceAccount(NS, `${FULLNAME}-providers`, 600));
    writeFileSync(join(work, "token"), hookKc.users[0].user.token);
    writeFileSync(join(work, "ca.crt"), cp.caPem);
    const runHook = () => new Promise<string>((res, rej) => execFile(process.execPath, [join(work, "apply-providers.mjs")], {
      env: { PATH: process.env.PATH, MAILFLEET_API: cp.server, MAILFLEET_TOKEN_FILE: join(work, "token"), MAILFLEET_CA_FILE: join(work, "ca.crt"), MAILFLEET_PROVIDERS_FILE: join(work, "providers.json"), MAILFLEET_TIMEOUT_SECONDS: "60" },
      timeout: 120_000, encoding: "utf8",
    }, (err, stdout, stderr) => (err ? rej(new Error(`${err.message}\n${stdout}${stderr}`)) : res(stdout))));
    const out = await runHook();
    const examples = parseAllDocuments(readFileSync(join(PROJECT_ROOT, "examples", "00-providers.yaml"), "utf8")).map((d) => d.toJS()).filter(Boolean);
    assert.match(out, new RegExp(`${examples.length} applied`));
    const live = (await kube("GET", "/apis/mailfleet.io/v1alpha1/mailboxproviders")).json().items as any[];
    for (const want of examples) {
      const got = live.find((p) => p.metadata.name === want.metadata.name);
      assert.ok(got, `MailboxProvider ${want.metadata.name}`);
      // What examples/ says is there; the API server may have added defaults (recipientsPerMessage, ...).
      assert.ok(isSubset(want.spec, got.spec), `${want.metadata.name}: spec as in examples/ (got ${JSON.stringify(got.spec)})`);
    }
    // A person's change to a default wins over the next upgrade's hook run; the others are re-applied.
    const edit = await cp.request("PATCH", "/apis/mailfleet.io/v1alpha1/mailboxproviders/google?fieldManager=kubectl-edit", { spec: { shaping: { maxConnections: 2 } } }, "application/merge-patch+json");
    assert.equal(edit.status, 200, edit.body);
    const again = await runHook();
    assert.match(again, /kept as changed outside the chart \(google\)/);
    assert.equal((await kube("GET", "/apis/mailfleet.io/v1alpha1/mailboxproviders/google")).json().spec.shaping.maxConnections, 2);
  });

  it("helm upgrade to every optional part on, and a wrong value refused without touching the release", async () => {
    await mustHelm(["upgrade", RELEASE, CHART_DIR, "-n", NS, "-f", join(PROJECT_ROOT, ALL_ON), "--wait", "--wait-for-jobs", "--timeout", "5m"], { kubeconfig: cp.kubeconfigPath, timeoutMs: 600_000 });
    for (const [path, what] of [
      [`/apis/monitoring.coreos.com/v1/namespaces/${NS}/servicemonitors/${FULLNAME}-relays`, "relay ServiceMonitor"],
      [`/apis/monitoring.coreos.com/v1/namespaces/${NS}/prometheusrules/${FULLNAME}`, "PrometheusRule"],
      [`/api/v1/namespaces/${NS}/configmaps/${FULLNAME}-dashboard-fleet-overview`, "fleet overview dashboard"],
    ] as const) assert.equal((await kube("GET", path)).status, 200, what);
    const bad = await helm(["upgrade", RELEASE, CHART_DIR, "-n", NS, "--reuse-values", "--set", "operator.replicas=lots"], { kubeconfig: cp.kubeconfigPath });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /operator\/replicas/);
    const hist = JSON.parse(await mustHelm(["history", RELEASE, "-n", NS, "-o", "json"], { kubeconfig: cp.kubeconfigPath }));
    assert.equal(hist.at(-1).status, "deployed");
    assert.equal(hist.length, 2, "the refused upgrade made no revision");
  });

  it("helm uninstall removes the operator and keeps the CRDs, their objects and the providers; a new install adopts the CRDs", async () => {
    const schedule = parseAllDocuments(readFileSync(join(PROJECT_ROOT, "examples", "10-warmup.yaml"), "utf8")).map((d) => d.toJS()).find((o) => o?.kind === "WarmupSchedule");
    schedule.metadata.namespace = "mail-tx";
    const created = await kube("POST", "/apis/mailfleet.io/v1alpha1/namespaces/mail-tx/warmupschedules", schedule);
    assert.equal(created.status, 201, created.body);

    // What the operator makes at run time (the webhook's certificate Secret and CA bundle, the
    // leader Lease): kwok's pods run nothing, so one replica runs here as a process with the
    // chart's flags (the installed release's values), against this control plane and a real NATS.
    const nats = await startNats({ dir: join(dir, "nats") });
    const [metricsPort, webhookPort] = await freePorts(2);
    const values = JSON.parse(await mustHelm(["get", "values", RELEASE, "-n", NS, "-a", "-o", "json"], { kubeconfig: cp.kubeconfigPath }));
    const valuesFile = join(dir, "release-values.json");
    writeFileSync(valuesFile, JSON.stringify(values));
    const chartArgs = operatorArgs(await renderChart({ release: RELEASE, namespace: NS, valuesFiles: [valuesFile] })).filter((a) => !a.startsWith("--nats-creds"));
    const logFile = join(dir, "operator.log");
    const op = startProcess({
      name: "operator", command: process.execPath, logFile, cwd: PROJECT_ROOT, env: childEnv({ POD_NAMESPACE: NS }),
      args: [join(PROJECT_ROOT, "operator", "main.ts"), ...chartArgs, "--kubeconfig", cp.kubeconfigPath, `--nats=${nats.urls.join(",")}`,
        "--metrics-host=127.0.0.1", `--metrics-port=${metricsPort}`, "--webhook-host=127.0.0.1", `--webhook-port=${webhookPort}`],
    });
    const webhookName = `${FULLNAME}-webhook`;
    try {
      const deadline = Date.now() + 120_000;
      let state = "";
      for (;;) {
        const vwc = (await kube("GET", `/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/${webhookName}`)).json();
        const secret = await kube("GET", `/api/v1/namespaces/${NS}/secrets/${webhookName}`);
        const lease = await kube("GET", `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/${FULLNAME}`);
        const ownedByVwc = (o: any) => o?.metadata?.ownerReferences?.some((r: any) => r.kind === "ValidatingWebhookConfiguration" && r.uid === vwc.metadata.uid);
        state = `caBundle ${Boolean(vwc.webhooks?.[0]?.clientConfig?.caBundle)}, Secret ${secret.status} owned ${secret.status === 200 && ownedByVwc(secret.json())}, Lease ${lease.status} owned ${lease.status === 200 && ownedByVwc(lease.json())}`;
        if (state === "caBundle true, Secret 200 owned true, Lease 200 owned true") break;
        if (op.exitCode() !== undefined) assert.fail(`the operator exited (${op.exitCode()}):\n${logTail(logFile, 40)}`);
        if (Date.now() > deadline) assert.fail(`the operator's webhook objects within 120 s: ${state}\n${logTail(logFile, 40)}`);
        await new Promise((r) => setTimeout(r, 500));
      }
      const vwc = (await kube("GET", `/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/${webhookName}`)).json();
      assert.equal(vwc.metadata.labels["app.kubernetes.io/managed-by"], "Helm", "the chart's registration; the operator set only its CA bundle");
      assert.equal(vwc.webhooks[0].clientConfig.service.name, webhookName);
    } finally {
      await op.stop(30_000);
      await nats.stop();
    }

    await mustHelm(["uninstall", RELEASE, "-n", NS, "--wait"], { kubeconfig: cp.kubeconfigPath });
    // Nothing of the operator's is left but the CRDs (kept by design) and what users made: the
    // garbage collector removes what the webhook configuration owned.
    const leftovers = async () => {
      const left: string[] = [];
      const names = async (path: string) => ((await kube("GET", path)).json().items ?? []).map((o: any) => o.metadata.name as string);
      for (const [res, path] of [
        ["Secret", `/api/v1/namespaces/${NS}/secrets`], ["ConfigMap", `/api/v1/namespaces/${NS}/configmaps`], ["Lease", `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`],
        ["ServiceAccount", `/api/v1/namespaces/${NS}/serviceaccounts`], ["Service", `/api/v1/namespaces/${NS}/services`], ["Deployment", `/apis/apps/v1/namespaces/${NS}/deployments`],
        ["Job", `/apis/batch/v1/namespaces/${NS}/jobs`], ["Role", `/apis/rbac.authorization.k8s.io/v1/namespaces/${NS}/roles`], ["RoleBinding", `/apis/rbac.authorization.k8s.io/v1/namespaces/${NS}/rolebindings`],
        ["PodDisruptionBudget", `/apis/policy/v1/namespaces/${NS}/poddisruptionbudgets`],
      ] as const) {
        for (const n of await names(path)) if (!["kube-root-ca.crt", "default"].includes(n)) left.push(`${res} ${NS}/${n}`);
      }
      for (const [res, path] of [
        ["ValidatingWebhookConfiguration", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"],
        ["ClusterRole", "/apis/rbac.authorization.k8s.io/v1/clusterroles"], ["ClusterRoleBinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"],
      ] as const) {
        for (const n of await names(path)) if (n.startsWith(FULLNAME) || n.startsWith("mailfleet")) left.push(`${res} ${n}`);
      }
      return left;
    };
    const deadline = Date.now() + 120_000;
    let left = await leftovers();
    while (left.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1000));
      left = await leftovers();
    }
    assert.deepEqual(left, [], "left behind by helm uninstall");
    assert.equal((await kube("GET", `/apis/apps/v1/namespaces/${NS}/deployments/${FULLNAME}`)).status, 404, "operator Deployment removed");
    assert.equal((await kube("GET", `/apis/rbac.authorization.k8s.io/v1/clusterroles/${FULLNAME}`)).status, 404, "ClusterRole removed");
    for (const crd of ["ippools", "sendingdomains", "warmupschedules", "mailboxproviders"]) {
      assert.equal((await kube("GET", `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd}.mailfleet.io`)).status, 200, `${crd} CRD kept`);
    }
    assert.equal((await kube("GET", "/apis/mailfleet.io/v1alpha1/namespaces/mail-tx/warmupschedules")).json().items.length, 1, "WarmupSchedule kept");
    assert.ok((await kube("GET", "/apis/mailfleet.io/v1alpha1/mailboxproviders")).json().items.length > 5, "providers kept");
    await mustHelm(["install", RELEASE, CHART_DIR, "-n", NS, "--wait", "--timeout", "5m"], { kubeconfig: cp.kubeconfigPath, timeoutMs: 600_000 });
    assert.equal((await kube("GET", `/apis/apps/v1/namespaces/${NS}/deployments/${FULLNAME}`)).json().status.availableReplicas, 2);
    await mustHelm(["uninstall", RELEASE, "-n", NS, "--wait"], { kubeconfig: cp.kubeconfigPath });
  });
});
