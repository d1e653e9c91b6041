// The plan value in KV: gzip of JSON (the operator compresses: plans with many lanes are large),
// or plain JSON. gzip is detected by its magic bytes, not by a flag, so either works.
import { gunzipSync } from "node:zlib";
import { parsePlan, type Plan } from "../../api/plan.ts";

export function decodePlanValue(value: Uint8Array): Plan {
  if (value.length === 0) throw new Error("plan value is empty");
  const bytes = value[0] === 0x1f && value[1] === 0x8b ? gunzipSync(value) : value;
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8"));
  } catch (e) {
    throw new Error(`plan value is not JSON: ${(e as Error).message}`);
  }
  return parsePlan(json);
}
