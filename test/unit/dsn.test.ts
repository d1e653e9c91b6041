// DSN (RFC 3464) and ARF (RFC 5965) parsing, and the `mailfleet classify` CLI.
// Fixtures under test/fixtures/{dsn,arf} follow the shape of real Postfix, Exchange Online and
// Gmail bounces and of RFC 5965's example / Yahoo CFL reports, with documentation addresses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { classifyDsn, parseArf } from "../../relay/classify/index.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const fixture = (name: string) => readFileSync(join(root, "test", "fixtures", name));

test("Postfix bounce: one entry per failed recipient, classes from the diagnostic, VERP and envelope id", async () => {
  const r = await classifyDsn(fixture("dsn/postfix-bounce.eml"));
  assert.equal(r.length, 3);
  assert.deepEqual(
    r.map((x) => [x.recipient, x.action, x.status, x.class, x.permanent]),
    [
      ["jdoe@example.net", "failed", "5.1.1", "invalid-recipient", true],
      ["asmith@example.org", "failed", "5.7.1", "reputation-block", true],
      ["full@example.org", "failed", "5.2.2", "mailbox-full", true],
    ],
  );
  assert.equal(r[0]!.diagnosticCode, "550 5.1.1 <jdoe@example.net>: Recipient address rejected: User unknown in virtual mailbox table");
  assert.equal(r[0]!.remoteMta, "mx1.example.net");
  assert.equal(r[0]!.code, "550");
  for (const x of r) {
    assert.equal(x.originalEnvelopeId, "msg-7f3k2");
    assert.equal(x.verp, "bounces+m7f3k2=example.net");
  }
});

test("Postfix delay notice: delayed recipients are not permanent", async () => {
  const r = await classifyDsn(fixture("dsn/postfix-delayed.eml"));
  assert.deepEqual(
    r.map((x) => [x.recipient, x.action, x.status, x.class, x.permanent, x.provider]),
    [
      ["slow@example.org", "delayed", "4.4.1", "routing-error", false, undefined],
      ["someone@gmail.com", "delayed", "4.7.28", "rate-limited", false, "gmail"],
    ],
  );
  assert.equal(r[0]!.diagnosticCode, "delivery temporarily suspended: connect to mx.example.org[192.0.2.31]:25: Connection timed out");
  // No X-Original-To/Delivered-To: the VERP comes from the DSN's To: header.
  assert.equal(r[0]!.verp, "bounces+q9x1=example.org");
  assert.equal(r[0]!.originalEnvelopeId, undefined);
});

test("Exchange Online NDR: Exchange's 5.1.10 'RecipientNotFound' is an unknown recipient, not a null MX", async () => {
  const r = await classifyDsn(fixture("dsn/exchange-ndr.eml"));
  assert.deepEqual(
    r.map((x) => [x.recipient, x.status, x.class, x.permanent, x.provider]),
    [
      ["gone@example.net", "5.1.10", "invalid-recipient", true, "microsoft"],
      ["quota@example.net", "5.2.2", "mailbox-full", true, "microsoft"],
    ],
  );
  assert.equal(r[0]!.verp, "bounces+z5w0=example.net");
});

test("Gmail DSN: folded multi-line diagnostic, Remote-MTA comment, Delivered-To VERP", async () => {
  const r = await classifyDsn(fixture("dsn/gmail-dsn.eml"));
  assert.equal(r.length, 1);
  const x = r[0]!;
  assert.equal(x.recipient, "rcpt@example.org");
  assert.equal(x.class, "auth-failure");
  assert.equal(x.permanent, true);
  assert.equal(x.provider, "gmail");
  assert.equal(x.verp, "bounces+g2h8=example.org");
  assert.match(x.diagnosticCode!, /^550-5\.7\.26 This mail has been blocked because the sender is unauthenticated\. 550-5\.7\.26 Gmail requires/);
  assert.equal(x.remoteMta, "aspmx.l.google.com. (192.0.2.27, the server for the domain example.org.)");
});

test("DSN built in the test: CRLF line ends, a Status without Diagnostic-Code, delivered recipients left out", async () => {
  const raw = [
    "From: MAILER-DAEMON@mx.example.net",
    "To: <bounces+crlf1@bounces.example.com>",
    "Subject: Delivery Status Notification",
    "MIME-Version: 1.0",
    'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
    "",
    "--B",
    "Content-Type: text/plain",
    "",
    "Some recipients failed.",
    "--B",
    "Content-Type: message/delivery-status",
    "",
    "Reporting-MTA: dns; mx.example.net",
    "",
    "Final-Recipient: rfc822; <no-diag@example.net>",
    "Action: failed",
    "Status: 5.1.2 (bad destination system address)",
    "",
    "Final-Recipient: rfc822; ok@example.net",
    "Action: delivered",
    "Status: 2.0.0",
    "",
    "Original-Recipient: rfc822; expired@example.net",
    "Action: failed",
    "Status: 4.4.7",
    "Diagnostic-Code: X-Postfix; zorglub",
    "--B--",
    "",
  ].join("\r\n");
  const r = await classifyDsn(raw);
  assert.deepEqual(
    r.map((x) => [x.recipient, x.status, x.class, x.permanent, x.verp]),
    [
      ["no-diag@example.net", "5.1.2", "bad-domain", true, "bounces+crlf1"],
      ["expired@example.net", "4.4.7", "routing-error", true, "bounces+crlf1"],
    ],
  );
});

test("classifyDsn rejects what is not a DSN, with a clear message", async () => {
  await assert.rejects(classifyDsn("From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"), /not a delivery status notification/);
  await assert.rejects(classifyDsn(""), /empty/);
  await assert.rejects(classifyDsn(42 as never), /Buffer or a string/);
});

test("ARF (RFC 5965 example): report fields and the original message's headers", async () => {
  const r = await parseArf(fixture("arf/rfc5965-abuse.eml"));
  assert.equal(r.feedbackType, "abuse");
  assert.equal(r.userAgent, "SomeGenerator/1.0");
  assert.equal(r.version, "1");
  assert.equal(r.originalMailFrom, "bounces+a1b2=example.net@bounces.example.com");
  assert.equal(r.originalRcptTo, "reader@example.net");
  assert.deepEqual(r.originalRcptTos, ["reader@example.net"]);
  assert.equal(r.sourceIp, "198.51.100.7");
  assert.equal(r.arrivalDate, "Thu, 8 Mar 2025 14:00:00 EDT");
  assert.equal(r.reportedDomain, "example.com");
  assert.equal(r.reportingMta, "mail.example.net");
  assert.equal(r.incidents, 1);
  assert.deepEqual(r.reportedUris, ["http://example.com/earn_money.html"]);
  assert.match(r.authenticationResults[0]!, /^mail\.example\.net; spf=pass smtp\.mail=bounces\.example\.com; dkim=pass header\.d=example\.com$/);
  assert.equal(r.originalHeaders.messageId, "<msg-a1b2@example.com>");
  assert.equal(r.originalHeaders.from, "promo@example.com");
  assert.equal(r.originalHeaders.to, "reader@example.net");
  assert.equal(r.originalHeaders.subject, "Earn money");
  assert.equal(r.originalHeaders.feedbackId, "campaign42:tenant7:newsletter:mfleet01");
  assert.equal(r.originalHeaders.returnPath, "bounces+a1b2=example.net@bounces.example.com");
  assert.equal(r.originalHeaders.all["content-type"], "text/plain");
});

test("ARF (Yahoo CFL style): version 0.1, Received-Date, text/rfc822-headers original", async () => {
  const r = await parseArf(fixture("arf/yahoo-cfl.eml"));
  assert.equal(r.feedbackType, "abuse");
  assert.equal(r.userAgent, "Yahoo!-Mail-Feedback/2.0");
  assert.equal(r.version, "0.1");
  assert.equal(r.arrivalDate, "Sun, 19 Jan 2025 11:10:00 +0000");
  assert.equal(r.originalRcptTo, "redacted@yahoo.com");
  assert.equal(r.sourceIp, undefined);
  assert.equal(r.reportedDomain, "example.com");
  assert.equal(r.originalHeaders.messageId, "<msg-c3d4@example.com>");
  assert.equal(r.originalHeaders.feedbackId, "weekly:tenant7:deals:mfleet01");
  assert.equal(r.originalHeaders.from, "deals@example.com");
  assert.equal(r.originalHeaders.returnPath, "bounces+c3d4=yahoo.com@bounces.example.com");
  assert.equal(r.originalHeaders.all["list-unsubscribe"], "<https://example.com/u/c3d4>");
});

test("parseArf rejects a DSN and a report without Feedback-Type", async () => {
  await assert.rejects(parseArf(fixture("dsn/postfix-bounce.eml")), /not an ARF report/);
  const noType = [
    "From: a@example.org",
    "MIME-Version: 1.0",
    'Content-Type: multipart/report; report-type=feedback-report; boundary="B"',
    "",
    "--B",
    "Content-Type: message/feedback-report",
    "",
    "User-Agent: x/1",
    "Version: 1",
    "--B--",
    "",
  ].join("\n");
  await assert.rejects(parseArf(noType), /no Feedback-Type/);
});

// --- CLI ------------------------------------------------------------------------------------

function run(args: string[], stdin = ""): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(join(root, "bin", "mailfleet"), args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

test("CLI: mailfleet classify reads replies from stdin and prints one JSON line each", async () => {
  const input = [
    "550-5.1.1 The email account that you tried to reach does not exist. 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    "",
    "421 4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    "   ",
    "451 4.7.1 Please try again later",
    "this is not an smtp reply",
    "554 zorglub",
  ].join("\n");
  const { code, stdout, stderr } = await run(["classify"], input);
  assert.equal(code, 0, stderr);
  const lines = stdout.trimEnd().split("\n");
  assert.equal(lines.length, 5);
  for (const l of lines) assert.match(l, /^\{"class":"[a-z-]+","permanent":(true|false),/);
  const out = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    out.map((o) => [o.class, o.permanent, o.code, o.provider]),
    [
      ["invalid-recipient", true, "550", "gmail"],
      ["reputation-block", false, "421", "yahoo"],
      ["greylisted", false, "451", undefined],
      ["protocol-error", false, "", undefined],
      ["other", true, "554", undefined],
    ],
  );
});

test("CLI: mailfleet classify --dsn FILE prints one JSON line per recipient", async () => {
  const { code, stdout, stderr } = await run(["classify", "--dsn", join(root, "test", "fixtures", "dsn", "postfix-bounce.eml")]);
  assert.equal(code, 0, stderr);
  const out = stdout.trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(
    out.map((o) => [Object.keys(o).slice(0, 3), o.recipient, o.class, o.permanent]),
    [
      [["class", "permanent", "recipient"], "jdoe@example.net", "invalid-recipient", true],
      [["class", "permanent", "recipient"], "asmith@example.org", "reputation-block", true],
      [["class", "permanent", "recipient"], "full@example.org", "mailbox-full", true],
    ],
  );
  const fromStdin = await run(["classify", "--dsn", "-"], readFileSync(join(root, "test", "fixtures", "dsn", "gmail-dsn.eml"), "utf8"));
  assert.equal(fromStdin.code, 0, fromStdin.stderr);
  assert.equal((JSON.parse(fromStdin.stdout) as { class: string }).class, "auth-failure");
});

test("CLI: bad input gets a clear error and a non-zero exit", async () => {
  const missing = await run(["classify", "--dsn", "/nonexistent/bounce.eml"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /--dsn \/nonexistent\/bounce\.eml: no such file/);
  const notDsn = await run(["classify", "--dsn", "-"], "Subject: hi\n\nhello\n");
  assert.equal(notDsn.code, 1);
  assert.match(notDsn.stderr, /not a delivery status notification/);
  const extra = await run(["classify", "--bogus"]);
  assert.equal(extra.code, 2);
  assert.match(extra.stderr, /usage: mailfleet classify/);
});
