// mailfleet command-line entry point (also `kubectl mailfleet`). A command is a file under
// cli/commands/ exporting `command: Command`; adding a file adds a command, nothing here changes.
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { UsageError, type Command } from "./command.ts";

const commandsDir = join(dirname(fileURLToPath(import.meta.url)), "commands");

function commandNames(): string[] {
  return readdirSync(commandsDir)
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts") && !f.startsWith("_"))
    .map((f) => f.slice(0, -3))
    .sort();
}

async function load(name: string): Promise<Command | undefined> {
  if (!/^[a-z][a-z0-9-]*$/.test(name) || !commandNames().includes(name)) return undefined;
  const mod = (await import(join(commandsDir, `${name}.ts`))) as { command?: Command };
  if (!mod.command) throw new Error(`cli/commands/${name}.ts does not export \`command\``);
  return mod.command;
}

async function help(): Promise<string> {
  const lines = ["usage: mailfleet <command> [options]", "", "commands:"];
  for (const name of commandNames()) {
    const c = await load(name);
    lines.push(`  ${name.padEnd(12)} ${c?.summary ?? ""}`);
  }
  lines.push("", "Run `mailfleet <command> --help` for a command's options.");
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
    const text = await help();
    if (!name) {
      process.stderr.write(text + "\n");
      return 2;
    }
    process.stdout.write(text + "\n");
    return 0;
  }
  const cmd = await load(name);
  if (!cmd) {
    process.stderr.write(`mailfleet: unknown command "${name}"\n\n${await help()}\n`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(cmd.usage.trimEnd() + "\n");
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      // The synopsis (the usage text's first paragraph), not the whole help: the message stays in view.
      const synopsis = cmd.usage.trimEnd().split(/\n\s*\n/)[0]!;
      process.stderr.write(`mailfleet ${name}: ${e.message}\n\n${synopsis}\n\nRun \`mailfleet ${name} --help\` for the options.\n`);
      return 2;
    }
    const err = e as Error;
    process.stderr.write(`mailfleet ${name}: ${err.message}\n`);
    if (process.env.MAILFLEET_DEBUG) process.stderr.write(`${err.stack ?? ""}\n`);
    return 1;
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error) => {
      process.stderr.write(`mailfleet: ${e.message}\n`);
      process.exit(1);
    },
  );
}
