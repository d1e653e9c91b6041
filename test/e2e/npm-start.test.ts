// `npm start` as a newcomer runs it: the whole local fleet in the foreground (control plane, a
// 3-node NATS cluster, the operator, relays from the runner, Postfix receivers, DNS, Prometheus,
// examples/ applied, a steady workload) with a live status, which the CLI can read beside it, and
// Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) stops everything it
// started: no process is left behind.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { PROJECT_ROOT } from "../env/local-state.ts";
import { removeDir } from "../env/fleet.ts";

/** Processes whose command line names the fleet's folder (every component runs from it). */
function processesOf(dir: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmd.includes(dir) && Number(pid) !== process.pid) out.push(`${pid} ${cmd.slice(0, 120)}`);
    } catch { /* gone */ }
  }
  return out;
}

test("npm start: the local fleet delivers, the CLI finds it, Ctrl-C leaves nothing behind", { timeout: 1_200_000 }, async () => {
  const parent = mkdtempSync(join(tmpdir(), "mf-npm-start-"));
  chmodSync(parent, 0o755); // Postfix's delivery agent (nobody) must reach the inboxes below
  const dir = join(parent, "fleet");
  // npm puts node_modules/.bin (Node 24) first on PATH for the script, whatever node runs npm.
  const child = spawn("npm", ["start", "--silent"], {
    cwd: PROJECT_ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MAILFLEET_FLEET_DIR: dir, MAILFLEET_STATUS_INTERVAL_MS: "2000" },
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d));
  child.stderr!.on("data", (d: Buffer) => (stderr += d));
  const exited = new Promise<string>((r) => child.once("exit", (code, signal) => r(String(code ?? signal))));
  const tail = () => `\n--- stderr\n${stderr.slice(-3000)}\n--- stdout\n${stdout.slice(-3000)}`;
  try {
    // The live status counts deliveries the receivers' inboxes confirm.
    const deadline = Date.now() + 900_000;
    for (;;) {
      const m = [...stdout.matchAll(/outcomes {2}delivered (\d+)/g)].pop();
      if (m && Number(m[1]) >= 5) break;
      if (child.exitCode !== null) assert.fail(`npm start exited with ${child.exitCode}${tail()}`);
      if (Date.now() > deadline) assert.fail(`no deliveries in the live status${tail()}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.match(stdout, /mailfleet local fleet: up/);
    assert.match(stdout, /transactional/, "the status names the example pools");

    // The CLI beside it, found through the fleet's state file (no --kubeconfig, no --nats).
    const cli = spawnSync(join(PROJECT_ROOT, "node_modules", ".bin", "node"), [join(PROJECT_ROOT, "cli", "main.ts"), "status", "-o", "json", "--state-dir", dir], {
      cwd: PROJECT_ROOT, encoding: "utf8", timeout: 120_000,
    });
    assert.equal(cli.status, 0, `mailfleet status: ${cli.stderr}`);
    const report = JSON.parse(cli.stdout);
    const pools = JSON.stringify(report);
    assert.match(pools, /transactional/);
    assert.match(pools, /marketing/);
  } finally {
    // Ctrl-C: SIGINT to the whole foreground group.
    if (child.exitCode === null) process.kill(-child.pid!, "SIGINT");
  }
  const timer = setTimeout(() => { try { process.kill(-child.pid!, "SIGKILL"); } catch { /* gone */ } }, 300_000);
  const code = await exited;
  clearTimeout(timer);
  // npm itself answers Ctrl-C with 130 (or dies of the SIGINT) whatever its script does; the
  // fleet's own clean stop is what the next line checks.
  assert.ok(["0", "130", "SIGINT"].includes(code), `npm start exit ${code}${tail()}`);
  assert.match(stderr, /no process of the fleet is left/, tail());
  // Our own check, independent of the fleet's.
  await new Promise((r) => setTimeout(r, 2000));
  assert.deepEqual(processesOf(dir), [], "processes left behind");
  removeDir(parent);
});
