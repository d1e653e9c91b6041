// A key generator thread (see WorkerGenerator in keys.ts): it lowers its own CPU priority, then
// answers {id, keyType} with a key, generated on this thread.
import { setPriority } from "node:os";
import { parentPort } from "node:worker_threads";
import type { DkimKeyType } from "../../api/v1alpha1/index.ts";
import { generateDkimKeySync } from "./keys.ts";

try {
  setPriority(0, 10); // Linux: the calling thread only
} catch { /* not permitted: run at the process's priority */ }

parentPort!.on("message", (m: { id: number; keyType: DkimKeyType }) => {
  try {
    parentPort!.postMessage({ id: m.id, ...generateDkimKeySync(m.keyType) });
  } catch (err) {
    parentPort!.postMessage({ id: m.id, error: (err as Error).message });
  }
});
