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
//   node test/run.ts                  the whole suite (what npm test runs)
//   node test/run.ts <files...>       only these files, one lane, one at a time
//   MAILFLEET_TEST_LANES=1            the whole suite in one lane (as before the split)
//
// Output: every line is prefixed with its lane while it runs; at the end each lane's totals and
// one "✖ failing tests:" list with the failures of both, unprefixed, as node's spec reporter prints it.
import { spawn } from "node:child_process";
import { globSync } from "node:fs";
import { createInterface } from "node:readline";

const ROOT = new URL("..", import.meta.url).pathname;
const FLEET_LANE = [
  /^test\/unit\//, // quick; some bind 127.0.200.x as the runner does
  /^test\/e2e\//,
  /^test\/integration\/(cli|local-cli|runner)\.test\.ts$/,
  // Control-plane files without relays, here to even out the lanes' times.
  /^test\/integration\/(operator-lifecycle|operator-quiet|operator-ha|operator-validation|reputation)\.test\.ts$/,
];

type Lane = { name: string; files: string[] };
type LaneResult = { name: string; code: number; totals: string[]; failing: string[]; seconds: number };

function lanes(args: string[]): Lane[] {
  if (args.length > 0) return [{ name: "files", files: args }];
  const all = globSync("test/**/*.test.ts", { cwd: ROOT }).sort();
  if (process.env.MAILFLEET_TEST_LANES === "1") return [{ name: "all", files: all }];
  const fleet = all.filter((f) => FLEET_LANE.some((re) => re.test(f)));
  return [{ name: "fleet", files: fleet }, { name: "core", files: all.filter((f) => !fleet.includes(f)) }];
}

const children = new Set<ReturnType<typeof spawn>>();
// Ctrl-C and CI's SIGTERM go on to the lanes (each test file's own cleanup then stops its processes).
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => { for (const c of children) c.kill(sig); });
}

function runLane(lane: Lane, width: number): Promise<LaneResult> {
  const started = Date.now();
  const child = spawn(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=900000", "--test-reporter=spec", ...lane.files], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? `${ROOT}node_modules/.cache/node-compile-cache`, FORCE_COLOR: "0" },
  });
  children.add(child);
  const prefix = `${lane.name.padEnd(width)} │ `;
  const totals: string[] = [];
  const failing: string[] = [];
  let inFailing = false;
  const onLine = (line: string) => {
    process.stdout.write(prefix + line + "\n");
    if (/^ℹ (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(line)) totals.push(line);
    if (/^✖ failing tests:/.test(line)) inFailing = true;
    else if (inFailing) failing.push(line);
  };
  createInterface({ input: child.stdout }).on("line", onLine);
  createInterface({ input: child.stderr }).on("line", onLine);
  return new Promise((resolve) => {
    child.on("close", (code, signal) => {
      children.delete(child);
      resolve({ name: lane.name, code: code ?? (signal ? 1 : 0), totals, failing, seconds: Math.round((Date.now() - started) / 1000) });
    });
  });
}

const ls = lanes(process.argv.slice(2));
const width = Math.max(...ls.map((l) => l.name.length));
const results = await Promise.all(ls.map((l) => runLane(l, width)));
for (const r of results) {
  process.stdout.write(`\n${r.name} lane: ${r.code === 0 ? "passed" : `FAILED (exit ${r.code})`} in ${r.seconds}s\n${r.totals.join("\n")}\n`);
}
const failing = results.flatMap((r) => r.failing);
if (failing.length > 0) process.stdout.write(`\n✖ failing tests:\n${failing.join("\n")}\n`);
process.exitCode = results.some((r) => r.code !== 0) ? 1 : 0;
