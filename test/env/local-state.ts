// The local fleet's state file (<stateDir>/local.json) and whether what it records still runs. Kept
// apart from local.ts so that readers (the CLI looking for the local fleet) do not load the control
// plane, PKI and runner modules that starting a fleet needs.
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { pidAlive } from "./proc.ts";

export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface LocalState {
  version: 1;
  stateDir: string;
  kubeconfig: string;
  server: string;
  /** Comma-separated NATS URLs (what the operator's --nats gets). */
  nats: string;
  natsUrls: string[];
  natsMonitor: string[];
  /** Process group leaders by component. */
  pids: Record<string, number>;
  /** Executable of each component, checked against /proc before signalling a recorded pid. */
  commands: Record<string, string>;
  crds: string[];
  operator: { started: boolean; pid?: number; log?: string; reason?: string };
  /** The relay runner: relays.json in registry lists the relays it runs. */
  runner?: { started: boolean; pid?: number; mode?: "process" | "podman"; log?: string; registry?: string; reason?: string };
  logs: string;
  startedAt: string;
  stoppedAt?: string;
}

export function defaultStateDir(): string {
  return resolve(process.env.MAILFLEET_STATE_DIR || ".local");
}

export function stateFile(dir: string): string {
  return join(dir, "local.json");
}

export function readLocalState(stateDir = defaultStateDir()): LocalState | undefined {
  try {
    return JSON.parse(readFileSync(stateFile(stateDir), "utf8")) as LocalState;
  } catch {
    return undefined;
  }
}

/** Whether a recorded pid is still the process we started (not a reused pid). */
export function isOurs(pid: number, command: string | undefined): boolean {
  if (!pidAlive(pid)) return false;
  if (!command) return true;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return cmdline.some((part) => part === command || part.endsWith(`/${command.split("/").pop()}`));
  } catch {
    return false;
  }
}

export function localStatus(stateDir = defaultStateDir()): { state?: LocalState; alive: Record<string, boolean> } {
  const state = readLocalState(stateDir);
  const alive: Record<string, boolean> = {};
  if (state && !state.stoppedAt) {
    for (const [name, pid] of Object.entries(state.pids)) alive[name] = isOurs(pid, state.commands[name]);
  }
  return { state, alive };
}
