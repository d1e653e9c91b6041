// IPPool: the relay workload (operator/render/pool.ts) applied with compare-before-apply, the
// pool's keyring Secret kept current, a STARTTLS certificate (the user's, or a self-signed one),
// and status: replicas, selector, per-address FCrDNS and blocklist checks. Conditions: Accepted,
// WorkloadAvailable, AddressesVerified, Ready (and ReconciliationPaused while paused).
//
// Finalizer mailfleet.io/nats-cleanup: the only state of a pool outside Kubernetes is its durable
// JetStream consumers (relays create them); nothing else would ever delete them. Everything in
// Kubernetes goes with the pool through owner references, and its plan entry with the next plan.
import { randomBytes } from "node:crypto";
import type { IPPool, SendingDomain } from "../../api/v1alpha1/index.ts";
import { dkimKeyName, webhookKeyName } from "../plan/compile.ts";
import { issueServing, renewalReason } from "../certs.ts";
import { type AddressCheck, checkAddress } from "../dns/fcrdns.ts";
import { SECRET_KEYS } from "../dkim/keys.ts";
import { formatProblems } from "../webhook/review.ts";
import { relaySecretName, renderPool, renderRelaySecret, selfSignedTlsName } from "../render/pool.ts";
import { withHash } from "../runtime/compare.ts";
import { type DesiredCondition, readyFrom } from "../runtime/conditions.ts";
import type { Result } from "../runtime/controller.ts";
import type { Cache as Informer } from "../runtime/informer.ts";
import { RESOURCES, resourceForKind } from "../runtime/kube.ts";
import { type KubeObject, MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL, ownerRef, splitKey } from "../runtime/types.ts";
import {
  type Context, applyOwned, conditionsFor, isPaused, jitter, recordTransitions, writePaused, writeStatus,
} from "./context.ts";

export const POOL_CONDITIONS = ["Accepted", "WorkloadAvailable", "AddressesVerified", "Ready", "ReconciliationPaused"] as const;
export const POOL_FINALIZER = "mailfleet.io/nats-cleanup";
/** Give up on NATS cleanup after this long, so a pool can always be deleted. */
const CLEANUP_GIVE_UP_MS = 5 * 60_000;

function secretData(s: KubeObject | undefined): Record<string, string> {
  return (s?.data as Record<string, string> | undefined) ?? {};
}

/** The keys relays sign and verify RFC 8058 one-click unsubscribe tokens with (relay/accept/unsubscribe.ts). */
export const UNSUBSCRIBE_KEYS = ["unsubscribe.key", "unsubscribe.previous.key"] as const;

/**
 * Every file of the pool's keyring: non-retired DKIM keys and webhook secrets of the domains it may
 * send, and, when one of them uses OneClick List-Unsubscribe, the token key: made once (32 random
 * bytes) and then kept as the keyring has it, since a new key would void the links in mail
 * already sent. A key the keyring has stays even while no domain uses OneClick, so switching a
 * domain away and back does not void the links sent before.
 */
export function keyring(ctx: Context, pool: IPPool): { files: Map<string, string>; missing: string[] } {
  const ns = pool.metadata.namespace!;
  const files = new Map<string, string>();
  const missing: string[] = [];
  const domains: SendingDomain[] = ctx.world.domainsSentBy(ns, pool.metadata.name);
  for (const d of domains) {
    for (const sel of d.status?.dkim ?? []) {
      const pem = secretData(ctx.inf.secrets.get(ns, sel.secretName))[SECRET_KEYS[sel.keyType].pem];
      if (pem) files.set(dkimKeyName(d.spec.domain, sel.selector), pem);
      else missing.push(`Secret ${ns}/${sel.secretName}`);
    }
    for (const w of d.spec.webhooks) {
      const v = secretData(ctx.inf.secrets.get(ns, w.secretRef.name))[w.secretRef.key];
      if (v) files.set(webhookKeyName(d.spec.domain, w.name), v);
      else missing.push(`Secret ${ns}/${w.secretRef.name} key ${w.secretRef.key}`);
    }
  }
  const current = secretData(ctx.inf.secrets.get(ns, relaySecretName(pool.metadata.name)));
  for (const k of UNSUBSCRIBE_KEYS) if (current[k]) files.set(k, current[k]);
  if (!files.has(UNSUBSCRIBE_KEYS[0]) && domains.some((d) => d.spec.listUnsubscribe?.mode === "OneClick")) {
    files.set(UNSUBSCRIBE_KEYS[0], randomBytes(32).toString("base64"));
  }
  return { files, missing };
}

function informerFor(ctx: Context, kind: string): Informer | undefined {
  switch (kind) {
    case "Deployment": return ctx.inf.deployments;
    case "StatefulSet": return ctx.inf.statefulsets;
    case "Service": return ctx.inf.services;
    case "ServiceAccount": return ctx.inf.serviceaccounts;
    case "PodDisruptionBudget": return ctx.inf.pdbs;
    case "HorizontalPodAutoscaler": return ctx.inf.hpas;
    case "NetworkPolicy": return ctx.inf.networkpolicies;
    case "ScaledObject": return ctx.inf.scaledobjects;
    case "Secret": return ctx.inf.secrets;
    default: return undefined;
  }
}

/** Kinds whose objects the renderer may stop wanting (an address removed, autoscaling switched). */
const PRUNABLE = ["Deployment", "StatefulSet", "HorizontalPodAutoscaler", "ScaledObject", "Service"] as const;

async function ensureFinalizer(ctx: Context, raw: KubeObject, want: boolean): Promise<void> {
  const has = raw.metadata.finalizers?.includes(POOL_FINALIZER) ?? false;
  if (has === want) return;
  const finalizers = want ? [...(raw.metadata.finalizers ?? []), POOL_FINALIZER] : (raw.metadata.finalizers ?? []).filter((f) => f !== POOL_FINALIZER);
  // A merge patch with the resourceVersion read: a concurrent change of the list is a 409, retried.
  const out = await ctx.client.mergePatch(RESOURCES.IPPool, raw.metadata.namespace, raw.metadata.name, {
    metadata: { resourceVersion: raw.metadata.resourceVersion, finalizers },
  });
  ctx.inf.pools.upsert(out);
}

async function finalize(ctx: Context, raw: KubeObject): Promise<Result> {
  if (!raw.metadata.finalizers?.includes(POOL_FINALIZER)) return;
  const id = `${raw.metadata.namespace}/${raw.metadata.name}`;
  try {
    const n = ctx.cleanupPool ? await ctx.cleanupPool(id) : 0;
    if (n) ctx.events.event(raw, "Normal", "NatsCleanedUp", `deleted ${n} JetStream consumer(s) of pool ${id}`, "Cleanup");
  } catch (err) {
    const since = Date.parse(raw.metadata.deletionTimestamp ?? "") || ctx.now();
    if (ctx.now() - since < CLEANUP_GIVE_UP_MS) throw new Error(`cleaning up the pool's JetStream consumers failed (will retry): ${(err as Error).message}`);
    ctx.events.event(raw, "Warning", "NatsCleanupFailed", `could not delete the pool's JetStream consumers (${(err as Error).message}); letting the pool go anyway: delete consumers route-*/ready-* of ${id} by hand`, "Cleanup");
  }
  await ensureFinalizer(ctx, raw, false);
}

export async function reconcilePool(ctx: Context, key: string): Promise<Result> {
  const { namespace, name } = splitKey(key);
  const ns = namespace!;
  const inf = ctx.inf.pools;
  const raw = inf.get(ns, name);
  if (!raw) return;
  if (raw.metadata.deletionTimestamp) return finalize(ctx, raw);
  if (isPaused(raw)) {
    await writePaused(ctx, inf, raw);
    return;
  }
  const now = ctx.now();
  const parsed = ctx.world.parse<IPPool>(raw);
  if (!parsed.ok) {
    await status(ctx, raw, now, [{ type: "Accepted", status: "False", reason: "InvalidSpec", message: parsed.error.issues.map((i) => `${i.path}: ${i.message}`).join("; ") }], {});
    return;
  }
  const pool = parsed.value;
  await ensureFinalizer(ctx, raw, ctx.cleanupPool !== undefined);
  const problems = ctx.world.problemsOf("IPPool", key);
  if (problems.length) {
    // Not admitted: what already runs for this pool is left exactly as it is, except its keyring,
    // which follows its domains (a rotated key must reach the relays still sending for them).
    if (ctx.inf.secrets.get(ns, relaySecretName(name))) await applyOwned(ctx, renderRelaySecret(pool, keyring(ctx, pool).files), ctx.inf.secrets);
    await status(ctx, raw, now, [{
      type: "Accepted", status: "False", reason: problems[0]!.reason,
      message: `${formatProblems(problems)}; this change does not take effect (what runs keeps running as before) until that is fixed`,
    }], {});
    return;
  }

  // Children (rendered and hashed once per version of the pool).
  const render = rendered(ctx, pool);
  const owner = raw;
  const { files, missing } = keyring(ctx, pool);
  const wanted = [...render.objects, renderRelaySecret(pool, files)];
  const tlsName = pool.spec.relay.submission.tlsSecretRef?.name;
  let tlsProblem: string | undefined;
  if (tlsName) {
    const s = ctx.inf.secrets.get(ns, tlsName);
    if (!s) tlsProblem = `Secret ${ns}/${tlsName} (spec.relay.submission.tlsSecretRef.name) does not exist: relays cannot start`;
    else if (!secretData(s)["tls.crt"] || !secretData(s)["tls.key"]) tlsProblem = `Secret ${ns}/${tlsName} has no tls.crt and tls.key`;
  } else {
    await ensureSelfSigned(ctx, owner, pool, now);
  }
  for (const obj of wanted) {
    const i = informerFor(ctx, obj.kind);
    if (obj.kind === "ScaledObject" && !ctx.keda()) continue;
    await applyOwned(ctx, obj, i);
  }
  const wantedIds = new Set(wanted.map((o) => `${o.kind}/${o.metadata.name}`));
  for (const kind of PRUNABLE) {
    const i = informerFor(ctx, kind);
    for (const live of i?.list(ns) ?? []) {
      if (live.metadata.labels?.[POOL_LABEL] !== name || live.metadata.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY) continue;
      if (!live.metadata.ownerReferences?.some((o) => o.uid === raw.metadata.uid)) continue;
      if (wantedIds.has(`${kind}/${live.metadata.name}`)) continue;
      ctx.log.info("deleting what the pool no longer needs", { kind, name: live.metadata.name, namespace: ns });
      await ctx.client.delete(resourceForKind(kind), ns, live.metadata.name, { uid: live.metadata.uid });
    }
  }

  // Workload status from the cached workloads.
  let replicas = 0;
  let ready = 0;
  const notAvailable: string[] = [];
  for (const w of render.workloads) {
    const live = informerFor(ctx, w.kind)?.get(ns, w.name);
    const st = (live?.status ?? {}) as { replicas?: number; readyReplicas?: number; availableReplicas?: number; conditions?: { type: string; status: string; message?: string }[]; observedGeneration?: number };
    replicas += st.replicas ?? 0;
    ready += st.readyReplicas ?? 0;
    if (!live) { notAvailable.push(`${w.kind} ${w.name} not created yet`); continue; }
    const want = (live.spec as { replicas?: number }).replicas ?? 1;
    if (w.kind === "Deployment") {
      const avail = st.conditions?.find((c) => c.type === "Available");
      if (avail?.status !== "True") notAvailable.push(`Deployment ${w.name}: ${avail?.message ?? "waiting for relays to become available"}`);
      else if ((st.observedGeneration ?? 0) < (live.metadata.generation ?? 0) || (st.availableReplicas ?? 0) < want) notAvailable.push(`Deployment ${w.name}: ${st.availableReplicas ?? 0}/${want} relays available`);
    } else if ((st.readyReplicas ?? 0) < want) {
      notAvailable.push(`StatefulSet ${w.name}: ${st.readyReplicas ?? 0}/${want} relays ready`);
    }
  }
  const workload: DesiredCondition = tlsProblem
    ? { type: "WorkloadAvailable", status: "False", reason: "TLSSecretMissing", message: tlsProblem }
    : notAvailable.length
      ? { type: "WorkloadAvailable", status: "False", reason: "RelaysUnavailable", message: notAvailable.slice(0, 5).join("; ") }
      : { type: "WorkloadAvailable", status: "True", reason: "RelaysAvailable", message: `${ready} relay(s) ready in ${render.workloads.length} ${pool.spec.relay.workload}(s)` };
  if (missing.length) ctx.events.event(raw, "Warning", "KeyringIncomplete", `the relay keyring lacks ${missing.slice(0, 5).join(", ")}`, "Keyring");

  // Addresses: forward-confirmed reverse DNS and blocklists (looked up again on the re-check period,
  // not on every reconcile: a pool is reconciled whenever one of its domains' keys changes).
  const addresses = await Promise.all(pool.spec.addresses.map((a) => checkAddressCached(ctx, a, pool.spec.reputation.blocklists, now)));
  const bad = addresses.filter((a) => !a.forwardConfirmed || a.listed?.length);
  const lookupFailed = bad.some((a) => /failed \(/.test(a.message ?? ""));
  const addrCond: DesiredCondition = bad.length === 0
    ? { type: "AddressesVerified", status: "True", reason: "ForwardConfirmed", message: `all ${addresses.length} addresses have forward-confirmed reverse DNS` }
    : {
      type: "AddressesVerified", status: lookupFailed ? "Unknown" : "False", reason: lookupFailed ? "DNSLookupFailed" : bad.some((a) => a.listed?.length) ? "AddressListed" : "ReverseDNSMismatch",
      message: `${bad.length} of ${addresses.length} addresses: ${bad[0]!.message ?? ""}`,
    };

  await status(ctx, raw, now, [
    { type: "Accepted", status: "True", reason: "Accepted", message: `${pool.spec.addresses.length} address(es), egress ${pool.spec.egress.mode}` },
    workload,
    addrCond,
  ], {
    replicas, readyReplicas: ready, selector: render.selector, addresses,
  });
  return { requeueAfterMs: jitter(bad.length ? ctx.config.dnsRecheckUnverifiedMs : ctx.config.dnsRecheckMs) };
}

const renders = new WeakMap<IPPool, { keda: boolean; render: ReturnType<typeof renderPool> }>();

function rendered(ctx: Context, pool: IPPool): ReturnType<typeof renderPool> {
  const keda = ctx.keda();
  const hit = renders.get(pool);
  if (hit && hit.keda === keda) return hit.render;
  const r = renderPool(pool, { ...ctx.config.render, keda });
  const render = { ...r, objects: r.objects.map((o) => withHash(o as Record<string, unknown>) as KubeObject) };
  renders.set(pool, { keda, render });
  return render;
}

const addressChecks = new Map<string, { until: number; result: Promise<AddressCheck> }>();

function checkAddressCached(ctx: Context, a: { address: string; hostname: string }, blocklists: string[], now: number): Promise<AddressCheck> {
  const key = `${a.address}|${a.hostname}|${blocklists.join(",")}`;
  const hit = addressChecks.get(key);
  if (hit && hit.until > now) return hit.result;
  if (addressChecks.size > 10_000) for (const [k, v] of addressChecks) if (v.until <= now) addressChecks.delete(k);
  const result = checkAddress(a, ctx.lookup, blocklists);
  const entry = { until: now + 1000, result };
  addressChecks.set(key, entry);
  // Keep a verified result most of the re-check period, an unverified one most of the shorter one.
  result.then((r) => {
    const ok = r.forwardConfirmed && !r.listed?.length;
    entry.until = now + 0.8 * (ok ? ctx.config.dnsRecheckMs : ctx.config.dnsRecheckUnverifiedMs);
  }, () => addressChecks.delete(key));
  return result;
}

async function ensureSelfSigned(ctx: Context, owner: KubeObject, pool: IPPool, now: number): Promise<void> {
  const ns = pool.metadata.namespace!;
  const secretName = selfSignedTlsName(pool.metadata.name);
  const hosts = [...new Set(pool.spec.addresses.map((a) => a.hostname))].sort();
  const live = ctx.inf.secrets.get(ns, secretName);
  const crt = secretData(live)["tls.crt"];
  const why = renewalReason(crt ? Buffer.from(crt, "base64").toString() : undefined, hosts, now);
  if (!why) return;
  const cert = await issueServing(hosts, { now, days: 365 });
  await applyOwned(ctx, {
    apiVersion: "v1", kind: "Secret",
    metadata: { name: secretName, namespace: ns, labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [POOL_LABEL]: pool.metadata.name }, ownerReferences: [ownerRef(owner)] },
    type: "kubernetes.io/tls",
    data: { "tls.crt": Buffer.from(cert.certPem).toString("base64"), "tls.key": Buffer.from(cert.keyPem).toString("base64") },
  }, ctx.inf.secrets);
  ctx.events.event(owner, "Warning", "SelfSignedCertificate",
    `no spec.relay.submission.tlsSecretRef: made a self-signed certificate for ${hosts.join(", ")} in Secret ${ns}/${secretName} (${why}); clients that verify certificates will refuse it`, "IssueCertificate");
}

async function status(ctx: Context, raw: KubeObject, now: number, parts: DesiredCondition[], fields: Record<string, unknown>): Promise<void> {
  const transitions = await writeStatus(ctx, ctx.inf.pools, raw, (live) => {
    const ready = readyFrom(parts, "relays available and every address verified");
    const { conditions, transitions } = conditionsFor(live, [...parts, ready], POOL_CONDITIONS, now);
    return { status: { observedGeneration: live.metadata.generation, ...fields, conditions }, transitions };
  });
  recordTransitions(ctx, raw, transitions);
}

export { relaySecretName };
