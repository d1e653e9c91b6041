// nats-server with JetStream on loopback: one node, or a 3-node cluster whose nodes tests can kill and
// restart by index. Monitoring is on for every node (/varz, /jsz, /connz, /subsz, /healthz).
//
//   const nats = await startNats({ dir, nodes: 3 });
//   ... connect({ servers: nats.urls }) ...
//   await nats.kill(1); ...; await nats.restart(1);
//   await nats.stop();
import { mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { request } from "node:http";
import { join, resolve } from "node:path";
import { ensureTools, toolPath } from "./tools.ts";
import { startProcess, waitFor, freePorts, portFree, childEnv, type ManagedProcess } from "./proc.ts";

export interface NatsOptions {
  /** State directory: per node n<i>/ with its config, JetStream store and log. */
  dir: string;
  nodes?: 1 | 3;
  /** fsync every write (`sync_interval: always`), for durability tests. Default false. */
  syncAlways?: boolean;
  /** Keep running after this Node process exits (for `mailfleet local up`). */
  detach?: boolean;
  /** Appended inside each node's config file (e.g. accounts, limits). */
  extraConfig?: string;
  timeoutMs?: number;
}

export interface NatsServer {
  index: number;
  name: string;
  /** nats://127.0.0.1:<port> */
  url: string;
  port: number;
  clusterPort?: number;
  monitorPort: number;
  /** http://127.0.0.1:<monitorPort> */
  monitorUrl: string;
  storeDir: string;
  configFile: string;
  logFile: string;
  /** The current process (replaced by restart), undefined while killed. */
  process?: ManagedProcess;
}

export interface Nats {
  urls: string[];
  servers: NatsServer[];
  /** Signals node i (default SIGKILL) and waits until it has exited (SIGSTOP/SIGCONT/SIGHUP/SIGUSR*: no wait). */
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts node i again (stopping it first if running) with the same ports and store; waits for /healthz. */
  restart(i: number): Promise<void>;
  /** GET a monitoring endpoint of node i as JSON, e.g. monitor(0, "/jsz?streams=true"). */
  monitor<T = any>(i: number, path: string): Promise<T>;
  pids(): Record<string, number>;
  stop(): Promise<void>;
}

interface Ports { client: number; cluster: number; monitor: number }

function configText(o: { name: string; ports: Ports; routes: number[]; storeDir: string; syncAlways: boolean; cluster: boolean; extra?: string }): string {
  const lines = [
    `server_name: ${o.name}`,
    `listen: "127.0.0.1:${o.ports.client}"`,
    `http: "127.0.0.1:${o.ports.monitor}"`,
    "jetstream {",
    `  store_dir: ${JSON.stringify(o.storeDir)}`,
    "  max_memory_store: 256MB",
    "  max_file_store: 8GB",
    ...(o.syncAlways ? ["  sync_interval: always"] : []),
    "}",
  ];
  if (o.cluster) {
    lines.push(
      "cluster {",
      "  name: mailfleet",
      `  listen: "127.0.0.1:${o.ports.cluster}"`,
      "  routes: [",
      ...o.routes.map((p) => `    "nats-route://127.0.0.1:${p}"`),
      "  ]",
      "}",
    );
  }
  if (o.extra) lines.push(o.extra);
  return lines.join("\n") + "\n";
}

function getJson(url: string): Promise<{ status: number; body: any }> {
  return new Promise((res, rej) => {
    const req = request(url, { timeout: 5000, agent: false }, (r) => {
      const chunks: Buffer[] = [];
      r.on("data", (c: Buffer) => chunks.push(c));
      r.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let body: any = text;
        try { body = JSON.parse(text); } catch { /* not JSON */ }
        res({ status: r.statusCode ?? 0, body });
      });
    });
    req.on("timeout", () => req.destroy(new Error(`timeout: ${url}`)));
    req.on("error", rej);
    req.end();
  });
}

async function choosePorts(dir: string, n: number): Promise<Ports[]> {
  // Reuse the previous ports if free: routes in the other nodes' configs name them.
  const file = join(dir, "ports.json");
  try {
    const old = JSON.parse(readFileSync(file, "utf8")) as Ports[];
    if (old.length === n && (await Promise.all(old.flatMap((p) => [p.client, p.cluster, p.monitor].map((x) => portFree(x))))).every(Boolean)) {
      return old;
    }
  } catch { /* first start */ }
  const all = await freePorts(n * 3);
  const ports = Array.from({ length: n }, (_, i) => ({ client: all[i * 3]!, cluster: all[i * 3 + 1]!, monitor: all[i * 3 + 2]! }));
  writeFileSync(file, JSON.stringify(ports, null, 2) + "\n");
  return ports;
}

export async function startNats(opts: NatsOptions): Promise<Nats> {
  const dir = resolve(opts.dir);
  const n = opts.nodes ?? 1;
  if (n !== 1 && n !== 3) throw new Error(`startNats: nodes must be 1 or 3, got ${String(n)}`);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  await ensureTools(["nats-server"]);
  const bin = toolPath("nats-server");
  mkdirSync(dir, { recursive: true });
  const ports = await choosePorts(dir, n);
  const servers: NatsServer[] = ports.map((p, i) => {
    const nodeDir = join(dir, `n${i}`);
    mkdirSync(nodeDir, { recursive: true });
    const s: NatsServer = {
      index: i,
      name: `n${i}`,
      url: `nats://127.0.0.1:${p.client}`,
      port: p.client,
      clusterPort: n > 1 ? p.cluster : undefined,
      monitorPort: p.monitor,
      monitorUrl: `http://127.0.0.1:${p.monitor}`,
      storeDir: join(nodeDir, "jetstream"),
      configFile: join(nodeDir, "nats-server.conf"),
      logFile: join(nodeDir, "nats-server.log"),
    };
    writeFileSync(s.configFile, configText({
      name: s.name, ports: p, routes: n > 1 ? ports.map((q) => q.cluster) : [], storeDir: s.storeDir,
      syncAlways: opts.syncAlways ?? false, cluster: n > 1, extra: opts.extraConfig,
    }));
    return s;
  });

  const launch = (s: NatsServer) => {
    s.process = startProcess({ name: `nats-server ${s.name}`, command: bin, args: ["-c", s.configFile], logFile: s.logFile, detach: opts.detach, env: childEnv() });
  };
  const waitHealthy = async (s: NatsServer) => {
    // /healthz is ok once the server (and JetStream, incl. its meta group in a cluster) is current.
    await waitFor(`${s.name} /healthz`, async () => (await getJson(`${s.monitorUrl}/healthz`)).status === 200,
      { timeoutMs, watch: s.process ? [s.process] : [], component: `nats-server ${s.name}`, logFile: s.logFile });
  };
  const monitor = async <T = any>(i: number, path: string): Promise<T> => {
    const s = servers[i];
    if (!s) throw new Error(`no NATS node ${i}`);
    const r = await getJson(s.monitorUrl + path);
    if (r.status !== 200) throw new Error(`${s.name} ${path}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    return r.body as T;
  };
  const stop = async () => {
    await Promise.all(servers.map((s) => s.process?.stop()));
  };

  try {
    servers.forEach(launch);
    await Promise.all(servers.map(waitHealthy));
    if (n > 1) {
      await waitFor("JetStream meta leader", async () => {
        const jsz = await monitor(0, "/jsz");
        return Boolean(jsz.meta_cluster?.leader) && (jsz.meta_cluster?.cluster_size ?? 0) >= n;
      }, { timeoutMs, component: "nats-server n0", logFile: servers[0]!.logFile });
    }
  } catch (e) {
    await stop();
    throw e;
  }

  const at = (i: number) => {
    const s = servers[i];
    if (!s) throw new Error(`no NATS node ${i} (have ${servers.length})`);
    return s;
  };
  return {
    urls: servers.map((s) => s.url),
    servers,
    monitor,
    async kill(i, signal = "SIGKILL") {
      const s = at(i);
      const p = s.process;
      if (!p || p.exitCode() !== undefined) return;
      p.signal(signal);
      // Signals that do not end nats-server (pause/continue, reload, reopen logs): no wait.
      if (["SIGSTOP", "SIGCONT", "SIGHUP", "SIGUSR1", "SIGUSR2"].includes(signal)) return;
      await p.exited;
      s.process = undefined;
    },
    async restart(i) {
      const s = at(i);
      await s.process?.stop();
      launch(s);
      await waitHealthy(s);
    },
    pids: () => Object.fromEntries(servers.filter((s) => s.process).map((s) => [`nats-${s.name}`, s.process!.pid])),
    stop,
  };
}
