// A chart PodMonitor as a plain Prometheus scrape job: the relabelings prometheus-operator
// generates for it, and pod targets as kubernetes_sd (role pod) makes them, for Prometheus builds
// without kubernetes_sd (Debian's). Used by the monitoring e2e test and the local fleet
// (test/env/fleet.ts), so both scrape exactly what the chart's monitors select.
import type { K8sObject } from "./chart.ts";

/** Relabelings prometheus-operator generates for a PodMonitor endpoint (selection, job, target
 * labels), plus, locally, the address from the runner's listen-address annotation. */
export function podMonitorRelabelings(pm: K8sObject, o: { addressFromAnnotation?: string } = {}): Record<string, unknown>[] {
  const ep = pm.spec.podMetricsEndpoints[0];
  const labelMeta = (k: string) => `__meta_kubernetes_pod_label_${sanitize(k)}`;
  const relabel: Record<string, unknown>[] = [];
  for (const [k, v] of Object.entries(pm.spec.selector.matchLabels as Record<string, string>)) {
    relabel.push({ source_labels: [labelMeta(k), `__meta_kubernetes_pod_labelpresent_${sanitize(k)}`], regex: `(${v});true`, action: "keep" });
  }
  relabel.push(
    { source_labels: ["__meta_kubernetes_pod_container_port_name"], regex: ep.port, action: "keep" },
    { source_labels: ["__meta_kubernetes_namespace"], target_label: "namespace" },
    { source_labels: ["__meta_kubernetes_pod_container_name"], target_label: "container" },
    { source_labels: ["__meta_kubernetes_pod_name"], target_label: "pod" },
    { target_label: "job", replacement: `${pm.metadata.namespace}/${pm.metadata.name}` },
    { source_labels: [labelMeta(pm.spec.jobLabel)], regex: "(.+)", target_label: "job", replacement: "${1}" },
    { target_label: "endpoint", replacement: ep.port },
  );
  if (o.addressFromAnnotation) {
    relabel.push({ source_labels: [`__meta_kubernetes_pod_annotation_${sanitize(o.addressFromAnnotation)}`, "__meta_kubernetes_pod_container_port_number"], regex: "(.+);(.+)", target_label: "__address__", replacement: "${1}:${2}" });
  }
  return relabel;
}

const sanitize = (k: string) => k.replace(/[^a-zA-Z0-9_]/g, "_");

/**
 * Targets as Prometheus' kubernetes_sd (role pod) makes them: one per container port, with the
 * __meta_kubernetes_* labels the relabelings read. For Prometheus builds without kubernetes_sd
 * (Debian's package leaves it out): written to a file_sd file, the relabelings then run as usual.
 */
export function podTargets(pods: any[]): { targets: string[]; labels: Record<string, string> }[] {
  const out: { targets: string[]; labels: Record<string, string> }[] = [];
  for (const pod of pods) {
    for (const c of pod.spec.containers ?? []) {
      for (const port of c.ports ?? []) {
        const labels: Record<string, string> = {
          __meta_kubernetes_namespace: pod.metadata.namespace,
          __meta_kubernetes_pod_name: pod.metadata.name,
          __meta_kubernetes_pod_ip: pod.status?.podIP ?? "",
          __meta_kubernetes_pod_node_name: pod.spec.nodeName ?? "",
          __meta_kubernetes_pod_phase: pod.status?.phase ?? "",
          __meta_kubernetes_pod_container_name: c.name,
          __meta_kubernetes_pod_container_port_name: port.name ?? "",
          __meta_kubernetes_pod_container_port_number: String(port.containerPort),
          __meta_kubernetes_pod_container_port_protocol: port.protocol ?? "TCP",
        };
        for (const [k, v] of Object.entries((pod.metadata.labels ?? {}) as Record<string, string>)) {
          labels[`__meta_kubernetes_pod_label_${sanitize(k)}`] = v;
          labels[`__meta_kubernetes_pod_labelpresent_${sanitize(k)}`] = "true";
        }
        for (const [k, v] of Object.entries((pod.metadata.annotations ?? {}) as Record<string, string>)) {
          labels[`__meta_kubernetes_pod_annotation_${sanitize(k)}`] = v;
          labels[`__meta_kubernetes_pod_annotationpresent_${sanitize(k)}`] = "true";
        }
        out.push({ targets: [`${pod.status?.podIP ?? "0.0.0.0"}:${port.containerPort}`], labels });
      }
    }
  }
  return out;
}
