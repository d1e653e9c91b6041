// The admission decision, as a pure function of the request and the objects the operator's caches
// hold. The API server has already applied the CRD schema and CEL rules; this adds what only other
// objects reveal (operator/plan/problems.ts) and re-validates with the zod schemas.
import { isDeepStrictEqual } from "node:util";
import { ValidationError, validateObject } from "../../api/validate.ts";
import type { IPPool, MailfleetObject, SendingDomain, WarmupSchedule } from "../../api/v1alpha1/index.ts";
import { type Problem, problemsFor } from "../plan/problems.ts";

export type AdmissionRequest = {
  uid: string;
  kind: { group: string; version: string; kind: string };
  operation: "CREATE" | "UPDATE" | "DELETE" | "CONNECT";
  name?: string;
  namespace?: string;
  object?: unknown;
  oldObject?: unknown;
};

export type WebhookWorld = { pools: IPPool[]; domains: SendingDomain[]; schedules: WarmupSchedule[] };

export type Verdict = { allowed: boolean; message?: string; warnings?: string[] };

const same = (a: Problem, b: Problem) => a.reason === b.reason && a.field === b.field && a.message === b.message;

export function formatProblems(problems: Problem[]): string {
  return problems.map((p) => `${p.field}: ${p.message}`).join("; ");
}

export function review(req: AdmissionRequest, world: WebhookWorld, o: { namespaceTerminating?: boolean } = {}): Verdict {
  if (req.kind.group !== "mailfleet.io") return { allowed: true };
  if (req.operation === "DELETE") return reviewDelete(req, world, o.namespaceTerminating ?? false);
  if (req.operation !== "CREATE" && req.operation !== "UPDATE") return { allowed: true };
  const raw = req.object as { metadata?: { deletionTimestamp?: string }; spec?: unknown } | undefined;
  // An object on its way out only loses finalizers: never stand in the way.
  if (raw?.metadata?.deletionTimestamp) return { allowed: true };
  let candidate: MailfleetObject;
  try {
    candidate = validateObject(req.object);
  } catch (err) {
    if (err instanceof ValidationError) return { allowed: false, message: err.issues.map((i) => `${i.path}: ${i.message}`).join("; ") };
    throw err;
  }
  if (req.operation === "UPDATE" && isDeepStrictEqual((req.oldObject as { spec?: unknown })?.spec, raw?.spec)) return { allowed: true };
  let problems = problemsFor(candidate, world);
  if (req.operation === "UPDATE" && req.oldObject) {
    // Refuse only what this update brings: an object that already clashed (the webhook was down
    // when it came) may still be edited, for instance to fix the clash.
    let before: Problem[] = [];
    try {
      before = problemsFor(validateObject(req.oldObject), world);
    } catch { /* the old object was invalid: everything is new */ }
    problems = problems.filter((p) => !before.some((b) => same(b, p)));
  }
  if (problems.length) return { allowed: false, message: formatProblems(problems) };
  return { allowed: true };
}

function reviewDelete(req: AdmissionRequest, world: WebhookWorld, namespaceTerminating: boolean): Verdict {
  // Deleting a namespace deletes everything in it, in no particular order: let it.
  if (namespaceTerminating) return { allowed: true };
  const ns = req.namespace ?? "";
  const name = req.name ?? "";
  const users: string[] = [];
  const live = <T extends { metadata: { deletionTimestamp?: string; namespace?: string } }>(l: T[]) => l.filter((x) => !x.metadata.deletionTimestamp && x.metadata.namespace === ns);
  if (req.kind.kind === "IPPool") {
    for (const d of live(world.domains)) if (d.spec.poolRef.name === name) users.push(`SendingDomain ${ns}/${d.metadata.name} (spec.poolRef.name)`);
    for (const p of live(world.pools)) {
      if (p.metadata.name !== name && p.spec.overflowPoolRef?.name === name) users.push(`IPPool ${ns}/${p.metadata.name} (spec.overflowPoolRef.name)`);
    }
  } else if (req.kind.kind === "WarmupSchedule") {
    for (const p of live(world.pools)) if (p.spec.warmupScheduleRef?.name === name) users.push(`IPPool ${ns}/${p.metadata.name} (spec.warmupScheduleRef.name)`);
  } else {
    return { allowed: true };
  }
  if (!users.length) return { allowed: true };
  const shown = users.slice(0, 5).join(", ") + (users.length > 5 ? ` and ${users.length - 5} more` : "");
  return {
    allowed: false,
    message: `${req.kind.kind} ${ns}/${name} is still used by ${shown}: point them elsewhere or delete them first`,
  };
}
