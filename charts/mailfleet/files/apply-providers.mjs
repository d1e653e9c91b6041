// Applies the chart's default MailboxProviders (a JSON array in $MAILFLEET_PROVIDERS_FILE) with
// server-side apply, as the chart's post-install/post-upgrade hook Job. Why a Job and not templates:
// Helm maps every object of a release to an API before it creates the first one, so a chart cannot
// ship a CRD and objects of that CRD in one release ("no matches for kind MailboxProvider").
//
// Field manager mailfleet-chart, without force: an upgrade updates the fields the chart still
// owns; a field someone changed (kubectl edit/apply takes it over) is a conflict, and their value
// stays: the provider is reported and skipped, the Job still succeeds.
//
// No dependencies (node:https and the pod's ServiceAccount token), so it runs with any Node 24
// image; the chart runs it in the operator's. MAILFLEET_API, MAILFLEET_TOKEN_FILE and
// MAILFLEET_CA_FILE point it elsewhere (the tests run it against a local API server).
import { readFileSync } from "node:fs";
import { request } from "node:https";

const SA = "/var/run/secrets/kubernetes.io/serviceaccount";
const FIELD_MANAGER = "mailfleet-chart";
const env = process.env;
const api = env.MAILFLEET_API ?? `https://${env.KUBERNETES_SERVICE_HOST}:${env.KUBERNETES_SERVICE_PORT}`;
const token = readFileSync(env.MAILFLEET_TOKEN_FILE ?? `${SA}/token`, "utf8").trim();
const ca = readFileSync(env.MAILFLEET_CA_FILE ?? `${SA}/ca.crt`);
const providers = JSON.parse(readFileSync(env.MAILFLEET_PROVIDERS_FILE ?? "/defaults/providers.json", "utf8"));
const deadline = Date.now() + Number(env.MAILFLEET_TIMEOUT_SECONDS ?? 120) * 1000;

function call(method, path, body, contentType) {
  const url = new URL(path, api);
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method, ca, timeout: 30_000,
      headers: { authorization: `Bearer ${token}`, accept: "application/json", ...(body ? { "content-type": contentType } : {}) },
    }, (res) => {
      let text = "";
      res.on("data", (d) => { text += d; });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("timeout", () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.on("error", reject);
    req.end(body);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The CRD was created a moment ago by the same release: wait until its resource is served.
for (;;) {
  const r = await call("GET", "/apis/mailfleet.io/v1alpha1/mailboxproviders?limit=1").catch((e) => ({ status: 0, text: e.message }));
  if (r.status === 200) break;
  if (r.status === 401 || r.status === 403) throw new Error(`not allowed to list MailboxProviders (${r.status}): ${r.text}`);
  if (Date.now() > deadline) throw new Error(`MailboxProviders are not served (is the CRD installed? crds.install): ${r.status} ${r.text}`);
  await sleep(1000);
}

let applied = 0;
const conflicts = [];
for (const p of providers) {
  const path = `/apis/mailfleet.io/v1alpha1/mailboxproviders/${encodeURIComponent(p.metadata.name)}?fieldManager=${FIELD_MANAGER}`;
  for (;;) {
    const r = await call("PATCH", path, JSON.stringify(p), "application/apply-patch+yaml").catch((e) => ({ status: 0, text: e.message }));
    if (r.status === 200 || r.status === 201) { applied++; break; }
    if (r.status === 409) {
      const fields = (() => { try { return JSON.parse(r.text).details.causes.map((c) => c.field).join(", "); } catch { return r.text; } })();
      conflicts.push(p.metadata.name);
      console.log(`MailboxProvider ${p.metadata.name}: kept as it is, changed outside the chart (${fields})`);
      break;
    }
    // A validation error is the chart's bug: say so and fail the hook.
    if (r.status === 400 || r.status === 422 || r.status === 403) throw new Error(`MailboxProvider ${p.metadata.name}: ${r.status} ${r.text}`);
    if (Date.now() > deadline) throw new Error(`MailboxProvider ${p.metadata.name}: ${r.status} ${r.text}`);
    await sleep(1000);
  }
}
console.log(`default MailboxProviders: ${applied} applied${conflicts.length ? `, ${conflicts.length} kept as changed outside the chart (${conflicts.join(", ")})` : ""}`);
