// The contract between cli/main.ts and the files in cli/commands/.
import { parseArgs, type ParseArgsConfig } from "node:util";

export interface Command {
  /** One line for `mailfleet help`. */
  summary: string;
  /** Full usage text for `mailfleet <command> --help` and usage errors. */
  usage: string;
  /** Runs with the arguments after the command name; resolves with the exit code (0 ok, 1 failure). */
  run(args: string[]): Promise<number>;
}

/** Bad command-line input: main prints the message and the command's usage, and exits 2. */
export class UsageError extends Error {}

/** node:util parseArgs, with its errors turned into UsageErrors. */
export function parse<T extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}
