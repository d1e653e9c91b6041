// JSON-lines logging on stderr. Fields that could carry secrets are never logged: values under
// keys that look like key material are replaced, and callers log names, never Secret data.

export type Level = "debug" | "info" | "warn" | "error";
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_KEY = /(pem|private|password|passwd|secret|token|key|creds|data)$/i;

export type Logger = {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
};

/** Field values safe to print: anything under a secret-looking key is redacted. */
export function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    // Names of Secrets and keys are fine; their contents are not.
    if (SECRET_KEY.test(k) && !/(name|names|ref|type|count)$/i.test(k) && typeof v !== "number" && typeof v !== "boolean") out[k] = "[redacted]";
    else if (v instanceof Error) out[k] = v.message;
    else out[k] = v;
  }
  return out;
}

export function makeLogger(o: { level?: Level; write?: (line: string) => void; base?: Record<string, unknown> } = {}): Logger {
  const min = ORDER[o.level ?? "info"];
  const write = o.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const base = o.base ?? {};
  const emit = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[level] < min) return;
    write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...base, ...redact(fields ?? {}) }));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => makeLogger({ level: o.level, write, base: { ...base, ...fields } }),
  };
}
