// Output for people (aligned tables, short ages) and for scripts (-o json). Pure formatting: no
// I/O but the two print helpers at the end.

export type Cell = string | number | boolean | null | undefined;

/** Columns separated by two spaces, headers in capitals as kubectl prints them; "-" for empty cells. */
export function table(headers: string[], rows: Cell[][]): string {
  const text = rows.map((r) => headers.map((_, i) => cellText(r[i])));
  const widths = headers.map((h, i) => Math.max(h.length, ...text.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  return [line(headers.map((h) => h.toUpperCase())), ...text.map(line)].join("\n");
}

function cellText(c: Cell): string {
  if (c === null || c === undefined || c === "") return "-";
  if (typeof c === "boolean") return c ? "yes" : "no";
  return String(c);
}

/** A duration for people: 45s, 3m12s, 2h5m, 3d4h. */
export function age(ms: number): string {
  if (!Number.isFinite(ms)) return "-";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m}m${s % 60}s` : `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d}d${h % 24}h` : `${d}d`;
}

/** An instant relative to now: "in 1h59m", "3m ago". */
export function when(iso: string | number | undefined, now: number): string | undefined {
  if (iso === undefined || iso === "") return undefined;
  const t = typeof iso === "number" ? iso : Date.parse(iso);
  if (!Number.isFinite(t)) return String(iso);
  return t >= now ? `in ${age(t - now)}` : `${age(now - t)} ago`;
}

export function percent(x: number | null | undefined, digits = 1): string | undefined {
  if (x === null || x === undefined) return undefined;
  return `${(x * 100).toFixed(digits)}%`;
}

/** Shortens text to n characters with an ellipsis (table cells that hold replies). */
export function clip(text: string | undefined, n: number): string | undefined {
  if (text === undefined) return undefined;
  const one = text.replace(/\s+/g, " ").trim();
  return one.length > n ? `${one.slice(0, n - 1)}…` : one;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

export function print(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : text + "\n");
}

/** A warning for people: on stderr, so -o json output stays parseable. */
export function warn(text: string): void {
  process.stderr.write(`warning: ${text}\n`);
}
