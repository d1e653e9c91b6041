// A real Prometheus (and promtool) for tests: scrapes what a test points it at; queries run over
// its HTTP API.
//
// Binaries: Debian's `prometheus` package (2.42) by default. Set MAILFLEET_PROMETHEUS_VERSION
// (e.g. 3.5.0) to build that version from its Go module instead (github.com/prometheus/prometheus),
// cached under ${MAILFLEET_TOOLS_DIR:-$HOME/.cache/mailfleet/tools}/prometheus-<version>/.

import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { execFile } from 'node:child_process';
import { stringify } from 'yaml';
import {
  PeerError,
  assertLoopback,
  freePort,
  run,
  tailFile,
  terminateGroup,
  trackChild,
  untrackGroup,
  waitFor,
} from './common.ts';

const COMPONENT = 'prometheus';

export interface PrometheusBinaries {
  prometheus: string;
  promtool: string;
  version: string;
}

let binariesPromise: Promise<PrometheusBinaries> | undefined;

/** The prometheus and promtool binaries to use (see the header comment). */
export function prometheusBinaries(): Promise<PrometheusBinaries> {
  binariesPromise ??= resolveBinaries();
  return binariesPromise;
}

async function resolveBinaries(): Promise<PrometheusBinaries> {
  const wanted = process.env.MAILFLEET_PROMETHEUS_VERSION?.replace(/^v/, '');
  if (!wanted) {
    for (const b of ['/usr/bin/prometheus', '/usr/bin/promtool']) {
      if (!existsSync(b)) throw new PeerError(COMPONENT, `${b} is missing: install the Debian package (test/env/install-debian.sh) or set MAILFLEET_PROMETHEUS_VERSION to build one`);
    }
    const { stdout } = await run(COMPONENT, '/usr/bin/prometheus', ['--version']);
    return { prometheus: '/usr/bin/prometheus', promtool: '/usr/bin/promtool', version: /version (\S+)/.exec(stdout)?.[1] ?? 'unknown' };
  }
  if (!/^\d+\.\d+\.\d+$/.test(wanted)) throw new PeerError(COMPONENT, `MAILFLEET_PROMETHEUS_VERSION must look like 3.5.0, got ${JSON.stringify(wanted)}`);
  const tools = process.env.MAILFLEET_TOOLS_DIR || join(homedir(), '.cache', 'mailfleet', 'tools');
  const dest = join(tools, `prometheus-${wanted}`);
  const bins = { prometheus: join(dest, 'prometheus'), promtool: join(dest, 'promtool'), version: wanted };
  if (existsSync(bins.prometheus) && existsSync(bins.promtool)) return bins;
  // The module is tagged v0.MINOR.PATCH for 2.x and v0.3MM.PATCH for 3.x (its vX.Y.Z tags are not
  // Go-module versions, the module path having no /vN suffix).
  const [maj, min, patch] = wanted.split('.').map(Number) as [number, number, number];
  if (maj !== 2 && maj !== 3) throw new PeerError(COMPONENT, `MAILFLEET_PROMETHEUS_VERSION ${wanted}: only 2.x and 3.x are known`);
  const modVersion = maj === 3 ? `v0.${300 + min}.${patch}` : `v0.${min}.${patch}`;
  // One build at a time across test processes: a lock directory beside the cache entry.
  await mkdir(tools, { recursive: true });
  const lock = `${dest}.lock`;
  const deadline = Date.now() + 3_600_000;
  for (;;) {
    try {
      await mkdir(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const age = Date.now() - (await stat(lock).then((s) => s.mtimeMs, () => Date.now()));
      if (age > 2 * 3_600_000) await rm(lock, { recursive: true, force: true }); // left by a killed build
      if (Date.now() > deadline) throw new PeerError(COMPONENT, `waited an hour for another build of Prometheus ${wanted} (lock ${lock})`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  try {
    if (existsSync(bins.prometheus) && existsSync(bins.promtool)) return bins; // built meanwhile
    const tmp = `${dest}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    const env = { ...process.env, GOBIN: tmp, CGO_ENABLED: '0', GOFLAGS: '-trimpath' };
    for (const cmd of ['prometheus', 'promtool']) {
      // Without the builtinassets tag the web UI is not embedded (it needs an npm build); the
      // HTTP API, which is all tests use, is complete.
      const ldflags = `-X github.com/prometheus/common/version.Version=${wanted}`; // else --version prints nothing
      await run(COMPONENT, 'go', ['install', `-ldflags=${ldflags}`, `github.com/prometheus/prometheus/cmd/${cmd}@${modVersion}`], { env, timeoutMs: 3_600_000 });
    }
    await rm(dest, { recursive: true, force: true });
    await rename(tmp, dest);
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
  return bins;
}

export interface PromtoolResult {
  ok: boolean;
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs promtool (e.g. ['check', 'rules', file] or ['test', 'rules', file]); never throws on a
 * non-zero exit: the result says how it went. */
export async function promtool(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<PromtoolResult> {
  const { promtool: bin } = await prometheusBinaries();
  return new Promise((res, rej) => {
    execFile(bin, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') rej(new PeerError('promtool', `could not run ${bin} ${args.join(' ')}: ${err.message}`));
      else res({ ok: !err, code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

export type ScrapeConfig = Record<string, unknown> & { job_name: string };

export interface StartPrometheusOptions {
  dir: string;
  /** Prometheus scrape_configs entries, as plain data (written as YAML). */
  scrapeConfigs: ScrapeConfig[];
  /** Rule files (alerting/recording) to load. */
  ruleFiles?: string[];
  /** Default scrape and rule evaluation interval. Default '1s'. */
  scrapeInterval?: string;
  address?: string;
  port?: number;
  /** Extra command-line flags. */
  extraArgs?: string[];
  timeoutMs?: number;
}

export interface PromSample {
  metric: Record<string, string>;
  /** instant vector: [unix seconds, value] */
  value?: [number, string];
  /** range vector / matrix */
  values?: [number, string][];
}

export interface PrometheusHandle {
  readonly url: string;
  readonly version: string;
  readonly logPath: string;
  readonly configPath: string;
  /** Instant query; returns the vector (or scalar/string wrapped as one sample). Throws on a bad query. */
  query(promql: string, time?: Date): Promise<PromSample[]>;
  queryRange(promql: string, start: Date, end: Date, stepSeconds: number): Promise<PromSample[]>;
  /** The active targets as the API reports them. */
  targets(): Promise<{ scrapePool: string; scrapeUrl: string; health: string; lastError: string; labels: Record<string, string> }[]>;
  /** Waits until at least `count` (default 1) targets exist and every one is up. */
  waitForTargetsUp(opts?: { count?: number; timeoutMs?: number }): Promise<void>;
  /** Waits until `promql` returns at least one sample (optionally matching `predicate`). */
  waitForQuery(promql: string, opts?: { timeoutMs?: number; predicate?: (s: PromSample[]) => boolean }): Promise<PromSample[]>;
  /** Rewrites the config and reloads it (POST /-/reload). */
  setScrapeConfigs(scrapeConfigs: ScrapeConfig[], ruleFiles?: string[]): Promise<void>;
  /** Alerts as GET /api/v1/alerts reports them. */
  alerts(): Promise<{ labels: Record<string, string>; state: string; annotations: Record<string, string> }[]>;
  log(): Promise<string>;
  stop(): Promise<void>;
}

export async function startPrometheus(opts: StartPrometheusOptions): Promise<PrometheusHandle> {
  if (!opts.dir) throw new PeerError(COMPONENT, 'dir is required');
  if (!Array.isArray(opts.scrapeConfigs)) throw new PeerError(COMPONENT, 'scrapeConfigs must be an array of scrape_config objects');
  for (const [i, s] of opts.scrapeConfigs.entries()) {
    if (!s || typeof s.job_name !== 'string' || !s.job_name) throw new PeerError(COMPONENT, `scrapeConfigs[${i}].job_name is required`);
  }
  const address = opts.address ?? '127.0.0.1';
  assertLoopback(COMPONENT, 'address', address);
  const bins = await prometheusBinaries();
  const dir = resolve(opts.dir);
  const dataDir = join(dir, 'data');
  await mkdir(dataDir, { recursive: true });
  const configPath = join(dir, 'prometheus.yml');
  const logPath = join(dir, 'prometheus.log');
  const interval = opts.scrapeInterval ?? '1s';

  const writeConfig = async (scrapeConfigs: ScrapeConfig[], ruleFiles: string[] | undefined) => {
    const cfg = {
      global: { scrape_interval: interval, evaluation_interval: interval, scrape_timeout: interval },
      ...(ruleFiles?.length ? { rule_files: ruleFiles.map((f) => resolve(f)) } : {}),
      scrape_configs: scrapeConfigs,
    };
    await writeFile(configPath, stringify(cfg));
    const check = await promtool(['check', 'config', configPath]);
    if (!check.ok) throw new PeerError(COMPONENT, `generated config ${configPath} is invalid`, `${check.stdout}${check.stderr}`.trim());
  };
  await writeConfig(opts.scrapeConfigs, opts.ruleFiles);

  const port = opts.port ?? (await freePort(address));
  const url = `http://${address}:${port}`;
  const logFd = openSync(logPath, 'a');
  const child = spawn(
    bins.prometheus,
    [
      `--config.file=${configPath}`,
      `--storage.tsdb.path=${dataDir}`,
      `--web.listen-address=${address}:${port}`,
      '--web.enable-lifecycle',
      // Debian's defaults point at /etc/prometheus; tests need no consoles
      `--web.console.templates=${dir}`,
      `--web.console.libraries=${dir}`,
      ...(opts.extraArgs ?? []),
    ],
    { detached: true, stdio: ['ignore', logFd, logFd] },
  );
  closeSync(logFd);
  trackChild(child);
  let exited: number | null | undefined;
  child.once('exit', (code) => (exited = code));
  const spawnErr = await new Promise<Error | undefined>((r) => {
    child.once('error', r);
    child.once('spawn', () => r(undefined));
  });
  if (spawnErr) throw new PeerError(COMPONENT, `cannot run ${bins.prometheus}: ${spawnErr.message}`);

  const api = async (path: string, init?: RequestInit): Promise<any> => {
    const res = await fetch(`${url}${path}`, { ...init, signal: AbortSignal.timeout(30_000) });
    const text = await res.text();
    let body: any;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (!res.ok || body?.status === 'error') {
      throw new PeerError(COMPONENT, `${path.split('?')[0]} answered ${res.status}: ${body?.error ?? text.slice(0, 300)}`);
    }
    return body?.data;
  };

  try {
    await waitFor(
      `Prometheus to be ready at ${url}`,
      async () => {
        if (exited !== undefined) throw new Error(`prometheus exited with ${exited}`);
        const r = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
        return r?.status === 200;
      },
      { component: COMPONENT, log: logPath, timeoutMs: opts.timeoutMs ?? 60_000, intervalMs: 100 },
    );
  } catch (err) {
    await terminateGroup(child.pid!, 3000);
    untrackGroup(child.pid!);
    throw err;
  }

  const toSamples = (data: any): PromSample[] => {
    if (data.resultType === 'scalar' || data.resultType === 'string') return [{ metric: {}, value: [data.result[0], String(data.result[1])] }];
    return data.result as PromSample[];
  };

  const handle: PrometheusHandle = {
    url,
    version: bins.version,
    logPath,
    configPath,
    async query(promql, time) {
      const q = new URLSearchParams({ query: promql });
      if (time) q.set('time', String(time.getTime() / 1000));
      return toSamples(await api(`/api/v1/query?${q}`));
    },
    async queryRange(promql, start, end, step) {
      const q = new URLSearchParams({ query: promql, start: String(start.getTime() / 1000), end: String(end.getTime() / 1000), step: String(step) });
      return toSamples(await api(`/api/v1/query_range?${q}`));
    },
    async targets() {
      const data = await api('/api/v1/targets?state=active');
      return data.activeTargets;
    },
    async waitForTargetsUp(o = {}) {
      const want = o.count ?? 1;
      let last = '';
      try {
        await waitFor(
          `${want} target(s) up`,
          async () => {
            const t = await handle.targets();
            last = t.map((x) => `${x.scrapePool} ${x.scrapeUrl}: ${x.health}${x.lastError ? ` (${x.lastError})` : ''}`).join('; ');
            return t.length >= want && t.every((x) => x.health === 'up');
          },
          { component: COMPONENT, timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 250 },
        );
      } catch {
        throw new PeerError(COMPONENT, `timed out waiting for ${want} target(s) up; targets: ${last || 'none'}`, await tailFile(logPath));
      }
    },
    async waitForQuery(promql, o = {}) {
      let lastErr: unknown;
      return waitFor(
        `query ${promql} to return data`,
        async () => {
          try {
            const s = await handle.query(promql);
            return (o.predicate ? o.predicate(s) : s.length > 0) ? s : undefined;
          } catch (err) {
            lastErr = err;
            if (/bad_data|parse error/i.test(String(err))) throw err; // a bad query will not get better
            return undefined;
          }
        },
        { component: COMPONENT, timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 250 },
      ).catch((err) => {
        throw lastErr instanceof PeerError ? lastErr : err;
      });
    },
    async setScrapeConfigs(scrapeConfigs, ruleFiles) {
      await writeConfig(scrapeConfigs, ruleFiles);
      const res = await fetch(`${url}/-/reload`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
      if (!res.ok) throw new PeerError(COMPONENT, `reload failed: ${res.status} ${await res.text()}`, await tailFile(logPath));
    },
    async alerts() {
      return (await api('/api/v1/alerts')).alerts;
    },
    log: () => readFile(logPath, 'utf8'),
    async stop() {
      await terminateGroup(child.pid!, 15_000);
      untrackGroup(child.pid!);
    },
  };
  return handle;
}
