// Parsing of the API's textual units: durations (10m), rates (600/min) and quantities (25Mi).
import { DURATION_RE, QUANTITY_RE, RATE_RE } from "./v1alpha1/common.ts";

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds in a duration such as 90s, 1h30m or 7d. */
export function parseDuration(text: string): number {
  if (!DURATION_RE.test(text)) throw new Error(`invalid duration ${JSON.stringify(text)}: use e.g. 90s, 10m, 2h or 7d`);
  let ms = 0;
  for (const m of text.matchAll(/([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)/g)) ms += Number(m[1]) * DURATION_UNITS[m[2]!]!;
  return Math.round(ms);
}

export function formatDuration(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** A limit: at most `count` events in any window of `periodMs`. */
export type Rate = { count: number; periodMs: number };

const RATE_PERIODS: Record<string, number> = {
  s: 1000, sec: 1000, second: 1000,
  m: 60_000, min: 60_000, minute: 60_000,
  h: 3_600_000, hour: 3_600_000,
  d: 86_400_000, day: 86_400_000,
};

export function parseRate(text: string): Rate {
  if (!RATE_RE.test(text)) throw new Error(`invalid rate ${JSON.stringify(text)}: use e.g. 600/min, 20/s, 5000/h or 100000/day`);
  const [count, unit] = text.split("/") as [string, string];
  return { count: Number(count), periodMs: RATE_PERIODS[unit]! };
}

/** Events per second of a rate, for comparing rates with different periods. */
export function perSecond(rate: Rate): number {
  return (rate.count * 1000) / rate.periodMs;
}

const QUANTITY_SUFFIXES: Record<string, number> = {
  "": 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4,
};

/** Bytes in a Kubernetes quantity such as 25Mi or 10M. */
export function parseQuantity(value: string | number): number {
  if (typeof value === "number") return value;
  const m = QUANTITY_RE.exec(value.trim());
  if (!m) throw new Error(`invalid quantity ${JSON.stringify(value)}: use e.g. 25Mi or 10M`);
  return Math.floor(Number(m[1]) * QUANTITY_SUFFIXES[m[2] ?? ""]!);
}
