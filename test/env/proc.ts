// Child processes of the test environment: each in its own process group, output to a log file,
// tracked so that stop(), a failed start, or the end of the test process leaves nothing running.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import { createServer } from "node:net";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface ManagedProcess {
  name: string;
  pid: number;
  logFile: string;
  child: ChildProcess;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  exited: Promise<number | string>;
  exitCode(): number | string | undefined;
  /** Signals the whole process group. */
  signal(sig: NodeJS.Signals): void;
  /** SIGTERM to the group, SIGKILL after timeoutMs; resolves once the leader has exited. */
  stop(timeoutMs?: number): Promise<void>;
}

export interface StartOptions {
  name: string;
  command: string;
  args: string[];
  logFile: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /**
   * Leave the process running when this Node process exits (for `mailfleet local up`). Otherwise it
   * is killed on exit, SIGINT, SIGTERM and uncaught errors.
   */
  detach?: boolean;
}

const live = new Set<ManagedProcess>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' handlers may only do synchronous work: SIGKILL every group we still own.
  process.on("exit", killAllNow);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      killAllNow();
      process.kill(process.pid, sig); // the default action again, now that our handler is gone
    });
  }
}

/** SIGKILLs every tracked, non-detached process group; for exit paths. */
export function killAllNow(): void {
  for (const p of live) {
    try { process.kill(-p.pid, "SIGKILL"); } catch { /* gone */ }
  }
  live.clear();
}

/** The environment for children: no proxies, which would capture loopback traffic (webhooks, etcd). */
export function childEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^(https?|all|no)_proxy$/i.test(k)) delete env[k];
  return { ...env, ...extra };
}

export function startProcess(o: StartOptions): ManagedProcess {
  mkdirSync(dirname(o.logFile), { recursive: true });
  const fd = openSync(o.logFile, "a");
  writeSync(fd, `\n=== ${new Date().toISOString()} ${o.command} ${o.args.join(" ")}\n`);
  let child: ChildProcess;
  try {
    child = spawn(o.command, o.args, {
      cwd: o.cwd,
      env: o.env ?? childEnv(),
      stdio: ["ignore", fd, fd],
      detached: true, // own process group (setsid), so stop() reaches grandchildren too
    });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) {
    throw new Error(`${o.name}: could not start ${o.command}`);
  }
  let code: number | string | undefined;
  const exited = new Promise<number | string>((resolve) => {
    child.on("exit", (c, s) => { code = c ?? s ?? "unknown"; live.delete(proc); resolve(code); });
    child.on("error", (e) => { code = code ?? `spawn error: ${e.message}`; live.delete(proc); resolve(code); });
  });
  const pid = child.pid;
  const proc: ManagedProcess = {
    name: o.name,
    pid,
    logFile: o.logFile,
    child,
    exited,
    exitCode: () => code,
    signal(sig) {
      if (code !== undefined) return;
      try { process.kill(-pid, sig); } catch { /* already gone */ }
    },
    async stop(timeoutMs = 10_000) {
      if (code === undefined) {
        proc.signal("SIGTERM");
        const t = sleep(timeoutMs).then(() => "timeout" as const);
        if ((await Promise.race([exited, t])) === "timeout") {
          try { process.kill(-pid, "SIGKILL"); } catch { /* gone */ }
          await exited;
        }
      }
      // Members of the group that outlived the leader.
      try { process.kill(-pid, "SIGKILL"); } catch { /* none */ }
    },
  };
  if (o.detach) {
    child.unref();
  } else {
    installExitHooks();
    live.add(proc);
  }
  return proc;
}

export function logTail(file: string, lines = 40): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log file)";
  }
}

export class StartError extends Error {
  component: string;
  constructor(component: string, message: string, logFile?: string) {
    super(`${component}: ${message}${logFile ? `\n--- last lines of ${logFile} ---\n${logTail(logFile)}\n---` : ""}`);
    this.component = component;
  }
}

/**
 * Polls check() until it returns a value other than undefined/false. Fails when a watched process
 * exits first (naming it and showing its log) or on timeout (naming `what`).
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  o: { timeoutMs?: number; intervalMs?: number; watch?: ManagedProcess[]; component?: string; logFile?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (o.timeoutMs ?? 60_000);
  let lastError: unknown;
  for (;;) {
    for (const p of o.watch ?? []) {
      const c = p.exitCode();
      if (c !== undefined) throw new StartError(p.name, `exited (${c}) while waiting for ${what}`, p.logFile);
    }
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      const why = lastError ? ` (last error: ${(lastError as Error).message})` : "";
      throw new StartError(o.component ?? what, `timed out after ${o.timeoutMs ?? 60_000} ms waiting for ${what}${why}`, o.logFile);
    }
    await sleep(o.intervalMs ?? 250);
  }
}

/** A free TCP port on 127.0.0.1 (the kernel's pick; it stays free unless someone races for it). */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function portFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.unref();
    s.once("error", () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** Distinct free ports (a set, so two picks in one call never collide). */
export async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  // A zombie (exited, not yet reaped by its parent) still answers kill(0): read its state.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return true;
  }
}

/** Stops a process group known only by pid (from a state file); SIGKILL after timeoutMs. */
export async function stopGroup(pid: number, timeoutMs = 10_000): Promise<void> {
  try { process.kill(-pid, "SIGTERM"); } catch { try { process.kill(pid, "SIGTERM"); } catch { return; } }
  const deadline = Date.now() + timeoutMs;
  while (pidAlive(pid) && Date.now() < deadline) await sleep(100);
  try { process.kill(-pid, "SIGKILL"); } catch { /* gone */ }
  try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
}
