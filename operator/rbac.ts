// The operator's RBAC, as data: the chart renders its ClusterRole and Role from this, and the
// integration tests bind exactly these rules to the identity the operator runs as. Every verb
// says why it is needed; nothing is granted that the code does not use.

export type PolicyRule = { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[]; why: string };

/**
 * Cluster-wide: the operator watches every namespace unless --namespace narrows it.
 * webhookConfigFromChart: the chart's rules (the operator runs with --webhook-config-from-chart).
 */
export function clusterRules(o: { webhookConfigName: string; webhookConfigFromChart?: boolean }): PolicyRule[] {
  return [
    {
      apiGroups: ["mailfleet.io"], resources: ["sendingdomains", "ippools", "warmupschedules", "mailboxproviders"], verbs: ["get", "list", "watch"],
      why: "informers over the four kinds (get: the status write re-reads an object after a 409)",
    },
    {
      apiGroups: ["mailfleet.io"], resources: ["ippools"], verbs: ["patch"],
      why: "add and remove the mailfleet.io/nats-cleanup finalizer (merge patch with a resourceVersion precondition)",
    },
    {
      apiGroups: ["mailfleet.io"], resources: ["sendingdomains/status", "ippools/status", "warmupschedules/status", "mailboxproviders/status"], verbs: ["patch"],
      why: "status, written by merge patch on the status subresource",
    },
    {
      apiGroups: ["mailfleet.io"], resources: ["sendingdomains/finalizers", "ippools/finalizers"], verbs: ["update"],
      why: "children carry blockOwnerDeletion owner references, which the OwnerReferencesPermissionEnforcement admission plugin allows only with this",
    },
    {
      apiGroups: [""], resources: ["secrets"], verbs: ["get", "list", "watch"],
      why: "read referenced Secrets (submission credentials, webhook signing secrets, users' DKIM keys, TLS) and the operator's own",
    },
    {
      apiGroups: [""], resources: ["secrets"], verbs: ["create", "patch", "delete"],
      why: "DKIM key Secrets, pool keyrings, self-signed STARTTLS certificates (server-side apply); delete retired DKIM keys",
    },
    {
      apiGroups: [""], resources: ["services", "serviceaccounts"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "relay Services and ServiceAccounts (server-side apply, compared with the informer cache first; delete what a pool no longer needs)",
    },
    {
      apiGroups: ["apps"], resources: ["deployments", "statefulsets"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "relay workloads; delete the Deployment of an address removed from a PerAddress pool",
    },
    {
      apiGroups: ["policy"], resources: ["poddisruptionbudgets"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "one PodDisruptionBudget per pool",
    },
    {
      apiGroups: ["autoscaling"], resources: ["horizontalpodautoscalers"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "CPU autoscaling of relays; delete when autoscaling is turned off or KEDA takes over",
    },
    {
      apiGroups: ["networking.k8s.io"], resources: ["networkpolicies"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "one NetworkPolicy per pool",
    },
    {
      apiGroups: ["keda.sh"], resources: ["scaledobjects"], verbs: ["get", "list", "watch", "create", "patch", "delete"],
      why: "queue-lag autoscaling when KEDA is installed",
    },
    {
      apiGroups: ["apiextensions.k8s.io"], resources: ["customresourcedefinitions"], verbs: ["get"], resourceNames: ["scaledobjects.keda.sh"],
      why: "is KEDA installed?",
    },
    {
      apiGroups: ["admissionregistration.k8s.io"], resources: ["validatingwebhookconfigurations"], verbs: ["list", "watch"],
      why: "an informer over the webhook configuration (list/watch cannot be limited by name)",
    },
    // The Helm chart renders the configuration itself (--webhook-config-from-chart): the operator
    // only sets its CA bundle, so it needs neither create (which cannot be limited by name) nor delete.
    ...(o.webhookConfigFromChart ? [{
      apiGroups: ["admissionregistration.k8s.io"], resources: ["validatingwebhookconfigurations"], verbs: ["get", "patch"], resourceNames: [o.webhookConfigName],
      why: "set the CA bundle of the chart's webhook configuration (a partial apply)",
    }] : [{
      apiGroups: ["admissionregistration.k8s.io"], resources: ["validatingwebhookconfigurations"], verbs: ["get", "patch", "delete"], resourceNames: [o.webhookConfigName],
      why: "keep the webhook's configuration and CA bundle current (apply); remove it when the webhook is off",
    }, {
      apiGroups: ["admissionregistration.k8s.io"], resources: ["validatingwebhookconfigurations"], verbs: ["create"],
      why: "the first apply of the configuration creates it (create cannot be limited by name)",
    }]),
    {
      apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create"],
      why: "Events on state changes",
    },
    {
      apiGroups: [""], resources: ["namespaces"], verbs: ["get"],
      why: "the webhook lets deletions through in a namespace being deleted",
    },
  ];
}

/** In the operator's namespace only: its leader Lease. */
export function namespaceRules(o: { leaseName: string }): PolicyRule[] {
  return [
    {
      apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["get", "update"], resourceNames: [o.leaseName],
      why: "leader election: read the Lease, renew or take it with a resourceVersion-checked replace",
    },
    {
      apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["create"],
      why: "the first replica creates the Lease (create cannot be limited by name)",
    },
  ];
}

/** Kubernetes ClusterRole/Role objects (the `why` kept as an annotation per rule index). */
export function roleObjects(o: { name: string; namespace: string; webhookConfigName: string; leaseName: string }) {
  const strip = (rules: PolicyRule[]) => rules.map(({ why: _why, ...r }) => r);
  return {
    clusterRole: { apiVersion: "rbac.authorization.k8s.io/v1", kind: "ClusterRole", metadata: { name: o.name }, rules: strip(clusterRules(o)) },
    role: { apiVersion: "rbac.authorization.k8s.io/v1", kind: "Role", metadata: { name: o.name, namespace: o.namespace }, rules: strip(namespaceRules(o)) },
  };
}
