import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RemoteIngressEdge, RemoteIngressHub } from "../../src/index.js";
import { createSocket } from "node:dgram";
import { freePort, freePorts } from "./ports.js";
import { waitFor } from "./wait.js";

export type ProxyTcp = "v1" | "v2" | "none";
export type HubStartOptions = Parameters<RemoteIngressHub["start"]>[0];
export type EdgeStartOptions = Parameters<RemoteIngressEdge["start"]>[0];
export type AllowedEdge = Parameters<RemoteIngressHub["updateAllowedEdges"]>[0][number];

/** The tunnel transports a test suite runs over (`describe.each(TRANSPORTS)`). */
export const TRANSPORTS = ["tcpTls", "quic"] as const;
export type Transport = (typeof TRANSPORTS)[number];

/**
 * Throws unless the edge's current tunnel, and the hub's view of it, use `transport`: a QUIC case must really
 * run over QUIC (a silent fallback or a default `tcpTls` would make it test TLS twice).
 */
export const expectTransport = async (hub: RemoteIngressHub, edge: RemoteIngressEdge, edgeId: string, transport: Transport): Promise<void> => {
  const edgeTransport = (await edge.getStatus()).transport;
  const hubTransport = (await hub.getStatus()).connectedEdges.find((e) => e.edgeId === edgeId)?.transport;
  if (edgeTransport !== transport || hubTransport !== transport) {
    throw new Error(`tunnel of ${edgeId} runs over edge=${String(edgeTransport)} / hub=${String(hubTransport)}, expected ${transport}`);
  }
};

/** One public port on the edge and where the hub forwards it. */
export interface Route {
  /** `host:port` of the target behind the hub. */
  readonly target: string;
  /** Edge listen port; a free one is picked when omitted. */
  readonly listenPort?: number;
}

export interface HubFixture {
  readonly hub: RemoteIngressHub;
  readonly tunnelPort: number;
  readonly dataDir: string;
  readonly fingerprint: string;
  /** The options `hub.start` got, to start a replacement hub on the same port and data dir. */
  readonly startOptions: HubStartOptions;
  stop(): Promise<void>;
}

/** Whether UDP `port` on 127.0.0.1 can be bound right now. */
const udpPortFree = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = createSocket("udp4");
    socket.once("error", () => {
      socket.close();
      resolve(false);
    });
    socket.bind(port, "127.0.0.1", () => socket.close(() => resolve(true)));
  });

/**
 * A loopback port free for TCP and UDP alike: the hub serves TLS on TCP and QUIC on UDP at the same port number.
 * A TCP-only check is not enough: UDP clients of parallel tests (e.g. 200 at once in udp-load) hold ephemeral
 * UDP ports from the same range, and a hub whose QUIC socket cannot bind does not start.
 */
export const freeTunnelPort = async (): Promise<number> => {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    if ((await udpPortFree(port)) || attempt >= 20) return port;
  }
};

/** Starts a hub on a free loopback tunnel port with a fresh tmp data dir (removed by `stop`). */
export const startHub = async (
  options: { proxyTcp?: ProxyTcp; edges?: AllowedEdge[]; extra?: Partial<HubStartOptions> } = {},
): Promise<HubFixture> => {
  const dataDir = await mkdtemp(join(tmpdir(), "portway-hub-"));
  const pickPort = options.extra?.tunnelPort === undefined;
  let startOptions: HubStartOptions;
  const hub = new RemoteIngressHub();
  for (let attempt = 1; ; attempt++) {
    startOptions = {
      tunnelPort: await freeTunnelPort(),
      targetHost: "127.0.0.1",
      proxyProtocol: { tcp: options.proxyTcp ?? "v1" },
      dataDir,
      hubId: "test-hub",
      bindHost: "127.0.0.1",
      ...options.extra,
    };
    try {
      await hub.start(startOptions);
      break;
    } catch (error) {
      // The port we picked was taken between the check and the bind (by another test's process): pick again.
      if (!pickPort || attempt >= 3 || !/EADDRINUSE/.test(String(error))) {
        await rm(dataDir, { recursive: true, force: true });
        throw error;
      }
    }
  }
  const tunnelPort = startOptions.tunnelPort;
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      await hub.stop();
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  };
  try {
    if (options.edges) await hub.updateAllowedEdges(options.edges);
    const status = await hub.getStatus();
    if (!status.running || status.tunnelPort !== tunnelPort) {
      throw new Error(`hub status after start: ${JSON.stringify(status)}`);
    }
    return { hub, tunnelPort, dataDir, fingerprint: status.hubFingerprint ?? "", startOptions, stop };
  } catch (error) {
    await stop();
    throw error;
  }
};

/** Waits until the edge is connected, the hub lists it, and every port in `ports` is listening on the edge. */
export const waitForEdgeReady = async (
  hub: RemoteIngressHub,
  edge: RemoteIngressEdge,
  edgeId: string,
  ports: readonly number[],
  timeoutMs = 10_000,
): Promise<void> => {
  await waitFor(
    async () => {
      const status = await edge.getStatus();
      return status.connected && ports.every((port) => status.listenPorts.includes(port));
    },
    { timeoutMs, what: `edge ${edgeId} connected and listening on ${ports.join(", ")}` },
  );
  await waitFor(async () => (await hub.getStatus()).connectedEdges.some((e) => e.edgeId === edgeId), {
    timeoutMs,
    what: `hub listing edge ${edgeId}`,
  });
};

/**
 * Starts one edge pinned to `hubFixture`'s certificate (bound to 127.0.0.1) and waits for `ready`. If either
 * fails, the edge and the hub are stopped. The returned `stop` stops the edge, then the hub.
 */
export const startPinnedEdge = async (
  hubFixture: HubFixture,
  options: {
    edgeId: string;
    secret: string;
    /** Edge options on top of the connection basics. */
    edgeOptions?: Partial<EdgeStartOptions>;
    /** Called with the edge before it starts, to attach event listeners that must not miss anything. */
    beforeEdgeStart?: (edge: RemoteIngressEdge, hub: RemoteIngressHub) => void;
    ready: (edge: RemoteIngressEdge) => Promise<unknown>;
  },
): Promise<{ edge: RemoteIngressEdge; stop: () => Promise<void> }> => {
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
      edgeId: options.edgeId,
      secret: options.secret,
      bindAddress: "127.0.0.1",
      hubCertFingerprint: hubFixture.fingerprint,
      ...options.edgeOptions,
    } as EdgeStartOptions);
    await options.ready(edge);
  } catch (error) {
    await stop();
    throw error;
  }
  return { edge, stop };
};

export interface TunnelFixture {
  readonly hub: RemoteIngressHub;
  readonly edge: RemoteIngressEdge;
  readonly hubFixture: HubFixture;
  readonly tunnelPort: number;
  readonly dataDir: string;
  readonly fingerprint: string;
  readonly edgeId: string;
  readonly secret: string;
  readonly transport: Transport;
  /** Edge listen ports, in the order of the routes. */
  readonly listenPorts: number[];
  /** The allowed-edge entry given to the hub (for `updateAllowedEdges` in hot-reload tests). */
  readonly allowedEdge: AllowedEdge;
  stop(): Promise<void>;
}

/**
 * Hub on a free tunnel port with a tmp data dir + one pinned edge (bound to 127.0.0.1) whose listen ports
 * forward to `routes`. Resolves once the edge is connected and every listener is up (status polling, no sleeps).
 */
export const startTunnel = async (options: {
  routes: Route[];
  /** Transport the edge dials with (`transportMode`); checked once connected (edge and hub status). Default tcpTls. */
  transport?: Transport;
  proxyTcp?: ProxyTcp;
  hubExtra?: Partial<HubStartOptions>;
  edgeExtra?: Partial<EdgeStartOptions>;
  /** Ports that must be listening before this resolves (default: all); for tests that expect a listener error. */
  readyPorts?: number[];
  /** Called with the edge before it starts, to attach event listeners that must not miss anything. */
  beforeEdgeStart?: (edge: RemoteIngressEdge, hub: RemoteIngressHub) => void;
}): Promise<TunnelFixture> => {
  const edgeId = "edge-1";
  const secret = randomBytes(24).toString("base64url");
  const generated = await freePorts(options.routes.length);
  const listenPorts = options.routes.map((route, i) => route.listenPort ?? (generated[i] as number));
  const targets: Record<number, string> = {};
  options.routes.forEach((route, i) => {
    targets[listenPorts[i] as number] = route.target;
  });
  const allowedEdge: AllowedEdge = { id: edgeId, secret, listenPorts, targets };
  const hubFixture = await startHub({ proxyTcp: options.proxyTcp, edges: [allowedEdge], extra: options.hubExtra });
  const { edge, stop } = await startPinnedEdge(hubFixture, {
    edgeId,
    secret,
    edgeOptions: {
      ...(options.transport === undefined ? {} : { transportMode: options.transport }),
      ...options.edgeExtra,
    },
    beforeEdgeStart: options.beforeEdgeStart,
    ready: async (edge) => {
      await waitForEdgeReady(hubFixture.hub, edge, edgeId, options.readyPorts ?? listenPorts);
      if (options.transport !== undefined) await expectTransport(hubFixture.hub, edge, edgeId, options.transport);
    },
  });
  return {
    hub: hubFixture.hub,
    edge,
    hubFixture,
    tunnelPort: hubFixture.tunnelPort,
    dataDir: hubFixture.dataDir,
    fingerprint: hubFixture.fingerprint,
    edgeId,
    secret,
    transport: options.transport ?? "tcpTls",
    listenPorts,
    allowedEdge,
    stop,
  };
};
