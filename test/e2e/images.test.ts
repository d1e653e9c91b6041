// The images users build: operator/Dockerfile and relay/Dockerfile, built here with buildah on a
// local stand-in for node:24-slim (test/env/images.ts), then the relay image run for real under
// podman (host network, read-only root filesystem, its non-root user) against a real nats-server
// with a published plan: it delivers a queued message to a Postfix peer found through a dnsmasq
// peer, and accepts a message over SMTP submission when its build starts the submission listener.
// Figures (build seconds, image sizes) go to the test's diagnostics.
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import nodemailer from "nodemailer";
import { PROJECT_ROOT, buildImage, ensureBaseImage, imageInspect, runContainer, runOnce, podmanArgs, type BuildResult, type Container } from "../env/images.ts";
import { startNats, type Nats } from "../env/nats.ts";
import { startDns, type DnsHandle } from "../env/peers/dns.ts";
import { startPostfix, type PostfixHandle } from "../env/peers/postfix.ts";
import { POOL, makePlan, publishPlan, submit } from "../integration/delivery-harness.ts";
import { STREAM_BODY } from "../../relay/queue/topology.ts";

const SOURCE = { address: "127.0.31.100", hostname: "out.sender.test" };
const MX = "127.0.31.1";
const DNS = "127.0.53.31";
const PORTS = { http: 18480, submission: 18487, inbound: 18425 };
const mb = (n: number) => `${(n / 1e6).toFixed(0)} MB`;

describe("operator and relay images", { timeout: 3_600_000 }, () => {
  let base: BuildResult;
  const built: Record<string, BuildResult> = {};

  before(async () => {
    base = await ensureBaseImage();
    for (const kind of ["operator", "relay"] as const) built[kind] = await buildImage(kind, { base: base.image });
  });

  it("both build from their Dockerfiles on the local Node 24 base", (t) => {
    t.diagnostic(`base ${base.image}: ${mb(base.sizeBytes)}${base.cached ? " (cached)" : `, built in ${base.seconds.toFixed(0)} s`}`);
    for (const [k, b] of Object.entries(built)) t.diagnostic(`${k} ${b.image}: ${mb(b.sizeBytes)}, built in ${b.seconds.toFixed(0)} s`);
    assert.ok(built.operator && built.relay);
  });

  for (const kind of ["operator", "relay"] as const) {
    it(`${kind}: numeric non-root user, health check, entrypoint, production dependencies only`, async () => {
      const img = await imageInspect(built[kind]!.image);
      assert.equal(img.Config.User, "65532:65532");
      assert.deepEqual(img.Config.Entrypoint, ["node", `${kind}/main.ts`]);
      assert.equal(img.Config.WorkingDir, "/app");
      const hc = img.Healthcheck ?? img.Config.Healthcheck;
      assert.ok(hc && hc.Test.join(" ").includes("/healthz"), `HEALTHCHECK: ${JSON.stringify(hc)}`);
      // Packages npm marks dev-only in the lock file (typescript, the node binary package, ...).
      const lock = JSON.parse(readFileSync(join(PROJECT_ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, { dev?: boolean }> };
      const devOnly = Object.entries(lock.packages).filter(([k, v]) => v.dev && /^node_modules\/(@[^/]+\/)?[^/]+$/.test(k)).map(([k]) => k.slice("node_modules/".length));
      assert.ok(devOnly.includes("typescript") && devOnly.includes("node"));
      const r = await runOnce({
        image: built[kind]!.image, entrypoint: "node",
        env: { DEV_ONLY: devOnly.join(",") },
        args: ["-e", [
          "const fs = require('node:fs');",
          "const present = process.env.DEV_ONLY.split(',').filter((p) => fs.existsSync('/app/node_modules/' + p));",
          "console.log(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), node: process.version, app: fs.readdirSync('/app').sort(),",
          "  present, zod: fs.existsSync('/app/node_modules/zod'), nats: fs.existsSync('/app/node_modules/@nats-io/jetstream') }));",
        ].join(" ")],
      });
      assert.equal(r.code, 0, r.stdout);
      const info = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      assert.equal(info.uid, 65532);
      assert.equal(info.gid, 65532);
      assert.match(info.node, /^v24\./);
      assert.deepEqual(info.app, kind === "relay" ? ["api", "node_modules", "package.json", "relay"] : ["api", "node_modules", "operator", "package.json", "relay"]);
      assert.deepEqual(info.present, [], "no devDependency is in the image");
      assert.ok(info.zod && info.nats, "production dependencies are");
    });
  }

  it("operator: the image's module graph loads (--help prints the usage and exits)", async () => {
    const r = await runOnce({ image: built.operator!.image, args: ["--help"] });
    assert.match(r.stdout, /usage: node operator\/main\.ts --nats/);
  });

  describe("relay container against real NATS, DNS and Postfix", () => {
    let dir: string;
    let nats: Nats;
    let dns: DnsHandle;
    let pf: PostfixHandle;
    let nc: NatsConnection;
    let relay: Container;
    let components: string[] = [];

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "mf-images-"));
      chmodSync(dir, 0o755);
      nats = await startNats({ dir: join(dir, "nats") });
      dns = await startDns({
        dir: join(dir, "dns"), address: DNS,
        records: [
          { type: "MX", name: "acme.test", value: "mx1.gprov.test", priority: 10 },
          { type: "A", name: "mx1.gprov.test", value: MX },
        ],
      });
      pf = await startPostfix({ dir: join(dir, "postfix"), domains: ["acme.test"], listeners: [{ address: MX, hostname: "mx1.gprov.test" }] });
      nc = await connect({ servers: nats.urls });
      const plan = makePlan({ providers: [{ name: "gprov", mxSuffixes: ["gprov.test"] }], addresses: [SOURCE], domains: [{ domain: "sender.test" }] });
      // Loopback clients may submit as sender.test without AUTH (the plan's trusted networks).
      plan.submitters = { credentials: [], networks: [{ cidr: "127.0.0.0/8", domains: ["sender.test"] }] } as typeof plan.submitters;
      plan.revision = "images-test-1";
      await publishPlan(nc, plan);

      relay = runContainer({
        image: built.relay!.image,
        name: `mailfleet-relay-test-${process.pid}`,
        // Read-only root filesystem and no tmpfs at all: the relay must write nothing.
        readOnly: true,
        env: {
          MAILFLEET_NATS_URL: nats.urls.join(","),
          MAILFLEET_POOL: POOL,
          MAILFLEET_RELAY_ID: "relay-image-test",
          MAILFLEET_ADDRESSES: SOURCE.address,
          MAILFLEET_LISTEN_ADDRESS: SOURCE.address,
          MAILFLEET_HTTP_PORT: String(PORTS.http),
          MAILFLEET_SUBMISSION_PORT: String(PORTS.submission),
          MAILFLEET_INBOUND_PORT: String(PORTS.inbound),
          MAILFLEET_DNS_SERVERS: dns.server,
          MAILFLEET_SECRETS_DIR: "/nonexistent/secrets",
          MAILFLEET_TLS_DIR: "/nonexistent/tls",
          MAILFLEET_LOG_LEVEL: "info",
        },
      });
      const deadline = Date.now() + 120_000;
      for (;;) {
        const m = /"msg":"relay started","components":(\[[^\]]*\])/.exec(relay.output());
        if (m) { components = JSON.parse(m[1]!); break; }
        if (relay.exitCode() !== undefined) throw new Error(`relay container exited (${relay.exitCode()}):\n${relay.output()}`);
        if (Date.now() > deadline) throw new Error(`relay container did not start within 120 s:\n${relay.output()}`);
        await sleep(250);
      }
      const planDeadline = Date.now() + 60_000;
      while (!/images-test-1/.test(relay.output()) && Date.now() < planDeadline) await sleep(250);
    });
    after(async () => {
      await relay?.stop();
      await nc?.close();
      await pf?.stop();
      await dns?.stop();
      await nats?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("runs as 65532 with a read-only root filesystem", async (t) => {
      t.diagnostic(`relay components: ${components.join(", ")}`);
      const r = await relay.exec(["node", "-e", [
        "const fs = require('node:fs'); const out = { uid: process.getuid() };",
        "for (const p of ['/app/x', '/tmp/x', '/x', '/home/x']) { try { fs.writeFileSync(p, 'x'); out[p] = 'written'; } catch (e) { out[p] = e.code; } }",
        "console.log(JSON.stringify(out));",
      ].join(" ")]);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim());
      assert.equal(out.uid, 65532);
      for (const p of ["/app/x", "/tmp/x", "/x", "/home/x"]) assert.equal(out[p], "EROFS", `${p}: ${out[p]}`);
      assert.ok(relay.exitCode() === undefined, `the relay is still running:\n${relay.output()}`);
    });

    it("applies the published plan", () => {
      assert.match(relay.output(), /images-test-1/, `the relay's log names the plan revision:\n${relay.output().slice(-3000)}`);
    });

    it("delivers a queued message from its source address to the provider's MX (Postfix, found through DNS)", async () => {
      const js = jetstream(nc);
      const { qid } = await submit(js, { rcpts: ["alice@acme.test"], subject: "through the relay image" });
      const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === "alice@acme.test", timeoutMs: 120_000 });
      assert.ok(m, "delivered");
      assert.match(m!.raw.toString("utf8"), /Subject: through the relay image/);
      assert.equal(m!.clientIp, SOURCE.address, "sent from the pool's source address");
      assert.ok(qid);
    });

    it("accepts a message over SMTP submission (250 with its queue id) and stores it in JetStream", async () => {
      assert.ok(components.includes("submission"), `the relay starts its submission listener (components: ${components.join(", ")})`);
      const transport = nodemailer.createTransport({ host: SOURCE.address, port: PORTS.submission, secure: false, ignoreTLS: true, name: "client.test" });
      const jsm = await jetstreamManager(nc);
      // The stream's last sequence, not its message count: the body of the message the test before
      // sent may be removed (delivered) at the same moment, and so may this one's.
      const before = (await jsm.streams.info(STREAM_BODY)).state.last_seq;
      const info = await transport.sendMail({ from: "app@sender.test", to: "bob@acme.test", subject: "submitted to the relay image", text: "hello" });
      transport.close();
      assert.match(info.response, /^250 .*queued as [0-9a-z]{20}/);
      assert.ok((await jsm.streams.info(STREAM_BODY)).state.last_seq > before, "the body was stored in JetStream");
      const [m] = await pf.waitForMessages(1, { filter: (x) => x.deliveredTo === "bob@acme.test", timeoutMs: 120_000 });
      assert.match(m!.raw.toString("utf8"), /Subject: submitted to the relay image/);
    });

    it("its HEALTHCHECK reports healthy", async () => {
      assert.ok(components.includes("http"), `the relay starts its HTTP listener, /healthz (components: ${components.join(", ")})`);
      const { execFile } = await import("node:child_process");
      const r = await new Promise<{ code: number; out: string }>((res) => execFile("podman", podmanArgs("healthcheck", "run", relay.name), { encoding: "utf8" }, (e, so, se) => res({ code: e ? Number(e.code) : 0, out: so + se })));
      assert.equal(r.code, 0, `podman healthcheck run: ${r.out}`);
    });
  });
});
