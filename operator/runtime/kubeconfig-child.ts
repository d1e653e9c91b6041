// Resolves the operator's kubeconfig with @kubernetes/client-node in a short-lived process and
// prints the connection (server, TLS material, auth headers) as JSON on stdout. client-node's
// KubeConfig is the reference for kubeconfig semantics (in-cluster, exec plugins, OIDC, cloud auth
// providers), but importing it loads its whole generated API, about 90 MB of resident memory the
// operator would carry for three fields; in a process of its own that memory is given back.
import { KubeConfig } from "@kubernetes/client-node";

const path = process.argv[2];
const kc = new KubeConfig();
if (path) kc.loadFromFile(path);
else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
else kc.loadFromDefault();
const cluster = kc.getCurrentCluster();
if (!cluster) {
  process.stderr.write("the kubeconfig has no current cluster\n");
  process.exit(2);
}
const opts: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized?: boolean; servername?: string; headers?: Record<string, string> } = {};
await kc.applyToHTTPSOptions(opts as never);
const user = kc.getCurrentUser() as { exec?: unknown; authProvider?: { name?: string; config?: Record<string, string> } } | null;
const tokenFile = user?.authProvider?.name === "tokenFile" ? user.authProvider.config?.tokenFile : undefined;
process.stdout.write(JSON.stringify({
  server: cluster.server,
  ...(opts.ca ? { ca: opts.ca.toString() } : {}),
  ...(opts.cert ? { cert: opts.cert.toString() } : {}),
  ...(opts.key ? { key: opts.key.toString() } : {}),
  ...(opts.rejectUnauthorized === false ? { rejectUnauthorized: false } : {}),
  ...(opts.servername ? { servername: opts.servername } : {}),
  headers: opts.headers ?? {},
  ...(tokenFile ? { tokenFile } : {}),
  // Exec plugins and auth providers hand out tokens that expire: resolve again from time to time.
  dynamic: Boolean(user?.exec || (user?.authProvider && user.authProvider.name !== "tokenFile")),
}));
