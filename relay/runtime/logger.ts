// JSON-lines logger. A dozen lines, so no dependency: one object per line on stdout with time,
// level, component and message. Never pass message bodies, passwords, AUTH data or keys: callers
// log identifiers (queue id, submitter, client IP) and counts only; `redact` below is a last guard
// for the field names that would carry such data.
export type LogLevel = "debug" | "info" | "warn" | "error";
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const REDACT = new Set(["password", "pass", "secret", "key", "privateKey", "body", "raw", "data", "token", "authorization"]);

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(component: string, fields?: Record<string, unknown>): Logger;
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  level?: LogLevel;
  write?: (line: string) => void;
  clock?: () => number;
}

function clean(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (REDACT.has(k)) out[k] = "[redacted]";
    else if (v instanceof Error) out[k] = v.message;
    else out[k] = v;
  }
  return out;
}

export function createLogger(opts: LoggerOptions = {}, base: Record<string, unknown> = {}): Logger {
  const min = LEVELS[opts.level ?? "info"];
  const write = opts.write ?? ((line: string) => process.stdout.write(line + "\n"));
  const clock = opts.clock ?? Date.now;
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < min) return;
    const rec = { t: new Date(clock()).toISOString(), level, ...base, msg, ...(fields ? clean(fields) : {}) };
    let line: string;
    try { line = JSON.stringify(rec); } catch { line = JSON.stringify({ t: rec.t, level, ...base, msg, note: "unserialisable fields" }); }
    write(line);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (component, fields) => createLogger(opts, { ...base, component, ...(fields ?? {}) }),
    enabled: (level) => LEVELS[level] >= min,
  };
}
