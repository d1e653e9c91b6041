// `mailfleet local up --json` / `local down` through the real CLI shim: everything it starts keeps
// running after the command exits, a second `up` says it is already up, and `down` leaves nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as k8s from "@kubernetes/client-node";
import { pidAlive } from "../env/proc.ts";

const root = resolve(import.meta.dirname, "..", "..");
const cli = join(root, "bin", "mailfleet");

function mailfleet(args: string[], stateDir: string) {
  const r = spawnSync(cli, args, {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, MAILFLEET_STATE_DIR: stateDir },
    timeout: 1_200_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function processesUsing(dir: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "utf8").includes(dir) && pidAlive(Number(d))) out.push(Number(d));
    } catch { /* exited */ }
  }
  return out;
}

test("mailfleet local up --json, up again, status, down", { timeout: 1_800_000 }, async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), "mailfleet-local-"));
  t.after(() => {
    mailfleet(["local", "down"], stateDir); // in case an assertion failed midway
    rmSync(stateDir, { recursive: true, force: true });
  });

  const up = mailfleet(["local", "up", "--json", "--nats-nodes", "3", "--no-operator"], stateDir);
  assert.equal(up.code, 0, `local up failed:\n${up.stderr}`);
  const lines = up.stdout.trim().split("\n");
  assert.equal(lines.length, 1, `exactly one line on stdout, got:\n${up.stdout}`);
  const state = JSON.parse(lines[0]!);
  assert.equal(state.stateDir, stateDir);
  assert.equal(state.alreadyUp, false);
  assert.ok(existsSync(state.kubeconfig));
  assert.match(state.nats, /^nats:\/\/127\.0\.0\.1:\d+(,nats:\/\/127\.0\.0\.1:\d+){2}$/);
  const pids = state.pids as Record<string, number>;
  for (const name of ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "nats-n0", "nats-n1", "nats-n2"]) {
    assert.ok(pids[name] && pidAlive(pids[name]), `${name} runs after the CLI exited`);
  }
  assert.equal(state.operator.started, false);

  // The cluster answers with the kubeconfig it printed.
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(state.kubeconfig);
  const nodes = await kc.makeApiClient(k8s.CoreV1Api).listNode();
  assert.equal(nodes.items.length, 1);

  const again = mailfleet(["local", "up", "--json"], stateDir);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /already up/);
  const state2 = JSON.parse(again.stdout.trim());
  assert.equal(state2.alreadyUp, true);
  assert.deepEqual(state2.pids, pids);

  const status = mailfleet(["local", "status", "--json"], stateDir);
  assert.equal(status.code, 0);
  assert.equal(JSON.parse(status.stdout).up, true);

  const down = mailfleet(["local", "down"], stateDir);
  assert.equal(down.code, 0, down.stderr);
  for (const [name, pid] of Object.entries(pids)) assert.equal(pidAlive(pid), false, `${name} (pid ${pid}) stopped`);
  assert.deepEqual(processesUsing(stateDir), [], "no process still uses the state directory");
  assert.ok(existsSync(join(stateDir, "kube", "kubeconfig")), "down keeps the state directory");

  const down2 = mailfleet(["local", "down", "--purge"], stateDir);
  assert.equal(down2.code, 0, down2.stderr);
  assert.match(down2.stdout, /nothing was running/);
  assert.equal(existsSync(stateDir), false, "--purge removes the state directory");
});

test("mailfleet usage errors exit 2", () => {
  const dir = join(tmpdir(), "mailfleet-usage-unused");
  assert.equal(mailfleet([], dir).code, 2);
  assert.equal(mailfleet(["no-such-command"], dir).code, 2);
  assert.equal(mailfleet(["local"], dir).code, 2);
  assert.equal(mailfleet(["local", "up", "--nats-nodes", "2"], dir).code, 2);
  assert.equal(mailfleet(["local", "up", "--bogus"], dir).code, 2);
  const help = mailfleet(["--help"], dir);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /local/);
});
