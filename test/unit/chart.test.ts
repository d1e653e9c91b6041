// The chart's files that come from elsewhere are current, and its monitoring pieces are complete:
// every alert has a summary, description, runbook link, runbook page and a promtool test that fires
// it; every dashboard panel has a description and queries only variables it defines; METRICS.md
// lists exactly the series the dashboards and alerts use. (Rendering, installing and running the
// alerts and queries: test/e2e/chart.test.ts and test/e2e/monitoring.test.ts.)
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parse, parseAllDocuments } from "yaml";
import { DASHBOARDS, VARIABLES, dashboardMetrics, metricNames } from "../../charts/dashboards.ts";
import { generated, splitByScope } from "../../charts/gen.ts";
import { clusterRules } from "../../operator/rbac.ts";

const root = join(import.meta.dirname, "..", "..");
const chart = join(root, "charts", "mailfleet");

describe("chart files generated from the project", () => {
  it("files/, templates/rbac.yaml and dashboards/ are current (run npm run gen:chart when this fails)", () => {
    for (const [file, text] of generated()) {
      const path = join(chart, file);
      assert.ok(existsSync(path), `charts/mailfleet/${file} is missing: run npm run gen:chart`);
      assert.ok(readFileSync(path, "utf8") === text, `charts/mailfleet/${file} is stale: run npm run gen:chart`);
    }
    for (const dir of ["files/crds", "dashboards"]) {
      for (const f of readdirSync(join(chart, dir))) assert.ok(generated().has(`${dir}/${f}`), `charts/mailfleet/${dir}/${f} is not generated from anything: run npm run gen:chart`);
    }
  });

  it("the chart's default MailboxProviders are examples/00-providers.yaml", () => {
    const docs = (text: string) => parseAllDocuments(text).map((d) => d.toJS()).filter(Boolean);
    assert.deepEqual(docs(readFileSync(join(chart, "files", "providers.yaml"), "utf8")), docs(readFileSync(join(root, "examples", "00-providers.yaml"), "utf8")));
  });

  it("splitting the operator's rules by scope loses no resource and puts none in the wrong place", () => {
    const rules = clusterRules({ webhookConfigName: "x" });
    const { cluster, namespaced } = splitByScope(rules);
    const key = (r: { apiGroups: string[]; resources: string[]; verbs: string[] }) => r.resources.map((res) => `${r.apiGroups.join()}|${res}|${[...r.verbs].sort().join()}`);
    assert.deepEqual([...cluster, ...namespaced].flatMap(key).sort(), rules.flatMap(key).sort());
    for (const r of namespaced) for (const res of r.resources) assert.ok(!/^(mailboxproviders|validatingwebhookconfigurations|customresourcedefinitions|namespaces)(\/|$)/.test(res), res);
    for (const r of rules) assert.ok(r.why.length > 10, `rule on ${r.resources.join(",")} says why`);
  });

  it("with the chart's webhook configuration the operator may neither create nor delete webhook configurations", () => {
    const verbs = (fromChart: boolean) => clusterRules({ webhookConfigName: "x", webhookConfigFromChart: fromChart })
      .filter((r) => r.resources.includes("validatingwebhookconfigurations")).flatMap((r) => r.verbs).sort();
    assert.deepEqual(verbs(true), ["get", "list", "patch", "watch"]);
    assert.deepEqual(verbs(false), ["create", "delete", "get", "list", "patch", "watch"]);
  });
});

const ruleFiles = readdirSync(join(chart, "prometheus_rules")).filter((f) => f.endsWith(".yaml")).sort();
const alertOf = (text: string) => /\$alert := "([A-Za-z]+)"/.exec(text)?.[1];

describe("alerts", () => {
  it("each rule file is one alert with a summary, a description, a runbook link and a runbook page", () => {
    assert.ok(ruleFiles.length >= 11, `expected the 11 alerts of issue 6, found ${ruleFiles.length}`);
    for (const f of ruleFiles) {
      const text = readFileSync(join(chart, "prometheus_rules", f), "utf8");
      const alert = alertOf(text);
      assert.ok(alert, `${f}: no {{- $alert := "..." -}} line`);
      assert.match(text, /^ {2}summary: /m, `${f}: summary`);
      assert.match(text, /^ {2}description: /m, `${f}: description`);
      assert.ok(text.includes("\n  runbook_url: {{ .runbookBaseUrl }}/{{ $alert }}.md\n"), `${f}: runbook_url`);
      assert.match(text, /^ {2}severity: (critical|warning)$/m, `${f}: severity`);
      assert.match(text, /has \$alert \.excludeRules/, `${f}: can be excluded`);
      assert.ok(existsSync(join(root, "docs", "runbooks", `${alert}.md`)), `docs/runbooks/${alert}.md`);
    }
  });

  it("every alert has a promtool test where it fires and one where it stays quiet", () => {
    const fires = new Set<string>();
    const quiet = new Set<string>();
    for (const f of readdirSync(join(chart, "tests", "rules")).filter((f) => f.endsWith(".yaml"))) {
      const doc = parse(readFileSync(join(chart, "tests", "rules", f), "utf8")) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
      for (const t of doc.tests) for (const a of t.alert_rule_test ?? []) (a.exp_alerts.length ? fires : quiet).add(a.alertname);
    }
    for (const f of ruleFiles) {
      const alert = alertOf(readFileSync(join(chart, "prometheus_rules", f), "utf8"))!;
      assert.ok(fires.has(alert), `no promtool test fires ${alert}`);
      assert.ok(quiet.has(alert), `no promtool test expects ${alert} to stay quiet`);
    }
  });

  it("values.schema.json lists exactly these alerts for excludeRules", () => {
    const schema = JSON.parse(readFileSync(join(chart, "values.schema.json"), "utf8"));
    const names = schema.properties.monitoring.properties.prometheusRule.properties.excludeRules.items.enum as string[];
    assert.deepEqual([...names].sort(), ruleFiles.map((f) => alertOf(readFileSync(join(chart, "prometheus_rules", f), "utf8"))!).sort());
  });
});

describe("dashboards", () => {
  it("every panel has a description and queries; variables used are defined; uids are unique", () => {
    const uids = new Set<string>();
    for (const d of DASHBOARDS) {
      assert.ok(!uids.has(d.uid), `duplicate uid ${d.uid}`);
      uids.add(d.uid);
      for (const row of d.rows) {
        for (const p of row.panels) {
          assert.ok(p.description.length > 10, `${d.file} "${p.title}": description`);
          assert.ok(p.targets.length > 0, `${d.file} "${p.title}": queries`);
          for (const t of p.targets) {
            for (const v of t.expr.match(/\$[a-z_]+/g) ?? []) {
              const name = v.slice(1);
              if (name.startsWith("_")) continue;
              assert.ok(d.variables.includes(name), `${d.file} "${p.title}" uses $${name}, which the dashboard does not define`);
            }
          }
        }
      }
      for (const v of d.variables) {
        for (const used of VARIABLES[v]!.query.match(/\$[a-z_]+/g) ?? []) assert.ok(d.variables.indexOf(used.slice(1)) < d.variables.indexOf(v), `${d.file}: $${v} depends on ${used}, defined after it`);
      }
    }
  });
});

describe("METRICS.md", () => {
  it("lists exactly the series the dashboards and alerts query", () => {
    const table = readFileSync(join(chart, "METRICS.md"), "utf8").split("\n").filter((l) => l.startsWith("| `"));
    const listed = new Set(table.map((l) => /^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)`/.exec(l)![1]!));
    const used = dashboardMetrics();
    for (const f of ruleFiles) {
      const text = readFileSync(join(chart, "prometheus_rules", f), "utf8");
      const expr = text.slice(text.indexOf("expr:"), text.indexOf("\nfor:"));
      const defs = [...text.matchAll(/:= "([^"]*)"/g)].map((m) => m[1]).join("\n");
      for (const m of metricNames(`${expr}\n${defs}`)) used.add(m);
    }
    assert.deepEqual([...listed].sort(), [...used].sort(), "METRICS.md vs what dashboards/alerts query");
  });
});
