// Helm against the project's chart, for tests: the helm binary test/env/tools.ts builds, rendering
// to parsed objects, and the PrometheusRule rendered as a plain Prometheus rules file.
import { execFile } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { ensureTools, toolPath } from "./tools.ts";
import { childEnv } from "./proc.ts";

export const PROJECT_ROOT = resolve(fileURLToPath(import.meta.url), "..", "..", "..");
export const CHART_DIR = join(PROJECT_ROOT, "charts", "mailfleet");
/** prometheus-operator kinds, for `helm template` (it has no cluster to ask). */
export const MONITORING_API_VERSIONS = ["ServiceMonitor", "PodMonitor", "PrometheusRule"].map((k) => `monitoring.coreos.com/v1/${k}`);

export interface HelmResult { code: number; stdout: string; stderr: string }

export async function helmBinary(): Promise<string> {
  await ensureTools(["helm"]);
  return toolPath("helm");
}

/** Runs helm; never rejects on a non-zero exit. KUBECONFIG from opts.kubeconfig when given. */
export async function helm(args: string[], opts: { kubeconfig?: string; timeoutMs?: number } = {}): Promise<HelmResult> {
  const bin = await helmBinary();
  return new Promise((res, rej) => {
    execFile(bin, args, {
      cwd: PROJECT_ROOT,
      timeout: opts.timeoutMs ?? 300_000,
      maxBuffer: 64 << 20,
      // Helm keeps its cache and repository config under HOME; no proxies for the local apiserver.
      env: childEnv(opts.kubeconfig ? { KUBECONFIG: opts.kubeconfig } : {}),
      encoding: "utf8",
    }, (err, stdout, stderr) => {
      if (err && typeof err.code !== "number") rej(new Error(`helm ${args.join(" ")}: ${err.message}`));
      else res({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

export async function mustHelm(args: string[], opts: { kubeconfig?: string; timeoutMs?: number } = {}): Promise<string> {
  const r = await helm(args, opts);
  if (r.code !== 0) throw new Error(`helm ${args.join(" ")} exited ${r.code}:\n${r.stderr}${r.stdout}`.slice(0, 8000));
  return r.stdout;
}

export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }; [k: string]: any };

export interface RenderOptions {
  release?: string;
  namespace?: string;
  valuesFiles?: string[];
  set?: string[];
  /** --api-versions (default: the prometheus-operator kinds, as on a cluster that has them). */
  apiVersions?: string[];
}

function renderArgs(o: RenderOptions): string[] {
  return [
    "template", o.release ?? "mf", CHART_DIR, "--namespace", o.namespace ?? "mailfleet",
    ...(o.valuesFiles ?? []).flatMap((f) => ["-f", resolve(PROJECT_ROOT, f)]),
    ...(o.set ?? []).flatMap((s) => ["--set", s]),
    ...(o.apiVersions ?? MONITORING_API_VERSIONS).flatMap((a) => ["--api-versions", a]),
  ];
}

/** `helm template` parsed into objects (empty documents dropped). */
export async function renderChart(o: RenderOptions = {}): Promise<K8sObject[]> {
  const out = await mustHelm(renderArgs(o));
  return parseAllDocuments(out).map((d) => d.toJS() as K8sObject).filter((x) => x && typeof x === "object" && x.kind);
}

/** `helm template` that is expected to fail: its error output. */
export async function renderChartError(o: RenderOptions = {}): Promise<string> {
  const r = await helm(renderArgs(o));
  if (r.code === 0) throw new Error(`helm template ${JSON.stringify(o)} succeeded, expected it to fail`);
  return r.stderr;
}

/** The chart's PrometheusRule (default values plus `set`) as a Prometheus rules file's content. */
export async function renderRules(set: string[] = []): Promise<{ groups: unknown[] }> {
  const objs = await renderChart({ set: ["monitoring.prometheusRule.enabled=true", ...set], apiVersions: MONITORING_API_VERSIONS });
  const rule = objs.find((o) => o.kind === "PrometheusRule");
  if (!rule) throw new Error("the chart rendered no PrometheusRule with monitoring.prometheusRule.enabled=true");
  return { groups: rule.spec.groups };
}
