// mailfleet classify: classify SMTP replies read from stdin, or the recipients of a DSN file.
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { parse, UsageError, type Command } from "../command.ts";
import { classifyDsn, classifyReply } from "../../relay/classify/index.ts";

const usage = `usage: mailfleet classify [--dsn FILE]

  Reads SMTP replies from stdin, one per line (a multi-line reply joined with spaces, e.g.
  "550-5.1.1 The email account ... 550 5.1.1 ..."), and prints one JSON object per line:
    {"class":"invalid-recipient","permanent":true,"code":"550","enhanced":"5.1.1","provider":"gmail","rule":"..."}
  Empty lines are skipped. permanent is true exactly when the reply code is 5xx.
  A line with a code but no recognised words is "transient" (4xx) or "other" (5xx); a line with
  no reply code, no enhanced status code and no recognised words is not an SMTP reply and is
  "protocol-error" (rule "not-a-reply").

  --dsn FILE   classify each failed or delayed recipient of an RFC 3464 delivery status
               notification instead: one JSON line per recipient, "class", "permanent"
               (Action: failed) and "recipient" first, then action, status, diagnosticCode,
               remoteMta, originalEnvelopeId, verp. FILE "-" reads the DSN from stdin.

  classes: invalid-recipient inactive-mailbox mailbox-full bad-domain rate-limited
           reputation-block auth-failure spam-content policy message-too-large greylisted
           routing-error protocol-error transient other`;

function print(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export const command: Command = {
  summary: "classify SMTP replies from stdin (one JSON line each), or the recipients of a DSN (--dsn FILE)",
  usage,
  async run(args) {
    const { values, positionals } = parse(args, { dsn: { type: "string" } }, false);
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);

    if (values.dsn !== undefined) {
      if (values.dsn === "") throw new UsageError("--dsn needs a file name (or - for stdin)");
      let raw: Buffer;
      try {
        raw = values.dsn === "-" ? await readStdin() : await readFile(values.dsn);
      } catch (e) {
        throw new Error(`--dsn ${values.dsn}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
      }
      const recipients = await classifyDsn(raw);
      for (const r of recipients) {
        const { class: cls, permanent, recipient, ...rest } = r;
        print({ class: cls, permanent, recipient, ...rest });
      }
      return 0;
    }

    const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
    for await (const line of lines) {
      if (line.trim() === "") continue;
      print(classifyReply(line));
    }
    return 0;
  },
};
