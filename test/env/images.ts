// Container images without a Docker engine or a registry: a local stand-in for `node:24-slim` made
// from this machine's files, then the project's Dockerfiles built on it with buildah, and images run
// with podman (flags from TESTBED.md: vfs storage, chroot isolation, runc, cgroupfs).
//
//   const base = await ensureBaseImage();                       // localhost/mailfleet-node-base:<hash>
//   const relay = await buildImage("relay", { base });          // localhost/mailfleet-relay:dev
//   const c = await runContainer({ image: relay.image, env: {...}, readOnly: true });
//   ... await c.stop();
//
// The base image. What the Dockerfiles need from NODE_IMAGE is what `node:24-slim` gives: `node`
// and `npm` on PATH and a `/bin/sh` for RUN. Measured ways to make one here (2 cores, vfs):
//   - debootstrap --variant=minbase: ~200 MB of packages fetched and unpacked, minutes; heavy.
//   - dpkg -x of the needed .debs (libc6, libgcc-s1, libstdc++6, dash): needs `apt-get download`
//     (network to a Debian mirror) on every cache miss and brings docs, locales and gconv we drop
//     anyway.
//   - chosen: copy the npm Node 24 binary, the shared libraries `ldd` names for it and for dash
//     (the same Debian 12 files dpkg -x would give, already installed here), dash as /bin/sh,
//     /usr/bin/env (npm's shebang), npm
//     (pure JavaScript) from the system's global npm, and a few /etc files. No network, a few
//     seconds, ~150 MB (the node binary is 126 MB of it).
// The image is named by a hash of everything that goes in (file contents, the recipe version), so
// it is built once per change and tests reuse it; `podman image exists` is the cache lookup.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync, chmodSync, statSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Bump when the recipe below changes in a way the input hash does not see. */
const BASE_RECIPE = 5;
export const BASE_REPO = "localhost/mailfleet-node-base";

/** Global flags for buildah and podman (TESTBED.md): vfs works without overlay support in the kernel. */
const STORAGE = ["--storage-driver", "vfs"];
const PODMAN = [...STORAGE, "--cgroup-manager", "cgroupfs", "--runtime", "runc"];

/**
 * podman asks runc for RLIMIT_NOFILE/NPROC above what this sandbox allows (no CAP_SYS_RESOURCE, and
 * conmon already lowered nproc), and runc then fails with "error setting rlimit type 7/6: operation
 * not permitted"; `--ulimit host` does not help. Ask for no more than we have.
 */
export function ulimitArgs(): string[] {
  let nofile = 4096;
  try {
    const m = /^Max open files\s+\d+\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    if (m) nofile = Math.min(Number(m[1]), 1_048_576);
  } catch { /* keep the default */ }
  return ["--ulimit", `nofile=${nofile}:${nofile}`, "--ulimit", "nproc=4096:4096"];
}

export class ImageError extends Error {
  constructor(message: string, output?: string) {
    super(output ? `${message}\n--- output (last lines) ---\n${output.trimEnd().split("\n").slice(-40).join("\n")}` : message);
    this.name = "ImageError";
  }
}

function need(bin: string): void {
  const r = spawnSync("sh", ["-c", `command -v ${bin}`], { encoding: "utf8" });
  if (r.status !== 0) throw new ImageError(`${bin} is not installed: run test/env/install-debian.sh (packages buildah podman runc)`);
}

interface RunOut { code: number; stdout: string; stderr: string }

/** Runs a command, collecting output; never rejects on a non-zero exit. */
function exec(cmd: string, args: string[], o: { cwd?: string; timeoutMs?: number; input?: string; onLine?: (l: string) => void } = {}): Promise<RunOut> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { cwd: o.cwd, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => { stdout += d; o.onLine?.(d.toString()); });
    child.stderr.on("data", (d: Buffer) => { stderr += d; o.onLine?.(d.toString()); });
    const timer = o.timeoutMs ? setTimeout(() => child.kill("SIGKILL"), o.timeoutMs) : undefined;
    child.on("error", rej);
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      res({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    child.stdin.end(o.input ?? "");
  });
}

async function must(cmd: string, args: string[], o: Parameters<typeof exec>[2] = {}): Promise<string> {
  const r = await exec(cmd, args, o);
  if (r.code !== 0) throw new ImageError(`\`${cmd} ${args.join(" ")}\` failed (exit ${r.code})`, r.stderr + r.stdout);
  return r.stdout;
}

export function podmanArgs(...args: string[]): string[] {
  return [...PODMAN, ...args];
}

export async function imageExists(image: string): Promise<boolean> {
  return (await exec("podman", podmanArgs("image", "exists", image))).code === 0;
}

/** Size in bytes as the storage reports it (the uncompressed layers). */
export async function imageSize(image: string): Promise<number> {
  const out = await must("podman", podmanArgs("image", "inspect", "--format", "{{.Size}}", image));
  return Number(out.trim());
}

export async function imageInspect(image: string): Promise<any> {
  const out = await must("podman", podmanArgs("image", "inspect", image));
  return (JSON.parse(out) as any[])[0];
}

/** The Node 24 binary of the npm `node` devDependency (not the system node). */
export function nodeBinary(): string {
  return realpathSync(join(PROJECT_ROOT, "node_modules", ".bin", "node"));
}

/** The global npm (pure JavaScript, runs on any Node >= 20.17), to give the base image its `npm`. */
export function npmDir(): string {
  for (const d of [process.env.MAILFLEET_NPM_DIR, "/usr/lib/node_modules/npm", "/usr/local/lib/node_modules/npm", "/usr/share/nodejs/npm"]) {
    if (d && existsSync(join(d, "bin", "npm-cli.js"))) return d;
  }
  throw new ImageError("no npm found to put in the base image: set MAILFLEET_NPM_DIR to an npm package folder (one with bin/npm-cli.js)");
}

/**
 * The CA file this machine's npm trusts, if it is configured with one (`npm config get cafile`):
 * where egress goes through a TLS-inspecting proxy, `npm ci` inside a build fails with
 * SELF_SIGNED_CERT_IN_CHAIN unless the base image trusts the same CA. node:24-slim users need
 * nothing of the kind, so this lives in the local base only, never in the Dockerfiles.
 */
function npmCafile(): string | undefined {
  const fromEnv = process.env.npm_config_cafile;
  const r = fromEnv ? { status: 0, stdout: fromEnv } : spawnSync("npm", ["config", "get", "cafile"], { encoding: "utf8", timeout: 30_000 });
  const f = r.status === 0 ? r.stdout.trim() : "";
  return f && f !== "null" && f !== "undefined" && existsSync(f) ? f : undefined;
}

/** Absolute library paths a dynamic executable needs, from ldd. */
function sharedLibraries(bin: string): string[] {
  const r = spawnSync("ldd", [bin], { encoding: "utf8" });
  if (r.status !== 0) throw new ImageError(`ldd ${bin} failed`, r.stderr);
  const libs = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.add(m[1]!);
  }
  if (libs.size === 0) throw new ImageError(`ldd found no libraries for ${bin}: is it static?`, r.stdout);
  return [...libs].sort();
}

function sha256File(h: ReturnType<typeof createHash>, path: string): void {
  h.update(path + "\0");
  h.update(readFileSync(path));
}

/** Every file under a folder, sorted (for hashing npm). */
function walk(dir: string): string[] {
  const out: string[] = [];
  const rec = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) rec(p);
      else out.push(p);
    }
  };
  rec(dir);
  return out;
}

interface BaseInputs {
  node: string;
  npm: string;
  dash: string;
  env: string;
  libs: string[];
  /** The CA bundle npm is told to trust here (a TLS-inspecting egress proxy), if any. */
  cafile?: string;
  nodeVersion: string;
  npmVersion: string;
}

function baseInputs(): BaseInputs {
  const node = nodeBinary();
  const dash = realpathSync("/bin/dash");
  const env = realpathSync("/usr/bin/env");
  const libs = [...new Set([node, dash, env].flatMap(sharedLibraries))].sort();
  const nodeVersion = spawnSync(node, ["--version"], { encoding: "utf8" }).stdout.trim();
  if (!/^v24\./.test(nodeVersion)) throw new ImageError(`${node} is ${nodeVersion || "not runnable"}, expected Node 24 (npm install?)`);
  const npm = npmDir();
  const npmVersion = (JSON.parse(readFileSync(join(npm, "package.json"), "utf8")) as { version: string }).version;
  return { node, npm, dash, env, libs, cafile: npmCafile(), nodeVersion, npmVersion };
}

function baseTag(inp: BaseInputs): string {
  const h = createHash("sha256");
  h.update(`recipe ${BASE_RECIPE}\n`);
  for (const f of [inp.node, inp.dash, inp.env, ...inp.libs.map((l) => realpathSync(l)), ...(inp.cafile ? [inp.cafile] : [])]) sha256File(h, f);
  // npm is ~2,500 small files: its file list, sizes and version stand in for the contents.
  h.update(`npm ${inp.npmVersion}\n`);
  for (const f of walk(inp.npm)) h.update(`${f.slice(inp.npm.length)} ${statSync(f).size}\n`);
  return `${inp.nodeVersion.slice(1)}-${h.digest("hex").slice(0, 12)}`;
}

/** Copies a file to the same path under root, with its symlink chain (merged-/usr Debian paths). */
function copyWithLinks(root: string, path: string): void {
  let p = path;
  for (let i = 0; i < 10; i++) {
    const dest = join(root, p);
    mkdirSync(dirname(dest), { recursive: true });
    const st = lstatSync(p);
    if (st.isSymbolicLink()) {
      const target = readlinkSync(p);
      if (!existsSync(dest)) symlinkSync(target, dest);
      p = resolve(dirname(p), target);
      continue;
    }
    if (!existsSync(dest)) cpSync(p, dest);
    return;
  }
  throw new ImageError(`too many symlinks copying ${path}`);
}

/** Writes the root filesystem of the base image into root (a fresh folder). */
function writeRootfs(root: string, inp: BaseInputs): void {
  // Debian 12 is merged-/usr: /bin, /lib, /lib64, /sbin are links into /usr.
  for (const d of ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/local/bin", "usr/local/lib/node_modules", "etc", "root", "home/node", "tmp", "var/tmp", "run"]) {
    mkdirSync(join(root, d), { recursive: true });
  }
  for (const [link, target] of [["bin", "usr/bin"], ["sbin", "usr/sbin"], ["lib", "usr/lib"], ["lib64", "usr/lib64"]]) symlinkSync(target!, join(root, link!));
  chmodSync(join(root, "tmp"), 0o1777);
  chmodSync(join(root, "var/tmp"), 0o1777);
  // The dynamic loader and libraries at the paths ldd resolved (through the /lib -> usr/lib links).
  for (const lib of inp.libs) copyWithLinks(root, lib.replace(/^\/(lib|lib64)\//, "/usr/$1/"));
  cpSync(inp.dash, join(root, "usr/bin/dash"));
  symlinkSync("dash", join(root, "usr/bin/sh"));
  // npm's bin scripts start with `#!/usr/bin/env node`.
  cpSync(inp.env, join(root, "usr/bin/env"));
  // Where node:24-slim has them.
  cpSync(inp.node, join(root, "usr/local/bin/node"));
  cpSync(inp.npm, join(root, "usr/local/lib/node_modules/npm"), {
    recursive: true,
    filter: (src) => !/\/npm\/(docs|man)(\/|$)/.test(src),
  });
  symlinkSync("../lib/node_modules/npm/bin/npm-cli.js", join(root, "usr/local/bin/npm"));
  symlinkSync("../lib/node_modules/npm/bin/npx-cli.js", join(root, "usr/local/bin/npx"));
  if (inp.cafile) {
    // npm's global config ($PREFIX/etc/npmrc, PREFIX being /usr/local next to node).
    mkdirSync(join(root, "etc/ssl/certs"), { recursive: true });
    cpSync(inp.cafile, join(root, "etc/ssl/certs/ca-certificates.crt"));
    mkdirSync(join(root, "usr/local/etc"), { recursive: true });
    writeFileSync(join(root, "usr/local/etc/npmrc"), "cafile=/etc/ssl/certs/ca-certificates.crt\n");
  }
  // The users node:24-slim has (root, node 1000) and nobody; images pick their own numeric user.
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
  writeFileSync(join(root, "etc/group"), "root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n");
  writeFileSync(join(root, "etc/nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files dns\n");
  writeFileSync(join(root, "etc/os-release"), `NAME="mailfleet local node base"\nID=mailfleet-node-base\nVERSION_ID="${inp.nodeVersion}"\n`);
  // The runtime bind-mounts hosts and resolv.conf; empty files are the mount points.
  writeFileSync(join(root, "etc/hosts"), "127.0.0.1 localhost\n");
  writeFileSync(join(root, "etc/resolv.conf"), "");
}

export interface BuildResult {
  image: string;
  /** Wall time of the build; 0 when the image was already there. */
  seconds: number;
  sizeBytes: number;
  cached: boolean;
}

/**
 * The local Node 24 base image (see the header), built when missing. Returns its name; pass it as
 * `--build-arg NODE_IMAGE=`.
 */
export async function ensureBaseImage(o: { log?: (l: string) => void } = {}): Promise<BuildResult> {
  need("buildah");
  need("podman");
  const log = o.log ?? (() => {});
  const inp = baseInputs();
  const image = `${BASE_REPO}:${baseTag(inp)}`;
  if (await imageExists(image)) return { image, seconds: 0, sizeBytes: await imageSize(image), cached: true };
  const started = Date.now();
  const work = mkdtempSync(join(tmpdir(), "mailfleet-base-"));
  try {
    const root = join(work, "rootfs");
    mkdirSync(root);
    log(`writing the base root filesystem (${inp.nodeVersion}, npm ${inp.npmVersion})`);
    writeRootfs(root, inp);
    // A tar with numeric root ownership, so the image does not depend on who builds it.
    await must("tar", ["--numeric-owner", "--owner=0", "--group=0", "-C", root, "-cf", join(work, "rootfs.tar"), "."]);
    writeFileSync(join(work, "Containerfile"), [
      "FROM scratch",
      "ADD rootfs.tar /",
      `ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NODE_VERSION=${inp.nodeVersion.slice(1)}`,
      `LABEL org.opencontainers.image.title="mailfleet local node base" org.opencontainers.image.description="Stand-in for node:24-slim built by test/env/images.ts" io.mailfleet.npm-version="${inp.npmVersion}"`,
      'CMD ["node"]',
      "",
    ].join("\n"));
    log(`buildah bud ${image}`);
    await must("buildah", [...STORAGE, "bud", "--pull=never", "--isolation", "chroot", "--format", "docker", "--no-cache", "--force-rm", "-f", join(work, "Containerfile"), "-t", image, work], { timeoutMs: 600_000 });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  // Older bases are dead weight on vfs (each is a full copy); one still used by an image stays.
  const old = (await exec("podman", podmanArgs("images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPO))).stdout.split("\n").filter((t) => t && t !== image);
  for (const t of old) await exec("podman", podmanArgs("rmi", t));
  return { image, seconds: (Date.now() - started) / 1000, sizeBytes: await imageSize(image), cached: false };
}

export type ImageKind = "operator" | "relay";

/**
 * Builds operator/Dockerfile or relay/Dockerfile from the project root on the given base. Layers
 * are cached by buildah (--layers), so an unchanged package-lock.json skips `npm ci`. The docker
 * format keeps HEALTHCHECK (the OCI image format has no field for it).
 */
export async function buildImage(kind: ImageKind, o: { base: string; tag?: string; log?: (l: string) => void; timeoutMs?: number }): Promise<BuildResult> {
  need("buildah");
  const image = o.tag ?? `localhost/mailfleet-${kind}:dev`;
  const previous = (await exec("podman", podmanArgs("image", "inspect", "--format", "{{.Id}}", image))).stdout.trim();
  const started = Date.now();
  const r = await exec("buildah", [...STORAGE, "bud", "--pull=never", "--isolation", "chroot", "--format", "docker", "--no-cache", "--force-rm",
    "-f", join(PROJECT_ROOT, kind, "Dockerfile"), "-t", image, "--build-arg", `NODE_IMAGE=${o.base}`, PROJECT_ROOT],
  { timeoutMs: o.timeoutMs ?? 1_200_000, onLine: o.log });
  if (r.code !== 0) throw new ImageError(`building ${kind}/Dockerfile failed (exit ${r.code})`, r.stderr + r.stdout);
  // The image the tag named before is now untagged: on vfs it is a full copy, so drop it (a
  // container still using it keeps it).
  const now = (await exec("podman", podmanArgs("image", "inspect", "--format", "{{.Id}}", image))).stdout.trim();
  if (previous && previous !== now) await exec("podman", podmanArgs("rmi", previous));
  return { image, seconds: (Date.now() - started) / 1000, sizeBytes: await imageSize(image), cached: false };
}

export interface RunOptions {
  image: string;
  name?: string;
  env?: Record<string, string>;
  args?: string[];
  /** Root filesystem read-only, nothing writable but what `tmpfs` lists. Default true. */
  readOnly?: boolean;
  /** Writable tmpfs mounts (e.g. ["/tmp"]). */
  tmpfs?: string[];
  /** host:container[:ro] bind mounts. */
  volumes?: string[];
  /** Override the image's user (e.g. "65532:65532"). */
  user?: string;
  entrypoint?: string;
}

export interface Container {
  name: string;
  /** Combined stdout/stderr so far. */
  output(): string;
  exited: Promise<number>;
  exitCode(): number | undefined;
  /** podman exec in the running container. */
  exec(cmd: string[]): Promise<RunOut>;
  stop(): Promise<void>;
}

let seq = 0;

/** Runs a container in the foreground of a child podman (host network), as the tests need it. */
export function runContainer(o: RunOptions): Container {
  need("podman");
  const name = o.name ?? `mailfleet-test-${process.pid}-${++seq}`;
  const args = ["run", "--rm", "--name", name, "--network", "host", "--pull=never", ...ulimitArgs()];
  if (o.readOnly ?? true) args.push("--read-only", "--read-only-tmpfs=false");
  for (const t of o.tmpfs ?? []) args.push("--tmpfs", t);
  for (const v of o.volumes ?? []) args.push("-v", v);
  for (const [k, v] of Object.entries(o.env ?? {})) args.push("-e", `${k}=${v}`);
  if (o.user) args.push("--user", o.user);
  if (o.entrypoint) args.push("--entrypoint", o.entrypoint);
  args.push(o.image, ...(o.args ?? []));
  const child = spawn("podman", podmanArgs(...args), { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (d: Buffer) => { out += d; });
  child.stderr.on("data", (d: Buffer) => { out += d; });
  let code: number | undefined;
  const exited = new Promise<number>((res) => child.on("close", (c, s) => { code = c ?? (s ? 128 : 1); res(code); }));
  const c: Container = {
    name,
    output: () => out,
    exited,
    exitCode: () => code,
    exec: (cmd) => exec("podman", podmanArgs("exec", name, ...cmd), { timeoutMs: 60_000 }),
    async stop() {
      if (code !== undefined) return;
      await exec("podman", podmanArgs("stop", "--time", "10", name), { timeoutMs: 60_000 });
      const t = sleep(20_000).then(() => "timeout");
      if ((await Promise.race([exited, t])) === "timeout") {
        await exec("podman", podmanArgs("rm", "--force", name), { timeoutMs: 60_000 });
        child.kill("SIGKILL");
      }
    },
  };
  // Do not leave containers behind when the test process dies.
  process.once("exit", () => { if (code === undefined) spawnSync("podman", podmanArgs("rm", "--force", "--time", "0", name), { timeout: 30_000 }); });
  return c;
}

/** Runs a one-off command in an image and returns its output (e.g. `id -u`). */
export async function runOnce(o: RunOptions & { timeoutMs?: number }): Promise<RunOut> {
  const c = runContainer(o);
  const t = sleep(o.timeoutMs ?? 120_000).then(() => "timeout" as const);
  if ((await Promise.race([c.exited, t])) === "timeout") {
    await c.stop();
    throw new ImageError(`container ${c.name} (${o.image}) did not exit within ${o.timeoutMs ?? 120_000} ms`, c.output());
  }
  return { code: c.exitCode()!, stdout: c.output(), stderr: "" };
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const log = (l: string) => process.stderr.write(l.endsWith("\n") ? l : `${l}\n`);
  if (cmd === "base") {
    const b = await ensureBaseImage({ log });
    process.stdout.write(`${JSON.stringify(b)}\n`);
    return 0;
  }
  if (cmd === "build" && rest.length > 0 && rest.every((k) => k === "operator" || k === "relay")) {
    const base = await ensureBaseImage({ log });
    for (const k of rest as ImageKind[]) process.stdout.write(`${JSON.stringify(await buildImage(k, { base: base.image, log }))}\n`);
    return 0;
  }
  process.stderr.write("usage: node test/env/images.ts base | build operator|relay...\n");
  return 2;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((c) => process.exit(c), (e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
