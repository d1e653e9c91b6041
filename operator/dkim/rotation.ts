// DKIM key rotation as a pure state machine over a SendingDomain's status.dkim (the clock and the
// DNS verdict are inputs). Per key type:
//
//   (none) ──first key──────────────────────────────▶ Active      nothing to switch from: sign at once
//   Active ──rotationPeriod after its creation──▶ + Published     a new selector, in DNS only
//   Published ──its record verifies in DNS──────────▶ Active      signing switches to it
//   Active (old) ───────────────────────────────────▶ Retiring    still published for `overlap`,
//   Retiring ──overlap elapsed──────────────────────▶ (removed)   mail signed with it can still verify
//
// The plan compiler signs with the Active selectors only; the pool keyring holds every selector
// listed here (Published keys reach relays before they sign with them).
import type { DkimKeyType, DkimSelectorStatus } from "../../api/v1alpha1/index.ts";

export type RotationSpec = {
  keyTypes: readonly DkimKeyType[];
  selectorPrefix: string;
  /** 0: never rotate. */
  rotationPeriodMs: number;
  overlapMs: number;
};

/** A key the user brings (spec.dkim.secretRef): it signs at once and is never rotated by us. */
export type OwnKey = { selector: string; keyType: DkimKeyType; secretName: string };

export type RotationInput = {
  spec: RotationSpec;
  now: number;
  current: readonly DkimSelectorStatus[];
  /** Whether the selector's DKIM record verifies in DNS now. */
  verified: (selector: string) => boolean;
  /** Secret name for a generated selector. */
  secretName: (selector: string) => string;
  /** The user's keys; when given, generated selectors retire. */
  ownKeys?: readonly OwnKey[];
};

export type SelectorChange = { selector: string; from: DkimSelectorStatus["state"] | undefined; to: DkimSelectorStatus["state"] | "Removed" };

export type RotationResult = {
  next: DkimSelectorStatus[];
  /** Keys to generate, each into its own Secret. */
  generate: { selector: string; keyType: DkimKeyType; secretName: string }[];
  /** Selectors dropped: their Secrets may be deleted. */
  removed: { selector: string; secretName: string }[];
  changes: SelectorChange[];
  /** The next time the clock alone changes the result (rotation due, overlap over). */
  nextAt: number | null;
};

const SUFFIX: Record<DkimKeyType, string> = { RSA2048: "r", Ed25519: "e" };

export function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** <prefix><yyyymmdd><r|e>, with a counter when that name is taken (more than one key a day). */
export function selectorName(prefix: string, keyType: DkimKeyType, now: number, taken: ReadonlySet<string>): string {
  const day = iso(now).slice(0, 10).replaceAll("-", "");
  const base = `${prefix}${day}${SUFFIX[keyType]}`;
  if (!taken.has(base)) return base;
  for (let n = 2; ; n++) if (!taken.has(`${base}${n}`)) return `${base}${n}`;
}

const byCreated = (a: DkimSelectorStatus, b: DkimSelectorStatus) => a.createdAt.localeCompare(b.createdAt) || a.selector.localeCompare(b.selector);

export function rotate(input: RotationInput): RotationResult {
  const { spec, now } = input;
  const out: DkimSelectorStatus[] = [];
  const generate: RotationResult["generate"] = [];
  const removed: RotationResult["removed"] = [];
  const changes: SelectorChange[] = [];
  const times: number[] = [];
  const taken = new Set(input.current.map((s) => s.selector));
  const retire = (s: DkimSelectorStatus): DkimSelectorStatus => {
    changes.push({ selector: s.selector, from: s.state, to: "Retiring" });
    return { ...s, state: "Retiring", retireAt: iso(now + spec.overlapMs) };
  };
  const own = input.ownKeys;

  // Retiring selectors leave once their overlap is over.
  for (const s of input.current.filter((x) => x.state === "Retiring")) {
    const at = s.retireAt ? Date.parse(s.retireAt) : now;
    if (at <= now) {
      removed.push({ selector: s.selector, secretName: s.secretName });
      changes.push({ selector: s.selector, from: "Retiring", to: "Removed" });
    } else {
      out.push(s);
      times.push(at);
    }
  }

  if (own) {
    const ownNames = new Set(own.map((k) => k.selector));
    for (const s of input.current.filter((x) => x.state !== "Retiring")) {
      if (ownNames.has(s.selector) && s.secretName === own.find((k) => k.selector === s.selector)!.secretName) continue;
      const r = retire(s);
      out.push(r);
      times.push(Date.parse(r.retireAt!));
    }
    for (const k of own) {
      const cur = input.current.find((x) => x.selector === k.selector && x.secretName === k.secretName && x.state !== "Retiring");
      if (cur && cur.state === "Active" && cur.keyType === k.keyType) {
        out.push(cur);
        continue;
      }
      changes.push({ selector: k.selector, from: cur?.state, to: "Active" });
      out.push({ selector: k.selector, keyType: k.keyType, state: "Active", secretName: k.secretName, createdAt: cur?.createdAt ?? iso(now), activatedAt: iso(now) });
    }
    return finish(out, generate, removed, changes, times, now);
  }

  // Selectors of key types no longer asked for retire.
  for (const s of input.current.filter((x) => x.state !== "Retiring" && !spec.keyTypes.includes(x.keyType))) {
    const r = retire(s);
    out.push(r);
    times.push(Date.parse(r.retireAt!));
  }

  for (const keyType of spec.keyTypes) {
    const mine = input.current.filter((x) => x.keyType === keyType && x.state !== "Retiring").sort(byCreated);
    const actives = mine.filter((x) => x.state === "Active");
    const published = mine.filter((x) => x.state === "Published");
    // More than one Active or Published (hand-edited status): the newest stays, the rest retire.
    let active = actives.at(-1);
    let pub = published.at(-1);
    for (const extra of [...actives.slice(0, -1), ...published.slice(0, -1)]) {
      const r = retire(extra);
      out.push(r);
      times.push(Date.parse(r.retireAt!));
    }
    const fresh = (state: "Active" | "Published"): DkimSelectorStatus => {
      const selector = selectorName(spec.selectorPrefix, keyType, now, taken);
      taken.add(selector);
      const secretName = input.secretName(selector);
      generate.push({ selector, keyType, secretName });
      changes.push({ selector, from: undefined, to: state });
      return { selector, keyType, state, secretName, createdAt: iso(now), ...(state === "Active" ? { activatedAt: iso(now) } : {}) };
    };

    if (!active && !pub) {
      // The first key of a domain (or of a new key type): nothing signs yet, so it signs at once.
      active = fresh("Active");
    } else if (!active && pub) {
      // Nothing signs (the Active selector was lost): the Published one is better than none.
      changes.push({ selector: pub.selector, from: "Published", to: "Active" });
      active = { ...pub, state: "Active", activatedAt: iso(now) };
      pub = undefined;
    } else if (active && pub && input.verified(pub.selector)) {
      const r = retire(active);
      out.push(r);
      times.push(Date.parse(r.retireAt!));
      changes.push({ selector: pub.selector, from: "Published", to: "Active" });
      active = { ...pub, state: "Active", activatedAt: iso(now) };
      pub = undefined;
    }
    if (active && !pub && spec.rotationPeriodMs > 0) {
      const due = Date.parse(active.createdAt) + spec.rotationPeriodMs;
      if (due <= now) pub = fresh("Published");
      else times.push(due);
    }
    out.push(active!);
    if (pub) out.push(pub);
  }
  return finish(out, generate, removed, changes, times, now);
}

function finish(
  out: DkimSelectorStatus[], generate: RotationResult["generate"], removed: RotationResult["removed"], changes: SelectorChange[], times: number[], now: number,
): RotationResult {
  const order = { Active: 0, Published: 1, Retiring: 2 } as const;
  out.sort((a, b) => order[a.state] - order[b.state] || a.keyType.localeCompare(b.keyType) || a.selector.localeCompare(b.selector));
  const future = times.filter((t) => t > now);
  return { next: out, generate, removed, changes, nextAt: future.length ? Math.min(...future) : null };
}
