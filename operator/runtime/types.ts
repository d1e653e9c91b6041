// The shape every Kubernetes object shares, as plain JSON (the operator keeps objects as the API
// server serves them rather than as client-node's generated classes: cheaper to cache by the
// thousand, and what server-side apply sends anyway).

export type OwnerReference = {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
};

export type Meta = {
  name: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: OwnerReference[];
  managedFields?: unknown[];
};

export type KubeObject = {
  apiVersion: string;
  kind: string;
  metadata: Meta;
  [key: string]: unknown;
};

export const FIELD_MANAGER = "mailfleet-operator";
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "mailfleet-operator";
export const POOL_LABEL = "mailfleet.io/pool";
export const DOMAIN_LABEL = "mailfleet.io/sendingdomain";
export const SELECTOR_LABEL = "mailfleet.io/dkim-selector";
export const COMPONENT_LABEL = "app.kubernetes.io/component";
export const EGRESS_ADDRESS = "mailfleet.io/egress-address";

export function keyOf(o: { metadata: { namespace?: string; name: string } }): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
}

export function splitKey(key: string): { namespace: string | undefined; name: string } {
  const i = key.indexOf("/");
  return i < 0 ? { namespace: undefined, name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

export function ownerRef(o: KubeObject): OwnerReference {
  return { apiVersion: o.apiVersion, kind: o.kind, name: o.metadata.name, uid: o.metadata.uid!, controller: true, blockOwnerDeletion: true };
}
