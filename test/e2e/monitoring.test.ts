// The chart's monitoring, checked with real Prometheus tools:
//   (a) promtool check rules on the PrometheusRule the chart renders;
//   (b) promtool test rules: charts/mailfleet/tests/rules/*.yaml fire each alert on synthetic bad
//       series and keep it quiet on healthy ones;
//   (c) a real Prometheus scraping a running local fleet that carries traffic, with scrape
//       configurations equivalent to the chart's PodMonitors: every dashboard panel query, its
//       template variables substituted, returns at least one series (see fleet.test section below).
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { stringify } from "yaml";
import { CHART_DIR, renderRules } from "../env/chart.ts";
import { promtool } from "../env/peers/prometheus.ts";

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
