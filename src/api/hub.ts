/** `RemoteIngressHub`: the seed project's Promise/EventEmitter API, a thin wrapper over the `Hub` service. */
import type { OwnershipStatus } from "../cluster/ownership.js";
import { EventEmitter } from "node:events";
import { Effect } from "effect";
import type { AllowedEdgeInput, HubOptions } from "../config/hub.js";
import type { EventStreamProblem } from "../native/addon.js";
import type { AuthFailedReason, EdgeDisconnectReason, NativeHubEvent } from "../native/events.js";
import type { NativeHubStatus } from "../native/status.js";
import type { DomainEvent } from "../events/envelope.js";
import { EventLogDisabled, type HubEventsStatusOrOff } from "../hub/event-log.js";
import { Hub, type HubEvent, type HubService } from "../hub/service.js";
import type { NatsConnection } from "../nats/connection.js";
import type { EdgeHistory } from "../nats/history.js";
import { HistoryProjection } from "../nats/history.js";
import { liveEventsIterable, replayHistoryIterable, type LiveOptions, type ReplayOptions } from "../nats/replay.js";
import { Lifecycle } from "./lifecycle.js";
import { runToPromise } from "./run.js";
import { streamTotals, udpSessionTotals, type StreamTotals, type UdpSessionTotals } from "./totals.js";

/** Options for `RemoteIngressHub.start()`: the seed's fields plus optional extras (see `HubOptions`). */
export type RemoteIngressHubOptions = HubOptions;

/** One connected edge in `getStatus()`. */
export interface ConnectedEdgeStatus {
  readonly edgeId: string;
  /** Epoch milliseconds. */
  readonly connectedAt: number;
  readonly activeStreams: number;
  readonly sessionId: string;
  readonly remoteAddr: string;
  /** Client → target bytes over this session. */
  readonly bytesIn: number;
  /** Target → client bytes over this session. */
  readonly bytesOut: number;
  /** `tcpTls` | `quic`. */
  readonly transport?: string;
  /** UDP sessions open now, and this session's dropped / oversized datagrams and refused sessions. */
  readonly udpSessions?: number;
  readonly udpDropped?: number;
  readonly udpOversized?: number;
  readonly udpRefused?: number;
}

export interface RemoteIngressHubStatus {
  readonly running: boolean;
  readonly tunnelPort: number;
  /** Whether QUIC is also served at the tunnel port. */
  readonly quic?: boolean;
  readonly connectedEdges: ReadonlyArray<ConnectedEdgeStatus>;
  readonly hubId?: string;
  /** sha256 of the hub certificate, lowercase hex: what edges pin. */
  readonly hubFingerprint?: string;
  /** Event log health (NATS connection, outbox, dropped events, recovery), or `{ enabled: false }`. */
  readonly events?: HubEventsStatusOrOff;
  /** Cluster mode: the edges this hub owns (lease age = ms since the last renewal) and its lease counters. */
  readonly cluster?: OwnershipStatus;
}

/** `edgeConnected`: an edge finished its handshake. */
export interface EdgeConnectedEvent {
  readonly edgeId: string;
  readonly sessionId: string;
  /** The edge's address as the hub sees it (`ip:port`). */
  readonly remoteAddr: string;
}

/** `edgeDisconnected`: an edge's tunnel session ended. */
export interface EdgeDisconnectedEvent {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly reason: EdgeDisconnectReason;
  readonly message: string;
}

/** `edgeAuthFailed`: a connection was refused during the handshake. */
export interface EdgeAuthFailedEvent {
  readonly remoteAddr: string;
  readonly claimedEdgeId: string | null;
  readonly reason: AuthFailedReason;
}

/** `streamOpened`: a client connected to an edge port and the hub is relaying it to its target. */
export interface HubStreamOpenedEvent {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly streamId: number;
  /** The public port on the edge the client connected to. */
  readonly edgePort: number;
  /** The client's address (`ip:port`), as sent to the target in the PROXY header. */
  readonly clientAddr: string;
  /** `host:port` the stream was forwarded to. */
  readonly target: string;
}

/** `streamClosed`: a relayed stream ended. */
export interface HubStreamClosedEvent extends HubStreamOpenedEvent, StreamTotals {}

/** `udpSessionOpened`: a UDP session from a client on an edge port was opened toward its target. */
export interface HubUdpSessionOpenedEvent {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly udpSessionId: number;
  readonly edgePort: number;
  readonly clientAddr: string;
  readonly target: string;
}

/** `udpSessionClosed`: a UDP session expired (`reason: "idle"`) or closed. */
export interface HubUdpSessionClosedEvent extends HubUdpSessionOpenedEvent, UdpSessionTotals {}

/** Events a `RemoteIngressHub` emits, with their payloads. */
export interface RemoteIngressHubEvents {
  /** An edge connected and authenticated. */
  edgeConnected: [EdgeConnectedEvent];
  /** An edge's session ended (closed, timed out, revoked, superseded, hub shutdown, I/O error). */
  edgeDisconnected: [EdgeDisconnectedEvent];
  /** A connection attempt was refused (bad secret, unknown edge, bad hello, TLS error, handshake timeout). */
  edgeAuthFailed: [EdgeAuthFailedEvent];
  /** A client stream started. */
  streamOpened: [HubStreamOpenedEvent];
  /** A client stream ended, with byte counts and the reason. */
  streamClosed: [HubStreamClosedEvent];
  /** A UDP session started. */
  udpSessionOpened: [HubUdpSessionOpenedEvent];
  /** A UDP session expired or closed, with counts and the reason. */
  udpSessionClosed: [HubUdpSessionClosedEvent];
  /** Every native event, unmapped (for logging and tools). */
  nativeEvent: [NativeHubEvent];
  /** The native event stream lost or garbled events (a seq gap or an undecodable event). */
  eventStreamProblem: [EventStreamProblem];
}

/** The identifying fields of a stream event (the native event carries more: type, seq, atMs). */
const streamFields = (e: HubStreamOpenedEvent): HubStreamOpenedEvent => ({
  edgeId: e.edgeId,
  sessionId: e.sessionId,
  streamId: e.streamId,
  edgePort: e.edgePort,
  clientAddr: e.clientAddr,
  target: e.target,
});

/** The identifying fields of a UDP session event. */
const udpFields = (e: HubUdpSessionOpenedEvent): HubUdpSessionOpenedEvent => ({
  edgeId: e.edgeId,
  sessionId: e.sessionId,
  udpSessionId: e.udpSessionId,
  edgePort: e.edgePort,
  clientAddr: e.clientAddr,
  target: e.target,
});

/** Maps one hub event to the seed API's event name and payload. */
export const toHubApiEvent = (event: HubEvent): { [K in keyof RemoteIngressHubEvents]: [K, ...RemoteIngressHubEvents[K]] }[keyof RemoteIngressHubEvents] | undefined => {
  switch (event.type) {
    case "edge.connected":
      return ["edgeConnected", { edgeId: event.edgeId, sessionId: event.sessionId, remoteAddr: event.remoteAddr }];
    case "edge.disconnected":
      return [
        "edgeDisconnected",
        { edgeId: event.edgeId, sessionId: event.sessionId, reason: event.reason, message: event.message },
      ];
    case "edge.authFailed":
      return [
        "edgeAuthFailed",
        { remoteAddr: event.remoteAddr, claimedEdgeId: event.claimedEdgeId, reason: event.reason },
      ];
    case "stream.opened":
      return ["streamOpened", streamFields(event)];
    case "stream.closed":
      return ["streamClosed", { ...streamFields(event), ...streamTotals(event) }];
    case "udp.opened":
      return ["udpSessionOpened", udpFields(event)];
    case "udp.expired":
    case "udp.closed":
      return ["udpSessionClosed", { ...udpFields(event), ...udpSessionTotals(event) }];
    case "events.gap":
    case "events.invalid":
      return ["eventStreamProblem", event];
    default:
      return undefined;
  }
};

const toStatus = (status: NativeHubStatus, fingerprint: string, events: HubEventsStatusOrOff): RemoteIngressHubStatus => ({
  running: status.running,
  tunnelPort: status.tunnelPort,
  quic: status.quic,
  hubId: status.hubId,
  hubFingerprint: status.fingerprint === "" ? fingerprint : status.fingerprint,
  connectedEdges: status.edges.map((e) => ({
    edgeId: e.edgeId,
    connectedAt: e.connectedAt,
    activeStreams: e.activeStreams,
    sessionId: e.sessionId,
    remoteAddr: e.remoteAddr,
    bytesIn: e.bytesIn,
    bytesOut: e.bytesOut,
    transport: e.transport,
    udpSessions: e.udpSessions,
    udpDropped: e.udpDropped,
    udpOversized: e.udpOversized,
    udpRefused: e.udpRefused,
  })),
  events,
});

/**
 * A hub: accepts edges over TLS and forwards their client streams to targets with a PROXY header.
 *
 * ```ts
 * const hub = new RemoteIngressHub();
 * hub.on("streamClosed", (e) => console.log(e.edgeId, e.bytesIn, e.bytesOut, e.reason));
 * await hub.start({ tunnelPort: 8443 });
 * await hub.updateAllowedEdges([{ id: "e1", secret: "s3cret", listenPorts: [80] }]);
 * ```
 */
export class RemoteIngressHub extends EventEmitter<RemoteIngressHubEvents> {
  readonly #life = new Lifecycle<HubService, HubEvent>("hub");
  #lastTunnelPort: number | undefined;

  /** True between a successful `start()` and `stop()`. */
  get running(): boolean {
    return this.#life.service !== undefined;
  }

  /** The running hub's Effect service (for mixing with the Effect API); undefined when stopped. */
  get service(): HubService | undefined {
    return this.#life.service;
  }

  /** Starts the hub; resolves once the tunnel port listens. Rejects with `ConfigError`, `HubStartError`, `AddonLoadError`, or `AlreadyRunningError`. */
  async start(options: RemoteIngressHubOptions = {}): Promise<void> {
    const make = Hub.make(options).pipe(Effect.tap((hub) => Effect.sync(() => (this.#lastTunnelPort = hub.tunnelPort))));
    await this.#life.start(make, (event) => this.#emit(event));
  }

  #emit(event: HubEvent): void {
    if (event.type !== "events.gap" && event.type !== "events.invalid") this.emit("nativeEvent", event);
    const mapped = toHubApiEvent(event);
    if (mapped !== undefined) (this.emit as (name: string, payload: unknown) => boolean)(mapped[0], mapped[1]);
  }

  /** Replaces the allowed-edge list (full replacement). Connected edges get new ports live; removed ones are cut. */
  async updateAllowedEdges(edges: ReadonlyArray<AllowedEdgeInput>): Promise<void> {
    await runToPromise(this.#life.require().updateAllowedEdges(edges));
  }

  /** A status snapshot. When stopped: `{ running: false, tunnelPort, connectedEdges: [] }`. */
  async getStatus(): Promise<RemoteIngressHubStatus> {
    const hub = this.#life.service;
    if (hub === undefined) {
      return { running: false, tunnelPort: this.#lastTunnelPort ?? 0, connectedEdges: [] };
    }
    const events = await runToPromise(hub.eventsStatus);
    const status = toStatus(await runToPromise(hub.status), hub.fingerprint, events);
    const ownership = hub.ownership;
    return ownership === undefined ? status : { ...status, cluster: ownership() };
  }

  /** The running hub's event log connection; rejects when stopped or when events are off. */
  async #eventLog(): Promise<{ readonly nc: NatsConnection; readonly stream: string }> {
    const hub = this.#life.require();
    const log = hub.eventLog;
    if (log === undefined) throw new EventLogDisabled({ hubId: hub.hubId });
    return { nc: await Effect.runPromise(log.client.connection), stream: log.stream };
  }

  /**
   * This hub's event log between `since` and `until` (event time; epoch ms or Date), optionally filtered by
   * edge, kind or type. Ends at the end of the log. Needs a running hub with events on.
   */
  async *replayHistory(opts: ReplayOptions = {}): AsyncGenerator<DomainEvent> {
    const { nc, stream } = await this.#eventLog();
    yield* replayHistoryIterable(nc, { stream, ...opts });
  }

  /** Events as they are appended to the log (from `since` by storage time, else only new ones). Break to stop. */
  async *liveEvents(opts: LiveOptions = {}): AsyncGenerator<DomainEvent> {
    const { nc, stream } = await this.#eventLog();
    yield* liveEventsIterable(nc, { stream, ...opts });
  }

  /** The `history` projection of one edge from the log: sessions, connections with bytes and reasons, totals. */
  async history(opts: { readonly edgeId: string; readonly since?: number | Date; readonly until?: number | Date }): Promise<EdgeHistory> {
    const projection = new HistoryProjection();
    for await (const event of this.replayHistory({ ...opts })) projection.apply(event);
    return projection.view(opts.edgeId);
  }

  /** Resolves once every event so far is acknowledged by JetStream (waits while NATS is unreachable). */
  async flushEvents(): Promise<void> {
    const log = this.#life.service?.eventLog;
    if (log !== undefined) await Effect.runPromise(log.log.whenIdle);
  }

  /** Stops the hub (edges get GoAway, streams are cut) after emitting the last events. Idempotent. */
  async stop(): Promise<void> {
    await this.#life.stop();
  }
}
