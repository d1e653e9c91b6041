// The operator's key generator process (see ChildGenerator in keys.ts): lower CPU priority, then
// answer {id, keyType} requests with keys over IPC. Threads libuv starts later inherit the priority.
import { setPriority } from "node:os";
import type { DkimKeyType } from "../../api/v1alpha1/index.ts";
import { generateDkimKey } from "./keys.ts";

try {
  setPriority(10);
} catch { /* not permitted: run at the parent's priority */ }

process.on("message", (m: { id: number; keyType: DkimKeyType }) => {
  generateDkimKey(m.keyType).then(
    (k) => process.send?.({ id: m.id, ...k }),
    (err: Error) => process.send?.({ id: m.id, error: err.message }),
  );
});
process.on("disconnect", () => process.exit(0));
