// `npm test`: the whole suite in two lanes that run side by side, each one file at a time.
//
// Most of the suite's wall time is waiting (rate windows, warm-up days, drains, image builds), so
// two lanes on a 2-core machine take a little over half the time of one. The lanes are split so
// that they share no loopback address, port range or peer: the `fleet` lane holds every file that
// runs relays through the relay runner (its listen range 127.0.200.0/22 is allocated "lowest free
// first", which two runners would race for), starts the local fleet (test/env/fleet.ts) or builds
// images with podman; the `core` lane holds the rest. Each file picks its own 127.0.x addresses
// (see the file's header), distinct across files.
//
// In each lane the files that need only nats-server run first, then those that need etcd and
// Kubernetes too, then those that need kwok or helm as well. On a bare machine .ci/run builds
// nats-server, then builds etcd, Kubernetes, kwok and helm in that order in the background and runs
// the suite at once: a lane waits for a build only before its first file that needs it. With the
// tools cached there is no wait.
//
//   node test/run.ts                  the whole suite (what npm test runs)
//   node test/run.ts <files...>       only these files, one lane, one at a time
//   node test/run.ts --list           each file's lane and the tools it needs (nats, kubernetes, all)
//   MAILFLEET_TEST_LANES=1            the whole suite in one lane
//
// Output: every line is prefixed with its lane while it runs; at the end each lane's totals and
// one "✖ failing tests:" list with the failures of both, unprefixed, as node's spec reporter prints it.
import { spawn } from "node:child_process";
import { existsSync, globSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { ensureTools } from "./env/tools.ts";

const ROOT = resolve(import.meta.dirname, "..");
const FLEET_LANE = [
  /^test\/unit\//, // quick; some bind 127.0.200.x as the runner does
  /^test\/e2e\//,
  /^test\/integration\/(cli|local-cli|runner)\.test\.ts$/,
  // Control-plane files without relays, here to even out the lanes' times.
  /^test\/integration\/(operator-lifecycle|operator-quiet|operator-ha|operator-validation|reputation)\.test\.ts$/,
];

/** What a test file needs of the tools built from Go: nats-server only, also etcd and Kubernetes, or all (kwok, helm too). */
type Needs = "nats" | "kubernetes" | "all";
const NEEDS_ORDER: Needs[] = ["nats", "kubernetes", "all"];
// Modules that start kwok nodes or run helm for every caller (the control plane module itself
// starts kwok only when asked: its callers say so, below).
const ALL_TOOLS = ["fleet.ts", "local.ts", "chart.ts"].map((f) => join(ROOT, "test", "env", f));
const CONTROL_PLANE = join(ROOT, "test", "env", "controlplane.ts");

/**
 * Found through the file's relative imports: it reaches test/env/controlplane.ts (kubernetes), or
 * a module in ALL_TOOLS, or the file itself names kwok or helm, starts the controllers, or runs
 * `mailfleet local up` (all).
 */
function needsOf(file: string, seen = new Set<string>()): Needs {
  if (seen.has(file)) return "nats";
  seen.add(file);
  if (ALL_TOOLS.includes(file)) return "all";
  if (file === CONTROL_PLANE) return "kubernetes";
  const src = readFileSync(file, "utf8");
  if (file.endsWith(".test.ts") && /\bkwok\b|\bhelm\b|controllers:\s*true|["']local["'],\s*["']up["']/.test(src)) return "all";
  let most: Needs = "nats";
  for (const m of src.matchAll(/(?:from|import\()\s*["'](\.{1,2}\/[^"']+\.ts)["']/g)) {
    const dep = resolve(dirname(file), m[1]!);
    if (!existsSync(dep)) continue;
    const n = needsOf(dep, seen);
    if (NEEDS_ORDER.indexOf(n) > NEEDS_ORDER.indexOf(most)) most = n;
  }
  return most;
}

type Lane = { name: string; files: string[] };
const TOTALS = ["tests", "suites", "pass", "fail", "cancelled", "skipped", "todo"] as const;
type LaneResult = { name: string; ok: boolean; totals: Record<string, number>; failing: string[]; seconds: number };

function lanes(args: string[]): Lane[] {
  if (args.length > 0) return [{ name: "files", files: args }];
  const all = globSync("test/**/*.test.ts", { cwd: ROOT }).sort();
  if (process.env.MAILFLEET_TEST_LANES === "1") return [{ name: "all", files: all }];
  const fleet = all.filter((f) => FLEET_LANE.some((re) => re.test(f)));
  return [{ name: "fleet", files: fleet }, { name: "core", files: all.filter((f) => !fleet.includes(f)) }];
}

// The waits for the tools, shared by the lanes (ensureTools builds what is missing, or waits for
// the build another process holds the lock for, returning as soon as what it asked for is there).
const waits = new Map<Needs, Promise<void>>();
const toolsFor = (n: Needs) => {
  if (!waits.has(n)) waits.set(n, n === "nats" ? ensureTools(["nats-server"]) : n === "kubernetes" ? ensureTools(["etcd", "kubernetes"]) : ensureTools());
  return waits.get(n)!;
};

const children = new Set<ReturnType<typeof spawn>>();
// Ctrl-C and CI's SIGTERM go on to the lanes (each test file's own cleanup then stops its processes).
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => { for (const c of children) c.kill(sig); });
}

/** `node --test` over some files, its output prefixed; its totals and failing-tests section collected. */
function runFiles(files: string[], prefix: string, into: LaneResult): Promise<void> {
  const child = spawn(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=900000", "--test-reporter=spec", ...files], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? join(ROOT, "node_modules", ".cache", "node-compile-cache"), FORCE_COLOR: "0" },
  });
  children.add(child);
  let inFailing = false;
  const onLine = (line: string) => {
    process.stdout.write(prefix + line + "\n");
    const t = /^ℹ (\w+) (\d+)$/.exec(line);
    if (t && (TOTALS as readonly string[]).includes(t[1]!)) into.totals[t[1]!] = (into.totals[t[1]!] ?? 0) + Number(t[2]);
    if (/^✖ failing tests:/.test(line)) inFailing = true;
    else if (inFailing) into.failing.push(line);
  };
  createInterface({ input: child.stdout }).on("line", onLine);
  createInterface({ input: child.stderr }).on("line", onLine);
  return new Promise((done) => {
    child.on("close", (code, signal) => {
      children.delete(child);
      if (code !== 0 || signal) into.ok = false;
      done();
    });
  });
}

async function runLane(lane: Lane, width: number): Promise<LaneResult> {
  const started = Date.now();
  const prefix = `${lane.name.padEnd(width)} │ `;
  const result: LaneResult = { name: lane.name, ok: true, totals: {}, failing: [], seconds: 0 };
  const needs = new Map(lane.files.map((f) => [f, needsOf(join(ROOT, f))] as const));
  for (const n of NEEDS_ORDER) {
    const files = lane.files.filter((f) => needs.get(f) === n);
    if (!files.length) continue;
    try {
      await toolsFor(n);
    } catch (e) {
      result.ok = false;
      result.failing.push(`the tools these ${files.length} files need could not be built, so they did not run: ${(e as Error).message}`);
      continue;
    }
    await runFiles(files, prefix, result);
  }
  result.seconds = Math.round((Date.now() - started) / 1000);
  return result;
}

const args = process.argv.slice(2);
if (args[0] === "--list") {
  for (const l of lanes(args.slice(1))) for (const f of l.files) process.stdout.write(`${l.name}\t${needsOf(join(ROOT, f))}\t${f}\n`);
  process.exit(0);
}
const ls = lanes(args);
const width = Math.max(...ls.map((l) => l.name.length));
const results = await Promise.all(ls.map((l) => runLane(l, width)));
for (const r of results) {
  const totals = TOTALS.map((k) => `ℹ ${k} ${r.totals[k] ?? 0}`).join("\n");
  process.stdout.write(`\n${r.name} lane: ${r.ok ? "passed" : "FAILED"} in ${r.seconds}s\n${totals}\n`);
}
const failing = results.flatMap((r) => r.failing);
if (failing.length > 0) process.stdout.write(`\n✖ failing tests:\n${failing.join("\n")}\n`);
process.exitCode = results.every((r) => r.ok) ? 0 : 1;
