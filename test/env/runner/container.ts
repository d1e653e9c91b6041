// One run of a relay: a child process (`node relay/main.ts`) or a podman container of the relay
// image on the host network. Either way the runner sees a pid, an exit, and signals.
import { spawn, spawnSync } from "node:child_process";
import { constants } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { startProcess, type ManagedProcess } from "../proc.ts";
import { podmanArgs, ulimitArgs } from "../images.ts";

export interface Exit {
  /** The exit code, or 128 + the signal number when a signal ended it (as container runtimes say). */
  exitCode: number;
  signal?: string;
  finishedAt: Date;
}

export interface RunHandle {
  /** process://<pid> or podman://<container name> */
  id: string;
  /** The relay's process on this machine (inside the container for podman), once known. */
  pid(): number | undefined;
  startedAt: Date;
  exited: Promise<Exit>;
  running(): boolean;
  signal(sig: NodeJS.Signals): Promise<void>;
  /** Synchronous SIGKILL for process exit hooks. */
  killNow(): void;
  /** Runs a command in the relay's environment (exec probes); resolves with its exit code. */
  exec(command: string[], timeoutMs: number): Promise<number>;
}

function exitOf(code: number | string): Exit {
  if (typeof code === "number") return { exitCode: code, finishedAt: new Date() };
  const n = (constants.signals as Record<string, number>)[code];
  return n ? { exitCode: 128 + n, signal: code, finishedAt: new Date() } : { exitCode: 255, finishedAt: new Date() };
}

function execChild(command: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string }, timeoutMs: number): Promise<number> {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(command, args, { env: o.env, cwd: o.cwd, stdio: "ignore" });
    } catch {
      resolve(127);
      return;
    }
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", () => { clearTimeout(t); resolve(127); });
    child.on("exit", (c, s) => { clearTimeout(t); resolve(c ?? (s ? 128 : 1)); });
  });
}

export interface ProcessRun {
  name: string;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  logFile: string;
}

/** A child process in its own process group (signals reach anything it starts). */
export function runProcess(o: ProcessRun): RunHandle {
  // detach: the runner, not proc.ts's exit hooks, decides how relays stop (SIGTERM and a grace
  // period, not an immediate SIGKILL when the runner gets SIGTERM).
  const p: ManagedProcess = startProcess({ name: o.name, command: o.argv[0]!, args: o.argv.slice(1), logFile: o.logFile, env: o.env, cwd: o.cwd, detach: true });
  return {
    id: `process://${p.pid}`,
    pid: () => p.pid,
    startedAt: new Date(),
    exited: p.exited.then(exitOf),
    running: () => p.exitCode() === undefined,
    async signal(sig) {
      p.signal(sig);
    },
    killNow() {
      try { process.kill(-p.pid, "SIGKILL"); } catch { /* gone */ }
    },
    exec: (command, timeoutMs) => execChild(command[0]!, command.slice(1), { env: o.env, cwd: o.cwd }, timeoutMs),
  };
}

export interface PodmanRun {
  /** Container name (unique per Pod and restart). */
  name: string;
  image: string;
  /** Replaces the image's ENTRYPOINT (the container's `command`). */
  entrypoint?: string[];
  args: string[];
  env: Record<string, string>;
  /** host:container[:ro] */
  volumes: string[];
  user?: string;
  groupAdd?: number[];
  readOnly: boolean;
  capDrop: string[];
  capAdd: string[];
  noNewPrivileges: boolean;
  labels: Record<string, string>;
  logFile: string;
}

function podmanSync(args: string[], timeoutMs = 30_000): void {
  spawnSync("podman", podmanArgs(...args), { stdio: "ignore", timeout: timeoutMs });
}

function podmanOut(args: string[], timeoutMs = 30_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("podman", podmanArgs(...args), { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => { out += d; });
    child.stderr.on("data", (d: Buffer) => { out += d; });
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", () => { clearTimeout(t); resolve({ code: 127, out }); });
    child.on("close", (c) => { clearTimeout(t); resolve({ code: c ?? 1, out }); });
  });
}

/** The podman run arguments (after the global storage/runtime flags). */
export function podmanRunArgs(o: PodmanRun): string[] {
  const a = ["run", "--rm", "--name", o.name, "--network", "host", "--pull=never", ...ulimitArgs()];
  for (const [k, v] of Object.entries(o.labels)) a.push("--label", `${k}=${v}`);
  if (o.readOnly) a.push("--read-only", "--read-only-tmpfs=false");
  for (const v of o.volumes) a.push("-v", v);
  for (const [k, v] of Object.entries(o.env)) a.push("-e", `${k}=${v}`);
  if (o.user) a.push("--user", o.user);
  for (const g of o.groupAdd ?? []) a.push("--group-add", String(g));
  for (const c of o.capDrop) a.push("--cap-drop", c);
  for (const c of o.capAdd) a.push("--cap-add", c);
  if (o.noNewPrivileges) a.push("--security-opt", "no-new-privileges");
  if (o.entrypoint) a.push("--entrypoint", JSON.stringify(o.entrypoint));
  a.push(o.image, ...o.args);
  return a;
}

/** A container of the relay image under podman, in the foreground of a `podman run` child. */
export function runPodman(o: PodmanRun): RunHandle {
  const p = startProcess({ name: o.name, command: "podman", args: podmanArgs(...podmanRunArgs(o)), logFile: o.logFile, detach: true });
  let pid: number | undefined;
  const exited = p.exited.then(async (code) => {
    // `podman run --rm` exits with the container's code; make sure nothing is left if it was killed.
    await podmanOut(["rm", "--force", "--time", "0", o.name]);
    return exitOf(code);
  });
  // The container's main process, as the host sees it (tests signal it directly).
  void (async () => {
    for (let i = 0; i < 600 && p.exitCode() === undefined && pid === undefined; i++) {
      const r = await podmanOut(["inspect", "--format", "{{.State.Pid}}", o.name], 10_000);
      const n = Number(r.out.trim());
      if (r.code === 0 && n > 0) pid = n;
      else await sleep(200);
    }
  })();
  return {
    id: `podman://${o.name}`,
    pid: () => pid,
    startedAt: new Date(),
    exited,
    running: () => p.exitCode() === undefined,
    async signal(sig) {
      if (p.exitCode() !== undefined) return;
      const r = await podmanOut(["kill", "--signal", sig, o.name]);
      // Not running yet (still being created) or already gone: signal the client, which forwards it.
      if (r.code !== 0) p.signal(sig);
    },
    killNow() {
      podmanSync(["rm", "--force", "--time", "0", o.name]);
      try { process.kill(-p.pid, "SIGKILL"); } catch { /* gone */ }
    },
    exec: async (command, timeoutMs) => (await podmanOut(["exec", o.name, ...command], timeoutMs)).code,
  };
}

/** Removes containers a previous runner with this label left behind (it was killed). */
export async function removeLeftoverContainers(label: string): Promise<string[]> {
  const r = await podmanOut(["ps", "--all", "--filter", `label=${label}`, "--format", "{{.Names}}"]);
  if (r.code !== 0) return [];
  const names = r.out.split("\n").map((s) => s.trim()).filter(Boolean);
  for (const n of names) await podmanOut(["rm", "--force", "--time", "0", n]);
  return names;
}
