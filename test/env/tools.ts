// Builds the third-party binaries the test environment runs (Kubernetes control plane, etcd, kwok,
// helm, nats-server) from their Go modules and caches them by version:
//   ${MAILFLEET_TOOLS_DIR:-$HOME/.cache/mailfleet/tools}/<name>-<version>/<binary>
//
// CLI:  node test/env/tools.ts build [names...]   build what is missing (all tools by default)
//       node test/env/tools.ts path <name>        print the path of a tool's or binary's executable
//       node test/env/tools.ts list               print every tool, version and whether it is cached
//
// Go is only the build tool. Builds run one at a time (a lock directory in the cache serialises them
// across processes, since the machines have 2 cores and a Kubernetes build alone fills them). Go's
// build and module caches live in the same folder (go/build, go/mod): one folder to keep between CI
// runs, and a new MAILFLEET_TOOLS_DIR gives a truly cold build (the way to measure one).
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync, createWriteStream, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export const KUBERNETES_VERSION = "v1.36.3";
export const ETCD_VERSION = "v3.6.16";
export const KWOK_VERSION = "v0.8.0";
export const HELM_VERSION = "v3.22.0";
export const NATS_SERVER_VERSION = "v2.15.2";

export interface ToolSpec {
  name: string;
  version: string;
  binaries: string[];
  /** Other files the build leaves in the tool's folder. */
  files?: string[];
  /** Builds every binary into outDir. */
  build: (ctx: BuildContext) => Promise<void>;
  /** Runs the built binaries and throws when they do not report the expected version. */
  verify: (dir: string) => void;
}

export interface BuildContext {
  outDir: string;
  /** A persistent work folder for wrapper modules (kept so a rebuild reuses go.sum). */
  srcDir: string;
  log: (line: string) => void;
  logFile: string;
}

export function toolsDir(): string {
  return process.env.MAILFLEET_TOOLS_DIR || join(homedir(), ".cache", "mailfleet", "tools");
}

/**
 * The environment of every go command here. -modcacherw: module files stay writable, so the tools
 * folder can be deleted with rm -rf. Compiling without DWARF makes the build cache ~20% smaller (the
 * linker's -s -w strips it from the binaries anyway; compile CPU measured the same).
 */
export function goEnv(): Record<string, string> {
  return {
    GOTOOLCHAIN: process.env.GOTOOLCHAIN ?? "local",
    GOCACHE: join(toolsDir(), "go", "build"),
    GOMODCACHE: join(toolsDir(), "go", "mod"),
    GOFLAGS: "-buildvcs=false -modcacherw -trimpath -gcflags=all=-dwarf=false",
  };
}

function minorOf(v: string): { major: string; minor: string } {
  const m = /^v(\d+)\.(\d+)\.\d+/.exec(v);
  if (!m) throw new Error(`bad version ${v}`);
  return { major: m[1]!, minor: m[2]! };
}

const k8s = minorOf(KUBERNETES_VERSION);

export const TOOLS: Record<string, ToolSpec> = {
  kubernetes: {
    name: "kubernetes",
    version: KUBERNETES_VERSION,
    binaries: ["kube-apiserver", "kube-controller-manager", "kube-scheduler"],
    build: buildKubernetes,
    verify: (dir) => {
      for (const b of ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]) {
        expectOutput(join(dir, b), ["--version"], `Kubernetes ${KUBERNETES_VERSION}`);
      }
    },
  },
  etcd: {
    name: "etcd",
    version: ETCD_VERSION,
    binaries: ["etcd"],
    build: buildEtcd,
    verify: (dir) => expectOutput(join(dir, "etcd"), ["--version"], `etcd Version: ${ETCD_VERSION.slice(1)}`),
  },
  kwok: {
    name: "kwok",
    version: KWOK_VERSION,
    binaries: ["kwok"],
    files: ["stages.yaml"],
    build: async (ctx) => {
      // pkg/consts.Version already defaults to the tag's version, so no -X is needed.
      await goInstall(ctx, `sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}`, []);
      await writeKwokStages(ctx);
    },
    verify: (dir) => expectOutput(join(dir, "kwok"), ["--version"], KWOK_VERSION.slice(1)),
  },
  helm: {
    name: "helm",
    version: HELM_VERSION,
    binaries: ["helm"],
    build: (ctx) =>
      goInstall(ctx, `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`, [
        // The same -X flags as helm's Makefile; without them `helm version` says "v3.22" and
        // .Capabilities.KubeVersion defaults to the client-go minor of the module, not our cluster's.
        `-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}`,
        `-X helm.sh/helm/v3/internal/version.gitTreeState=clean`,
        `-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${k8s.major}`,
        `-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${k8s.minor}`,
        `-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${k8s.major}`,
        `-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${k8s.minor}`,
      ]),
    verify: (dir) => {
      expectOutput(join(dir, "helm"), ["version", "--short"], HELM_VERSION);
      verifyHelmKubeVersion(join(dir, "helm"));
    },
  },
  "nats-server": {
    name: "nats-server",
    version: NATS_SERVER_VERSION,
    binaries: ["nats-server"],
    build: (ctx) => goInstall(ctx, `github.com/nats-io/nats-server/v2@${NATS_SERVER_VERSION}`, []),
    verify: (dir) => expectOutput(join(dir, "nats-server"), ["--version"], NATS_SERVER_VERSION),
  },
};

/** Tools found on the system instead of being built (Debian packages). */
const SYSTEM_BINARIES: Record<string, string> = {
  prometheus: "/usr/bin/prometheus",
  promtool: "/usr/bin/promtool",
};

function toolForBinary(name: string): ToolSpec | undefined {
  return TOOLS[name] ?? Object.values(TOOLS).find((t) => t.binaries.includes(name));
}

export function toolDir(tool: ToolSpec): string {
  return join(toolsDir(), `${tool.name}-${tool.version}`);
}

function isBuilt(tool: ToolSpec): boolean {
  const dir = toolDir(tool);
  return existsSync(join(dir, "BUILD.json")) && [...tool.binaries, ...(tool.files ?? [])].every((b) => existsSync(join(dir, b)));
}

/**
 * The path of an executable by binary name ("kube-apiserver") or tool name ("etcd"; a tool with
 * several binaries gives its first). Throws with the command to run when it has not been built.
 */
export function toolPath(name: string): string {
  const sys = SYSTEM_BINARIES[name];
  if (sys) {
    if (!existsSync(sys)) throw new Error(`${name} not found at ${sys}: install Debian's prometheus package (see .ci/run)`);
    return sys;
  }
  const tool = toolForBinary(name);
  if (!tool) throw new Error(`unknown tool "${name}"; known: ${knownNames().join(", ")}`);
  const binary = tool.binaries.includes(name) ? name : tool.binaries[0]!;
  const p = join(toolDir(tool), binary);
  if (!isBuilt(tool)) {
    throw new Error(`${binary} ${tool.version} is not built: run \`node test/env/tools.ts build ${tool.name}\` (or npm run tools)`);
  }
  return p;
}

function knownNames(): string[] {
  return [...Object.keys(TOOLS), ...Object.values(TOOLS).flatMap((t) => t.binaries).filter((b) => !TOOLS[b]), ...Object.keys(SYSTEM_BINARIES)];
}

/** Builds every named tool that is not cached yet (all by default), one at a time. */
export async function ensureTools(names: string[] = Object.keys(TOOLS)): Promise<void> {
  const tools = [...new Set(names.map((n) => {
    const t = toolForBinary(n);
    if (!t) throw new Error(`unknown tool "${n}"; known: ${knownNames().join(", ")}`);
    return t;
  }))];
  if (tools.every(isBuilt)) return;
  checkGo();
  // While another process builds, look again every 2 s: what this caller needs may be ready long
  // before that build ends (CI builds etcd and Kubernetes, then kwok and helm, in one process).
  const release = await acquireLock(() => tools.every(isBuilt));
  if (!release) return;
  try {
    for (const tool of tools) {
      if (isBuilt(tool)) continue; // built by another process while we waited for the lock
      await buildOne(tool);
    }
  } finally {
    release();
  }
}

function checkGo(): void {
  const r = spawnSync("go", ["version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) throw new Error("tools: the `go` command is needed to build the test binaries (Go >= 1.26)");
  const m = /go(\d+)\.(\d+)/.exec(r.stdout);
  if (m && (Number(m[1]) < 1 || (Number(m[1]) === 1 && Number(m[2]) < 26))) {
    throw new Error(`tools: Go >= 1.26 is needed, found: ${r.stdout.trim()}`);
  }
}

/** The build lock, or null as soon as `done()` says there is nothing left to build. */
async function acquireLock(done: () => boolean): Promise<(() => void) | null> {
  const lock = join(toolsDir(), ".build.lock");
  mkdirSync(toolsDir(), { recursive: true });
  let announced = false;
  for (;;) {
    if (done()) return null;
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, "pid"), String(process.pid));
      return () => rmSync(lock, { recursive: true, force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      let owner = NaN;
      try { owner = Number(readFileSync(join(lock, "pid"), "utf8")); } catch { /* being written */ }
      if (Number.isFinite(owner) && !pidAlive(owner)) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (!Number.isFinite(owner)) {
        // A lock without a pid file older than a minute is a leftover of a crash.
        try { if (Date.now() - statSync(lock).mtimeMs > 60_000) { rmSync(lock, { recursive: true, force: true }); continue; } } catch { continue; }
      }
      if (!announced) process.stderr.write(`tools: waiting for another build (pid ${owner}) to finish\n`);
      announced = true;
      await sleep(2000);
    }
  }
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === "EPERM"; }
}

async function buildOne(tool: ToolSpec): Promise<void> {
  const final = toolDir(tool);
  const tmp = `${final}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const srcDir = join(toolsDir(), "src", `${tool.name}-${tool.version}`);
  mkdirSync(srcDir, { recursive: true });
  const logFile = join(toolsDir(), `${tool.name}-${tool.version}.build.log`);
  writeFileSync(logFile, "");
  const started = Date.now();
  const log = (line: string) => process.stderr.write(`tools: ${tool.name} ${tool.version}: ${line} (${fmt(Date.now() - started)})\n`);
  log(`building ${tool.binaries.join(", ")}; full log in ${logFile}`);
  try {
    await tool.build({ outDir: tmp, srcDir, log, logFile });
    tool.verify(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`tools: building ${tool.name} ${tool.version} failed: ${(e as Error).message}\n--- last lines of ${logFile} ---\n${tail(logFile, 30)}`);
  }
  const seconds = Math.round((Date.now() - started) / 1000);
  writeFileSync(join(tmp, "BUILD.json"), JSON.stringify({
    tool: tool.name, version: tool.version, binaries: tool.binaries, seconds,
    go: spawnSync("go", ["version"], { encoding: "utf8" }).stdout.trim(), builtAt: new Date().toISOString(),
  }, null, 2) + "\n");
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  log(`done in ${seconds}s -> ${final}`);
}

function fmt(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

export function tail(file: string, lines: number): string {
  try {
    const text = readFileSync(file, "utf8");
    return text.split("\n").slice(-lines - 1).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Runs go with output appended to the log; prints a progress line every 30 s (package count with -v). */
async function go(ctx: BuildContext, args: string[], opts: { cwd?: string; env?: Record<string, string>; total?: number } = {}): Promise<string> {
  const out = createWriteStream(ctx.logFile, { flags: "a" });
  out.write(`\n$ go ${args.join(" ")}\n`);
  const child = spawn("go", args, {
    cwd: opts.cwd ?? ctx.srcDir,
    env: { ...process.env, ...goEnv(), ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let lines = 0;
  child.stdout.on("data", (d: Buffer) => { stdout += d.toString(); out.write(d); });
  child.stderr.on("data", (d: Buffer) => { lines += d.toString().split("\n").length - 1; out.write(d); });
  // With -v, go prints one line per package it compiles: a rough progress count.
  const timer = setInterval(() => ctx.log(opts.total
    ? `go ${args[0]}: ${lines} of ~${opts.total} packages`
    : `go ${args[0]}: ${lines} lines of output so far`), 30_000);
  const code: number = await new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (c) => resolve(c ?? 1));
  });
  clearInterval(timer);
  await new Promise<void>((r) => out.end(r));
  if (code !== 0) throw new Error(`go ${args.join(" ")} exited with ${code}`);
  return stdout;
}

async function goInstall(ctx: BuildContext, pkgAtVersion: string, ldflags: string[]): Promise<void> {
  ctx.log(`go install ${pkgAtVersion}`);
  await go(ctx, ["install", "-v", "-trimpath", "-ldflags", ["-s", "-w", ...ldflags].join(" "), pkgAtVersion], {
    env: { CGO_ENABLED: "0", GOBIN: ctx.outDir },
  });
}

/**
 * The kwok binary has no built-in stages (it exits with "no stages found"): kwokctl writes its
 * defaults into kwok's config. We take the same files from the module at the built version: node
 * initialise + heartbeat with lease, pod ready / complete / delete ("fast" stages).
 */
async function writeKwokStages(ctx: BuildContext): Promise<void> {
  const info = JSON.parse(await go(ctx, ["mod", "download", "-json", `sigs.k8s.io/kwok@${KWOK_VERSION}`], { cwd: toolsDir() })) as { Dir: string };
  const files = [
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
  ];
  const docs = files.map((f) => `# from sigs.k8s.io/kwok@${KWOK_VERSION}/${f}\n${readFileSync(join(info.Dir, f), "utf8").trim()}\n`);
  writeFileSync(join(ctx.outDir, "stages.yaml"), docs.join("---\n"));
}

/** Parses the wrapper inputs out of k8s.io/kubernetes's go.mod: staging modules and godebug. */
export function kubernetesWrapperGoMod(upstreamGoMod: string, version: string): string {
  const staging = new Set<string>();
  for (const line of upstreamGoMod.split("\n")) {
    // Required at the placeholder v0.0.0 (resolved upstream by ./staging replaces)...
    const req = /^\s*(?:require\s+)?(k8s\.io\/[\w.\-/]+)\s+v0\.0\.0\s*(?:\/\/.*)?$/.exec(line);
    if (req) staging.add(req[1]!);
    // ...or mapped to ./staging even if not required directly.
    const rep = /^\s*(?:replace\s+)?(k8s\.io\/[\w.\-/]+)\s+=>\s+\.\/staging\//.exec(line);
    if (rep) staging.add(rep[1]!);
  }
  if (staging.size < 10) throw new Error(`found only ${staging.size} staging modules in k8s.io/kubernetes@${version}'s go.mod`);
  const goLine = /^go\s+(\S+)/m.exec(upstreamGoMod)?.[1] ?? "1.26.0";
  const godebug = /^godebug\s+(.+)$/m.exec(upstreamGoMod)?.[1]?.trim();
  const v0 = version.replace(/^v1\./, "v0.");
  return [
    "// Generated by test/env/tools.ts: builds kube-apiserver, kube-controller-manager and kube-scheduler",
    `// from k8s.io/kubernetes ${version}; staging modules are pinned to their published ${v0}.`,
    "module local/mailfleet-kubernetes",
    "",
    `go ${goLine}`,
    "",
    ...(godebug ? [`godebug ${godebug}`, ""] : []),
    `require k8s.io/kubernetes ${version}`,
    "",
    "replace (",
    ...[...staging].sort().map((m) => `\t${m} => ${m} ${v0}`),
    ")",
    "",
  ].join("\n");
}

async function buildKubernetes(ctx: BuildContext): Promise<void> {
  const v = KUBERNETES_VERSION;
  ctx.log(`reading k8s.io/kubernetes@${v} go.mod`);
  const info = JSON.parse(await go(ctx, ["mod", "download", "-json", `k8s.io/kubernetes@${v}`], { cwd: toolsDir() })) as { GoMod: string };
  const gomod = kubernetesWrapperGoMod(readFileSync(info.GoMod, "utf8"), v);
  writeIfChanged(join(ctx.srcDir, "go.mod"), gomod, join(ctx.srcDir, "go.sum"));
  writeFileSync(join(ctx.srcDir, "tools.go"), [
    "//go:build tools",
    "",
    "// Keeps the three commands in the module graph for go mod tidy.",
    "package tools",
    "",
    "import (",
    '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"',
    '\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"',
    '\t_ "k8s.io/kubernetes/cmd/kube-scheduler"',
    ")",
    "",
  ].join("\n"));
  ctx.log("go mod tidy");
  await go(ctx, ["mod", "tidy"]);
  const ldflags = [
    "-s", "-w",
    `-X k8s.io/component-base/version.gitVersion=${v}`,
    `-X k8s.io/component-base/version.gitMajor=${k8s.major}`,
    `-X k8s.io/component-base/version.gitMinor=${k8s.minor}`,
    `-X k8s.io/component-base/version.gitTreeState=clean`,
  ].join(" ");
  const cmds = ["k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager", "k8s.io/kubernetes/cmd/kube-scheduler"];
  const total = (await go(ctx, ["list", "-deps", ...cmds], { env: { CGO_ENABLED: "0" } })).trim().split("\n").length;
  ctx.log(`go build: ${total} packages (a cold build takes tens of minutes on 2 cores)`);
  await go(ctx, ["build", "-v", "-trimpath", "-ldflags", ldflags, "-o", ctx.outDir + "/", ...cmds], { env: { CGO_ENABLED: "0" }, total });
}

async function buildEtcd(ctx: BuildContext): Promise<void> {
  // etcd's server/v3 go.mod has replace lines (../api, ../pkg, ...), so `go install` refuses it; in a
  // wrapper module they are ignored and every go.etcd.io/etcd/* module resolves to the same tag.
  const v = ETCD_VERSION;
  writeIfChanged(join(ctx.srcDir, "go.mod"), [
    "// Generated by test/env/tools.ts: builds etcd from go.etcd.io/etcd/server/v3.",
    "module local/mailfleet-etcd",
    "",
    "go 1.26.0",
    "",
    `require go.etcd.io/etcd/server/v3 ${v}`,
    "",
  ].join("\n"), join(ctx.srcDir, "go.sum"));
  writeFileSync(join(ctx.srcDir, "tools.go"), '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n');
  ctx.log("go mod tidy");
  await go(ctx, ["mod", "tidy"]);
  // Check that MVS kept every etcd module at the server's tag (a newer client elsewhere would drift).
  const list = await go(ctx, ["list", "-m", "all"]);
  const drift = list.split("\n").filter((l) => /^go\.etcd\.io\/etcd\//.test(l) && !l.endsWith(` ${v}`));
  if (drift.length) throw new Error(`etcd modules not at ${v}: ${drift.join(", ")}`);
  ctx.log("go build");
  await go(ctx, ["build", "-v", "-trimpath", "-ldflags", `-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${v}`,
    "-o", join(ctx.outDir, "etcd"), "go.etcd.io/etcd/server/v3"], { env: { CGO_ENABLED: "0" } });
}

/**
 * Writes a generated go.mod unless its inputs are unchanged since the last (tidied) build: the tidied
 * file carries the indirect requirements and go.sum, which make a rebuild need no network.
 */
function writeIfChanged(path: string, text: string, sum: string): void {
  const stamp = `${path}.inputs`;
  let old = "";
  try { old = readFileSync(stamp, "utf8"); } catch { /* first build */ }
  if (old === text && existsSync(path)) return;
  writeFileSync(path, text);
  writeFileSync(stamp, text);
  rmSync(sum, { force: true });
}

function expectOutput(bin: string, args: string[], want: string): void {
  const r = spawnSync(bin, args, { encoding: "utf8", timeout: 30_000 });
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  if (r.status !== 0 || !out.includes(want)) {
    throw new Error(`${bin} ${args.join(" ")} printed ${JSON.stringify(out.trim().slice(0, 300))} (exit ${r.status}), expected it to contain ${JSON.stringify(want)}`);
  }
}

/** helm's default .Capabilities.KubeVersion must be our cluster's minor, or charts' kubeVersion checks fail offline. */
function verifyHelmKubeVersion(helm: string): void {
  const dir = join(toolsDir(), `.helm-check-${process.pid}`);
  mkdirSync(join(dir, "c", "templates"), { recursive: true });
  try {
    writeFileSync(join(dir, "c", "Chart.yaml"), "apiVersion: v2\nname: c\nversion: 0.1.0\n");
    writeFileSync(join(dir, "c", "templates", "cm.yaml"), "# kube={{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }}\n");
    expectOutput(helm, ["template", join(dir, "c")], `# kube=${k8s.major}.${k8s.minor}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === "build") {
    await ensureTools(rest.length ? rest : undefined);
    for (const n of rest.length ? rest : Object.keys(TOOLS)) {
      const t = toolForBinary(n)!;
      process.stderr.write(`tools: ${t.name} ${t.version} ready in ${toolDir(t)}\n`);
    }
    return 0;
  }
  if (cmd === "path" && rest.length === 1) {
    process.stdout.write(toolPath(rest[0]!) + "\n");
    return 0;
  }
  if (cmd === "list") {
    for (const t of Object.values(TOOLS)) process.stdout.write(`${t.name}\t${t.version}\t${isBuilt(t) ? toolDir(t) : "(not built)"}\n`);
    for (const [n, p] of Object.entries(SYSTEM_BINARIES)) process.stdout.write(`${n}\tsystem\t${existsSync(p) ? p : "(not installed)"}\n`);
    return 0;
  }
  process.stderr.write("usage: node test/env/tools.ts build [names...] | path <name> | list\n");
  return 2;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((c) => process.exit(c), (e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
