// npm run bench -- <name> [args]: runs bench/<name>.ts in its own Node process (each benchmark
// prints one JSON line of figures on stdout; progress goes to stderr).
import { spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";

const [name, ...args] = process.argv.slice(2);
const dir = import.meta.dirname;
const names = readdirSync(dir).filter((f) => f.endsWith(".ts") && f !== "run.ts").map((f) => f.slice(0, -3)).sort();
if (!name || !existsSync(join(dir, `${name}.ts`))) {
  process.stderr.write(`usage: npm run bench -- <name>\nbenchmarks: ${names.join(", ")}\n`);
  process.exit(2);
}
const child = spawn(process.execPath, [join(dir, `${name}.ts`), ...args], { stdio: "inherit" });
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
