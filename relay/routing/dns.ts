// A small stub-resolver client: one question to the configured servers, the answer with its TTLs.
//
// Hand-written over `dns-packet` (which encodes and decodes the wire format) because Node's
// resolver API gives no TTL for MX and TXT answers, and routing must cache MX answers for as long
// as their owners say (and NXDOMAIN for as long as the SOA minimum says, RFC 2308). It sends over
// UDP and retries over TCP when the answer is truncated; servers are tried in order, each with a
// timeout, as the system stub resolver does. No recursion, DNSSEC or EDNS beyond a 4096-byte
// UDP buffer: the configured servers are recursive resolvers (or, in tests, dnsmasq).
import { createSocket } from "node:dgram";
import { getServers } from "node:dns";
import { connect } from "node:net";
import { isIP } from "node:net";
import { randomInt } from "node:crypto";
import * as packet from "dns-packet";

export type RecordType = "A" | "AAAA" | "MX" | "TXT" | "CNAME" | "PTR" | "SOA";

export interface DnsRecord {
  name: string;
  type: string;
  ttl: number;
  data: unknown;
}

export interface DnsAnswer {
  /** NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ... */
  rcode: string;
  answers: DnsRecord[];
  authorities: DnsRecord[];
  /** host:port of the server that answered. */
  server: string;
}

/** A DNS failure that says nothing about the name: timeout, SERVFAIL, REFUSED, bad packet. */
export class DnsTemporaryError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "DnsTemporaryError";
    this.code = code;
  }
}

export interface DnsClientOptions {
  /** "host" or "host:port" (IPv4) or "[v6]:port"; empty: the system's resolvers. */
  servers?: string[];
  /** Per server and try. Default 2000 ms. */
  timeoutMs?: number;
  /** Rounds over the server list. Default 2. */
  rounds?: number;
}

interface Server {
  host: string;
  port: number;
}

export function parseServer(s: string): Server {
  const v = s.trim();
  if (isIP(v)) return { host: v, port: 53 };
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(v);
  if (v6 && isIP(v6[1]!) === 6) return { host: v6[1]!, port: v6[2] ? Number(v6[2]) : 53 };
  const m = /^([^:]+):(\d+)$/.exec(v);
  if (m && isIP(m[1]!) === 4 && Number(m[2]) > 0 && Number(m[2]) < 65536) return { host: m[1]!, port: Number(m[2]) };
  throw new Error(`MAILFLEET_DNS_SERVERS: "${s}" is not an IP address with an optional :port`);
}

const RCODE_TEMPORARY = new Set(["SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"]);

export class DnsClient {
  readonly servers: Server[];
  readonly #timeoutMs: number;
  readonly #rounds: number;

  constructor(opts: DnsClientOptions = {}) {
    const list = opts.servers && opts.servers.length ? opts.servers : getServers();
    this.servers = list.map(parseServer);
    if (!this.servers.length) throw new Error("DNS: no servers configured and none found in the system configuration");
    this.#timeoutMs = opts.timeoutMs ?? 2000;
    this.#rounds = opts.rounds ?? 2;
  }

  /**
   * Asks for `name`/`type`. Resolves with NOERROR and NXDOMAIN answers (authoritative statements
   * about the name); throws DnsTemporaryError when no server gives one.
   */
  async query(name: string, type: RecordType): Promise<DnsAnswer> {
    let last: Error | undefined;
    for (let round = 0; round < this.#rounds; round++) {
      for (const server of this.servers) {
        try {
          const res = await this.#ask(server, name, type);
          if (RCODE_TEMPORARY.has(res.rcode)) {
            last = new DnsTemporaryError(`E${res.rcode}`, `DNS ${res.rcode} for ${name}/${type} from ${res.server}`);
            continue;
          }
          return res;
        } catch (err) {
          last = err as Error;
        }
      }
    }
    if (last instanceof DnsTemporaryError) throw last;
    throw new DnsTemporaryError("ETIMEOUT", `DNS lookup failed for ${name}/${type}: ${last?.message ?? "no answer"}`);
  }

  async #ask(server: Server, name: string, type: RecordType): Promise<DnsAnswer> {
    const id = randomInt(1, 65535);
    const query: packet.Packet = {
      type: "query",
      id,
      flags: packet.RECURSION_DESIRED,
      questions: [{ type, name, class: "IN" }],
      additionals: [{ type: "OPT", name: ".", udpPayloadSize: 4096 } as packet.Answer],
    };
    let res = await this.#udp(server, packet.encode(query), id);
    if ((res.flags ?? 0) & packet.TRUNCATED_RESPONSE) res = await this.#tcp(server, packet.streamEncode(query), id);
    return {
      // dns-packet decodes the rcode but its typings omit it
      rcode: (res as { rcode?: string }).rcode ?? "NOERROR",
      answers: (res.answers ?? []).map(toRecord),
      authorities: (res.authorities ?? []).map(toRecord),
      server: `${server.host}:${server.port}`,
    };
  }

  #udp(server: Server, buf: Buffer, id: number): Promise<packet.DecodedPacket> {
    return new Promise((resolve, reject) => {
      const sock = createSocket(isIP(server.host) === 6 ? "udp6" : "udp4");
      const done = (err: Error | null, res?: packet.DecodedPacket) => {
        clearTimeout(timer);
        sock.close();
        if (err) reject(err);
        else resolve(res!);
      };
      const timer = setTimeout(() => done(new DnsTemporaryError("ETIMEOUT", `DNS timeout from ${server.host}:${server.port}`)), this.#timeoutMs);
      sock.on("error", (err) => done(err));
      sock.on("message", (msg) => {
        let res: packet.DecodedPacket;
        try {
          res = packet.decode(msg);
        } catch {
          return; // not a DNS packet: keep waiting for the real answer
        }
        if (res.id !== id) return; // a late answer to someone else's question
        done(null, res);
      });
      sock.send(buf, server.port, server.host, (err) => {
        if (err) done(err);
      });
    });
  }

  #tcp(server: Server, buf: Buffer, id: number): Promise<packet.DecodedPacket> {
    return new Promise((resolve, reject) => {
      const sock = connect({ host: server.host, port: server.port });
      let data = Buffer.alloc(0);
      const done = (err: Error | null, res?: packet.DecodedPacket) => {
        clearTimeout(timer);
        sock.destroy();
        if (err) reject(err);
        else resolve(res!);
      };
      const timer = setTimeout(() => done(new DnsTemporaryError("ETIMEOUT", `DNS/TCP timeout from ${server.host}:${server.port}`)), this.#timeoutMs);
      sock.on("error", (err) => done(err));
      sock.on("connect", () => sock.write(buf));
      sock.on("data", (chunk) => {
        data = Buffer.concat([data, chunk]);
        if (data.length < 2 || data.length < 2 + data.readUInt16BE(0)) return;
        try {
          const res = packet.streamDecode(data) as packet.DecodedPacket;
          if (res.id !== id) return done(new DnsTemporaryError("EBADRESP", "DNS/TCP answer with a foreign id"));
          done(null, res);
        } catch (err) {
          done(new DnsTemporaryError("EBADRESP", `DNS/TCP bad answer: ${(err as Error).message}`));
        }
      });
    });
  }
}

function toRecord(a: packet.Answer): DnsRecord {
  const r = a as { name: string; type: string; ttl?: number; data?: unknown };
  return { name: r.name, type: r.type, ttl: r.ttl ?? 0, data: r.data };
}

/** TXT data as strings (each record's character-strings joined, as RFC 7208/8461 read them). */
export function txtStrings(records: DnsRecord[]): string[] {
  return records
    .filter((r) => r.type === "TXT")
    .map((r) => {
      const d = r.data as Buffer | string | (Buffer | string)[];
      const parts = Array.isArray(d) ? d : [d];
      return parts.map((p) => (Buffer.isBuffer(p) ? p.toString("utf8") : String(p))).join("");
    });
}
