import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createSocket, type RemoteInfo, type Socket } from "node:dgram";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RemoteIngressEdge, RemoteIngressHub } from "../../src/index.js";
import { freeUdpPort } from "./ports.js";
import { takeProxyHeader, type ProxyHeader } from "./proxy-header.js";
import { startHub, startPinnedEdge, type EdgeStartOptions, type HubFixture, type HubStartOptions } from "./tunnel.js";
import { waitFor } from "./wait.js";

export interface UdpTunnelFixture {
  readonly hub: RemoteIngressHub;
  readonly edge: RemoteIngressEdge;
  readonly hubFixture: HubFixture;
  readonly edgeId: string;
  readonly secret: string;
  /** The edge's public UDP port. */
  readonly udpPort: number;
  stop(): Promise<void>;
}

/** Hub + one pinned edge whose single UDP port forwards to `target`; resolves once the UDP listener is up. */
export const startUdpTunnel = async (options: {
  target: string;
  proxyUdp: "v2" | "none";
  hubExtra?: Partial<HubStartOptions>;
  edgeExtra?: Partial<EdgeStartOptions>;
  beforeEdgeStart?: (edge: RemoteIngressEdge, hub: RemoteIngressHub) => void;
}): Promise<UdpTunnelFixture> => {
  const edgeId = "edge-udp";
  const secret = randomBytes(24).toString("base64url");
  const udpPort = await freeUdpPort();
  const hubFixture = await startHub({
    edges: [{ id: edgeId, secret, listenPorts: [], listenPortsUdp: [udpPort], targets: { [udpPort]: options.target } }],
    extra: { proxyProtocol: { tcp: "v1", udp: options.proxyUdp }, ...options.hubExtra },
  });
  const { edge, stop } = await startPinnedEdge(hubFixture, {
    edgeId,
    secret,
    edgeOptions: { reconnectInitialMs: 50, ...options.edgeExtra },
    beforeEdgeStart: options.beforeEdgeStart,
    ready: (edge) =>
      waitFor(
        async () => {
          const status = await edge.getStatus();
          return status.connected && (status.listenPortsUdp ?? []).includes(udpPort);
        },
        { timeoutMs: 15_000, what: `edge ${edgeId} connected and listening on udp ${udpPort}` },
      ),
  });
  return { hub: hubFixture.hub, edge, hubFixture, edgeId, secret, udpPort, stop };
};

/** What the echo target saw from one peer (one hub upstream socket = one UDP session). */
export interface UdpEchoPeer {
  /** `address:port` of the hub's upstream socket. */
  readonly peer: string;
  /** The session's PROXY v2 header (names the client behind the edge). */
  readonly header: ProxyHeader;
  /** Datagrams received after the header (each echoed once). */
  datagrams: number;
}

/** A UDP echo target: the first datagram from each peer must be a PROXY v2 header (recorded), the rest are echoed. */
export interface UdpEchoTarget {
  readonly port: number;
  /** Header of each peer (hub upstream socket), in arrival order. */
  readonly headers: ProxyHeader[];
  /** Per peer, in arrival order: its header and how many datagrams it sent after it. */
  readonly peers: UdpEchoPeer[];
  readonly errors: string[];
  close(): Promise<void>;
}

/** Socket buffers of the echo target (the kernel caps them at net.core.[rw]mem_max): it serves every session on one
 * socket, and with the default ~200 KiB a burst of a few hundred small datagrams overflows it, so the kernel would
 * drop headers and data before the target sees them. */
const ECHO_SOCKET_BUFFER = 4 * 1024 * 1024;

export const startUdpProxyEcho = async (): Promise<UdpEchoTarget> => {
  const socket = createSocket({ type: "udp4", recvBufferSize: ECHO_SOCKET_BUFFER, sendBufferSize: ECHO_SOCKET_BUFFER });
  const headers: ProxyHeader[] = [];
  const peers: UdpEchoPeer[] = [];
  const errors: string[] = [];
  const seen = new Map<string, UdpEchoPeer | undefined>();
  socket.on("message", (msg: Buffer, rinfo: RemoteInfo) => {
    const peer = `${rinfo.address}:${rinfo.port}`;
    if (!seen.has(peer)) {
      seen.set(peer, undefined);
      try {
        const taken = takeProxyHeader(msg);
        if (taken === undefined) errors.push(`${peer}: truncated PROXY header`);
        else {
          headers.push(taken.header);
          const entry: UdpEchoPeer = { peer, header: taken.header, datagrams: 0 };
          peers.push(entry);
          seen.set(peer, entry);
          if (taken.rest.length > 0) {
            entry.datagrams += 1;
            socket.send(taken.rest, rinfo.port, rinfo.address);
          }
        }
      } catch (error) {
        errors.push(`${peer}: ${String(error)}`);
      }
      return;
    }
    const entry = seen.get(peer);
    if (entry !== undefined) entry.datagrams += 1;
    socket.send(msg, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    port: socket.address().port,
    headers,
    peers,
    errors,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
};

/** A UDP client socket bound on loopback. */
export const udpClient = async (): Promise<Socket> => {
  const socket = createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return socket;
};

/** Sends `payload` to 127.0.0.1:`port` until a reply arrives (resends every `everyMs`), up to `timeoutMs`. */
export const udpRequest = (socket: Socket, port: number, payload: Buffer, timeoutMs = 5000, everyMs = 300): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const send = () => socket.send(payload, port, "127.0.0.1");
    const onMessage = (msg: Buffer) => {
      cleanup();
      resolve(msg);
    };
    const timer = setInterval(send, everyMs);
    const deadline = setTimeout(() => {
      cleanup();
      reject(new Error(`no UDP reply from 127.0.0.1:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    const cleanup = () => {
      clearInterval(timer);
      clearTimeout(deadline);
      socket.off("message", onMessage);
    };
    socket.on("message", onMessage);
    send();
  });

export interface Dnsmasq {
  readonly port: number;
  stop(): Promise<void>;
}

/**
 * dnsmasq on 127.0.0.1:<free port> answering `portway.test` with 10.1.2.3 (and nothing else).
 *
 * dnsmasq binds the port on TCP as well as UDP, without SO_REUSEADDR, so a port that is free for UDP can still be
 * refused ("Address already in use") by a TCP socket of another test, even one in TIME-WAIT (a test or bench that
 * opens thousands of connections leaves the whole ephemeral range in TIME-WAIT for a minute). When dnsmasq exits
 * at start for that reason, another port is tried.
 */
export const startDnsmasq = async (): Promise<Dnsmasq> => {
  const ATTEMPTS = 5;
  for (let attempt = 1; ; attempt++) {
    const started = await startDnsmasqOnce();
    if (started.ok) return started.dnsmasq;
    if (!started.addressInUse || attempt >= ATTEMPTS) throw started.error;
  }
};

/**
 * A port under Linux's ephemeral range (32768–60999 by default), free for TCP and UDP right now. Ports in the
 * ephemeral range may be held by TIME-WAIT sockets, which Node's own bind check ignores (it sets SO_REUSEADDR) but
 * dnsmasq's bind does not; nobody connects from ports below it.
 */
const portBelowEphemeralRange = async (): Promise<number> => {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await portFree(port)) return port;
  }
};

const portFree = async (port: number): Promise<boolean> => {
  const tcp = await new Promise<boolean>((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
  });
  if (!tcp) return false;
  return new Promise<boolean>((resolve) => {
    const socket = createSocket("udp4");
    socket.once("error", () => {
      socket.close();
      resolve(false);
    });
    socket.bind(port, "127.0.0.1", () => socket.close(() => resolve(true)));
  });
};

type DnsmasqStart = { ok: true; dnsmasq: Dnsmasq } | { ok: false; addressInUse: boolean; error: Error };

const startDnsmasqOnce = async (): Promise<DnsmasqStart> => {
  const dir = await mkdtemp(join(tmpdir(), "portway-dnsmasq-"));
  const port = await portBelowEphemeralRange();
  const child: ChildProcess = spawn(
    "/usr/sbin/dnsmasq",
    [
      "--no-daemon",
      `--port=${port}`,
      "--listen-address=127.0.0.1",
      "--bind-interfaces",
      "--no-resolv",
      "--no-hosts",
      "--address=/portway.test/10.1.2.3",
      `--pid-file=${join(dir, "dnsmasq.pid")}`,
      "--user=root",
      "--log-facility=-",
    ],
    // Start-up errors go to stdout or stderr depending on the dnsmasq build: keep both.
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let output = "";
  child.stdout?.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  const probe = await udpClient();
  try {
    // A minimal DNS query for portway.test A; any reply means dnsmasq is up.
    const query = Buffer.concat([
      Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
      Buffer.from([7, ...Buffer.from("portway"), 4, ...Buffer.from("test"), 0, 0, 1, 0, 1]),
    ]);
    const answered = await Promise.race([
      udpRequest(probe, port, query, 5000, 200).then(
        () => "answered" as const,
        (error: unknown) => new Error(`dnsmasq on port ${port} did not answer (${String(error)}; output: ${output})`),
      ),
      exited.then(() => new Error(`dnsmasq on port ${port} exited at start (code ${String(child.exitCode)}): ${output.trim()}`)),
    ]);
    if (answered === "answered") return { ok: true, dnsmasq: { port, stop } };
    await stop();
    return { ok: false, addressInUse: /address already in use/i.test(output), error: answered };
  } finally {
    probe.close();
  }
};
