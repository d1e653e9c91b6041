// kwok's configuration for a cluster whose relay Pods the runner plays. kwok's default "fast" stages
// make every Pod on a fake node Ready at once and delete it as soon as deletion is asked for. For
// the runner's Pods that is wrong twice over: Ready before the relay answers /readyz, and gone from
// the API while the relay is still draining. This writes kwok's default stages with the runner's
// Pods left out of pod-ready and pod-delete, plus one stage of our own for them:
//
//   mailfleet-runner-pod-start: scheduled -> phase Running, Pod IP and host IP assigned (kwok's
//     allocator, as before), Initialized, but Ready=False and the container waiting
//     (ContainerCreating) until the runner reports it.
//
// The runner then owns Ready, ContainersReady and containerStatuses, and deletes a terminating Pod
// (grace 0) once its relay has exited, as the kubelet does. Pass the file as the control plane's
// kwok config. Without it the runner still works: kwok marks the Pod Ready first and the runner
// corrects it from its probes; deleted Pods vanish at once while their relay drains.
import { readFileSync, writeFileSync } from "node:fs";
import { parseAllDocuments, stringify } from "yaml";

/** The label the runner and these stages select relay Pods by (operator/render/pool.ts sets it). */
export const RUNNER_POD_LABEL = { key: "app.kubernetes.io/name", value: "mailfleet-relay" } as const;

interface MatchExpression { key: string; operator: string; values?: string[] }
interface StageDoc {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string };
  spec?: { resourceRef?: { apiGroup?: string; kind?: string }; selector?: { matchExpressions?: MatchExpression[] }; next?: unknown };
}

const RUNNER_START_TEMPLATE = `{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  message: "waiting for the mailfleet runner"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: ContainersNotReady
  message: "waiting for the mailfleet runner"
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  started: false
  restartCount: 0
  state:
    waiting:
      reason: ContainerCreating
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
`;

function labelQuery(key: string): string {
  return `.metadata.labels[${JSON.stringify(key)}]`;
}

/**
 * The stages text: kwok's defaults (read from defaultStagesPath) with Pods carrying the runner's
 * label excluded from pod-ready and pod-delete, and the runner's own start stage appended.
 */
export function runnerKwokStagesText(defaultStagesText: string, label: { key: string; value: string } = RUNNER_POD_LABEL): string {
  const docs = parseAllDocuments(defaultStagesText).map((d) => {
    if (d.errors.length) throw new Error(`kwok stages: ${d.errors[0]!.message}`);
    return d.toJS() as StageDoc | null;
  }).filter((d): d is StageDoc => Boolean(d));
  const notOurs: MatchExpression = { key: labelQuery(label.key), operator: "NotIn", values: [label.value] };
  const names = new Set<string>();
  for (const d of docs) {
    const name = d.metadata?.name ?? "";
    names.add(name);
    if (d.kind === "Stage" && d.spec?.resourceRef?.kind === "Pod" && (name === "pod-ready" || name === "pod-delete")) {
      d.spec.selector ??= {};
      d.spec.selector.matchExpressions = [...(d.spec.selector.matchExpressions ?? []), notOurs];
    }
  }
  for (const need of ["pod-ready", "pod-delete"]) {
    if (!names.has(need)) throw new Error(`kwok stages: no Stage named ${need} in the default stages (kwok's layout changed?)`);
  }
  docs.push({
    apiVersion: "kwok.x-k8s.io/v1alpha1",
    kind: "Stage",
    metadata: { name: "mailfleet-runner-pod-start" },
    spec: {
      resourceRef: { apiGroup: "v1", kind: "Pod" },
      selector: {
        matchExpressions: [
          { key: labelQuery(label.key), operator: "In", values: [label.value] },
          { key: ".metadata.deletionTimestamp", operator: "DoesNotExist" },
          { key: ".status.phase", operator: "In", values: ["Pending"] },
          { key: '.status.conditions.[] | select( .type == "Initialized" ) | .status', operator: "NotIn", values: ["True"] },
        ],
      },
      next: { statusTemplate: RUNNER_START_TEMPLATE },
    },
  });
  return docs.map((d) => stringify(d, { lineWidth: 0 })).join("---\n");
}

/** Writes runnerKwokStagesText(defaults) to path and returns path (for the control plane's kwokConfig). */
export function writeRunnerKwokStages(path: string, defaultStagesPath: string, label?: { key: string; value: string }): string {
  writeFileSync(path, runnerKwokStagesText(readFileSync(defaultStagesPath, "utf8"), label));
  return path;
}
