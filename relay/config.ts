// Relay configuration from its environment: the contract between the operator (which writes these
// variables into the relay Pod template), the test runner (which plays the kubelet) and the relay.
import { z } from "zod";
import { parseDuration, parseQuantity } from "../api/units.ts";

const list = z.string().default("").transform((s) => s.split(",").map((x) => x.trim()).filter(Boolean));
const port = (d: number) => z.coerce.number().int().min(0).max(65535).default(d);
const count = (d: number) => z.coerce.number().int().min(1).default(d);
const duration = (d: string) => z.string().default(d).transform((s, ctx) => {
  try { return parseDuration(s); } catch (e) { ctx.addIssue({ code: "custom", message: (e as Error).message }); return z.NEVER; }
});

export const relayEnv = z.object({
  /** NATS server URLs, comma-separated. */
  MAILFLEET_NATS_URL: list.refine((l) => l.length > 0, "needs at least one NATS URL"),
  /** Optional NATS credentials file (mounted Secret). */
  MAILFLEET_NATS_CREDS: z.string().optional(),
  /** The pool this relay sends for, namespace/name. */
  MAILFLEET_POOL: z.string().regex(/^[a-z0-9-]+\/[a-z0-9.-]+$/, "must be namespace/name"),
  /** Unique id of this relay (the Pod name). */
  MAILFLEET_RELAY_ID: z.string().min(1),
  /** Node the Pod runs on (HostNetwork egress: which pool addresses are ours). */
  MAILFLEET_NODE_NAME: z.string().default(""),
  /**
   * Source addresses this relay sends from. PerAddress egress: the one address of its Deployment.
   * Empty: the pool's addresses assigned to this node, or present on this host's interfaces.
   */
  MAILFLEET_ADDRESSES: list,
  /** Mounted pool Secret: DKIM keys (dkim.<domain>.<selector>.pem) and webhook secrets. */
  MAILFLEET_SECRETS_DIR: z.string().default("/etc/mailfleet/secrets"),
  /** Mounted TLS Secret for STARTTLS on submission (tls.crt, tls.key). */
  MAILFLEET_TLS_DIR: z.string().default("/etc/mailfleet/tls"),
  /** Address the listeners bind (tests use a loopback address per relay). */
  MAILFLEET_LISTEN_ADDRESS: z.string().default("0.0.0.0"),
  MAILFLEET_SUBMISSION_PORT: port(587),
  MAILFLEET_INBOUND_PORT: port(25),
  /** HTTP: injection API, /metrics, /healthz, /readyz. */
  MAILFLEET_HTTP_PORT: port(8080),
  /** DNS servers for MX, MTA-STS and blocklist lookups (host[:port], comma-separated); empty: system. */
  MAILFLEET_DNS_SERVERS: list,
  /** SMTP port of receivers (25; tests point it elsewhere). */
  MAILFLEET_DELIVERY_PORT: port(25),
  /** How long an envelope fetched by a relay that died stays invisible before another relay gets it
   * (the ready queues' AckWait, relay/delivery/consumers.ts; live relays extend it while they work). */
  MAILFLEET_DELIVERY_ACK_WAIT: duration("60s"),
  MAILFLEET_MAX_MESSAGE_SIZE: z.string().default("25Mi").transform((s) => parseQuantity(s)),
  /** SMTP listeners (submission and inbound), relay/README.md "Security": connections from all clients, and from one address. */
  MAILFLEET_SMTP_MAX_CONNECTIONS: count(5000),
  MAILFLEET_SMTP_MAX_CONNECTIONS_PER_IP: count(100),
  /** No byte from the client for this long closes the connection. */
  MAILFLEET_SMTP_IDLE_TIMEOUT: duration("60s"),
  /** A command line (or a TLS handshake, or the start of DATA) must be complete within this. */
  MAILFLEET_SMTP_COMMAND_TIMEOUT: duration("30s"),
  /** Bytes per second DATA must keep up once its first command timeout is used. */
  MAILFLEET_SMTP_MIN_DATA_RATE: count(1024),
  /** Replicas of the mail streams: 1 (single NATS node, fsync before 250) or 3 (quorum before 250). */
  MAILFLEET_STREAM_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  MAILFLEET_LOG_LEVEL: z.enum(["debug", "info", "warn", "error"]).default("info"),
  /** Lane limits: fleet = shared by every relay over NATS (relay/shaper/fleet.ts); local = per relay (tests, development). */
  MAILFLEET_SHAPER: z.enum(["fleet", "local"]).default("fleet"),
});
export type RelayConfig = z.output<typeof relayEnv>;

export function loadRelayConfig(env: Record<string, string | undefined> = process.env): RelayConfig {
  const result = relayEnv.safeParse(env);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`);
    throw new Error(`relay configuration is invalid:\n  ${lines.join("\n  ")}`);
  }
  return result.data;
}
