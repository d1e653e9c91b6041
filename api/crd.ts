// Generates CustomResourceDefinitions from the zod schemas, so the API server and the operator
// validate with one source of truth.
//
// zod emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no
// anyOf/oneOf at the type level, no $ref, no additionalProperties beside properties, and only
// RE2 patterns. zod's "openapi-3.0" target gets most of the way; structural() does the rest.
// Hand-written because no maintained library converts zod 4 output to structural schemas.
import { z } from "zod";
import { GROUP, KINDS, type KindDef, VERSION } from "./v1alpha1/kinds.ts";

type Json = Record<string, unknown>;

const JS_SAFE_MAX = Number.MAX_SAFE_INTEGER;

/** Make one JSON Schema node (and its children) structural. */
export function structural(node: Json): Json {
  const out: Json = {};
  for (const [key, value] of Object.entries(node)) {
    if (key === "$schema" || key === "id" || key === "$id") continue;
    out[key] = value;
  }
  // zod's int() bounds are JavaScript's safe-integer range: meaningless to the API server.
  if (out.maximum === JS_SAFE_MAX) delete out.maximum;
  if (out.minimum === -JS_SAFE_MAX) delete out.minimum;

  if (out["x-kubernetes-int-or-string"] === true) {
    delete out.anyOf;
    delete out.oneOf;
    delete out.type;
    return out;
  }
  if (out["x-kubernetes-preserve-unknown-fields"] === true) {
    delete out.additionalProperties;
    out.type = "object";
    return out;
  }
  if (Array.isArray(out.anyOf) || Array.isArray(out.oneOf)) {
    throw new Error(`schema has a union that is not int-or-string: ${JSON.stringify(out).slice(0, 200)}`);
  }
  if (out.type === "object" && out.properties) {
    const props: Json = {};
    for (const [name, child] of Object.entries(out.properties as Json)) props[name] = structural(child as Json);
    out.properties = props;
    delete out.additionalProperties;
    if (Array.isArray(out.required) && out.required.length === 0) delete out.required;
  } else if (out.type === "object" && out.additionalProperties && typeof out.additionalProperties === "object") {
    out.additionalProperties = structural(out.additionalProperties as Json);
  }
  if (out.type === "array" && out.items) out.items = structural(out.items as Json);
  if (typeof out.pattern === "string" && /\(\?[=!<]/.test(out.pattern)) {
    throw new Error(`pattern ${out.pattern} uses look-around, which Go's RE2 (the API server) does not support`);
  }
  return out;
}

/** The JSON Schema of a zod schema as the API server receives it (input form: defaults optional). */
export function openApiSchema(schema: z.ZodType): Json {
  return structural(z.toJSONSchema(schema, { target: "openapi-3.0", io: "input", unrepresentable: "throw" }) as Json);
}

export function crdFor(def: KindDef): Json {
  const root: Json = {
    type: "object",
    description: `${def.kind} of ${GROUP}.`,
    properties: {
      apiVersion: { type: "string" },
      kind: { type: "string" },
      metadata: { type: "object" },
      spec: openApiSchema(def.spec),
      status: openApiSchema(def.status),
    },
    required: ["spec"],
  };
  if (def.rootRules?.length) root["x-kubernetes-validations"] = def.rootRules;
  const subresources: Json = { status: {} };
  if (def.scale) subresources.scale = def.scale;
  return {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    metadata: { name: `${def.plural}.${GROUP}`, labels: { "app.kubernetes.io/part-of": "mailfleet" } },
    spec: {
      group: GROUP,
      names: {
        kind: def.kind,
        listKind: `${def.kind}List`,
        plural: def.plural,
        singular: def.singular,
        shortNames: def.shortNames,
        categories: ["mailfleet"],
      },
      scope: def.scope,
      versions: [{
        name: VERSION,
        served: true,
        storage: true,
        schema: { openAPIV3Schema: root },
        subresources,
        additionalPrinterColumns: def.columns,
      }],
    },
  };
}

/** Every CRD, keyed by the file name it is written to under crds/. */
export function allCrds(): Map<string, Json> {
  const files = new Map<string, Json>();
  for (const def of Object.values(KINDS) as KindDef[]) files.set(`${GROUP}_${def.plural}.yaml`, crdFor(def));
  return files;
}
