// The real peers every relay, shaper and fleet test relies on: Postfix as provider MX hosts,
// smtp-sink/smtp-source, dnsmasq, the python3-dkim verifier, Prometheus and promtool.
// Addresses used here: MX 127.0.2.1-4, clients 127.0.1.1-6, DNS 127.0.53.1, sink 127.0.9.1.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { promises as dnsp } from 'node:dns';
import { chmod, mkdir, mkdtemp, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { dkimSign } from 'mailauth/lib/dkim/sign.js';
import { Counter, Registry } from 'prom-client';
import { startPostfix, startSmtpSink, runSmtpSource, type PostfixHandle } from '../env/peers/postfix.ts';
import { startDns, type DnsHandle, type DnsRecord } from '../env/peers/dns.ts';
import { verifyDkim } from '../env/peers/dkim-verify.ts';
import { promtool, startPrometheus } from '../env/peers/prometheus.ts';
import { freePort, tcpListening } from '../env/peers/common.ts';

const T = { timeout: 240_000 };

// mailauth's typings mark top-level signingDomain/selector/privateKey as required, but its signer
// reads only signatureData (as its README documents).
type SignOptions = Omit<Parameters<typeof dkimSign>[1], 'signingDomain' | 'selector' | 'privateKey'>;
const sign = (msg: Buffer, o: SignOptions) => dkimSign(msg, o as Parameters<typeof dkimSign>[1]);

let base: string;
let pf: PostfixHandle;
let dns: DnsHandle;

const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ed = generateKeyPairSync('ed25519');
const rsaTxt = `v=DKIM1; k=rsa; p=${rsa.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;
// RFC 8463: p= is the bare 32-byte Ed25519 key, the tail of its SPKI encoding
const edTxt = `v=DKIM1; k=ed25519; p=${ed.publicKey.export({ type: 'spki', format: 'der' }).subarray(-32).toString('base64')}`;
const longTxt = `v=DKIM1; k=rsa; p=${'A'.repeat(582)}`; // 600 bytes: three strings

const records: DnsRecord[] = [
  { type: 'MX', name: 'gmail.test', value: 'mx1.gmail.test', priority: 5 },
  { type: 'MX', name: 'gmail.test', value: 'mx2.gmail.test', priority: 10 },
  { type: 'MX', name: 'nomail.test', value: '.' },
  { type: 'A', name: 'mx1.gmail.test', value: '127.0.2.1' },
  { type: 'A', name: 'mx2.gmail.test', value: '127.0.2.1' },
  { type: 'A', name: 'out1.sender.test', value: '127.0.1.1' },
  { type: 'PTR', name: '127.0.1.1', value: 'out1.sender.test' },
  { type: 'TXT', name: 'long.sender.test', value: longTxt },
  { type: 'TXT', name: 'rsa1._domainkey.sender.test', value: rsaTxt },
  { type: 'TXT', name: 'ed1._domainkey.sender.test', value: edTxt },
  { type: 'CNAME', name: 'www.sender.test', value: 'out1.sender.test' },
];

function transport(host: string, localAddress: string, port = 25) {
  return nodemailer.createTransport({
    host,
    port,
    localAddress,
    name: `helo-${localAddress}.sender.test`,
    ignoreTLS: true,
    connectionTimeout: 30_000,
    greetingTimeout: 30_000,
  });
}

interface SmtpErr {
  responseCode?: number;
  response?: string;
  code?: string;
}

async function send(host: string, from: string, to: string, opts: { subject?: string; raw?: Buffer } = {}) {
  const t = transport(host, from);
  try {
    const info = opts.raw
      ? await t.sendMail({ envelope: { from: 'a@sender.test', to: [to] }, raw: opts.raw })
      : await t.sendMail({ from: 'a@sender.test', to, subject: opts.subject ?? 'hello', text: 'hello world\n' });
    return { ok: true as const, response: info.response };
  } catch (err) {
    return { ok: false as const, err: err as SmtpErr };
  } finally {
    t.close();
  }
}

/** Opens a raw SMTP connection from `localAddress` and resolves with the greeting line. */
function rawConnect(host: string, localAddress: string): Promise<{ sock: Socket; greeting: string }> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port: 25, localAddress });
    sock.setEncoding('utf8');
    sock.once('error', reject);
    sock.once('data', (d: string) => resolve({ sock, greeting: d.trim() }));
  });
}

/** Processes whose working directory is inside `dir` (every Postfix daemon chdirs to its queue). */
async function processesIn(dir: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cwd = await readlink(`/proc/${p}/cwd`).catch(() => '');
    if (cwd.startsWith(dir)) out.push(Number(p));
  }
  return out;
}

before(async () => {
  base = await mkdtemp(join(tmpdir(), 'mailfleet-peers-'));
  await chmod(base, 0o755); // Postfix's delivery agent (nobody) must reach the inbox below
  dns = await startDns({ dir: join(base, 'dns'), address: '127.0.53.1', records });
  pf = await startPostfix({
    dir: join(base, 'postfix'),
    domains: ['gmail.test', 'ratelimited.test', 'busy.test', 'tls.test'],
    listeners: [
      {
        address: '127.0.2.1',
        hostname: 'mx1.gmail.test',
        rejectRecipients: [{ pattern: /^unknown-/, reply: '550 5.1.1 The email account that you tried to reach does not exist' }],
      },
      // a window longer than any test run: the limit cannot reset half-way through an assertion
      { address: '127.0.2.2', hostname: 'mx.ratelimited.test', limits: { messageRatePerUnit: 2, rateTimeUnit: '3600s' } },
      { address: '127.0.2.3', hostname: 'mx.busy.test', limits: { connectionCountLimit: 2, rateTimeUnit: '3600s' } },
      { address: '127.0.2.4', hostname: 'mx.tls.test', requireTls: true },
    ],
  });
});

after(async () => {
  const queue = pf ? join(pf.dir, 'queue') : undefined;
  await pf?.stop();
  await dns?.stop();
  if (queue) assert.deepEqual(await processesIn(queue), [], 'Postfix left processes behind');
  for (const a of ['127.0.2.1', '127.0.2.2', '127.0.2.3', '127.0.2.4']) assert.equal(tcpListening(a, 25), false, `${a}:25 still listening`);
  assert.equal(tcpListening('127.0.53.1', 53), false);
  if (base && !process.env.MAILFLEET_KEEP_STATE) await rm(base, { recursive: true, force: true });
});

describe('postfix as a provider MX', () => {
  test('receives a message and records the client IP and HELO', T, async () => {
    const r = await send('127.0.2.1', '127.0.1.1', 'bob@gmail.test', { subject: 'first' });
    assert.ok(r.ok, `send failed: ${JSON.stringify(!r.ok && r.err)}`);
    const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === 'bob@gmail.test' });
    assert.ok(m);
    assert.equal(m.clientIp, '127.0.1.1');
    assert.equal(m.helo, 'helo-127.0.1.1.sender.test');
    assert.equal(m.receivedBy, 'mx1.gmail.test');
    assert.equal(m.listener, '127.0.2.1');
    assert.equal(m.returnPath, 'a@sender.test');
    assert.match(m.raw.toString(), /^Subject: first$/m);
    assert.match(m.raw.toString(), /hello world/);
  });

  test('a rejected recipient gets 550 5.1.1', T, async () => {
    const r = await send('127.0.2.1', '127.0.1.1', 'unknown-carol@gmail.test');
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.err.responseCode, 550);
    assert.match((!r.ok && r.err.response) || '', /^550 5\.1\.1 .*does not exist/);
  });

  test('the anvil message rate limit answers 450 4.7.1 to a loopback client', T, async () => {
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await send('127.0.2.2', '127.0.1.2', `user${i}@ratelimited.test`));
    assert.deepEqual(results.map((r) => r.ok), [true, true, false, false]);
    const err = (results[2] as { err: SmtpErr }).err;
    assert.equal(err.responseCode, 450);
    assert.match(err.response ?? '', /^450 4\.7\.1 Error: too much mail from 127\.0\.1\.2/);
    // another client of the same provider has its own budget
    const other = await send('127.0.2.2', '127.0.1.3', 'user9@ratelimited.test');
    assert.ok(other.ok);
  });

  test('the anvil connection count limit answers 421 to a loopback client', T, async () => {
    const open: Socket[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const c = await rawConnect('127.0.2.3', '127.0.1.2');
        open.push(c.sock);
        assert.match(c.greeting, /^220 mx\.busy\.test/);
      }
      const third = await rawConnect('127.0.2.3', '127.0.1.2');
      open.push(third.sock);
      assert.match(third.greeting, /^421 4\.7\.0 mx\.busy\.test Error: too many connections from 127\.0\.1\.2/);
    } finally {
      for (const s of open) s.destroy();
    }
  });

  test('setClientReply makes the next connection get the chosen 421 4.7.28', T, async () => {
    const text = 'Our system has detected an unusual rate of unsolicited mail originating from your IP address';
    await pf.setClientReply('127.0.1.4', `421 4.7.28 ${text}`, { listener: '127.0.2.1' });
    try {
      const r = await send('127.0.2.1', '127.0.1.4', 'dave@gmail.test');
      assert.equal(r.ok, false);
      assert.equal(!r.ok && r.err.responseCode, 421);
      assert.ok(((!r.ok && r.err.response) || '').startsWith('421 4.7.28 '), String(!r.ok && r.err.response));
      assert.ok(((!r.ok && r.err.response) || '').includes(text));
      const other = await send('127.0.2.1', '127.0.1.5', 'dave@gmail.test');
      assert.ok(other.ok, 'another client IP is not affected');
    } finally {
      await pf.clearClientReply('127.0.1.4', { listener: '127.0.2.1' });
    }
    const again = await send('127.0.2.1', '127.0.1.4', 'dave@gmail.test');
    assert.ok(again.ok, `after clearClientReply: ${JSON.stringify(!again.ok && again.err)}`);
  });

  test('stopListener refuses connections until startListener', T, async () => {
    await pf.stopListener('127.0.2.1');
    const down = await send('127.0.2.1', '127.0.1.6', 'erin@gmail.test');
    assert.equal(!down.ok && down.err.code, 'ESOCKET');
    await pf.startListener('127.0.2.1');
    const up = await send('127.0.2.1', '127.0.1.6', 'erin@gmail.test');
    assert.ok(up.ok, JSON.stringify(!up.ok && up.err));
    const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === 'erin@gmail.test' });
    assert.equal(m?.clientIp, '127.0.1.6');
  });

  test('a listener that requires TLS refuses plaintext and records TLS sessions', T, async () => {
    const plain = await send('127.0.2.4', '127.0.1.1', 'tina@tls.test');
    assert.equal(plain.ok, false);
    assert.match((!plain.ok && plain.err.response) || '', /^530 5\.7\.0 Must issue a STARTTLS command first/);
    const t = nodemailer.createTransport({
      host: '127.0.2.4',
      port: 25,
      localAddress: '127.0.1.1',
      requireTLS: true,
      tls: { ca: pf.tlsCertPem, servername: 'mx.tls.test' }, // the listener's self-signed certificate
    });
    try {
      await t.sendMail({ from: 'a@sender.test', to: 'tina@tls.test', subject: 'over TLS', text: 'x' });
    } finally {
      t.close();
    }
    const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === 'tina@tls.test' });
    assert.equal(m?.tls, true);
    assert.equal(m?.protocol, 'ESMTPS');
    assert.equal(m?.receivedBy, 'mx.tls.test');
  });

  test('smtp-sink counts what smtp-source sends', T, async () => {
    const sink = await startSmtpSink({ address: '127.0.9.1', port: 2525, dir: join(base, 'sink') });
    try {
      const r = await runSmtpSource({ server: '127.0.9.1:2525', from: 'a@sender.test', to: 'b@sink.test', count: 200, connections: 4, sizeKb: 2, reuse: true });
      assert.ok(r.elapsedMs >= 0);
      assert.equal(await sink.waitForCount(200), 200);
    } finally {
      await sink.stop();
    }
    assert.equal(tcpListening('127.0.9.1', 2525), false);
  });
});

describe('dnsmasq serving test zones', () => {
  const resolver = () => {
    const r = new dnsp.Resolver({ timeout: 2000, tries: 2 });
    r.setServers([dns.server]);
    return r;
  };

  test('MX, null MX, A, PTR, CNAME and a long TXT', T, async () => {
    const r = resolver();
    const mx = (await r.resolveMx('gmail.test')).sort((a, b) => a.priority - b.priority);
    assert.deepEqual(mx.map((x) => [x.priority, x.exchange]), [[5, 'mx1.gmail.test'], [10, 'mx2.gmail.test']]);
    const nullMx = await r.resolveMx('nomail.test');
    assert.equal(nullMx.length, 1);
    assert.equal(nullMx[0]!.priority, 0);
    assert.equal(nullMx[0]!.exchange, ''); // "." (RFC 7505)
    assert.deepEqual(await r.resolve4('mx1.gmail.test'), ['127.0.2.1']);
    assert.deepEqual(await r.reverse('127.0.1.1'), ['out1.sender.test']);
    assert.deepEqual(await r.resolveCname('www.sender.test'), ['out1.sender.test']);
    assert.equal(longTxt.length, 600);
    const txt = await r.resolveTxt('long.sender.test');
    assert.equal(txt.length, 1);
    assert.deepEqual(txt[0]!.map((s) => s.length), [255, 255, 90]);
    assert.equal(txt[0]!.join(''), longTxt);
    await assert.rejects(r.resolve4('missing.gmail.test'), { code: 'ENOTFOUND' });
    await assert.rejects(r.resolveMx('mx1.gmail.test'), { code: 'ENODATA' });
  });

  test('fail() stops answering, then service resumes; setRecords replaces records', T, async () => {
    const r = resolver();
    await dns.fail(true);
    await assert.rejects(r.resolveMx('gmail.test'), { code: 'ETIMEOUT' });
    await dns.fail(false);
    assert.equal((await r.resolveMx('gmail.test')).length, 2);
    await dns.fail(true, 'refused');
    await assert.rejects(r.resolveMx('gmail.test'), { code: 'EREFUSED' });
    await dns.fail(false);
    await dns.setRecords([...records, { type: 'A', name: 'mx3.gmail.test', value: '127.0.2.3' }]);
    assert.deepEqual(await r.resolve4('mx3.gmail.test'), ['127.0.2.3']);
    assert.equal((await r.resolveMx('gmail.test')).length, 2);
  });
});

describe('independent DKIM verification (python3-dkim)', () => {
  const message = Buffer.from(
    [
      'From: Alice <alice@sender.test>',
      'To: bob@gmail.test',
      'Subject: DKIM check',
      'Date: Thu, 27 Nov 2025 10:00:00 +0000',
      'Message-ID: <dkim-1@sender.test>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      '',
      'Hello Bob,',
      'this body is signed.',
      '',
    ].join('\r\n'),
  );

  async function signBoth(msg: Buffer): Promise<Buffer> {
    const res = await sign(msg, {
      canonicalization: 'relaxed/relaxed',
      signatureData: [
        { signingDomain: 'sender.test', selector: 'rsa1', privateKey: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: 'rsa-sha256' },
        { signingDomain: 'sender.test', selector: 'ed1', privateKey: ed.privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: 'ed25519-sha256' },
      ],
    });
    assert.deepEqual(res.errors, []);
    return Buffer.concat([Buffer.from(res.signatures), msg]);
  }

  test('RSA-2048 and Ed25519 signatures by mailauth verify; an altered body does not', T, async () => {
    const signed = await signBoth(message);
    const good = await verifyDkim(signed, dns.server);
    assert.equal(good.ok, true, JSON.stringify(good));
    assert.deepEqual(
      good.signatures.map((s) => [s.d, s.s, s.a, s.ok]).sort(),
      [['sender.test', 'ed1', 'ed25519-sha256', true], ['sender.test', 'rsa1', 'rsa-sha256', true]],
    );

    const altered = Buffer.from(signed.toString().replace('this body is signed.', 'this body was changed.'));
    const bad = await verifyDkim(altered, dns.server);
    assert.equal(bad.ok, false);
    assert.equal(bad.signatures.length, 2);
    for (const s of bad.signatures) {
      assert.equal(s.ok, false);
      assert.match(s.reason, /body hash mismatch/);
    }
  });

  test('a key missing from DNS fails with a reason', T, async () => {
    const res = await sign(message, {
      signatureData: [{ signingDomain: 'sender.test', selector: 'nokey', privateKey: ed.privateKey.export({ type: 'pkcs8', format: 'pem' }) }],
    });
    const out = await verifyDkim(Buffer.concat([Buffer.from(res.signatures), message]), dns.server);
    assert.equal(out.ok, false);
    assert.equal(out.signatures[0]?.ok, false);
    assert.notEqual(out.signatures[0]?.reason, '');
  });

  test('a signed message still verifies as Postfix stored it', T, async () => {
    const signed = await signBoth(message);
    const r = await send('127.0.2.1', '127.0.1.1', 'dkim@gmail.test', { raw: signed });
    assert.ok(r.ok, JSON.stringify(!r.ok && r.err));
    const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === 'dkim@gmail.test' });
    const out = await verifyDkim(m!.raw, dns.server);
    assert.equal(out.ok, true, JSON.stringify(out));
    assert.equal(out.signatures.length, 2);
  });
});

describe('prometheus', () => {
  let server: Server | undefined;

  after(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  });

  test('scrapes a prom-client endpoint and answers queries', T, async () => {
    const registry = new Registry();
    const delivered = new Counter({ name: 'mailfleet_test_delivered_total', help: 'test counter', labelNames: ['provider'], registers: [registry] });
    delivered.inc({ provider: 'gmail' }, 5);
    const port = await freePort('127.0.0.1');
    server = createServer(async (_req, res) => {
      res.setHeader('Content-Type', registry.contentType);
      res.end(await registry.metrics());
    });
    await new Promise<void>((r) => server!.listen(port, '127.0.0.1', () => r()));

    const prom = await startPrometheus({
      dir: join(base, 'prometheus'),
      scrapeConfigs: [{ job_name: 'relay', static_configs: [{ targets: [`127.0.0.1:${port}`] }] }],
    });
    try {
      await prom.waitForTargetsUp({ count: 1 });
      const samples = await prom.waitForQuery('mailfleet_test_delivered_total{provider="gmail"}');
      assert.equal(samples.length, 1);
      assert.equal(samples[0]!.metric.job, 'relay');
      assert.equal(samples[0]!.value?.[1], '5');
      await assert.rejects(prom.query('sum(('), /prometheus: .*answered 400/);
    } finally {
      await prom.stop();
    }
  });

  test('promtool checks and unit-tests rules', T, async () => {
    const dir = join(base, 'rules');
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    await writeFile(
      join(dir, 'rules.yml'),
      [
        'groups:',
        '  - name: mailfleet-test',
        '    rules:',
        '      - alert: DeliveriesStalled',
        '        expr: rate(mailfleet_test_delivered_total[5m]) == 0',
        '        for: 10m',
        '        labels: { severity: warning }',
        '        annotations: { summary: "no deliveries for {{ $labels.provider }}" }',
        '',
      ].join('\n'),
    );
    await writeFile(
      join(dir, 'rules.test.yml'),
      [
        'rule_files: [rules.yml]',
        'evaluation_interval: 1m',
        'tests:',
        '  - interval: 1m',
        '    input_series:',
        '      - series: \'mailfleet_test_delivered_total{provider="gmail"}\'',
        '        values: "100+0x30"',
        '      - series: \'mailfleet_test_delivered_total{provider="yahoo"}\'',
        '        values: "0+10x30"',
        '    alert_rule_test:',
        '      - eval_time: 25m',
        '        alertname: DeliveriesStalled',
        '        exp_alerts:',
        '          - exp_labels: { severity: warning, provider: gmail }',
        '            exp_annotations: { summary: "no deliveries for gmail" }',
        '',
      ].join('\n'),
    );
    await writeFile(join(dir, 'broken.yml'), 'groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: sum((\n');

    const check = await promtool(['check', 'rules', join(dir, 'rules.yml')]);
    assert.ok(check.ok, check.stdout + check.stderr);
    const unit = await promtool(['test', 'rules', 'rules.test.yml'], { cwd: dir });
    assert.ok(unit.ok, unit.stdout + unit.stderr);
    const broken = await promtool(['check', 'rules', join(dir, 'broken.yml')]);
    assert.equal(broken.ok, false);
    assert.match(broken.stdout + broken.stderr, /parse error|unclosed/i);
  });
});
