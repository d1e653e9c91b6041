// The operator's flags, its RBAC rules as data, logging without secrets, and the key generator
// process.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FlagError, parseFlags } from "../../operator/config.ts";
import { WorkerGenerator, publicFromPrivate } from "../../operator/dkim/keys.ts";
import { clusterRules, namespaceRules, roleObjects } from "../../operator/rbac.ts";
import { makeLogger, redact } from "../../operator/runtime/log.ts";

const base = ["--nats", "nats://127.0.0.1:4222"];

describe("operator flags", () => {
  it("takes the command line `mailfleet local up` uses, with defaults", () => {
    const c = parseFlags([...base], {});
    assert.deepEqual(c.natsUrls, ["nats://127.0.0.1:4222"]);
    assert.equal(c.leaderElect, true);
    assert.equal(c.leaseName, "mailfleet-operator");
    assert.equal(c.operatorNamespace, "default");
    assert.equal(c.leaseNamespace, "default");
    assert.equal(c.resyncMs, 600_000);
    assert.equal(c.metrics.port, 9400);
    assert.equal(c.webhook.port, 9443);
    assert.equal(c.webhook.urlHost, "127.0.0.1", "outside a cluster the API server calls the webhook by URL");
    assert.deepEqual(c.namespaces, []);
    assert.match(c.identity, /_\d+$/);
  });

  it("in a cluster the webhook is reached through its Service", () => {
    const c = parseFlags([...base, "--operator-namespace", "mailfleet-system"], { KUBERNETES_SERVICE_HOST: "10.0.0.1" });
    assert.equal(c.webhook.urlHost, undefined);
    assert.equal(c.webhook.serviceName, "mailfleet-operator-webhook");
    assert.equal(c.webhook.configFromChart, false, "the operator makes its own registration unless the chart does");
    assert.equal(parseFlags([...base, "--webhook-config-from-chart"], {}).webhook.configFromChart, true);
    assert.equal(parseFlags([...base, "--webhook-config-from-chart=true"], {}).webhook.configFromChart, true);
  });

  it("parses lists, booleans, durations and relay variables", () => {
    const c = parseFlags([...base, "--namespace", "a,b", "--namespace", "c", "--leader-elect=false", "--resync", "90s", "--dns-servers", "127.0.0.53,[::1]:5353",
      "--relay-env", "MAILFLEET_DELIVERY_PORT=2525", "--relay-env", "MAILFLEET_LOG_LEVEL=debug", "--nats", "nats://a:4222,nats://b:4222"], {});
    assert.deepEqual(c.namespaces, ["a", "b", "c"]);
    assert.equal(c.leaderElect, false);
    assert.equal(c.resyncMs, 90_000);
    assert.deepEqual(c.dnsServers, ["127.0.0.53", "[::1]:5353"]);
    assert.deepEqual(c.relay.env, { MAILFLEET_DELIVERY_PORT: "2525", MAILFLEET_LOG_LEVEL: "debug" });
    assert.deepEqual(c.relay.natsUrls, ["nats://a:4222", "nats://b:4222"]);
    assert.equal(parseFlags([...base, "--leader-elect"], {}).leaderElect, true, "a bare boolean flag means true");
  });

  it("--relay-resources: the relays' default container resources as JSON (the chart's relay.resources)", () => {
    const r = { requests: { cpu: "100m", memory: "256Mi" }, limits: { memory: "1Gi", cpu: 2 } };
    assert.deepEqual(parseFlags([...base, "--relay-resources", JSON.stringify(r)], {}).relay.resources, r);
    assert.equal(parseFlags([...base, "--relay-resources", "{}"], {}).relay.resources, undefined, "{} (the chart's default) is none");
    assert.equal(parseFlags([...base], {}).relay.resources, undefined);
  });

  it("refuses bad input with an error naming the flag", () => {
    const bad: [string[], RegExp][] = [
      [[], /--nats is required/],
      [["--nats", "localhost"], /--nats: "localhost" is not a NATS URL/],
      [[...base, "--webhook-port", "70000"], /--webhook-port must be a whole number from 0 to 65535/],
      [[...base, "--leader-elect", "maybe"], /--leader-elect must be true or false/],
      [[...base, "--resync", "soon"], /--resync must be a duration/],
      [[...base, "--namespace", "Bad_NS"], /--namespace must be a lower-case DNS label/],
      [[...base, "--dns-servers", "dns.example.com"], /--dns-servers: "dns.example.com" is not an IP address/],
      [[...base, "--relay-env", "MAILFLEET_POOL=x/y"], /--relay-env: MAILFLEET_POOL is set by the operator/],
      [[...base, "--relay-env", "NOPE=1"], /--relay-env: NOPE is not a relay variable/],
      [[...base, "--relay-env", "MAILFLEET_DELIVERY_PORT=99999"], /--relay-env: MAILFLEET_DELIVERY_PORT/],
      [[...base, "--nats-replicas", "2"], /--nats-replicas must be 1, 3 or 5/],
      [[...base, "--kubeconfig", "/nonexistent/kubeconfig"], /--kubeconfig: file \/nonexistent\/kubeconfig does not exist/],
      [[...base, "--frobnicate"], /Unknown option '--frobnicate'/],
      [[...base, "--webhook-cert-manager", "nope"], /--webhook-cert-manager must be namespace\/name/],
      [[...base, "--relay-resources", "{cpu: 1}"], /--relay-resources must be JSON/],
      [[...base, "--relay-resources", "[]"], /--relay-resources must be a JSON object/],
      [[...base, "--relay-resources", '{"request":{"cpu":"1"}}'], /--relay-resources: unknown key "request"/],
      [[...base, "--relay-resources", '{"limits":{"memory":"1 GB"}}'], /--relay-resources: limits.memory must be a quantity/],
    ];
    for (const [args, re] of bad) assert.throws(() => parseFlags(args, {}), (e: Error) => e instanceof FlagError && re.test(e.message), args.join(" "));
  });
});

describe("RBAC as data", () => {
  it("every rule says why; nothing is granted on pods, and secrets are never granted with a wildcard", () => {
    const rules = [...clusterRules({ webhookConfigName: "mailfleet-operator" }), ...namespaceRules({ leaseName: "mailfleet-operator" })];
    for (const r of rules) {
      assert.ok(r.why.length > 10, `${r.resources.join(",")}: why`);
      assert.ok(!r.verbs.includes("*") && !r.resources.includes("*") && !r.apiGroups.includes("*"), "no wildcards");
      assert.ok(!r.resources.includes("pods"), "relays are managed through their workloads");
    }
    const lease = rules.filter((r) => r.resources.includes("leases"));
    assert.ok(lease.every((r) => r.verbs.includes("create") || r.resourceNames?.includes("mailfleet-operator")), "Lease access is by name");
    const o = roleObjects({ name: "mailfleet-operator", namespace: "mailfleet-system", webhookConfigName: "mailfleet-operator", leaseName: "mailfleet-operator" });
    assert.equal(o.clusterRole.kind, "ClusterRole");
    assert.ok(o.clusterRole.rules.every((r) => !("why" in r)));
  });
});

describe("logging", () => {
  it("writes JSON lines and never secret values", () => {
    const lines: string[] = [];
    const log = makeLogger({ write: (l) => lines.push(l), base: { identity: "x" } }).child({ controller: "domain" });
    log.info("hello", { secretName: "mail/app-smtp", password: "hunter2", privateKey: "-----BEGIN", count: 3, error: new Error("boom") });
    log.debug("hidden");
    assert.equal(lines.length, 1);
    const j = JSON.parse(lines[0]!);
    assert.equal(j.msg, "hello");
    assert.equal(j.controller, "domain");
    assert.equal(j.secretName, "mail/app-smtp");
    assert.equal(j.password, "[redacted]");
    assert.equal(j.privateKey, "[redacted]");
    assert.equal(j.error, "boom");
    assert.deepEqual(redact({ token: "t", tokenCount: 2 }), { token: "[redacted]", tokenCount: 2 });
  });
});

describe("key generator threads", () => {
  it("makes keys on worker threads at a lower priority and hands them back", async () => {
    const g = new WorkerGenerator(2);
    try {
      const [rsa, ed] = await Promise.all([g.generate("RSA2048"), g.generate("Ed25519")]);
      assert.deepEqual(publicFromPrivate(rsa.privatePem), { keyType: "RSA2048", publicKey: rsa.publicKey });
      assert.deepEqual(publicFromPrivate(ed.privatePem), { keyType: "Ed25519", publicKey: ed.publicKey });
    } finally {
      g.close();
    }
  });
});
