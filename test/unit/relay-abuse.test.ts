// The inbound listener's report parsing, pure of NATS: what cannot be read is taken and dropped.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PLAN_SCHEMA, DEFAULT_DELIVERY, type Plan } from "../../api/plan.ts";
import { buildIndex } from "../../relay/plan/index.ts";
import { processInbound, UnreadableReport, type InboundDeps } from "../../relay/inbound/reports.ts";

describe("inbound reports (relay/inbound/reports.ts)", () => {
  // A report that cannot be parsed will not parse next time either: the inbound listener takes it
  // and drops it (250) instead of answering 451 and having the reporting MTA retry it for days.
  it("a malformed report is an UnreadableReport, not a temporary failure", async () => {
    const plan: Plan = {
      schema: PLAN_SCHEMA, revision: "r1", generatedAt: new Date(0).toISOString(), providers: [], pools: [], domains: [],
      submitters: { credentials: [], networks: [] }, delivery: DEFAULT_DELIVERY,
    };
    const deps = { plan: () => buildIndex(plan, "mail/pool"), now: Date.now } as unknown as InboundDeps;
    const deep = (depth: number): string => depth === 0 ? "\r\nleaf\r\n" : `Content-Type: multipart/report; report-type=delivery-status; boundary="r${depth}"\r\n\r\n--r${depth}\r\n${deep(depth - 1)}`;
    for (const raw of [
      `From: MAILER-DAEMON@x.test\r\nMIME-Version: 1.0\r\n${deep(2000)}`,
      `From: fbl@x.test\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n--c\r\nnothing\r\n`,
    ]) {
      await assert.rejects(processInbound(Buffer.from(raw), ["postmaster@bounces.x.test"], deps), UnreadableReport);
    }
  });
});
