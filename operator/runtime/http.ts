// /metrics, /healthz and /readyz. Live while the event loop turns; ready once the caches have
// synced (and the webhook serves, when enabled), on every replica, leader or not: a standby is
// ready to take over and serves admission reviews meanwhile.
import { type Server, createServer } from "node:http";
import type { Metrics } from "./metrics.ts";

export type Checks = { ready(): { ok: boolean; detail: string } };

export function startHttp(o: { host: string; port: number; metrics: Metrics; checks: Checks }): Promise<Server> {
  const server = createServer(async (req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/metrics") {
      try {
        const body = await o.metrics.registry.metrics();
        res.writeHead(200, { "content-type": o.metrics.registry.contentType });
        res.end(body);
      } catch (err) {
        res.writeHead(500);
        res.end(String(err));
      }
      return;
    }
    if (path === "/healthz" || path === "/livez") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
      return;
    }
    if (path === "/readyz") {
      const r = o.checks.ready();
      res.writeHead(r.ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(`${r.detail}\n`);
      return;
    }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve(server));
  });
}
