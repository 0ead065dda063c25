/** `RemoteIngressEdge`: the seed project's Promise/EventEmitter API, a thin wrapper over the `Edge` service. */
import { EventEmitter } from "node:events";
import { Effect, Exit } from "effect";
import type { EdgeOptions } from "../config/edge.js";
import type { EventStreamProblem } from "../native/addon.js";
import type { ListenerProtocol, NativeEdgeEvent, TunnelTransport } from "../native/events.js";
import type { NativeEdgeStatus, NativeListenerError } from "../native/status.js";
import { Edge, type EdgeEvent, type EdgeService } from "../edge/service.js";
import { Lifecycle } from "./lifecycle.js";
import { runToPromise } from "./run.js";
import { streamTotals, udpSessionTotals, type StreamTotals, type UdpSessionTotals } from "./totals.js";

/**
 * Options for `RemoteIngressEdge.start()`: `{ token }` or `{ hubHost, hubPort, edgeId, secret, bindAddress? }`,
 * plus optional extras (`hubCertFingerprint`, `caPem`, `hubs`, timings; see `EdgeOptions`).
 */
export type RemoteIngressEdgeOptions = EdgeOptions;

export interface RemoteIngressEdgeStatus {
  readonly running: boolean;
  readonly connected: boolean;
  /** The edge's public address once discovered (STUN); null until then. */
  readonly publicIp: string | null;
  readonly activeStreams: number;
  /** TCP ports currently assigned by the hub. */
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp?: ReadonlyArray<number>;
  /** The hub's certificate fingerprint as seen on the current/last connection. */
  readonly hubFingerprint?: string | null;
  /** Whether that fingerprint was verified (pinned or CA-checked). */
  readonly pinned?: boolean;
  /** `host:port` of the hub connected to. */
  readonly hub?: string | null;
  readonly hubId?: string | null;
  readonly sessionId?: string | null;
  /** Ports that could not be opened (in use, permission denied). */
  readonly listenerErrors?: ReadonlyArray<NativeListenerError>;
  /** The most recent connection error, if any. */
  readonly lastError?: string | null;
  /** Transport of the current tunnel (`tcpTls` | `quic`); null while disconnected. */
  readonly transport?: TunnelTransport | null;
  /** UDP sessions open now. */
  readonly udpSessions?: number;
  /** UDP datagrams dropped / too large / sessions refused, over the edge's lifetime. */
  readonly udpDropped?: number;
  readonly udpOversized?: number;
  readonly udpRefused?: number;
  /** Public port discovered by STUN; null until then. */
  readonly publicPort?: number | null;
  /** Clients reset because no tunnel came up within `gapHoldMs` (over the edge's lifetime). */
  readonly gapRefused?: number;
}

/** `tunnelConnected`: the tunnel to a hub is up. */
export interface TunnelConnectedEvent {
  /** `host:port` of the hub. */
  readonly hub: string;
  readonly hubId: string;
  readonly sessionId: string;
  /** sha256 of the hub certificate (lowercase hex). */
  readonly hubFingerprint: string;
  /** False when the edge connected without pinning or CA verification (a warning is logged once). */
  readonly pinned: boolean;
  /** `tcpTls` | `quic` (left out by older addons). */
  readonly transport?: TunnelTransport;
  /** True when the previous session was with a different hub (left out by older addons). */
  readonly failover?: boolean;
}

/** `transportFallback`: quicWithFallback could not use QUIC; this attempt uses TLS over TCP. */
export interface TransportFallbackEvent {
  readonly hub: string;
  readonly from: string;
  readonly to: string;
  /** `timeout` | `connectFailed` | `tlsError` | `protocolError` | `ioError` | `hubClosed` */
  readonly reason: string;
  readonly message: string;
}

/** `udpSessionOpened`: a UDP client's first datagram opened a session on a public UDP port. */
export interface EdgeUdpSessionOpenedEvent {
  readonly udpSessionId: number;
  readonly sessionId: string;
  readonly edgePort: number;
  readonly clientAddr: string;
}

/** `udpSessionClosed`: a UDP session expired (`reason: "idle"`) or closed. */
export interface EdgeUdpSessionClosedEvent extends EdgeUdpSessionOpenedEvent, UdpSessionTotals {}

/** `tunnelDisconnected`: the tunnel went down; the edge reconnects after `retryInMs` (null: it will not). */
export interface TunnelDisconnectedEvent {
  readonly reason: string;
  readonly message: string;
  readonly hub: string;
  readonly retryInMs: number | null;
}

/** `tunnelRejected`: a connection attempt was refused (bad credentials, fingerprint mismatch, …). */
export type TunnelRejectedEvent = TunnelDisconnectedEvent;

/** `portsAssigned`: ports received on a successful handshake. */
export interface PortsAssignedEvent {
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
}

/** `portsUpdated`: the hub changed this edge's ports while connected. */
export interface PortsUpdatedEvent {
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
  readonly added: ReadonlyArray<number>;
  readonly removed: ReadonlyArray<number>;
}

/** `listenerError`: a public port could not be opened. */
export interface ListenerErrorEvent {
  readonly port: number;
  readonly protocol: ListenerProtocol;
  /** `EADDRINUSE`, `EACCES`, … */
  readonly code: string;
  readonly message: string;
}

/** `publicIpDiscovered`: the edge learned its public address (STUN). */
export interface PublicIpDiscoveredEvent {
  readonly ip: string;
}

/** `streamOpened`: a client connected to a public port. */
export interface EdgeStreamOpenedEvent {
  readonly streamId: number;
  readonly sessionId: string;
  readonly edgePort: number;
  readonly clientAddr: string;
}

/** `streamClosed`: a client stream ended. */
export interface EdgeStreamClosedEvent extends EdgeStreamOpenedEvent, StreamTotals {}

/** Events a `RemoteIngressEdge` emits, with their payloads. */
export interface RemoteIngressEdgeEvents {
  tunnelConnected: [TunnelConnectedEvent];
  tunnelDisconnected: [TunnelDisconnectedEvent];
  tunnelRejected: [TunnelRejectedEvent];
  portsAssigned: [PortsAssignedEvent];
  portsUpdated: [PortsUpdatedEvent];
  listenerError: [ListenerErrorEvent];
  /** STUN found the edge's public address (first sighting and changes). */
  publicIpDiscovered: [PublicIpDiscoveredEvent];
  streamOpened: [EdgeStreamOpenedEvent];
  streamClosed: [EdgeStreamClosedEvent];
  transportFallback: [TransportFallbackEvent];
  udpSessionOpened: [EdgeUdpSessionOpenedEvent];
  udpSessionClosed: [EdgeUdpSessionClosedEvent];
  /** Every native event, unmapped. */
  nativeEvent: [NativeEdgeEvent];
  /** The native event stream lost or garbled events. */
  eventStreamProblem: [EventStreamProblem];
}

type EdgeApiEvent = {
  [K in keyof RemoteIngressEdgeEvents]: [K, ...RemoteIngressEdgeEvents[K]];
}[keyof RemoteIngressEdgeEvents];

/** Maps one edge event to the seed API's event name and payload. */
export const toEdgeApiEvent = (event: EdgeEvent): EdgeApiEvent | undefined => {
  switch (event.type) {
    case "tunnel.connected":
      return [
        "tunnelConnected",
        {
          hub: event.hub,
          hubId: event.hubId,
          sessionId: event.sessionId,
          hubFingerprint: event.hubFingerprint,
          pinned: event.pinned,
          ...(event.transport === undefined ? {} : { transport: event.transport }),
          ...(event.failover === undefined ? {} : { failover: event.failover }),
        },
      ];
    case "tunnel.fallback":
      return [
        "transportFallback",
        { hub: event.hub, from: event.from, to: event.to, reason: event.reason, message: event.message },
      ];
    case "udp.opened":
      return [
        "udpSessionOpened",
        {
          udpSessionId: event.udpSessionId,
          sessionId: event.sessionId,
          edgePort: event.edgePort,
          clientAddr: event.clientAddr,
        },
      ];
    case "udp.expired":
    case "udp.closed":
      return [
        "udpSessionClosed",
        {
          udpSessionId: event.udpSessionId,
          sessionId: event.sessionId,
          edgePort: event.edgePort,
          clientAddr: event.clientAddr,
          ...udpSessionTotals(event),
        },
      ];
    case "tunnel.disconnected":
    case "tunnel.rejected":
      return [
        event.type === "tunnel.disconnected" ? "tunnelDisconnected" : "tunnelRejected",
        { reason: event.reason, message: event.message, hub: event.hub, retryInMs: event.retryInMs },
      ];
    case "ports.assigned":
      return ["portsAssigned", { listenPorts: event.listenPorts, listenPortsUdp: event.listenPortsUdp }];
    case "ports.updated":
      return [
        "portsUpdated",
        {
          listenPorts: event.listenPorts,
          listenPortsUdp: event.listenPortsUdp,
          added: event.added,
          removed: event.removed,
        },
      ];
    case "listener.error":
      return ["listenerError", { port: event.port, protocol: event.protocol, code: event.code, message: event.message }];
    case "stream.opened":
      return [
        "streamOpened",
        { streamId: event.streamId, sessionId: event.sessionId, edgePort: event.edgePort, clientAddr: event.clientAddr },
      ];
    case "stream.closed":
      return [
        "streamClosed",
        {
          streamId: event.streamId,
          sessionId: event.sessionId,
          edgePort: event.edgePort,
          clientAddr: event.clientAddr,
          ...streamTotals(event),
        },
      ];
    case "events.gap":
    case "events.invalid":
      return ["eventStreamProblem", event];
    default:
      return undefined;
  }
};

const toStatus = (s: NativeEdgeStatus): RemoteIngressEdgeStatus => ({
  running: s.running,
  connected: s.connected,
  publicIp: s.publicIp,
  activeStreams: s.activeStreams,
  listenPorts: s.listenPorts,
  listenPortsUdp: s.listenPortsUdp,
  hubFingerprint: s.hubFingerprint,
  pinned: s.pinned,
  hub: s.hub,
  hubId: s.hubId,
  sessionId: s.sessionId,
  listenerErrors: s.listenerErrors,
  lastError: s.lastError,
  transport: s.transport,
  udpSessions: s.udpSessions,
  udpDropped: s.udpDropped,
  udpOversized: s.udpOversized,
  udpRefused: s.udpRefused,
  publicPort: s.publicPort,
  gapRefused: s.gapRefused,
});

const STOPPED_STATUS: RemoteIngressEdgeStatus = {
  running: false,
  connected: false,
  publicIp: null,
  activeStreams: 0,
  listenPorts: [],
  listenPortsUdp: [],
  listenerErrors: [],
};

/**
 * An edge: dials a hub, opens the public ports the hub assigns, and relays each client through the tunnel.
 *
 * ```ts
 * const edge = new RemoteIngressEdge();
 * edge.on("portsAssigned", ({ listenPorts }) => console.log("listening on", listenPorts));
 * await edge.start({ token });
 * await edge.waitConnected(10_000);
 * ```
 */
export class RemoteIngressEdge extends EventEmitter<RemoteIngressEdgeEvents> {
  readonly #life = new Lifecycle<EdgeService, EdgeEvent>("edge");
  #lastPublicIp: string | null = null;

  /** True between a successful `start()` and `stop()`. */
  get running(): boolean {
    return this.#life.service !== undefined;
  }

  /** The running edge's Effect service; undefined when stopped. */
  get service(): EdgeService | undefined {
    return this.#life.service;
  }

  /**
   * Starts the edge. Resolves once it is started, not necessarily connected (see `waitConnected`). Rejects with
   * `ConfigError` (including a malformed token), `EdgeStartError`, `AddonLoadError` or `AlreadyRunningError`.
   */
  async start(options: RemoteIngressEdgeOptions): Promise<void> {
    await this.#life.start(Edge.make(options), (event) => this.#emit(event));
  }

  #emit(event: EdgeEvent): void {
    if (event.type !== "events.gap" && event.type !== "events.invalid") this.emit("nativeEvent", event);
    const mapped = toEdgeApiEvent(event);
    if (mapped !== undefined) (this.emit as (name: string, payload: unknown) => boolean)(mapped[0], mapped[1]);
    if (event.type === "publicIp.discovered") this.#notePublicIp(event.ip);
    const edge = this.#life.service;
    if (event.type === "tunnel.connected" && edge !== undefined) {
      const status = Effect.runSyncExit(edge.status);
      if (Exit.isSuccess(status)) this.#notePublicIp(status.value.publicIp);
    }
  }

  /** A status snapshot; when stopped, `running` and `connected` are false and lists are empty. */
  async getStatus(): Promise<RemoteIngressEdgeStatus> {
    const edge = this.#life.service;
    if (edge === undefined) return STOPPED_STATUS;
    const status = toStatus(await runToPromise(edge.status));
    this.#notePublicIp(status.publicIp);
    return status;
  }

  // The addon reports the public address in status; surface the first sighting (and changes) as an event.
  #notePublicIp(ip: string | null): void {
    if (ip !== null && ip !== this.#lastPublicIp) {
      this.#lastPublicIp = ip;
      this.emit("publicIpDiscovered", { ip });
    }
  }

  /**
   * Resolves with the status once a tunnel is up (at once if it already is). Rejects with
   * `EdgeConnectTimeoutError` (carrying the last connection error) after `timeoutMs`.
   */
  async waitConnected(timeoutMs = 10_000): Promise<RemoteIngressEdgeStatus> {
    return toStatus(await runToPromise(this.#life.require().waitConnected(timeoutMs)));
  }

  /** Stops the edge (closes listeners and the tunnel) after emitting the last events. Idempotent. */
  async stop(): Promise<void> {
    await this.#life.stop();
  }
}
