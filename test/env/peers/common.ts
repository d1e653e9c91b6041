// Shared plumbing for the real-peer launchers: running commands with errors that name the
// component, waiting for conditions, reading sockets from /proc (so readiness checks never open a
// connection that a receiver would count), and killing whatever a crashed test left behind.

import { execFile, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { isIPv4 } from 'node:net';
import ipaddr from 'ipaddr.js';

/** An error from a peer launcher: names the component and carries the tail of its log. */
export class PeerError extends Error {
  readonly component: string;
  constructor(component: string, message: string, logTail?: string) {
    super(`${component}: ${message}${logTail ? `\n--- last lines of its log ---\n${logTail}` : ''}`);
    this.name = 'PeerError';
    this.component = component;
  }
}

export async function tailFile(path: string, lines = 30): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n').trimEnd() || '(log is empty)';
  } catch (err) {
    return `(no log at ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)})`;
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; a non-zero exit becomes a PeerError naming the component. */
export function run(
  component: string,
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string | Buffer; cwd?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      {
        env: opts.env ?? process.env,
        timeout: opts.timeoutMs ?? 60_000,
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
        cwd: opts.cwd,
      },
      (err, stdout, stderr) => {
        if (err) {
          const code = (err as NodeJS.ErrnoException).code;
          const why =
            code === 'ENOENT'
              ? `${cmd} is not installed (run test/env/install-debian.sh)`
              : `\`${cmd} ${args.join(' ')}\` failed (${err.killed ? 'timed out' : `exit ${String(code ?? err.message)}`})`;
          const out = `${stderr}${stdout}`.trim().split('\n').slice(-20).join('\n');
          reject(new PeerError(component, why, out || undefined));
        } else resolve({ stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(
  what: string,
  check: () => T | Promise<T>,
  opts: { timeoutMs?: number; intervalMs?: number; component?: string; log?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const tail = opts.log ? await tailFile(opts.log) : undefined;
      const suffix = lastErr ? ` (last error: ${(lastErr as Error).message ?? String(lastErr)})` : '';
      throw new PeerError(opts.component ?? 'peer', `timed out waiting for ${what}${suffix}`, tail);
    }
    await sleep(opts.intervalMs ?? 50);
  }
}

/** Servers here listen on loopback only: 127.0.0.0/8, or ::1 where the peer takes IPv6 (allowIPv6). */
export function assertLoopback(component: string, field: string, address: string, allowIPv6 = false): void {
  if (allowIPv6 && address === '::1') return;
  if (!isIPv4(address) || !address.startsWith('127.')) {
    throw new PeerError(component, `${field} must be an IPv4 loopback address (127.x.y.z)${allowIPv6 ? ' or ::1' : ''}, got ${JSON.stringify(address)}`);
  }
}

// ---- sockets from /proc (no probe connections) -------------------------------------------------

function hexAddr(address: string, port: number): string {
  // /proc/net/tcp prints the IPv4 address as a host-order (little-endian here) u32; /proc/net/tcp6
  // the IPv6 address as four such u32s.
  const b = ipaddr.parse(address).toByteArray();
  let ip = '';
  for (let i = 0; i < b.length; i += 4) ip += b.slice(i, i + 4).reverse().map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${ip.toUpperCase()}:${port.toString(16).padStart(4, '0').toUpperCase()}`;
}

const table = (proto: 'tcp' | 'udp', address: string) => `/proc/net/${proto}${isIPv4(address) ? '' : '6'}`;

interface SockLine {
  local: string;
  remote: string;
  state: string;
  inode: string;
}

function readSockTable(file: string): SockLine[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .slice(1)
    .filter(Boolean)
    .map((l) => {
      const f = l.trim().split(/\s+/);
      return { local: f[1]!, remote: f[2]!, state: f[3]!, inode: f[9]! };
    });
}

/** Whether something listens on address:port over TCP (state LISTEN in /proc/net/tcp). */
export function tcpListening(address: string, port: number): boolean {
  const want = hexAddr(address, port);
  return readSockTable(table('tcp', address)).some((s) => s.state === '0A' && s.local === want);
}

/** Whether a UDP socket is bound on address:port. */
export function udpBound(address: string, port: number): boolean {
  const want = hexAddr(address, port);
  return readSockTable(table('udp', address)).some((s) => s.local === want);
}

/** Socket inodes of established TCP connections whose local end is address:port. */
export function establishedInodes(address: string, port: number): Set<string> {
  const want = hexAddr(address, port);
  return new Set(readSockTable(table('tcp', address)).filter((s) => s.state === '01' && s.local === want).map((s) => s.inode));
}

/** Socket inodes a process holds open. */
export function socketInodesOf(pid: number): Set<string> {
  const out = new Set<string>();
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) out.add(m[1]!);
    } catch {
      /* fd closed meanwhile */
    }
  }
  return out;
}

// ---- processes ---------------------------------------------------------------------------------

export interface ProcInfo {
  pid: number;
  comm: string;
  ppid: number;
  pgid: number;
  startTicks: number;
}

export function procInfo(pid: number): ProcInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: split at the last ')'.
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const rest = stat.slice(close + 2).split(' ');
    // rest[0] = state, [1] = ppid, [2] = pgrp, ..., [19] = starttime
    if (rest[0] === 'Z') return undefined;
    return { pid, comm, ppid: Number(rest[1]), pgid: Number(rest[2]), startTicks: Number(rest[19]) };
  } catch {
    return undefined;
  }
}

export function allProcs(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const p = procInfo(Number(name));
    if (p) out.push(p);
  }
  return out;
}

export function processGroup(pgid: number): ProcInfo[] {
  return allProcs().filter((p) => p.pgid === pgid);
}

export function alive(pid: number): boolean {
  return procInfo(pid) !== undefined;
}

/** Sends a signal to a whole process group, ignoring "no such process". */
export function killGroup(pgid: number, signal: NodeJS.Signals = 'SIGTERM'): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    /* gone */
  }
}

/** SIGTERM a process group, wait, then SIGKILL what is left; resolves when the group is empty. */
export async function terminateGroup(pgid: number, graceMs = 10_000): Promise<void> {
  killGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (processGroup(pgid).length > 0 && Date.now() < deadline) await sleep(50);
  if (processGroup(pgid).length > 0) {
    killGroup(pgid, 'SIGKILL');
    while (processGroup(pgid).length > 0) await sleep(20);
  }
}

// A test process that crashes or is interrupted must not leave daemons holding ports. Peers
// register their process groups here; on exit (or SIGINT/SIGTERM) they are SIGKILLed.
const liveGroups = new Set<number>();
let hooked = false;
function killAllTracked(): void {
  for (const g of liveGroups) killGroup(g, 'SIGKILL');
  liveGroups.clear();
}
export function trackGroup(pgid: number): void {
  liveGroups.add(pgid);
  if (hooked) return;
  hooked = true;
  process.on('exit', killAllTracked);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAllTracked();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}
export function untrackGroup(pgid: number): void {
  liveGroups.delete(pgid);
}

/** Tracks a spawned (detached) child by its process group until it exits. */
export function trackChild(child: ChildProcess): void {
  if (child.pid === undefined) return;
  const pid = child.pid;
  trackGroup(pid);
  child.once('exit', () => {
    // the group may outlive its leader; stop() still terminates it explicitly
    if (processGroup(pid).length === 0) untrackGroup(pid);
  });
}

/** A TCP port nobody listens on at the moment, on the given loopback address. */
export function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ host: address, port: 0, exclusive: true }, () => {
      const a = srv.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
