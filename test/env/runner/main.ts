// The runner as a process, for `mailfleet local up` and `npm start`:
//
//   node test/env/runner/main.ts --kubeconfig FILE --state-dir DIR [--mode process|podman] [--image IMG]
//        [--address-range CIDR] [--selector LABELS] [--nodes a,b] [--no-liveness]
//
// Runs until SIGTERM or SIGINT, then stops every relay it started (SIGTERM, grace period, SIGKILL)
// and exits 0. relays.json in the state folder lists the relays while it runs.
import { parseArgs } from "node:util";
import { startRunner } from "./runner.ts";

const usage = `usage: node test/env/runner/main.ts --kubeconfig FILE --state-dir DIR [--mode process|podman] [--image IMG]
                                   [--address-range CIDR] [--selector LABELS] [--nodes a,b] [--no-liveness]

  --no-liveness  do not restart relays that fail their liveness probe (a relay without /healthz)`;

async function main(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        kubeconfig: { type: "string" },
        "state-dir": { type: "string" },
        mode: { type: "string", default: "process" },
        image: { type: "string" },
        "address-range": { type: "string" },
        selector: { type: "string" },
        nodes: { type: "string" },
        "no-liveness": { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  if (!values.kubeconfig) { process.stderr.write(`--kubeconfig is required\n${usage}\n`); return 2; }
  if (!values["state-dir"]) { process.stderr.write(`--state-dir is required\n${usage}\n`); return 2; }
  if (values.mode !== "process" && values.mode !== "podman") { process.stderr.write(`--mode must be process or podman, got "${values.mode}"\n`); return 2; }
  if (values.mode === "podman" && !values.image) process.stderr.write("runner: --mode podman without --image runs each Pod's own image (it must exist locally)\n");

  const log = (l: string) => process.stderr.write(`${new Date().toISOString()} ${l}\n`);
  const runner = await startRunner({
    kubeconfig: values.kubeconfig,
    stateDir: values["state-dir"],
    mode: values.mode,
    ...(values.image ? { image: values.image } : {}),
    ...(values["address-range"] ? { addressRange: values["address-range"] } : {}),
    ...(values.selector ? { labelSelector: values.selector } : {}),
    ...(values.nodes ? { nodes: values.nodes.split(",").map((s) => s.trim()).filter(Boolean) } : {}),
    liveness: !values["no-liveness"],
    log,
  });
  log(`runner up (pid ${process.pid}); relays listed in ${runner.registryFile}`);
  await new Promise<void>((resolve) => {
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      if (++signals > 1) {
        log(`${sig} again: exiting now`);
        process.exit(1); // the exit hook SIGKILLs what is left
      }
      log(`${sig}: stopping relays`);
      resolve();
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  await runner.stop();
  log("runner stopped");
  return 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e: Error) => {
  process.stderr.write(`runner: ${e.message}\n`);
  process.exit(1);
});
