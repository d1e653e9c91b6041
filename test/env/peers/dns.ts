// A real DNS server on loopback serving test zones: dnsmasq with its own config file.
//
// Every name not configured here is NXDOMAIN (`local=/#/`), like an authoritative server for the
// test zones; a configured name without the asked type is NODATA. dnsmasq reads TXT and MX
// records only at start, so setRecords restarts it.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { isIP, isIPv4 } from 'node:net';
import { join, resolve } from 'node:path';
import {
  PeerError,
  alive,
  assertLoopback,
  sleep,
  tailFile,
  tcpListening,
  terminateGroup,
  trackChild,
  udpBound,
  untrackGroup,
  waitFor,
} from './common.ts';

const COMPONENT = 'dnsmasq';
const DNSMASQ = '/usr/sbin/dnsmasq';

export type DnsRecord =
  /** value: the exchange host, or '.' for a null MX (RFC 7505). priority defaults to 10 (0 for '.'). */
  | { type: 'MX'; name: string; value: string; priority?: number }
  | { type: 'A'; name: string; value: string }
  | { type: 'AAAA'; name: string; value: string }
  /** value: the text; longer than 255 bytes is split into 255-byte strings (as a DKIM key must be).
   * An array gives the strings explicitly. */
  | { type: 'TXT'; name: string; value: string | string[] }
  /** name: an IPv4 address (or an in-addr.arpa name); value: the host name. */
  | { type: 'PTR'; name: string; value: string }
  /** value: the target; the answer carries the target's records when they are configured here. */
  | { type: 'CNAME'; name: string; value: string };

export type DnsFailMode = 'timeout' | 'refused';

export interface DnsHandle {
  readonly address: string;
  readonly port: number;
  /** "address" or "address:port": what dns.Resolver#setServers and verifyDkim take. */
  readonly server: string;
  readonly records: readonly DnsRecord[];
  readonly logPath: string;
  /** Replaces all records; restarts dnsmasq (it reads them only at start). */
  setRecords(records: DnsRecord[]): Promise<void>;
  /** Adds records to the current set (a restart, like setRecords). */
  addRecords(records: DnsRecord[]): Promise<void>;
  /**
   * DNS failing for a while. 'timeout' (default): the server stops answering (dnsmasq is
   * SIGSTOPped; queries time out). 'refused': every query gets REFUSED, a server failure to
   * resolvers (dnsmasq cannot be configured to answer SERVFAIL). fail(false) restores service.
   */
  fail(on: boolean, mode?: DnsFailMode): Promise<void>;
  /** dnsmasq's log, with every query (log-queries). */
  log(): Promise<string>;
  stop(): Promise<void>;
}

export interface StartDnsOptions {
  dir: string;
  address: string;
  port?: number;
  records?: DnsRecord[];
  /** TTL of the answers (dnsmasq local-ttl). Default 0: clients never cache, so changes show at once. */
  ttl?: number;
}

const NAME_RE = /^(?=.{1,253}$)[A-Za-z0-9_*]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*$/;

function checkName(field: string, name: unknown): string {
  const n = typeof name === 'string' ? name.replace(/\.$/, '') : '';
  if (!NAME_RE.test(n)) throw new PeerError(COMPONENT, `${field} must be a DNS name, got ${JSON.stringify(name)}`);
  return n;
}

/** Splits text into DNS character-strings of at most 255 bytes (UTF-8), never inside a character. */
export function splitTxt(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let curBytes = 0;
  for (const ch of text) {
    const b = Buffer.byteLength(ch);
    if (curBytes + b > 255) {
      out.push(cur);
      cur = '';
      curBytes = 0;
    }
    cur += ch;
    curBytes += b;
  }
  if (cur || out.length === 0) out.push(cur);
  return out;
}

function quoteTxt(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

function ptrName(name: string): string {
  if (isIPv4(name)) return `${name.split('.').reverse().join('.')}.in-addr.arpa`;
  return name;
}

/** dnsmasq config lines for the records; errors name the offending record. */
export function dnsmasqRecordLines(records: DnsRecord[]): string[] {
  const lines: string[] = [];
  for (const [i, r] of records.entries()) {
    const f = `records[${i}]`;
    if (!r || typeof r !== 'object') throw new PeerError(COMPONENT, `${f} must be an object`);
    const name = checkName(`${f}.name`, r.type === 'PTR' ? ptrName(String(r.name)) : r.name);
    switch (r.type) {
      case 'MX': {
        const target = r.value === '.' ? '.' : checkName(`${f}.value`, r.value);
        const pref = r.priority ?? (target === '.' ? 0 : 10);
        if (!Number.isInteger(pref) || pref < 0 || pref > 65535) throw new PeerError(COMPONENT, `${f}.priority must be 0..65535, got ${r.priority}`);
        lines.push(`mx-host=${name},${target},${pref}`);
        break;
      }
      case 'A':
        if (!isIPv4(r.value)) throw new PeerError(COMPONENT, `${f}.value must be an IPv4 address, got ${JSON.stringify(r.value)}`);
        // host-record also answers the PTR of the address, unless a PTR record overrides it.
        lines.push(`host-record=${name},${r.value}`);
        break;
      case 'AAAA':
        if (isIP(r.value) !== 6) throw new PeerError(COMPONENT, `${f}.value must be an IPv6 address, got ${JSON.stringify(r.value)}`);
        lines.push(`host-record=${name},${r.value}`);
        break;
      case 'TXT': {
        const parts = Array.isArray(r.value) ? r.value : splitTxt(String(r.value));
        for (const [j, p] of parts.entries()) {
          if (typeof p !== 'string' || Buffer.byteLength(p) > 255) throw new PeerError(COMPONENT, `${f}.value[${j}] must be a string of at most 255 bytes`);
          if (/[\r\n\0]/.test(p)) throw new PeerError(COMPONENT, `${f}.value must not contain line breaks or NUL`);
        }
        lines.push(`txt-record=${name},${parts.map(quoteTxt).join(',')}`);
        break;
      }
      case 'PTR':
        if (!/\.(in-addr|ip6)\.arpa$/i.test(name)) throw new PeerError(COMPONENT, `${f}.name must be an IPv4 address or a reverse (.arpa) name, got ${JSON.stringify(r.name)}`);
        lines.push(`ptr-record=${name},${checkName(`${f}.value`, r.value)}`);
        break;
      case 'CNAME':
        lines.push(`cname=${name},${checkName(`${f}.value`, r.value)}`);
        break;
      default:
        throw new PeerError(COMPONENT, `${f}.type must be MX, A, AAAA, TXT, PTR or CNAME, got ${JSON.stringify((r as { type: unknown }).type)}`);
    }
  }
  return lines;
}

export async function startDns(opts: StartDnsOptions): Promise<DnsHandle> {
  if (!opts.dir) throw new PeerError(COMPONENT, 'dir is required');
  assertLoopback(COMPONENT, 'address', opts.address);
  const port = opts.port ?? 53;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PeerError(COMPONENT, `port must be 1..65535, got ${opts.port}`);
  if (opts.ttl !== undefined && (!Number.isInteger(opts.ttl) || opts.ttl < 0)) throw new PeerError(COMPONENT, `ttl must be a non-negative integer, got ${opts.ttl}`);
  const dir = resolve(opts.dir);
  await mkdir(dir, { recursive: true });
  const confPath = join(dir, 'dnsmasq.conf');
  const logPath = join(dir, 'dnsmasq.log');
  const address = opts.address;
  let records: DnsRecord[] = [...(opts.records ?? [])];
  dnsmasqRecordLines(records); // validate before anything starts

  if (tcpListening(address, port) || udpBound(address, port)) {
    throw new PeerError(COMPONENT, `${address}:${port} is already in use (another DNS server not stopped?)`);
  }

  let child: ChildProcess | undefined;
  let failing: DnsFailMode | undefined;

  async function writeConfig(): Promise<void> {
    const base = [
      '# generated by test/env/peers/dns.ts',
      `port=${port}`,
      `listen-address=${address}`,
      // only this address: other instances (and other tests) may use other 127.x addresses
      'bind-interfaces',
      'no-resolv',
      'no-hosts',
      'no-poll',
      `local-ttl=${opts.ttl ?? 0}`,
      'cache-size=0',
      `log-facility=${logPath}`,
      'log-queries',
      // stay root: the log and state live in the test's dir; nothing to separate in a test
      'user=root',
      'pid-file=',
    ];
    // 'refused' mode: no records and no local domains, so every query is REFUSED.
    const zone = failing === 'refused' ? [] : ['local=/#/', ...dnsmasqRecordLines(records)];
    await writeFile(confPath, [...base, ...zone, ''].join('\n'));
  }

  async function launch(): Promise<void> {
    await writeConfig();
    const c = spawn(DNSMASQ, ['--keep-in-foreground', `--conf-file=${confPath}`], {
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    trackChild(c);
    let stderr = '';
    c.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4096)));
    let exited: number | null | undefined;
    c.once('exit', (code) => (exited = code));
    const spawnErr = await new Promise<Error | undefined>((r) => {
      c.once('error', r);
      c.once('spawn', () => r(undefined));
    });
    if (spawnErr) throw new PeerError(COMPONENT, `cannot run ${DNSMASQ} (install dnsmasq-base: test/env/install-debian.sh): ${spawnErr.message}`);
    child = c;
    try {
      await waitFor(
        `dnsmasq to listen on ${address}:${port}`,
        () => {
          if (exited !== undefined) throw new Error(`dnsmasq exited with ${exited}: ${stderr.trim()}`);
          return udpBound(address, port) && tcpListening(address, port);
        },
        { component: COMPONENT, timeoutMs: 30_000 },
      );
    } catch (err) {
      await terminateGroup(c.pid!, 2000);
      untrackGroup(c.pid!);
      child = undefined;
      throw new PeerError(COMPONENT, `failed to start on ${address}:${port} (config ${confPath}): ${(err as Error).message}`, await tailFile(logPath));
    }
  }

  async function halt(): Promise<void> {
    const c = child;
    if (!c?.pid) return;
    child = undefined;
    try {
      process.kill(c.pid, 'SIGCONT'); // a stopped process would hold SIGTERM pending
    } catch {
      /* gone */
    }
    await terminateGroup(c.pid, 5000);
    untrackGroup(c.pid);
    // the next instance binds the same address: wait until the sockets are released
    await waitFor(`${address}:${port} to be released`, () => !udpBound(address, port) && !tcpListening(address, port), {
      component: COMPONENT,
      timeoutMs: 10_000,
    });
  }

  async function restart(): Promise<void> {
    await halt();
    await launch();
    if (failing === 'timeout') process.kill(child!.pid!, 'SIGSTOP');
  }

  await launch();

  const handle: DnsHandle = {
    address,
    port,
    server: port === 53 ? address : `${address}:${port}`,
    get records() {
      return records;
    },
    logPath,
    async setRecords(next) {
      dnsmasqRecordLines(next);
      records = [...next];
      await restart();
    },
    async addRecords(more) {
      dnsmasqRecordLines(more);
      records = [...records, ...more];
      await restart();
    },
    async fail(on, mode = 'timeout') {
      if (mode !== 'timeout' && mode !== 'refused') throw new PeerError(COMPONENT, `fail mode must be 'timeout' or 'refused', got ${JSON.stringify(mode)}`);
      const prev = failing;
      failing = on ? mode : undefined;
      if (prev === failing) return;
      const pid = child?.pid;
      if (prev === 'timeout' && pid && alive(pid)) process.kill(pid, 'SIGCONT');
      if (prev === 'refused' || failing === 'refused') {
        await restart();
      } else if (failing === 'timeout' && pid) {
        process.kill(pid, 'SIGSTOP');
        // SIGSTOP is asynchronous; make sure it took before callers rely on it
        await waitFor('dnsmasq to stop', async () => /^State:\s+T/m.test(await readFile(`/proc/${pid}/status`, 'utf8')), {
          component: COMPONENT,
          timeoutMs: 5000,
        });
      }
      await sleep(0);
    },
    log: () => readFile(logPath, 'utf8').catch(() => ''),
    async stop() {
      await halt();
    },
  };
  return handle;
}
