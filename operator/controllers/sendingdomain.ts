// SendingDomain: DKIM keys (generated into one Secret per key, or the user's own), the DNS records
// to publish, their verification, and rotation. Status conditions: Accepted, DKIMReady,
// DNSVerified, Ready (and ReconciliationPaused while paused).
import type { DkimKeyType, DkimSelectorStatus, DnsRecordStatus, SendingDomain } from "../../api/v1alpha1/index.ts";
import { parseDuration } from "../../api/units.ts";
import { type DkimKey, SECRET_KEYS, publicFromPrivate } from "../dkim/keys.ts";
import { type OwnKey, rotate } from "../dkim/rotation.ts";
import { type DesiredRecord, type DkimPublicKey, desiredRecords } from "../dns/records.ts";
import { type Lookup, memoize, verifyRecords } from "../dns/verify.ts";
import { formatProblems } from "../webhook/review.ts";
import { isDeepStrictEqual } from "node:util";
import { type DesiredCondition, normalize, readyFrom, rfc3339 } from "../runtime/conditions.ts";
import type { Result } from "../runtime/controller.ts";
import { RESOURCES } from "../runtime/kube.ts";
import { DOMAIN_LABEL, type KubeObject, MANAGED_BY, MANAGED_BY_LABEL, SELECTOR_LABEL, ownerRef, splitKey } from "../runtime/types.ts";
import {
  type Context, applyOwned, conditionsFor, isPaused, jitter, recordTransitions, writePaused, writeStatus,
} from "./context.ts";

export const DOMAIN_CONDITIONS = ["Accepted", "DKIMReady", "DNSVerified", "Ready", "ReconciliationPaused"] as const;

export function dkimSecretName(domainObject: string, selector: string): string {
  return `${domainObject}-dkim-${selector}`;
}

type KeyMaterial = { pem: string; publicKey: string; keyType: DkimKeyType };

const pubCache = new WeakMap<KubeObject, Map<string, { keyType: DkimKeyType; publicKey: string } | Error>>();

function secretString(secret: KubeObject | undefined, key: string): string | undefined {
  const v = (secret?.data as Record<string, string> | undefined)?.[key];
  return v === undefined ? undefined : Buffer.from(v, "base64").toString("utf8");
}

/** The key in a Secret (a generated one, or the user's), with its public half; memoised per cached Secret. */
export function keyFromSecret(secret: KubeObject | undefined, keyType: DkimKeyType): KeyMaterial | Error | undefined {
  if (!secret) return undefined;
  const pem = secretString(secret, SECRET_KEYS[keyType].pem);
  if (pem === undefined) return undefined;
  let m = pubCache.get(secret);
  if (!m) pubCache.set(secret, (m = new Map()));
  let pub = m.get(keyType);
  if (!pub) {
    try {
      pub = publicFromPrivate(pem);
      if (pub.keyType !== keyType) pub = new Error(`${SECRET_KEYS[keyType].pem} holds an ${pub.keyType} key`);
    } catch (err) {
      pub = new Error(`${SECRET_KEYS[keyType].pem} ${(err as Error).message}`);
    }
    m.set(keyType, pub);
  }
  return pub instanceof Error ? pub : { pem, ...pub };
}

function dkimSecret(d: SendingDomain, raw: KubeObject, selector: string, key: DkimKey): KubeObject {
  const k = SECRET_KEYS[key.keyType];
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: {
      name: dkimSecretName(d.metadata.name, selector),
      namespace: d.metadata.namespace,
      labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [DOMAIN_LABEL]: d.metadata.name, [SELECTOR_LABEL]: selector },
      ownerReferences: [ownerRef(raw)],
    },
    type: "Opaque",
    data: { [k.pem]: Buffer.from(key.privatePem).toString("base64"), [k.selector]: Buffer.from(selector).toString("base64") },
  };
}

/** Recent DNS verdicts per domain: reconciles in quick succession (keys becoming ready, say) do not
 * ask DNS again; the periodic re-check always does (it comes after twice this window). */
const verdicts = new Map<string, Map<string, { at: number; status: DnsRecordStatus }>>();

async function verifyCached(ctx: Context, uid: string, records: DesiredRecord[], lookup: Lookup, now: number): Promise<DnsRecordStatus[]> {
  const window = ctx.config.dnsRecheckUnverifiedMs / 2;
  let mine = verdicts.get(uid);
  if (!mine) verdicts.set(uid, (mine = new Map()));
  const key = (r: DesiredRecord) => `${r.type} ${r.name} ${r.value}`;
  const stale = records.filter((r) => (mine.get(key(r))?.at ?? -Infinity) <= now - window);
  for (const st of stale.length ? await verifyRecords(stale, lookup) : []) mine.set(key(st), { at: now, status: st });
  const out = records.map((r) => mine.get(key(r))!.status);
  const keep = new Set(records.map(key));
  for (const k of mine.keys()) if (!keep.has(k) && mine.get(k)!.at <= now - window) mine.delete(k);
  return out;
}

export async function reconcileDomain(ctx: Context, key: string): Promise<Result> {
  const { namespace, name } = splitKey(key);
  const inf = ctx.inf.domains;
  const raw = inf.get(namespace, name);
  if (!raw || raw.metadata.deletionTimestamp) {
    // Deleted: its Secrets go with it (owner references); keys being made are dropped.
    for (const t of ["RSA2048", "Ed25519"] as const) if (raw?.metadata.uid) ctx.keys.release(`${raw.metadata.uid}:${t}`);
    if (raw?.metadata.uid) verdicts.delete(raw.metadata.uid);
    else for (const uid of verdicts.keys()) if (!ctx.inf.domains.list().some((d) => d.metadata.uid === uid)) verdicts.delete(uid);
    return;
  }
  if (isPaused(raw)) {
    await writePaused(ctx, inf, raw);
    return;
  }
  const now = ctx.now();
  const parsed = ctx.world.parse<SendingDomain>(raw);
  if (!parsed.ok) {
    const msg = parsed.error.issues.map((i) => `${i.path}: ${i.message}`).join("; ");
    await status(ctx, raw, now, { accepted: { type: "Accepted", status: "False", reason: "InvalidSpec", message: msg } });
    return;
  }
  const d = parsed.value;
  const problems = ctx.world.problemsOf("SendingDomain", key);
  if (problems.length) {
    // Not admitted: nothing is made for it, and the plan keeps what was in force before.
    await status(ctx, raw, now, {
      accepted: { type: "Accepted", status: "False", reason: problems[0]!.reason, message: `${formatProblems(problems)}; this SendingDomain does not take effect until that is fixed` },
    });
    return;
  }

  const ns = namespace!;
  const chain = ctx.world.overflowChain(ns, d.spec.poolRef.name);
  const addresses = chain.flatMap((p) => p.spec.addresses.map((a) => ({ address: a.address, hostname: a.hostname })));
  const mxHosts = (chain[0]?.spec.addresses ?? []).map((a) => a.hostname);
  const dkimProblems: DesiredCondition[] = [];
  let pendingKeys = false;

  // The user's own key(s), if any.
  let ownKeys: OwnKey[] | undefined;
  const keyByName = new Map<string, KeyMaterial>();
  if (d.spec.dkim.secretRef) {
    const s = ctx.inf.secrets.get(ns, d.spec.dkim.secretRef.name);
    ownKeys = [];
    if (!s) {
      dkimProblems.push({ type: "DKIMReady", status: "False", reason: "KeySecretNotFound", message: `Secret ${ns}/${d.spec.dkim.secretRef.name} (spec.dkim.secretRef.name) does not exist` });
    } else {
      for (const t of ["RSA2048", "Ed25519"] as const) {
        const k = keyFromSecret(s, t);
        if (k === undefined) continue;
        if (k instanceof Error) {
          dkimProblems.push({ type: "DKIMReady", status: "False", reason: "KeySecretInvalid", message: `Secret ${ns}/${s.metadata.name}: ${k.message}` });
          continue;
        }
        const selector = secretString(s, SECRET_KEYS[t].selector)?.trim();
        if (!selector || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/i.test(selector)) {
          dkimProblems.push({ type: "DKIMReady", status: "False", reason: "KeySecretInvalid", message: `Secret ${ns}/${s.metadata.name}: ${SECRET_KEYS[t].selector} must name the selector (a DNS label)` });
          continue;
        }
        ownKeys.push({ selector, keyType: t, secretName: s.metadata.name });
        keyByName.set(`${s.metadata.name}|${selector}`, k);
      }
      if (!ownKeys.length && !dkimProblems.length) {
        dkimProblems.push({ type: "DKIMReady", status: "False", reason: "KeySecretInvalid", message: `Secret ${ns}/${s.metadata.name} holds neither rsa.pem nor ed25519.pem` });
      }
    }
  }

  // Key material of the selectors listed now. A generated selector whose Secret vanished cannot
  // sign or be published again: it is dropped (a new key replaces it if it was the last one).
  const material = (sel: DkimSelectorStatus): KeyMaterial | undefined => {
    const k = keyByName.get(`${sel.secretName}|${sel.selector}`);
    if (k) return k;
    const got = keyFromSecret(ctx.inf.secrets.get(ns, sel.secretName), sel.keyType);
    return got instanceof Error ? undefined : got;
  };
  const current = ((raw.status as { dkim?: DkimSelectorStatus[] } | undefined)?.dkim ?? []).filter((s) => {
    if (material(s)) return true;
    ctx.events.event(raw, "Warning", "DKIMKeyMissing", `the key of selector ${s.selector} (Secret ${ns}/${s.secretName}) is gone; it is no longer published or used`);
    return false;
  });
  const pubs = (list: DkimSelectorStatus[], extra: Map<string, KeyMaterial>): DkimPublicKey[] =>
    list.flatMap((s) => {
      const k = extra.get(s.selector) ?? material(s);
      return k ? [{ selector: s.selector, keyType: s.keyType, publicKey: k.publicKey }] : [];
    });

  // 1. What DNS says now about the current records (rotation waits for a Published selector to verify).
  const before = desiredRecords({ spec: d.spec, addresses, mxHosts, dkim: pubs(current, new Map()) });
  // One query per name and type for this whole reconcile.
  const lookup = { resolve: memoize(ctx.lookup.resolve), reverse: ctx.lookup.reverse };
  const checked = await verifyCached(ctx, raw.metadata.uid!, before, lookup, now);
  const verifiedDkim = new Set(checked.filter((r) => r.purpose === "dkim" && r.verified).map((r) => r.selector));

  // 2. Rotation. A broken key Secret of the user's changes nothing until it is fixed.
  const rot = ownKeys && dkimProblems.length
    ? { next: current, generate: [], removed: [], changes: [], nextAt: null }
    : rotate({
      spec: {
        keyTypes: d.spec.dkim.keyTypes,
        selectorPrefix: d.spec.dkim.selectorPrefix,
        rotationPeriodMs: parseDuration(d.spec.dkim.rotationPeriod),
        overlapMs: parseDuration(d.spec.dkim.overlap),
      },
      now,
      current,
      verified: (s) => verifiedDkim.has(s),
      secretName: (s) => dkimSecretName(name, s),
      ...(ownKeys ? { ownKeys } : {}),
    });

  // 3. New keys: adopt a Secret left by an earlier run, or take a key the factory made, or wait for one.
  const fresh = new Map<string, KeyMaterial>();
  const notReady = new Set<string>();
  for (const g of rot.generate) {
    // A Secret an interrupted run made (or one left by an earlier object of the same name, which
    // is then taken over: its owner reference is pointed at this object).
    const prior = ctx.inf.secrets.get(ns, g.secretName);
    const existing = keyFromSecret(prior, g.keyType);
    if (existing && !(existing instanceof Error)) {
      if (!prior!.metadata.ownerReferences?.some((o) => o.uid === raw.metadata.uid)) {
        await applyOwned(ctx, dkimSecret(d, raw, g.selector, { keyType: g.keyType, privatePem: existing.pem, publicKey: existing.publicKey }), ctx.inf.secrets);
      }
      fresh.set(g.selector, existing);
      continue;
    }
    const id = `${raw.metadata.uid}:${g.keyType}`;
    const k = ctx.keys.take(id, g.keyType, () => ctx.enqueue("domain", key));
    if (k === "pending") {
      pendingKeys = true;
      notReady.add(g.selector);
      continue;
    }
    if (k instanceof Error) {
      ctx.keys.release(id);
      throw new Error(`generating a ${g.keyType} DKIM key failed: ${k.message}`);
    }
    const out = await applyOwned(ctx, dkimSecret(d, raw, g.selector, k), ctx.inf.secrets);
    ctx.keys.release(id);
    fresh.set(g.selector, { pem: k.privatePem, publicKey: k.publicKey, keyType: k.keyType });
    // The first key of a type is reported by DKIMReady turning True; later ones (rotation) here.
    if (current.some((c) => c.keyType === g.keyType)) {
      ctx.events.event(raw, "Normal", "DKIMKeyGenerated", `generated a ${g.keyType === "Ed25519" ? "Ed25519" : "RSA-2048"} key for selector ${g.selector} in Secret ${ns}/${out.obj.metadata.name}`, "GenerateKey");
    }
  }
  const next = rot.next.filter((s) => !notReady.has(s.selector));
  const changes = rot.changes.filter((c) => !notReady.has(c.selector));

  // 4. Records for the new selector set; verify those the first check did not cover.
  const records = desiredRecords({ spec: d.spec, addresses, mxHosts, dkim: pubs(next, fresh) });
  const known = new Map(checked.map((r) => [`${r.type} ${r.name} ${r.value}`, r]));
  const unchecked = records.filter((r) => !known.has(`${r.type} ${r.name} ${r.value}`));
  for (const r of unchecked.length ? await verifyCached(ctx, raw.metadata.uid!, unchecked, lookup, now) : []) known.set(`${r.type} ${r.name} ${r.value}`, r);
  const dnsRecords = records.map((r) => fit(known.get(`${r.type} ${r.name} ${r.value}`)!));

  // 5. Conditions.
  const activeTypes = new Set(next.filter((s) => s.state === "Active").map((s) => s.keyType));
  const wantTypes = ownKeys && !dkimProblems.length ? [...new Set(ownKeys.map((k) => k.keyType))] : d.spec.dkim.keyTypes;
  const missingTypes = wantTypes.filter((t) => !activeTypes.has(t));
  const dkimCond: DesiredCondition = dkimProblems[0]
    ?? (missingTypes.length
      ? { type: "DKIMReady", status: "False", reason: pendingKeys ? "GeneratingKeys" : "NoActiveKey", message: pendingKeys ? `generating ${missingTypes.join(" and ")} keys` : `no active ${missingTypes.join(" or ")} key` }
      : { type: "DKIMReady", status: "True", reason: "KeysActive", message: `signing with ${next.filter((s) => s.state === "Active").map((s) => `${s.selector} (Secret ${ns}/${s.secretName})`).join(", ")}` });
  const unverified = dnsRecords.filter((r) => !r.verified);
  const lookupFailed = unverified.some((r) => /lookup of .* failed/.test(r.message ?? ""));
  const dnsCond: DesiredCondition = unverified.length === 0
    ? { type: "DNSVerified", status: "True", reason: "RecordsVerified", message: `all ${dnsRecords.length} records are published` }
    : {
      type: "DNSVerified",
      status: lookupFailed ? "Unknown" : "False",
      reason: lookupFailed ? "DNSLookupFailed" : "RecordsNotPublished",
      message: `${unverified.length} of ${dnsRecords.length} records not verified (see status.dnsRecords): ${unverified[0]!.message ?? ""}`,
    };

  const transitions = await status(ctx, raw, now, {
    accepted: { type: "Accepted", status: "True", reason: "Accepted", message: `sends from IPPool ${ns}/${d.spec.poolRef.name}` },
    dkim: dkimCond,
    dns: dnsCond,
    fields: { pool: `${ns}/${d.spec.poolRef.name}`, dnsRecords, dkim: next, recordsVerified: `${dnsRecords.length - unverified.length}/${dnsRecords.length}` },
  });
  // The changes were computed against the status just replaced, so they are recorded once.
  void transitions;
  for (const c of changes) {
    if (c.from === undefined && c.to === "Active") continue; // a first key: DKIMReady says it
    const note = c.to === "Published" ? `new selector ${c.selector}: publish its DKIM record; signing switches to it once the record verifies`
      : c.to === "Active" ? `now signing with selector ${c.selector}`
      : c.to === "Retiring" ? `selector ${c.selector} no longer signs; its record must stay published until it is removed from status`
      : `selector ${c.selector} removed: its DNS record may be deleted`;
    ctx.events.event(raw, "Normal", `DKIMSelector${c.to}`, note, "RotateKey");
  }

  // 6. Secrets of selectors that left (after the status no longer names them).
  const keep = new Set(next.map((s) => s.secretName));
  for (const s of ctx.inf.secrets.byIndex("domain", `${ns}/${name}`)) {
    if (s.metadata.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY) continue;
    if (keep.has(s.metadata.name) || notReady.has(s.metadata.labels?.[SELECTOR_LABEL] ?? "")) continue;
    if (!s.metadata.ownerReferences?.some((o) => o.uid === raw.metadata.uid)) continue;
    await ctx.client.delete(RESOURCES.Secret, ns, s.metadata.name, { uid: s.metadata.uid });
  }

  // 7. When to look again: sooner while something is unverified; at the next rotation step.
  if (pendingKeys) return;
  let after = jitter(unverified.length ? ctx.config.dnsRecheckUnverifiedMs : ctx.config.dnsRecheckMs);
  if (rot.nextAt !== null) after = Math.min(after, Math.max(rot.nextAt - now, 1000));
  return { requeueAfterMs: after };
}

/** A record as status holds it (the schema bounds value at 4096 characters). */
function fit(r: DnsRecordStatus | DesiredRecord & { verified: boolean; message?: string }): DnsRecordStatus {
  if (r.value.length <= 4096) return r;
  return { ...r, value: `${r.value.slice(0, 4080)} (truncated)` };
}

async function status(
  ctx: Context, raw: KubeObject, now: number,
  o: { accepted: DesiredCondition; dkim?: DesiredCondition; dns?: DesiredCondition; fields?: Record<string, unknown> },
) {
  const transitions = await writeStatus(ctx, ctx.inf.domains, raw, (live) => {
    const parts = [o.accepted, ...(o.dkim ? [o.dkim] : []), ...(o.dns ? [o.dns] : [])];
    const ready = readyFrom(parts, "DKIM keys active and every DNS record verified");
    const { conditions, transitions } = conditionsFor(live, [...parts, ready], DOMAIN_CONDITIONS, now);
    const cur = (live.status ?? {}) as { dnsRecords?: unknown; lastDnsCheck?: string };
    const fields = o.fields ?? {};
    // lastDnsCheck moves only when the results do, so an unchanged check writes nothing.
    const dnsChanged = fields.dnsRecords !== undefined && !isDeepStrictEqual(normalize(cur.dnsRecords), normalize(fields.dnsRecords));
    return {
      status: {
        observedGeneration: live.metadata.generation,
        ...fields,
        ...(dnsChanged ? { lastDnsCheck: rfc3339(new Date(now)) } : {}),
        conditions,
      },
      transitions,
    };
  });
  recordTransitions(ctx, raw, transitions);
  return transitions;
}
