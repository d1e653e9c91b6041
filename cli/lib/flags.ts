// Flags every fleet command takes (where the fleet is, how to print), and small parsers that turn
// bad values into UsageErrors naming the flag.
import type { ParseArgsConfig } from "node:util";
import { parse, UsageError } from "../command.ts";
import { parseDuration } from "../../api/units.ts";

export const COMMON_OPTIONS = {
  kubeconfig: { type: "string" },
  context: { type: "string" },
  namespace: { type: "string", short: "n" },
  nats: { type: "string" },
  "nats-creds": { type: "string" },
  output: { type: "string", short: "o" },
  "state-dir": { type: "string" },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

export const COMMON_USAGE = `common options:
  -o, --output json|table   table (default) for people, json for scripts
  -n, --namespace NS        only this namespace (default: all; a pool or domain may be given as NS/NAME)
  --kubeconfig PATH         kubeconfig (default: $KUBECONFIG, else the local fleet of \`mailfleet local up\`
                            when it runs, else in-cluster or ~/.kube/config)
  --context NAME            kubeconfig context (default: its current context)
  --nats URLS               NATS servers, comma-separated (default: $MAILFLEET_NATS_URL, else the local fleet's)
  --nats-creds PATH         NATS credentials file (default: $MAILFLEET_NATS_CREDS)
  --state-dir DIR           the local fleet's state directory (default: $MAILFLEET_STATE_DIR, else ./.local
                            or the project's .local)`;

export type Output = "table" | "json";

export interface Common {
  kubeconfig?: string;
  context?: string;
  namespace?: string;
  nats?: string;
  natsCreds?: string;
  output: Output;
  stateDir?: string;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** Parses a command's arguments with the common options added; returns both. */
export function parseWith<T extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: T) {
  const r = parse(args, { ...COMMON_OPTIONS, ...options });
  return { values: r.values as Values, positionals: r.positionals, common: common(r.values as Values) };
}

function str(v: Values, k: string): string | undefined {
  const x = v[k];
  if (x === undefined) return undefined;
  if (typeof x !== "string") throw new UsageError(`--${k} needs a value`);
  if (x === "") throw new UsageError(`--${k} needs a value`);
  return x;
}

export function common(v: Values): Common {
  const output = str(v, "output") ?? "table";
  if (output !== "table" && output !== "json") throw new UsageError(`-o/--output must be json or table, got "${output}"`);
  const c: Common = { output };
  const k = str(v, "kubeconfig"); if (k) c.kubeconfig = k;
  const ctx = str(v, "context"); if (ctx) c.context = ctx;
  const ns = str(v, "namespace"); if (ns) c.namespace = ns;
  const n = str(v, "nats"); if (n) c.nats = n;
  const cr = str(v, "nats-creds"); if (cr) c.natsCreds = cr;
  const sd = str(v, "state-dir"); if (sd) c.stateDir = sd;
  return c;
}

export function stringFlag(v: Values, name: string): string | undefined {
  return str(v, name);
}

/** A duration flag (90s, 10m, 2h, 7d) in milliseconds. */
export function durationFlag(v: Values, name: string): number | undefined {
  const s = str(v, name);
  if (s === undefined) return undefined;
  let ms: number;
  try {
    ms = parseDuration(s);
  } catch {
    throw new UsageError(`--${name} must be a duration such as 90s, 10m, 2h or 7d, got "${s}"`);
  }
  if (ms <= 0) throw new UsageError(`--${name} must be longer than 0, got "${s}"`);
  return ms;
}

/** A whole-number flag within [min, max]. */
export function intFlag(v: Values, name: string, dflt: number, min: number, max: number): number {
  const s = str(v, name);
  if (s === undefined) return dflt;
  if (!/^[0-9]+$/.test(s) || Number(s) < min || Number(s) > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, got "${s}"`);
  return Number(s);
}

/** Exactly `n` positionals after the subcommand, named for the error. */
export function positionals(list: string[], names: string[], optional = 0): string[] {
  const min = names.length - optional;
  if (list.length < min) throw new UsageError(`missing ${names.slice(list.length).filter((_, i) => list.length + i < min).map((n) => `<${n}>`).join(" ")}`);
  if (list.length > names.length) throw new UsageError(`unexpected argument "${list[names.length]}"`);
  return list;
}

const EMAIL_RE = /^[^\s@<>()[\],;:"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$/;
export function emailArg(what: string, s: string | undefined): string {
  if (!s || !EMAIL_RE.test(s)) throw new UsageError(`${what} must be an email address such as bob@example.net, got ${s === undefined ? "nothing" : `"${s}"`}`);
  return s;
}

const DOMAIN_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
export function domainArg(what: string, s: string | undefined): string {
  if (!s || !DOMAIN_RE.test(s)) throw new UsageError(`${what} must be a domain name such as example.com, got ${s === undefined ? "nothing" : `"${s}"`}`);
  return s.toLowerCase();
}
