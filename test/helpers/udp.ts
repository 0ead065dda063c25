import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createSocket, type RemoteInfo, type Socket } from "node:dgram";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RemoteIngressEdge, type RemoteIngressHub } from "../../src/index.js";
import { freeUdpPort } from "./ports.js";
import { takeProxyHeader, type ProxyHeader } from "./proxy-header.js";
import { startHub, type EdgeStartOptions, type HubFixture, type HubStartOptions } from "./tunnel.js";
import { waitFor } from "./wait.js";

export interface UdpTunnelFixture {
  readonly hub: RemoteIngressHub;
  readonly edge: RemoteIngressEdge;
  readonly hubFixture: HubFixture;
  readonly edgeId: string;
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
  const edge = new RemoteIngressEdge();
  const stop = async () => {
    try {
      await edge.stop();
    } finally {
      await hubFixture.stop();
    }
  };
  try {
    options.beforeEdgeStart?.(edge, hubFixture.hub);
    await edge.start({
      hubHost: "127.0.0.1",
      hubPort: hubFixture.tunnelPort,
      edgeId,
      secret,
      bindAddress: "127.0.0.1",
      hubCertFingerprint: hubFixture.fingerprint,
      reconnectInitialMs: 50,
      ...options.edgeExtra,
    } as EdgeStartOptions);
    await waitFor(
      async () => {
        const status = await edge.getStatus();
        return status.connected && (status.listenPortsUdp ?? []).includes(udpPort);
      },
      { timeoutMs: 15_000, what: `edge ${edgeId} connected and listening on udp ${udpPort}` },
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return { hub: hubFixture.hub, edge, hubFixture, edgeId, udpPort, stop };
};

/** A UDP echo target: the first datagram from each peer must be a PROXY v2 header (recorded), the rest are echoed. */
export interface UdpEchoTarget {
  readonly port: number;
  /** Header of each peer (hub upstream socket), in arrival order. */
  readonly headers: ProxyHeader[];
  readonly errors: string[];
  close(): Promise<void>;
}

export const startUdpProxyEcho = async (): Promise<UdpEchoTarget> => {
  const socket = createSocket("udp4");
  const headers: ProxyHeader[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  socket.on("message", (msg: Buffer, rinfo: RemoteInfo) => {
    const peer = `${rinfo.address}:${rinfo.port}`;
    if (!seen.has(peer)) {
      seen.add(peer);
      try {
        const taken = takeProxyHeader(msg);
        if (taken === undefined) errors.push(`${peer}: truncated PROXY header`);
        else {
          headers.push(taken.header);
          if (taken.rest.length > 0) socket.send(taken.rest, rinfo.port, rinfo.address);
        }
      } catch (error) {
        errors.push(`${peer}: ${String(error)}`);
      }
      return;
    }
    socket.send(msg, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return {
    port: socket.address().port,
    headers,
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

/** dnsmasq on 127.0.0.1:<free port> answering `portway.test` with 10.1.2.3 (and nothing else). */
export const startDnsmasq = async (): Promise<Dnsmasq> => {
  const dir = await mkdtemp(join(tmpdir(), "portway-dnsmasq-"));
  const port = await freeUdpPort();
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
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const probe = await udpClient();
    try {
      // A minimal DNS query for portway.test A; any reply means dnsmasq is up.
      const query = Buffer.concat([
        Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]),
        Buffer.from([7, ...Buffer.from("portway"), 4, ...Buffer.from("test"), 0, 0, 1, 0, 1]),
      ]);
      await udpRequest(probe, port, query, 5000, 200).catch((error: unknown) => {
        throw new Error(`dnsmasq did not answer (${String(error)}; stderr: ${stderr})`);
      });
    } finally {
      probe.close();
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { port, stop };
};
