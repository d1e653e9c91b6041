// The mailfleet objects the CLI reads, found by the names people type: a pool as NS/NAME or NAME
// (searched in every namespace unless -n is given), a sending domain by its domain or object name.
import { ApiError, pathOf, RESOURCES, type KubeClient, type Resource } from "../../operator/runtime/kube.ts";
import type { IPPool, MailboxProvider, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import type { Fleet } from "./fleet.ts";

type List<T> = { items: T[] };

async function list<T>(fleet: Fleet, r: Resource, namespace?: string): Promise<T[]> {
  const kube = await fleet.kube();
  try {
    return (await kube.request<List<T>>("GET", pathOf(r, namespace))).items;
  } catch (e) {
    throw explain(e, fleet, r, namespace);
  }
}

/** Turns the API's refusals into sentences: CRDs not installed, not allowed to list. */
function explain(e: unknown, fleet: Fleet, r: Resource, namespace?: string): Error {
  if (e instanceof ApiError && e.code === 404 && r.group === "mailfleet.io") {
    return new Error(`the cluster at ${fleet.server()} has no mailfleet CRDs (${r.plural}.${r.group} is not served): install the chart or run \`mailfleet local up\``);
  }
  if (e instanceof ApiError && e.code === 403) {
    return new Error(`not allowed to list ${r.plural}${namespace ? ` in namespace ${namespace}` : " in all namespaces"}${namespace ? "" : " (try -n NAMESPACE)"}: ${e.message}`);
  }
  return e as Error;
}

export function id(o: { metadata: { namespace?: string; name: string } }): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
}

export function listPools(fleet: Fleet, namespace?: string): Promise<IPPool[]> {
  return list<IPPool>(fleet, RESOURCES.IPPool, namespace).then((l) => l.sort((a, b) => id(a).localeCompare(id(b))));
}

export function listDomains(fleet: Fleet, namespace?: string): Promise<SendingDomain[]> {
  return list<SendingDomain>(fleet, RESOURCES.SendingDomain, namespace).then((l) => l.sort((a, b) => a.spec.domain.localeCompare(b.spec.domain)));
}

export function listProviders(fleet: Fleet): Promise<MailboxProvider[]> {
  return list<MailboxProvider>(fleet, RESOURCES.MailboxProvider);
}

/** Splits NS/NAME; a bare NAME takes -n's namespace (or none: searched everywhere). */
export function splitRef(ref: string, namespace?: string): { namespace?: string; name: string } {
  const i = ref.indexOf("/");
  if (i >= 0) return { namespace: ref.slice(0, i), name: ref.slice(i + 1) };
  return namespace ? { namespace, name: ref } : { name: ref };
}

/** One IPPool by NS/NAME or NAME; an error naming it (and the pools there are) when absent or ambiguous. */
export async function getPool(fleet: Fleet, ref: string, namespace?: string): Promise<IPPool> {
  const r = splitRef(ref, namespace);
  const kube = await fleet.kube();
  if (r.namespace) {
    const p = await getOne<IPPool>(kube, fleet, RESOURCES.IPPool, r.namespace, r.name);
    if (p) return p;
    const others = await listPools(fleet).catch(() => [] as IPPool[]);
    throw new Error(`IPPool ${r.namespace}/${r.name} not found${others.length ? ` (pools: ${others.map(id).join(", ")})` : " (there are no IPPools)"}`);
  }
  const all = await listPools(fleet);
  const hits = all.filter((p) => p.metadata.name === r.name);
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new Error(`IPPool ${r.name} is ambiguous: ${hits.map(id).join(", ")}; give NAMESPACE/NAME or -n`);
  throw new Error(`IPPool ${r.name} not found in any namespace${all.length ? ` (pools: ${all.map(id).join(", ")})` : " (there are no IPPools)"}`);
}

async function getOne<T>(kube: KubeClient, fleet: Fleet, r: Resource, namespace: string, name: string): Promise<T | undefined> {
  try {
    return await kube.get<T>(r, namespace, name);
  } catch (e) {
    throw explain(e, fleet, r, namespace);
  }
}

/** The SendingDomain for a domain (spec.domain, or the object's NS/NAME). */
export async function getDomain(fleet: Fleet, domain: string, namespace?: string): Promise<SendingDomain> {
  const all = await listDomains(fleet, namespace);
  const d = domain.toLowerCase();
  const hits = all.filter((x) => x.spec.domain.toLowerCase() === d || id(x) === domain || x.metadata.name === domain);
  if (hits.length === 1) return hits[0]!;
  if (hits.length > 1) throw new Error(`${domain} matches several SendingDomains: ${hits.map(id).join(", ")}; give NAMESPACE/NAME or -n`);
  throw new Error(`no SendingDomain for ${domain}${namespace ? ` in namespace ${namespace}` : ""}${all.length ? ` (domains: ${all.map((x) => x.spec.domain).join(", ")})` : " (there are no SendingDomains)"}`);
}

export async function getSchedule(fleet: Fleet, namespace: string, name: string): Promise<WarmupSchedule | undefined> {
  return getOne<WarmupSchedule>(await fleet.kube(), fleet, RESOURCES.WarmupSchedule, namespace, name);
}

/** Who is running the command, for the `by` of manual overrides: the API server's view, else the OS user. */
export async function whoAmI(fleet: Fleet): Promise<string> {
  try {
    const kube = await fleet.kube();
    const r = await kube.request<{ status?: { userInfo?: { username?: string } } }>("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
      body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
      timeoutMs: 10_000,
    });
    if (r.status?.userInfo?.username) return r.status.userInfo.username;
  } catch {
    /* older clusters, or not allowed: fall back */
  }
  return process.env.USER ?? process.env.LOGNAME ?? "unknown";
}
