// mailfleet local up|down|status: the whole fleet on this machine, for development and demos.
import { parse, UsageError, type Command } from "../command.ts";
import { localUp, localDown, localStatus, defaultStateDir } from "../../test/env/local.ts";

const usage = `usage: mailfleet local up [--json] [--nats-nodes 1|3] [--nodes N] [--no-operator] [--no-runner]
                          [--runner-mode process|podman] [--relay-image IMG] [--state-dir DIR]
       mailfleet local down [--purge] [--state-dir DIR]
       mailfleet local status [--json] [--state-dir DIR]

  up      start etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake nodes),
          nats-server, apply crds/*.yaml, start operator/main.ts if it exists and the relay runner
          (one relay per relay Pod on the kwok nodes: a process, or with --runner-mode podman a
          container of --relay-image); everything keeps running after the command exits.
          --json prints one JSON line: kubeconfig, nats, stateDir, pids.
  down    stop what \`up\` started (the state directory is kept; --purge removes it)
  status  show what runs

  The state directory is --state-dir, else $MAILFLEET_STATE_DIR, else .local`;

export const command: Command = {
  summary: "run the fleet locally: control plane, kwok nodes, NATS, CRDs, operator, relays (up/down/status)",
  usage,
  async run(args) {
    const { values, positionals } = parse(args, {
      json: { type: "boolean", default: false },
      "nats-nodes": { type: "string", default: "1" },
      nodes: { type: "string", default: "1" },
      "no-operator": { type: "boolean", default: false },
      "no-runner": { type: "boolean", default: false },
      "runner-mode": { type: "string", default: "process" },
      "relay-image": { type: "string" },
      purge: { type: "boolean", default: false },
      "state-dir": { type: "string" },
    });
    const [sub, ...extra] = positionals;
    if (extra.length) throw new UsageError(`unexpected argument "${extra[0]}"`);
    const stateDir = values["state-dir"] ?? defaultStateDir();
    const print = (obj: unknown) => process.stdout.write(JSON.stringify(obj) + "\n");

    if (sub === "up") {
      const natsNodes = Number(values["nats-nodes"]);
      if (natsNodes !== 1 && natsNodes !== 3) throw new UsageError(`--nats-nodes must be 1 or 3, got "${values["nats-nodes"]}"`);
      const nodes = Number(values.nodes);
      if (!Number.isInteger(nodes) || nodes < 1 || nodes > 100) throw new UsageError(`--nodes must be an integer from 1 to 100, got "${values.nodes}"`);
      const runnerMode = values["runner-mode"];
      if (runnerMode !== "process" && runnerMode !== "podman") throw new UsageError(`--runner-mode must be process or podman, got "${runnerMode}"`);
      const runner = values["no-runner"] ? false as const : { mode: runnerMode as "process" | "podman", ...(values["relay-image"] ? { image: values["relay-image"] } : {}) };
      const { state, alreadyUp } = await localUp({ stateDir, natsNodes, nodes, operator: !values["no-operator"], runner });
      if (alreadyUp) process.stderr.write(`the local fleet is already up (state in ${state.stateDir})\n`);
      if (values.json) {
        print({ ...state, alreadyUp });
      } else {
        process.stdout.write([
          alreadyUp ? "already up" : "up",
          `  kubeconfig: ${state.kubeconfig}`,
          `  server:     ${state.server}`,
          `  nats:       ${state.nats}`,
          `  operator:   ${state.operator.started ? `pid ${state.operator.pid}, log ${state.operator.log}` : `not started (${state.operator.reason})`}`,
          `  relays:     ${state.runner?.started ? `runner pid ${state.runner.pid} (${state.runner.mode}), list in ${state.runner.registry}` : `no runner (${state.runner?.reason ?? "not recorded"})`}`,
          `  state:      ${state.stateDir}`,
          `  try:        kubectl --kubeconfig ${state.kubeconfig} get nodes`,
          "",
        ].join("\n"));
      }
      return 0;
    }
    if (sub === "down") {
      const r = await localDown({ stateDir, purge: values.purge });
      if (values.json) print(r);
      else process.stdout.write(`${r.wasUp ? `stopped ${r.stopped.join(", ")}` : "nothing was running"}${r.purged ? `; removed ${stateDir}` : ""}\n`);
      return 0;
    }
    if (sub === "status") {
      const { state, alive } = localStatus(stateDir);
      const up = Object.values(alive).some(Boolean);
      if (values.json) {
        print({ up, stateDir, alive, ...(state ?? {}) });
      } else if (!state || !up) {
        process.stdout.write(`not running (state dir ${stateDir})\n`);
      } else {
        process.stdout.write(Object.entries(alive).map(([n, a]) => `${n.padEnd(24)} ${a ? `running (pid ${state.pids[n]})` : "NOT RUNNING"}`).join("\n") + "\n");
      }
      return up || !state ? 0 : 1;
    }
    throw new UsageError(sub ? `unknown subcommand "${sub}"` : "missing subcommand (up, down or status)");
  },
};
