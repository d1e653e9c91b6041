// Real Postfix instances as mailbox providers' MX hosts, plus smtp-sink and smtp-source.
//
// One instance = one config directory (`postfix -c DIR`) with its own queue, data directory and
// maillog file. Each listener is its own `smtpd` entry in master.cf bound to its own 127.x.y.z
// address, so anvil counts (and limits) per listener and per client address: one provider each.
// See test/env/peers/README.md for the traps this encodes.

import { spawn } from 'node:child_process';
import { chmod, chown, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { isIP } from 'node:net';
import {
  PeerError,
  allProcs,
  alive,
  assertLoopback,
  establishedInodes,
  run,
  sleep,
  socketInodesOf,
  tailFile,
  tcpListening,
  terminateGroup,
  trackChild,
  trackGroup,
  untrackGroup,
  waitFor,
} from './common.ts';

const COMPONENT = 'postfix';
const POSTFIX = '/usr/sbin/postfix';
const VIRTUAL_UID = 65534; // nobody/nogroup: virtual(8) refuses root and needs a fixed uid
const VIRTUAL_GID = 65534;

export interface PostfixLimits {
  /** smtpd_client_message_rate_limit: MAIL FROMs per client per time unit (0 = none, Postfix default). */
  messageRatePerUnit?: number;
  /** smtpd_client_connection_count_limit: concurrent sessions per client (Postfix default 50; 0 = none). */
  connectionCountLimit?: number;
  /** smtpd_client_connection_rate_limit: connections per client per time unit (0 = none). */
  connectionRatePerUnit?: number;
  /** smtpd_client_recipient_rate_limit: RCPT TOs per client per time unit (0 = none). */
  recipientRatePerUnit?: number;
  /** anvil_rate_time_unit, e.g. '60s'. anvil is one service per instance: all listeners of an
   * instance must agree (start another instance for a different unit). */
  rateTimeUnit?: string;
}

export interface RecipientRejection {
  /** Matched against the whole recipient address. A string is a POSIX extended regular expression
   * (regexp_table(5) syntax, case-insensitive); a RegExp's source is used as such (flag `i` only). */
  pattern: RegExp | string;
  /** e.g. '550 5.1.1 No such user' (a 4xx or 5xx reply with optional enhanced code and text). */
  reply: string;
}

export interface PostfixListener {
  address: string;
  port?: number;
  /** myhostname of this listener: its greeting, EHLO reply and the `by` of its Received header. */
  hostname: string;
  limits?: PostfixLimits;
  rejectRecipients?: RecipientRejection[];
  /** smtpd_tls_security_level=encrypt: MAIL before STARTTLS gets `530 5.7.0 Must issue a STARTTLS command first`. */
  requireTls?: boolean;
  /** Offer STARTTLS (self-signed certificate, see handle.tlsCertPem). Default false; requireTls implies it. */
  tlsOffered?: boolean;
  /** A receiver slow to answer: smtpd waits this long after the message data before its reply
   * (`smtpd_end_of_data_restrictions = sleep N`, a content scanner's pace). Default 0. */
  endOfDataDelaySeconds?: number;
}

export interface StartPostfixOptions {
  /** State directory (config, queue, data, inbox, maillog). Created if missing; made world-traversable. */
  dir: string;
  listeners: PostfixListener[];
  /** Recipient domains this instance accepts mail for (virtual mailbox domains). */
  domains: string[];
  /** How long to wait for start-up. Default 60 s. */
  timeoutMs?: number;
  /**
   * Relay mode (a baseline MTA for benchmarks): mail from `relayFrom` (CIDRs, Postfix's
   * mynetworks) for domains other than `domains` is relayed to this next hop, e.g.
   * `[127.0.9.1]:25`, instead of being refused.
   */
  relayhost?: string;
  relayFrom?: string[];
}

export interface DeliveredMessage {
  /** The Maildir file. */
  file: string;
  /** The message as stored: Return-Path, Delivered-To and Received added by Postfix, then the
   * bytes the client sent (with dot-unstuffing and CRLF normalised to LF, as Postfix stores them). */
  raw: Buffer;
  /** The envelope recipient (Delivered-To). */
  deliveredTo: string;
  /** The envelope sender (Return-Path, without brackets; '' for a null sender). */
  returnPath: string;
  /** The client's IP address as seen by smtpd (its source address). */
  clientIp: string;
  /** The HELO/EHLO name the client gave. */
  helo: string;
  /** The hostname of the listener that received it (the Received header's `by`). */
  receivedBy: string;
  /** Address of that listener, when the hostname is unique among this instance's listeners. */
  listener?: string;
  /** Postfix queue id. */
  queueId: string;
  /** ESMTP, ESMTPS, SMTP, ... from the Received header. */
  protocol: string;
  /** Whether the session used TLS (ESMTPS / "using TLS" in Received). */
  tls: boolean;
  /** Received header time, parsed; falls back to the file's mtime. */
  receivedAt: Date;
}

export interface PostfixHandle {
  readonly dir: string;
  readonly configDir: string;
  readonly logPath: string;
  readonly listeners: ReadonlyArray<Required<Pick<PostfixListener, 'address' | 'port' | 'hostname'>>>;
  /** PEM of the self-signed certificate the TLS listeners present (undefined without TLS). */
  readonly tlsCertPem: string | undefined;
  /** Every message delivered to the inbox so far, oldest first. */
  deliveredMessages(): Promise<DeliveredMessage[]>;
  /** Waits until at least `count` messages (matching `filter`) are delivered. */
  waitForMessages(
    count: number,
    opts?: { timeoutMs?: number; filter?: (m: DeliveredMessage) => boolean },
  ): Promise<DeliveredMessage[]>;
  /** From the next session on, `clientIp` (or CIDR) gets `reply` (e.g. '421 4.7.28 ...') from the
   * client restrictions, which Postfix evaluates at RCPT TO (smtpd_delay_reject). All listeners
   * unless `listener` (an address) is given. */
  setClientReply(clientIp: string, reply: string, opts?: { listener?: string }): Promise<void>;
  clearClientReply(clientIp: string, opts?: { listener?: string }): Promise<void>;
  /** Takes a listener down: connections are refused and sessions in progress are cut (master
   * ends the processes of a service removed on reload, as a host going down would). */
  stopListener(address: string): Promise<void>;
  startListener(address: string): Promise<void>;
  /** From the next session on, the listener waits `seconds` before answering the end of DATA
   * (0: answers at once). Reloads, like every change. */
  setEndOfDataDelay(address: string, seconds: number): Promise<void>;
  /** `postfix reload`, then waits until idle smtpd processes of the old configuration are gone.
   * A reload restarts anvil too: every rate counter starts a new window and connection counts
   * forget the sessions already open. setClientReply, clearClientReply, stopListener and
   * startListener all reload. */
  reload(): Promise<void>;
  /** The maillog so far. */
  log(): Promise<string>;
  stop(): Promise<void>;
}

interface ListenerState {
  spec: PostfixListener;
  port: number;
  up: boolean;
  clientReplies: Map<string, string>; // cidr key -> reply
}

function validateReply(field: string, reply: string): void {
  if (!/^[45]\d\d( [245]\.\d{1,3}\.\d{1,3})?( \S.*)?$/.test(reply) || /[\r\n]/.test(reply)) {
    throw new PeerError(COMPONENT, `${field} must be a one-line 4xx/5xx reply like "421 4.7.28 text", got ${JSON.stringify(reply)}`);
  }
}

function cidrKey(field: string, clientIp: string): string {
  const [ip, bits] = clientIp.split('/');
  const fam = isIP(ip ?? '');
  if (!fam || (bits !== undefined && !/^\d{1,3}$/.test(bits))) {
    throw new PeerError(COMPONENT, `${field} must be an IP address or CIDR, got ${JSON.stringify(clientIp)}`);
  }
  return bits === undefined ? `${ip}/${fam === 4 ? 32 : 128}` : clientIp;
}

function postfixRegexp(field: string, pattern: RegExp | string): string {
  let source: string;
  let caseSensitive = false;
  if (pattern instanceof RegExp) {
    if (/[^i]/.test(pattern.flags)) throw new PeerError(COMPONENT, `${field}: only the i flag is supported, got /${pattern.source}/${pattern.flags}`);
    source = pattern.source;
    caseSensitive = !pattern.flags.includes('i');
  } else source = pattern;
  if (/[\r\n]/.test(source)) throw new PeerError(COMPONENT, `${field} must be one line`);
  // regexp_table(5): /pattern/flags; a bare slash inside would end the pattern early.
  const escaped = source.replace(/(^|[^\\])\//g, '$1\\/');
  return `/${escaped}/${caseSensitive ? 'i' : ''}`; // Postfix's `i` flag toggles to case-sensitive
}

function validateOptions(opts: StartPostfixOptions): { rateTimeUnit?: string } {
  if (!opts.dir) throw new PeerError(COMPONENT, 'dir is required');
  // the path goes into main.cf lists (maillog_file_prefixes) and master.cf -o values
  if (/[\s,${}()]/.test(opts.dir)) throw new PeerError(COMPONENT, `dir must not contain whitespace, commas, $, braces or parentheses: ${JSON.stringify(opts.dir)}`);
  if (!Array.isArray(opts.listeners) || opts.listeners.length === 0) throw new PeerError(COMPONENT, 'listeners must list at least one listener');
  if (!Array.isArray(opts.domains) || opts.domains.length === 0) throw new PeerError(COMPONENT, 'domains must list at least one recipient domain');
  for (const [i, d] of opts.domains.entries()) {
    if (!/^[a-z0-9.-]+$/i.test(d)) throw new PeerError(COMPONENT, `domains[${i}] is not a domain name: ${JSON.stringify(d)}`);
  }
  const seen = new Set<string>();
  let unit: string | undefined;
  for (const [i, l] of opts.listeners.entries()) {
    const f = `listeners[${i}]`;
    assertLoopback(COMPONENT, `${f}.address`, l.address, true);
    const port = l.port ?? 25;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PeerError(COMPONENT, `${f}.port must be 1..65535, got ${l.port}`);
    const key = `${l.address}:${port}`;
    if (seen.has(key)) throw new PeerError(COMPONENT, `${f}: ${key} is listed twice`);
    seen.add(key);
    if (!l.hostname || !/^[a-z0-9.-]+$/i.test(l.hostname)) throw new PeerError(COMPONENT, `${f}.hostname must be a host name, got ${JSON.stringify(l.hostname)}`);
    if (l.requireTls && l.tlsOffered === false) throw new PeerError(COMPONENT, `${f}: requireTls needs tlsOffered (leave it unset or true)`);
    const lim = l.limits ?? {};
    for (const k of ['messageRatePerUnit', 'connectionCountLimit', 'connectionRatePerUnit', 'recipientRatePerUnit'] as const) {
      const v = lim[k];
      if (v !== undefined && (!Number.isInteger(v) || v < 0)) throw new PeerError(COMPONENT, `${f}.limits.${k} must be a non-negative integer, got ${v}`);
    }
    if (lim.rateTimeUnit !== undefined) {
      if (!/^\d+[smhdw]?$/.test(lim.rateTimeUnit)) throw new PeerError(COMPONENT, `${f}.limits.rateTimeUnit must look like '60s', got ${JSON.stringify(lim.rateTimeUnit)}`);
      if (unit !== undefined && unit !== lim.rateTimeUnit) {
        throw new PeerError(COMPONENT, `${f}.limits.rateTimeUnit ${lim.rateTimeUnit} differs from another listener's ${unit}: anvil_rate_time_unit is per instance, start a second instance`);
      }
      unit = lim.rateTimeUnit;
    }
    for (const [j, r] of (l.rejectRecipients ?? []).entries()) {
      validateReply(`${f}.rejectRecipients[${j}].reply`, r.reply);
      postfixRegexp(`${f}.rejectRecipients[${j}].pattern`, r.pattern);
    }
  }
  return { rateTimeUnit: unit };
}

/** virtual(8) delivers as uid 65534, which must be able to walk down to the inbox. */
async function ensureTraversable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (let d = dirname(dir); ; d = dirname(d)) {
    const st = await stat(d);
    if ((st.mode & 0o001) === 0) {
      throw new PeerError(COMPONENT, `dir ${dir}: its parent ${d} is not world-searchable (mode ${(st.mode & 0o777).toString(8)}); Postfix's delivery agent runs as nobody and cannot reach the inbox. Use a dir under a traversable parent (e.g. mkdtemp under /tmp, then pass a subdir) or chmod o+x ${d}`);
    }
    if (d === dirname(d)) break;
  }
}

const MASTER_SERVICES = `
# Internal services (chroot off everywhere: the queue is a per-test directory).
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export async function startPostfix(opts: StartPostfixOptions): Promise<PostfixHandle> {
  const { rateTimeUnit } = validateOptions(opts);
  if (opts.relayhost !== undefined && !/^(\[[0-9.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(opts.relayhost)) {
    throw new PeerError(COMPONENT, `relayhost must look like [127.0.9.1]:25, got ${JSON.stringify(opts.relayhost)}`);
  }
  const dir = resolve(opts.dir);
  const confDir = join(dir, 'conf');
  const queueDir = join(dir, 'queue');
  const dataDir = join(dir, 'data');
  const inbox = join(dir, 'inbox');
  const logPath = join(dir, 'maillog');
  const timeoutMs = opts.timeoutMs ?? 60_000;

  const masterPidFile = join(queueDir, 'pid', 'master.pid');
  const readMasterPid = async (): Promise<number | undefined> => {
    try {
      const pid = Number((await readFile(masterPidFile, 'utf8')).trim());
      return pid > 0 && alive(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  };

  if (await readMasterPid()) {
    throw new PeerError(COMPONENT, `an instance is already running with queue ${queueDir} (pid file ${masterPidFile}): stop it first`);
  }

  await mkdir(dir, { recursive: true });
  await ensureTraversable(dir);
  await mkdir(confDir, { recursive: true });
  await mkdir(queueDir, { recursive: true });
  await mkdir(dataDir, { recursive: true });
  // the data directory (master.lock, tls caches) must belong to postfix
  const { stdout: pfUid } = await run(COMPONENT, 'id', ['-u', 'postfix']).catch(() => {
    throw new PeerError(COMPONENT, 'user postfix does not exist: is the postfix package installed? (test/env/install-debian.sh)');
  });
  await chown(dataDir, Number(pfUid.trim()), 0);
  for (const sub of ['', 'new', 'cur', 'tmp']) {
    await mkdir(join(inbox, sub), { recursive: true });
    await chown(join(inbox, sub), VIRTUAL_UID, VIRTUAL_GID);
  }

  const listeners: ListenerState[] = opts.listeners.map((spec) => ({
    spec,
    port: spec.port ?? 25,
    up: true,
    clientReplies: new Map(),
  }));
  for (const l of listeners) {
    if (tcpListening(l.spec.address, l.port)) {
      throw new PeerError(COMPONENT, `${l.spec.address}:${l.port} is already in use by another process (another instance not stopped?)`);
    }
  }

  const anyTls = listeners.some((l) => l.spec.tlsOffered || l.spec.requireTls);
  let tlsCertPem: string | undefined;
  const certFile = join(confDir, 'tls-cert.pem');
  const keyFile = join(confDir, 'tls-key.pem');
  if (anyTls) {
    const names = [...new Set(listeners.map((l) => l.spec.hostname))];
    await run(COMPONENT, 'openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '3650',
      '-subj', `/CN=${names[0]}`, '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
      '-keyout', keyFile, '-out', certFile,
    ]);
    await chmod(keyFile, 0o600);
    tlsCertPem = await readFile(certFile, 'utf8');
  }

  const mainCf = [
    '# generated by test/env/peers/postfix.ts',
    'compatibility_level = 3.6',
    `queue_directory = ${queueDir}`,
    `data_directory = ${dataDir}`,
    // No syslog here: without maillog_file every failure is invisible. Paths outside /var need
    // to be allowed by maillog_file_prefixes.
    `maillog_file = ${logPath}`,
    `maillog_file_prefixes = ${dir}`,
    // IPv6 only when a listener is on ::1 (some build machines have no IPv6 loopback).
    `inet_protocols = ${listeners.some((l) => l.spec.address.includes(':')) ? 'ipv4, ipv6' : 'ipv4'}`,
    'inet_interfaces = loopback-only',
    `myhostname = ${listeners[0]!.spec.hostname}`,
    'mydomain = mailfleet.test',
    'myorigin = $myhostname',
    'mydestination =',
    'local_recipient_maps =',
    'biff = no',
    'append_dot_mydomain = no',
    'readme_directory = no',
    // No DNS from the receiver: the system resolver is not the test DNS, and lookups of 127.x
    // names would only add timeouts. Clients show up as "unknown[IP]".
    'smtpd_peername_lookup = no',
    'smtp_dns_support_level = disabled',
    // Loopback is in mynetworks, and anvil never limits mynetworks clients unless this is empty.
    'smtpd_client_event_limit_exceptions =',
    ...(rateTimeUnit ? [`anvil_rate_time_unit = ${rateTimeUnit}`] : []),
    ...(opts.relayhost
      ? [`relayhost = ${opts.relayhost}`, `mynetworks = ${(opts.relayFrom ?? ['127.0.0.0/8']).join(', ')}`,
        'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination', 'smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination']
      : ['smtpd_relay_restrictions = reject_unauth_destination', 'smtpd_recipient_restrictions = reject_unauth_destination']),
    `virtual_mailbox_domains = ${opts.domains.join(', ')}`,
    `virtual_mailbox_base = ${dir}`,
    // Every recipient into one Maildir (Delivered-To tells them apart); regexp maps may not
    // substitute here, static does.
    'virtual_mailbox_maps = static:inbox/',
    `virtual_uid_maps = static:${VIRTUAL_UID}`,
    `virtual_gid_maps = static:${VIRTUAL_GID}`,
    `virtual_minimum_uid = ${VIRTUAL_UID}`,
    'virtual_mailbox_limit = 0',
    'message_size_limit = 52428800',
    'notify_classes =',
    'smtpd_banner = $myhostname ESMTP',
    'smtpd_tls_received_header = yes',
    ...(anyTls ? [`smtpd_tls_cert_file = ${certFile}`, `smtpd_tls_key_file = ${keyFile}`, 'smtpd_tls_loglevel = 1'] : []),
    'smtpd_tls_security_level = none',
    '',
  ].join('\n');
  await writeFile(join(confDir, 'main.cf'), mainCf);

  // ':' of an IPv6 address would end a Postfix map type or a syslog name.
  const safe = (address: string) => address.replaceAll(':', '_');
  const mapName = (l: ListenerState, kind: string) => join(confDir, `${kind}-${safe(l.spec.address)}-${l.port}`);

  async function writeClientMap(l: ListenerState): Promise<void> {
    const lines = ['# client IP/CIDR -> reply (setClientReply)'];
    for (const [k, v] of l.clientReplies) lines.push(`${k} ${v}`);
    await writeFile(mapName(l, 'client') + '.cidr', lines.join('\n') + '\n');
  }

  async function writeMasterCf(): Promise<void> {
    const out = ['# generated by test/env/peers/postfix.ts'];
    for (const l of listeners) {
      if (!l.up) {
        out.push(`# ${l.spec.address}:${l.port} stopped (stopListener)`);
        continue;
      }
      const s = l.spec;
      const lim = s.limits ?? {};
      const o = (name: string, value: string | number) => `  -o { ${name} = ${value} }`;
      out.push(`${s.address.includes(':') ? `[${s.address}]` : s.address}:${l.port} inet n - n - - smtpd`);
      out.push(o('syslog_name', `postfix/${safe(s.address)}`));
      out.push(o('myhostname', s.hostname));
      if (lim.messageRatePerUnit !== undefined) out.push(o('smtpd_client_message_rate_limit', lim.messageRatePerUnit));
      if (lim.connectionCountLimit !== undefined) out.push(o('smtpd_client_connection_count_limit', lim.connectionCountLimit));
      if (lim.connectionRatePerUnit !== undefined) out.push(o('smtpd_client_connection_rate_limit', lim.connectionRatePerUnit));
      if (lim.recipientRatePerUnit !== undefined) out.push(o('smtpd_client_recipient_rate_limit', lim.recipientRatePerUnit));
      out.push(o('smtpd_client_restrictions', `check_client_access cidr:${mapName(l, 'client')}.cidr`));
      const rcpt = s.rejectRecipients?.length
        ? `check_recipient_access regexp:${mapName(l, 'recipient')}.regexp, reject_unauth_destination`
        : opts.relayhost ? 'permit_mynetworks, reject_unauth_destination' : 'reject_unauth_destination';
      out.push(o('smtpd_recipient_restrictions', rcpt));
      const level = s.requireTls ? 'encrypt' : s.tlsOffered ? 'may' : 'none';
      out.push(o('smtpd_tls_security_level', level));
      if (s.endOfDataDelaySeconds) out.push(o('smtpd_end_of_data_restrictions', `sleep ${s.endOfDataDelaySeconds}`));
    }
    out.push(MASTER_SERVICES);
    await writeFile(join(confDir, 'master.cf'), out.join('\n'));
  }

  for (const l of listeners) {
    await writeClientMap(l);
    if (l.spec.rejectRecipients?.length) {
      const lines = l.spec.rejectRecipients.map((r, j) => `${postfixRegexp(`rejectRecipients[${j}]`, r.pattern)} ${r.reply}`);
      await writeFile(mapName(l, 'recipient') + '.regexp', lines.join('\n') + '\n');
    }
  }
  await writeMasterCf();
  await writeFile(logPath, '', { flag: 'a' });

  const env = { ...process.env, MAIL_CONFIG: confDir };
  const pf = (args: string[], timeout = timeoutMs) =>
    run(COMPONENT, POSTFIX, ['-c', confDir, ...args], { env, timeoutMs: timeout }).catch(async (err: PeerError) => {
      throw new PeerError(COMPONENT, `${err.message.replace(/^postfix: /, '')}\n(config ${confDir})`, await tailFile(logPath));
    });

  await pf(['start']);
  const masterPid = await waitFor('the master pid file', readMasterPid, { component: COMPONENT, log: logPath, timeoutMs });
  // master runs in its own session: its pid is the group of every daemon it forks.
  trackGroup(masterPid);
  let stopped = false;

  const failStart = async (err: unknown) => {
    await terminateGroup(masterPid).catch(() => {});
    untrackGroup(masterPid);
    throw err;
  };
  try {
    await waitFor(
      `listeners ${listeners.map((l) => `${l.spec.address}:${l.port}`).join(', ')} to listen`,
      () => listeners.every((l) => tcpListening(l.spec.address, l.port)),
      { component: COMPONENT, log: logPath, timeoutMs },
    );
  } catch (err) {
    await failStart(err);
  }

  const smtpdPids = () => allProcs().filter((p) => p.pgid === masterPid && p.comm === 'smtpd').map((p) => p.pid);
  const busyPids = (pids: number[]): Set<number> => {
    const inodes = new Set<string>();
    for (const l of listeners) for (const i of establishedInodes(l.spec.address, l.port)) inodes.add(i);
    return new Set(pids.filter((pid) => [...socketInodesOf(pid)].some((i) => inodes.has(i))));
  };

  async function reload(): Promise<void> {
    const before = smtpdPids();
    await pf(['reload']);
    // Reload is asynchronous: idle smtpd processes of the old generation keep accepting until
    // they notice. Wait until each has exited or is busy with a session (that session keeps the
    // old settings, as with a real server; the next connection gets a new process).
    await waitFor(
      'old smtpd processes to exit after reload',
      () => {
        const left = before.filter(alive);
        const busy = busyPids(left);
        return left.every((p) => busy.has(p));
      },
      { component: COMPONENT, log: logPath, timeoutMs: 30_000 },
    );
  }

  const findListener = (address: string | undefined, field: string): ListenerState[] => {
    if (address === undefined) return listeners;
    const found = listeners.filter((l) => l.spec.address === address);
    if (found.length === 0) throw new PeerError(COMPONENT, `${field}: no listener on ${address} (have ${listeners.map((l) => l.spec.address).join(', ')})`);
    return found;
  };

  const byHostname = new Map<string, string | null>();
  for (const l of listeners) byHostname.set(l.spec.hostname, byHostname.has(l.spec.hostname) ? null : l.spec.address);

  async function deliveredMessages(): Promise<DeliveredMessage[]> {
    const files: { file: string; mtime: number }[] = [];
    for (const sub of ['new', 'cur']) {
      const d = join(inbox, sub);
      for (const name of await readdir(d)) {
        const file = join(d, name);
        try {
          files.push({ file, mtime: (await stat(file)).mtimeMs });
        } catch {
          /* moved between new/ and cur/ */
        }
      }
    }
    files.sort((a, b) => a.mtime - b.mtime || a.file.localeCompare(b.file));
    const out: DeliveredMessage[] = [];
    for (const { file, mtime } of files) {
      let raw: Buffer;
      try {
        raw = await readFile(file);
      } catch {
        continue;
      }
      out.push(parseDelivered(file, raw, mtime, byHostname));
    }
    return out;
  }

  async function stop(): Promise<void> {
    if (stopped) return;
    stopped = true;
    await run(COMPONENT, POSTFIX, ['-c', confDir, 'stop'], { env, timeoutMs: 30_000 }).catch(() => {});
    // `postfix stop` only signals master; wait for the whole group, then force what is left.
    const deadline = Date.now() + 15_000;
    while (allProcs().some((p) => p.pgid === masterPid) && Date.now() < deadline) await sleep(50);
    await terminateGroup(masterPid, 2_000);
    untrackGroup(masterPid);
  }

  return {
    dir,
    configDir: confDir,
    logPath,
    listeners: listeners.map((l) => ({ address: l.spec.address, port: l.port, hostname: l.spec.hostname })),
    tlsCertPem,
    deliveredMessages,
    async waitForMessages(count, o = {}) {
      let last: DeliveredMessage[] = [];
      try {
        return await waitFor(
          `${count} delivered message(s)`,
          async () => {
            last = (await deliveredMessages()).filter(o.filter ?? (() => true));
            return last.length >= count ? last : undefined;
          },
          { component: COMPONENT, timeoutMs: o.timeoutMs ?? 60_000, intervalMs: 100 },
        );
      } catch {
        throw new PeerError(COMPONENT, `timed out waiting for ${count} delivered message(s), have ${last.length}`, await tailFile(logPath));
      }
    },
    async setClientReply(clientIp, reply, o = {}) {
      validateReply('setClientReply reply', reply);
      const key = cidrKey('setClientReply clientIp', clientIp);
      for (const l of findListener(o.listener, 'setClientReply listener')) {
        l.clientReplies.set(key, reply);
        await writeClientMap(l);
      }
      await reload();
    },
    async clearClientReply(clientIp, o = {}) {
      const key = cidrKey('clearClientReply clientIp', clientIp);
      for (const l of findListener(o.listener, 'clearClientReply listener')) {
        l.clientReplies.delete(key);
        await writeClientMap(l);
      }
      await reload();
    },
    async stopListener(address) {
      const ls = findListener(address, 'stopListener address');
      for (const l of ls) l.up = false;
      await writeMasterCf();
      await reload();
      await waitFor(`${address} to stop listening`, () => ls.every((l) => !tcpListening(l.spec.address, l.port)), {
        component: COMPONENT,
        log: logPath,
      });
      // master ends the removed service's processes itself; make sure none still holds a session
      const inodes = new Set<string>();
      for (const l of ls) for (const i of establishedInodes(l.spec.address, l.port)) inodes.add(i);
      for (const pid of smtpdPids()) {
        if ([...socketInodesOf(pid)].some((i) => inodes.has(i))) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
    },
    async setEndOfDataDelay(address, seconds) {
      if (!Number.isInteger(seconds) || seconds < 0) throw new PeerError(COMPONENT, `setEndOfDataDelay seconds must be a whole number >= 0, got ${seconds}`);
      for (const l of findListener(address, 'setEndOfDataDelay address')) l.spec = { ...l.spec, endOfDataDelaySeconds: seconds };
      await writeMasterCf();
      await reload();
    },
    async startListener(address) {
      const ls = findListener(address, 'startListener address');
      for (const l of ls) l.up = true;
      await writeMasterCf();
      await reload();
      await waitFor(`${address} to listen`, () => ls.every((l) => tcpListening(l.spec.address, l.port)), {
        component: COMPONENT,
        log: logPath,
      });
    },
    reload,
    log: () => readFile(logPath, 'utf8'),
    stop,
  };
}

// ---- parsing delivered messages ----------------------------------------------------------------

/** Unfolded header fields of a message (name lower-cased), in order. Hand-written because only
 * three trace fields are needed and the raw bytes must stay untouched for DKIM checks. */
export function headerFields(raw: Buffer): { name: string; value: string }[] {
  const text = raw.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const head = end < 0 ? text : text.slice(0, end);
  const fields: { name: string; value: string }[] = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1]!.value += ' ' + line.trim();
    else {
      const i = line.indexOf(':');
      if (i > 0) fields.push({ name: line.slice(0, i).trim().toLowerCase(), value: line.slice(i + 1).trim() });
    }
  }
  return fields;
}

function parseDelivered(file: string, raw: Buffer, mtime: number, byHostname: Map<string, string | null>): DeliveredMessage {
  const fields = headerFields(raw);
  const get = (n: string) => fields.find((f) => f.name === n)?.value ?? '';
  // The topmost Received is the one our smtpd wrote (virtual adds only Return-Path/Delivered-To).
  const received = get('received');
  // from HELO (NAME [IP]) [(using TLS...)] by HOST (Postfix) with PROTO id QUEUEID [for <..>]; DATE
  const m = /^from\s+(\S+)\s+\((\S+)\s+\[([^\]]+)\]\)(.*?)\bby\s+(\S+)\s+\(Postfix\)\s+with\s+(\S+)\s+id\s+(\S+)(.*)$/s.exec(received);
  const dateStr = received.slice(received.lastIndexOf(';') + 1).trim();
  const t = Date.parse(dateStr);
  const receivedBy = m?.[5] ?? '';
  const protocol = m?.[6] ?? '';
  return {
    file,
    raw,
    deliveredTo: get('delivered-to'),
    returnPath: get('return-path').replace(/^<|>$/g, ''),
    clientIp: (m?.[3] ?? '').replace(/^IPv6:/i, ''),
    helo: m?.[1] ?? '',
    receivedBy,
    listener: byHostname.get(receivedBy) ?? undefined,
    queueId: (m?.[7] ?? '').replace(/;$/, ''),
    protocol,
    tls: /ESMTPS/i.test(protocol) || /using TLS/i.test(m?.[4] ?? ''),
    receivedAt: Number.isNaN(t) ? new Date(mtime) : new Date(t),
  };
}

// ---- smtp-sink / smtp-source ------------------------------------------------------------------

export interface SmtpSinkHandle {
  readonly address: string;
  readonly port: number;
  /** Messages received so far (needs count: true, the default). */
  count(): number;
  /** Waits until count() >= n. */
  waitForCount(n: number, opts?: { timeoutMs?: number }): Promise<number>;
  log(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Postfix's smtp-sink: accepts and discards everything, fast (a benchmark receiver). `count`
 * (default true) runs it with -c, whose running counter (`sess=.. quit=.. mesg=N`) we parse.
 */
export async function startSmtpSink(opts: {
  address: string;
  port?: number;
  dir?: string;
  count?: boolean;
  backlog?: number;
  hostname?: string;
  extraArgs?: string[];
}): Promise<SmtpSinkHandle> {
  const component = 'smtp-sink';
  assertLoopback(component, 'address', opts.address);
  const port = opts.port ?? 25;
  if (tcpListening(opts.address, port)) throw new PeerError(component, `${opts.address}:${port} is already in use`);
  const logPath = opts.dir ? join(resolve(opts.dir), `smtp-sink-${opts.address}-${port}.log`) : undefined;
  if (opts.dir) await mkdir(resolve(opts.dir), { recursive: true });
  const args = ['-u', 'nobody']; // -u is required when running as root
  if (opts.count !== false) args.push('-c');
  if (opts.hostname) args.push('-h', opts.hostname);
  args.push(...(opts.extraArgs ?? []), `${opts.address}:${port}`, String(opts.backlog ?? 256));
  const child = spawn('/usr/sbin/smtp-sink', args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  let count = 0;
  let errText = '';
  let pending = '';
  child.stdout!.setEncoding('latin1').on('data', (chunk: string) => {
    pending += chunk;
    const parts = pending.split('\r');
    pending = parts.pop()!;
    for (const p of parts) {
      const m = /mesg=(\d+)/.exec(p);
      if (m) count = Number(m[1]);
    }
    if (pending.length > 4096) pending = pending.slice(-256);
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => {
    errText = (errText + c).slice(-8192);
  });
  let exited: number | null | undefined;
  child.once('exit', (code) => (exited = code));
  const spawnErr = await new Promise<Error | undefined>((r) => {
    child.once('error', r);
    child.once('spawn', () => r(undefined));
  });
  if (spawnErr) throw new PeerError(component, `cannot run /usr/sbin/smtp-sink (is postfix installed?): ${spawnErr.message}`);
  const writeLog = async () => {
    if (logPath) await writeFile(logPath, errText).catch(() => {});
  };
  try {
    await waitFor(`smtp-sink to listen on ${opts.address}:${port}`, () => {
      if (exited !== undefined) throw new PeerError(component, `exited with ${exited}: ${errText.trim()}`);
      return tcpListening(opts.address, port);
    }, { component, timeoutMs: 15_000 });
  } catch (err) {
    await terminateGroup(child.pid!, 2000);
    await writeLog();
    throw new PeerError(component, `failed to start on ${opts.address}:${port}: ${(err as Error).message}`, errText.trim() || undefined);
  }
  return {
    address: opts.address,
    port,
    count: () => count,
    async waitForCount(n, o = {}) {
      return waitFor(`smtp-sink count >= ${n} (now ${count})`, () => (count >= n ? count : 0), {
        component,
        timeoutMs: o.timeoutMs ?? 60_000,
      });
    },
    log: async () => errText,
    async stop() {
      await terminateGroup(child.pid!, 5000);
      untrackGroup(child.pid!);
      await writeLog();
    },
  };
}

export interface SmtpSourceOptions {
  /** host:port or host (port 25). */
  server: string;
  from: string;
  to: string;
  /** Messages in total (-m). */
  count: number;
  /** Parallel sessions (-s). Default 1. */
  connections?: number;
  /** Message size in KiB (-l). Default: smtp-source's small built-in message. */
  sizeKb?: number;
  /** Keep the connection open between messages (-d). Default true. */
  reuse?: boolean;
  /** HELO name (-M). */
  helo?: string;
  /** Recipients per message (-r). */
  recipientsPerMessage?: number;
  timeoutMs?: number;
}

/** Runs Postfix's smtp-source (a load generator) to completion; returns the elapsed time.
 * smtp-source has no option for the source address: it connects from the kernel's choice. */
export async function runSmtpSource(o: SmtpSourceOptions): Promise<{ elapsedMs: number; messages: number; output: string }> {
  const component = 'smtp-source';
  if (!Number.isInteger(o.count) || o.count < 1) throw new PeerError(component, `count must be a positive integer, got ${o.count}`);
  const conns = o.connections ?? 1;
  if (!Number.isInteger(conns) || conns < 1) throw new PeerError(component, `connections must be a positive integer, got ${o.connections}`);
  const args: string[] = [];
  if (o.reuse !== false) args.push('-d');
  args.push('-s', String(conns), '-m', String(o.count), '-f', o.from, '-t', o.to);
  if (o.sizeKb !== undefined) args.push('-l', String(Math.round(o.sizeKb * 1024)));
  if (o.helo) args.push('-M', o.helo);
  if (o.recipientsPerMessage) args.push('-r', String(o.recipientsPerMessage));
  args.push(o.server);
  const t0 = performance.now();
  const { stdout, stderr } = await run(component, '/usr/sbin/smtp-source', args, { timeoutMs: o.timeoutMs ?? 600_000 });
  const elapsedMs = performance.now() - t0;
  if (/fatal|error/i.test(stderr)) throw new PeerError(component, `reported errors`, stderr.trim());
  return { elapsedMs, messages: o.count, output: `${stdout}${stderr}` };
}
