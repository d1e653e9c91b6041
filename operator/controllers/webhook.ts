// The webhook's certificate and registration, kept current by the leader: a CA and a serving
// certificate in one Secret (made when missing, re-issued a third of its lifetime before expiry or
// when the host changes), and the ValidatingWebhookConfiguration with the CA bundle; or, with
// cert-manager, the inject-ca-from annotation and cert-manager's Secret. With the webhook off, the
// configuration is removed so the API server does not wait for a webhook nobody serves.
//
// failurePolicy: Ignore. The webhook gives early, clear refusals; it is not the safety net: the
// plan compiler refuses the same problems (the newer object does not take effect, a condition
// and an Event say why), so admitting while the operator is down loses nothing, while Fail would
// block every mailfleet change (fixes included) whenever the operator is unavailable.
import { createCA, issueServing, renewalReason, signedBy } from "../certs.ts";
import { WEBHOOK_PATH } from "../webhook/server.ts";
import type { Result } from "../runtime/controller.ts";
import { RESOURCES } from "../runtime/kube.ts";
import { type KubeObject, MANAGED_BY, MANAGED_BY_LABEL, type OwnerReference } from "../runtime/types.ts";
import { type Context, applyOwned } from "./context.ts";

export type WebhookConfig = {
  enabled: boolean;
  port: number;
  configName: string;
  secretName: string;
  /** The API server calls https://<urlHost>:<port>/validate (local control planes, out-of-cluster operators). */
  urlHost?: string;
  /** Otherwise a Service in the operator's namespace. */
  service?: { namespace: string; name: string; port: number };
  /** cert-manager: namespace/name of the Certificate whose CA is injected. */
  certManager?: string;
  /**
   * The configuration is the Helm chart's (so `helm uninstall` removes it): the operator only sets
   * its CA bundle, and neither creates nor deletes it.
   */
  configFromChart?: boolean;
};

const WEBHOOK_NAME = "validate.mailfleet.io";

/**
 * The webhook's certificate Secret is owned by the configuration (a namespaced dependent of a
 * cluster-scoped owner): whoever removes the configuration (helm uninstall, the webhook turned
 * off) removes the key with it through the garbage collector.
 */
export function ownedByConfig(config: KubeObject | undefined): OwnerReference[] | undefined {
  if (!config?.metadata.uid) return undefined;
  return [{ apiVersion: "admissionregistration.k8s.io/v1", kind: "ValidatingWebhookConfiguration", name: config.metadata.name, uid: config.metadata.uid, blockOwnerDeletion: false }];
}

export function servingHosts(w: WebhookConfig): string[] {
  if (w.urlHost) return [w.urlHost];
  const s = w.service!;
  return [`${s.name}.${s.namespace}.svc`, `${s.name}.${s.namespace}.svc.cluster.local`];
}

const b64 = (s: string) => Buffer.from(s).toString("base64");
const unb64 = (s: string | undefined) => (s ? Buffer.from(s, "base64").toString("utf8") : undefined);

export function webhookConfiguration(w: WebhookConfig, caPem: string | undefined): KubeObject {
  const host = w.urlHost && w.urlHost.includes(":") ? `[${w.urlHost}]` : w.urlHost;
  const clientConfig: Record<string, unknown> = w.urlHost
    ? { url: `https://${host}:${w.port}${WEBHOOK_PATH}` }
    : { service: { namespace: w.service!.namespace, name: w.service!.name, port: w.service!.port, path: WEBHOOK_PATH } };
  if (caPem && !w.certManager) clientConfig.caBundle = b64(caPem);
  const group = { apiGroups: ["mailfleet.io"], apiVersions: ["v1alpha1"], scope: "*" };
  return {
    apiVersion: "admissionregistration.k8s.io/v1",
    kind: "ValidatingWebhookConfiguration",
    metadata: {
      name: w.configName,
      labels: { [MANAGED_BY_LABEL]: MANAGED_BY },
      ...(w.certManager ? { annotations: { "cert-manager.io/inject-ca-from": w.certManager } } : {}),
    },
    webhooks: [{
      name: WEBHOOK_NAME,
      admissionReviewVersions: ["v1"],
      sideEffects: "None",
      failurePolicy: "Ignore",
      matchPolicy: "Equivalent",
      timeoutSeconds: 5,
      clientConfig,
      rules: [
        { ...group, operations: ["CREATE", "UPDATE"], resources: ["ippools", "sendingdomains", "warmupschedules", "mailboxproviders"] },
        // Deleting what others still use.
        { ...group, operations: ["DELETE"], resources: ["ippools", "warmupschedules"] },
      ],
    }],
  };
}

/** The webhook Secret's certificate and key, if present. */
export function servingPair(secret: KubeObject | undefined): { cert: string; key: string; version: string } | undefined {
  const d = (secret?.data ?? {}) as Record<string, string>;
  const cert = unb64(d["tls.crt"]);
  const key = unb64(d["tls.key"]);
  return cert && key ? { cert, key, version: secret!.metadata.resourceVersion ?? "" } : undefined;
}

export async function reconcileWebhook(ctx: Context, w: WebhookConfig): Promise<Result> {
  const live = ctx.inf.webhooks.get(undefined, w.configName);
  if (w.configFromChart && !live) {
    ctx.log.warn("waiting for the chart's ValidatingWebhookConfiguration", { name: w.configName });
    return { requeueAfterMs: 10_000 };
  }
  if (!w.enabled) {
    if (live && live.metadata.labels?.[MANAGED_BY_LABEL] === MANAGED_BY && !w.configFromChart) {
      await ctx.client.delete(RESOURCES.ValidatingWebhookConfiguration, undefined, w.configName, { uid: live.metadata.uid });
      ctx.log.info("webhook off: removed its configuration", { name: w.configName });
    }
    return;
  }
  const ns = ctx.config.operatorNamespace;
  let caPem: string | undefined;
  if (!w.certManager) {
    const secret = ctx.inf.secrets.get(ns, w.secretName);
    const d = (secret?.data ?? {}) as Record<string, string>;
    let ca = d["ca.crt"] && d["ca.key"] ? { certPem: unb64(d["ca.crt"])!, keyPem: unb64(d["ca.key"])! } : undefined;
    const now = ctx.now();
    const hosts = servingHosts(w);
    const caWhy = ca ? renewalReason(ca.certPem, [], now) : "absent";
    const crt = unb64(d["tls.crt"]);
    const why = caWhy ? `CA ${caWhy}` : renewalReason(crt, hosts, now) ?? (crt && ca && !signedBy(crt, ca.certPem) ? "not signed by the CA" : undefined);
    const owners = ownedByConfig(live);
    const unowned = secret && owners && !secret.metadata.ownerReferences?.some((o) => o.uid === live!.metadata.uid);
    if (why || unowned) {
      let data = d;
      if (why) {
        if (caWhy || !ca) ca = await createCA("mailfleet-operator-webhook-ca", { now });
        const serving = await issueServing(hosts, { ca, now });
        data = { "ca.crt": b64(ca.certPem), "ca.key": b64(ca.keyPem), "tls.crt": b64(serving.certPem), "tls.key": b64(serving.keyPem) };
      }
      const out = await applyOwned(ctx, {
        apiVersion: "v1", kind: "Secret",
        metadata: { name: w.secretName, namespace: ns, labels: { [MANAGED_BY_LABEL]: MANAGED_BY }, ...(owners ? { ownerReferences: owners } : {}) },
        type: "kubernetes.io/tls",
        data,
      }, ctx.inf.secrets);
      if (why) ctx.log.info("issued the webhook serving certificate", { secretName: `${ns}/${w.secretName}`, hosts, reason: why, version: out.obj.metadata.resourceVersion });
    }
    caPem = ca?.certPem;
  }
  if (w.configFromChart) {
    // Only the CA bundle: the rest is the chart's (a partial apply; the webhook is matched by name).
    if (caPem) {
      await applyOwned(ctx, {
        apiVersion: "admissionregistration.k8s.io/v1", kind: "ValidatingWebhookConfiguration", metadata: { name: w.configName },
        webhooks: [{ name: WEBHOOK_NAME, clientConfig: { caBundle: b64(caPem) } }],
      } as KubeObject, ctx.inf.webhooks);
    }
  } else {
    await applyOwned(ctx, webhookConfiguration(w, caPem), ctx.inf.webhooks);
  }
  // A Secret made before the configuration existed gets its owner on the next pass.
  const secretNow = w.certManager ? undefined : ctx.inf.secrets.get(ns, w.secretName);
  const cfgNow = ctx.inf.webhooks.get(undefined, w.configName);
  if (secretNow && cfgNow?.metadata.uid && !secretNow.metadata.ownerReferences?.some((o) => o.uid === cfgNow.metadata.uid)) return { requeueAfterMs: 1000 };
  return { requeueAfterMs: 12 * 3_600_000 };
}
