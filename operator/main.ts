// The operator's entry point: node operator/main.ts --kubeconfig <path> --nats <urls> [flags]
// (see operator/config.ts). SIGTERM or SIGINT: stop the queues, finish the reconciles in flight,
// release the Lease, exit 0.
import { FlagError, parseFlags } from "./config.ts";
import { startOperator } from "./manager.ts";

async function main(): Promise<number> {
  let cfg;
  try {
    cfg = parseFlags(process.argv.slice(2));
  } catch (err) {
    if (err instanceof FlagError) {
      process.stderr.write(`mailfleet-operator: ${err.message}\n`);
      return /^usage:/.test(err.message) ? 0 : 2;
    }
    throw err;
  }
  const op = await startOperator(cfg);
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.once(sig, () => {
      void op.shutdown(sig);
      // A second signal: do not wait any longer.
      process.once(sig, () => process.exit(1));
    });
  }
  return op.done;
}

main().then((code) => process.exit(code), (err: Error) => {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level: "error", msg: "operator failed", error: err.message })}\n`);
  process.exit(1);
});
