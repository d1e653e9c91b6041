// The local fleet behind `mailfleet local up/down`: a control plane with controllers, scheduler and
// kwok nodes, NATS (1 or 3 nodes), the CRDs, the operator, and the relay runner (runner/: it runs a
// relay for every relay Pod on the kwok nodes), all detached from the CLI process and recorded in
// <stateDir>/local.json so that `local down` can stop exactly what `local up` started.
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { startControlPlane, applyCRDsWithKubeconfig, defaultKwokStagesPath } from "./controlplane.ts";
import { startNats } from "./nats.ts";
import { startProcess, stopGroup, childEnv, logTail } from "./proc.ts";
import { ensureTools } from "./tools.ts";
import { writeRunnerKwokStages } from "./runner/kwok-stages.ts";
import { stopLeftoverRelays } from "./runner/runner.ts";
import { defaultStateDir, isOurs, localStatus, PROJECT_ROOT, readLocalState, stateFile, type LocalState } from "./local-state.ts";

// The state file's readers live in local-state.ts (light to import); local.ts keeps exporting them.
export { defaultStateDir, localStatus, PROJECT_ROOT, readLocalState, type LocalState } from "./local-state.ts";

export interface LocalUpOptions {
  /** Default: $MAILFLEET_STATE_DIR or .local (relative to the current directory). */
  stateDir?: string;
  natsNodes?: 1 | 3;
  /** kwok nodes (default 1). */
  nodes?: number;
  /** CRD folder (default <project>/crds; skipped when it has no YAML). */
  crdsDir?: string;
  /** Start operator/main.ts when it exists (default true). */
  operator?: boolean;
  /** Extra operator flags, e.g. --dns-servers and --relay-env=MAILFLEET_DNS_SERVERS=... for test DNS. */
  operatorArgs?: string[];
  /** The relay runner (default: process mode); false: none (relay Pods stay fake). */
  runner?: false | { mode?: "process" | "podman"; image?: string };
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

export class AlreadyUpError extends Error {
  state: LocalState;
  constructor(state: LocalState) {
    super(`the local fleet is already up (state in ${state.stateDir}); run \`mailfleet local down\` first`);
    this.state = state;
  }
}

/**
 * Starts everything detached and returns the recorded state. When the fleet in stateDir is already
 * fully up, returns it with alreadyUp; when only part of it runs, throws (run `local down` first).
 */
export async function localUp(o: LocalUpOptions = {}): Promise<{ state: LocalState; alreadyUp: boolean }> {
  const stateDir = resolve(o.stateDir ?? defaultStateDir());
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const { state: old, alive } = localStatus(stateDir);
  const names = Object.keys(alive);
  if (old && !old.stoppedAt && names.some((n) => alive[n])) {
    const dead = names.filter((n) => !alive[n]);
    if (dead.length === 0) return { state: old, alreadyUp: true };
    throw new Error(`the local fleet in ${stateDir} is partly up (not running: ${dead.join(", ")}); run \`mailfleet local down\` and then \`local up\` again`);
  }
  mkdirSync(stateDir, { recursive: true });
  const pids: Record<string, number> = {};
  const commands: Record<string, string> = {};
  const stopAll = async () => {
    for (const pid of Object.values(pids).reverse()) await stopGroup(pid);
  };
  try {
    log(`starting the control plane in ${join(stateDir, "kube")} (first run builds the Kubernetes binaries: tens of minutes)`);
    // With the runner, kwok leaves relay Pods' readiness and final deletion to it.
    let kwokConfig: string | undefined;
    if (o.runner !== false) {
      await ensureTools(["kwok"]);
      kwokConfig = writeRunnerKwokStages(join(stateDir, "kwok-stages.yaml"), defaultKwokStagesPath());
    }
    const cp = await startControlPlane({ dir: join(stateDir, "kube"), withControllers: true, nodes: o.nodes ?? 1, detach: true, ...(kwokConfig ? { kwokConfig } : {}) });
    for (const [name, p] of Object.entries(cp.processes)) {
      pids[name] = p.pid;
      commands[name] = p.child.spawnfile;
    }
    log(`control plane up at ${cp.server} with ${cp.nodes.length} kwok node(s)`);

    const natsNodes = o.natsNodes ?? 1;
    log(`starting NATS (${natsNodes} node${natsNodes > 1 ? "s" : ""})`);
    const nats = await startNats({ dir: join(stateDir, "nats"), nodes: natsNodes, detach: true });
    for (const s of nats.servers) {
      pids[`nats-${s.name}`] = s.process!.pid;
      commands[`nats-${s.name}`] = s.process!.child.spawnfile;
    }
    log(`NATS up at ${nats.urls.join(",")}`);

    const crdsDir = o.crdsDir ?? join(PROJECT_ROOT, "crds");
    let crds: string[] = [];
    if (existsSync(crdsDir) && readdirSync(crdsDir).some((f) => /\.(ya?ml|json)$/.test(f))) {
      crds = await applyCRDsWithKubeconfig(cp.kubeconfigPath, crdsDir);
      log(`applied ${crds.length} CRD(s) from ${crdsDir}`);
    } else {
      log(`no CRDs applied: ${crdsDir} has no YAML files yet`);
    }

    const operator: LocalState["operator"] = { started: false };
    const main = join(PROJECT_ROOT, "operator", "main.ts");
    if (o.operator === false) {
      operator.reason = "not requested (--no-operator)";
    } else if (!existsSync(main)) {
      operator.reason = "operator/main.ts does not exist yet";
      log("operator not started: operator/main.ts does not exist yet");
    } else {
      const logFile = join(stateDir, "logs", "operator.log");
      const p = startProcess({
        name: "operator",
        command: process.execPath,
        args: [main, "--kubeconfig", cp.kubeconfigPath, "--nats", nats.urls.join(","), ...(o.operatorArgs ?? [])],
        logFile,
        cwd: PROJECT_ROOT,
        detach: true,
        env: childEnv(),
      });
      pids.operator = p.pid;
      commands.operator = process.execPath;
      // A crash at start-up (bad flags, import errors) shows within a few seconds.
      await Promise.race([p.exited, sleep(3000)]);
      if (p.exitCode() !== undefined) {
        throw new Error(`operator exited (${p.exitCode()}) right after start; last lines of ${logFile}:\n${logTail(logFile, 30)}`);
      }
      Object.assign(operator, { started: true, pid: p.pid, log: logFile });
      log(`operator started (pid ${p.pid}, log ${logFile})`);
    }

    const runner: NonNullable<LocalState["runner"]> = { started: false };
    if (o.runner === false) {
      runner.reason = "not requested (--no-runner)";
    } else {
      const mode = o.runner?.mode ?? "process";
      const logFile = join(stateDir, "logs", "runner.log");
      const runnerDir = join(stateDir, "runner");
      const p = startProcess({
        name: "runner",
        command: process.execPath,
        args: [join(PROJECT_ROOT, "test", "env", "runner", "main.ts"), "--kubeconfig", cp.kubeconfigPath, "--state-dir", runnerDir, "--mode", mode,
          ...(o.runner?.image ? ["--image", o.runner.image] : [])],
        logFile,
        cwd: PROJECT_ROOT,
        detach: true,
        env: childEnv(),
      });
      pids.runner = p.pid;
      commands.runner = process.execPath;
      await Promise.race([p.exited, sleep(3000)]);
      if (p.exitCode() !== undefined) {
        throw new Error(`relay runner exited (${p.exitCode()}) right after start; last lines of ${logFile}:\n${logTail(logFile, 30)}`);
      }
      Object.assign(runner, { started: true, pid: p.pid, mode, log: logFile, registry: join(runnerDir, "relays.json") });
      log(`relay runner started (${mode} mode, pid ${p.pid}, log ${logFile}); relays listed in ${runner.registry}`);
    }

    const state: LocalState = {
      version: 1,
      stateDir,
      kubeconfig: cp.kubeconfigPath,
      server: cp.server,
      nats: nats.urls.join(","),
      natsUrls: nats.urls,
      natsMonitor: nats.servers.map((s) => s.monitorUrl),
      pids,
      commands,
      crds,
      operator,
      runner,
      logs: join(stateDir, "kube", "logs"),
      startedAt: new Date().toISOString(),
    };
    writeFileSync(stateFile(stateDir), JSON.stringify(state, null, 2) + "\n");
    return { state, alreadyUp: false };
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/** Stops every process recorded by localUp (process groups, reverse start order). */
export async function localDown(o: { stateDir?: string; purge?: boolean } = {}): Promise<{ stopped: string[]; purged: boolean; wasUp: boolean }> {
  const stateDir = resolve(o.stateDir ?? defaultStateDir());
  const state = readLocalState(stateDir);
  const stopped: string[] = [];
  if (state && !state.stoppedAt) {
    for (const [name, pid] of Object.entries(state.pids).reverse()) {
      if (name === "runner") {
        // The runner drains its relays (SIGTERM, their grace period) before it exits; relays run in
        // their own process groups, so anything it could not stop is found by its registry.
        if (isOurs(pid, state.commands[name])) {
          await stopGroup(pid, 120_000);
          stopped.push(name);
        }
        await stopLeftoverRelays(join(stateDir, "runner"));
        continue;
      }
      if (!isOurs(pid, state.commands[name])) continue;
      await stopGroup(pid);
      stopped.push(name);
    }
    state.stoppedAt = new Date().toISOString();
    writeFileSync(stateFile(stateDir), JSON.stringify(state, null, 2) + "\n");
  }
  const wasUp = stopped.length > 0;
  if (o.purge && existsSync(stateDir)) {
    // Only a folder that looks like ours: MAILFLEET_STATE_DIR could point anywhere.
    if (!existsSync(stateFile(stateDir)) && !existsSync(join(stateDir, "kube")) && !existsSync(join(stateDir, "nats"))) {
      throw new Error(`not purging ${stateDir}: it does not look like a mailfleet state directory (no local.json, kube/ or nats/)`);
    }
    rmSync(stateDir, { recursive: true, force: true });
    return { stopped, purged: true, wasUp };
  }
  return { stopped, purged: false, wasUp };
}
