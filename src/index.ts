/**
 * Portway: an edge-ingress tunnel. Two ways in:
 * - the seed-compatible classes `RemoteIngressHub` / `RemoteIngressEdge` (Promises + EventEmitter), and
 * - the Effect services `Hub` / `Edge` (scoped resources, layers, event streams) the classes wrap.
 * The hub records lifecycle events in NATS JetStream by default; read them back with `hub.replayHistory` /
 * `hub.liveEvents` / `hub.history`, `EventReader`, or the Effect Streams `replayHistory` / `liveEvents`.
 */
export {
  RemoteIngressHub,
  toHubApiEvent,
  type ConnectedEdgeStatus,
  type EdgeAuthFailedEvent,
  type EdgeConnectedEvent,
  type EdgeDisconnectedEvent,
  type HubStreamClosedEvent,
  type HubStreamOpenedEvent,
  type RemoteIngressHubEvents,
  type RemoteIngressHubOptions,
  type RemoteIngressHubStatus,
} from "./api/hub.js";
export {
  RemoteIngressEdge,
  toEdgeApiEvent,
  type EdgeStreamClosedEvent,
  type EdgeStreamOpenedEvent,
  type ListenerErrorEvent,
  type PortsAssignedEvent,
  type PortsUpdatedEvent,
  type PublicIpDiscoveredEvent,
  type RemoteIngressEdgeEvents,
  type RemoteIngressEdgeOptions,
  type RemoteIngressEdgeStatus,
  type TunnelConnectedEvent,
  type TunnelDisconnectedEvent,
  type TunnelRejectedEvent,
} from "./api/edge.js";
export type { StreamTotals, UdpSessionTotals } from "./api/totals.js";
export {
  decodeConnectionToken,
  decodeToken,
  encodeConnectionToken,
  encodeToken,
  normalizeFingerprint,
  type ConnectionToken,
  type ConnectionTokenInput,
  type HubAddress,
} from "./token.js";
export { Hub, type HubEvent, type HubService } from "./hub/service.js";
export { defaultHubDataDir, fingerprintOfPem, hubCertPaths } from "./hub/identity.js";
export { Edge, type EdgeEvent, type EdgeService } from "./edge/service.js";
export {
  loadHubConfig,
  resolveAllowedEdges,
  resolveHubOptions,
  type AllowedEdge,
  type AllowedEdgeInput,
  type ConfigInputs,
  type HubConfig,
  type HubOptions,
} from "./config/hub.js";
export { loadEdgeConfig, resolveEdgeOptions, type EdgeConfig, type EdgeOptions } from "./config/edge.js";
export {
  AddonLoadError,
  AlreadyRunningError,
  ConfigError,
  EdgeConnectTimeoutError,
  EdgeStartError,
  HubStartError,
  NativeCallError,
  NotRunningError,
  TokenError,
  type NativeErrorCode,
} from "./errors.js";
export { addonPath, loadAddon, type EventStreamProblem, type NativeAddon } from "./native/addon.js";
export type {
  AuthFailedReason,
  EdgeDisconnectReason,
  NativeEdgeEvent,
  NativeEdgeEventOf,
  NativeHubEvent,
  NativeHubEventOf,
  StreamCloseReason,
} from "./native/events.js";
export type { NativeEdgeStatus, NativeHubStatus, NativeListenerError } from "./native/status.js";

// The event log (docs/events.md): every lifecycle transition of the hub's actors, appended to NATS JetStream.
export {
  EventLogDisabled,
  type EventLogStartError,
  type HubEventsStatus,
  type HubEventsStatusOrOff,
  type RecoveryStatus,
} from "./hub/event-log.js";
export type { HubEventLog } from "./hub/service.js";
export { DataDirInUse, DataDirUnusable } from "./hub/data-dir-lock.js";
export {
  EventLogNotFound,
  EventReader,
  eventReaderLayer,
  liveEventsFrom,
  replayHistoryFrom,
  type EventReaderError,
  type EventReaderOptions,
} from "./api/events.js";
export {
  edgeHistory,
  liveEvents,
  liveEventsIterable,
  replayHistory,
  replayHistoryIterable,
  ReplayFailed,
  type LiveOptions,
  type ReplayError,
  type ReplayOptions,
} from "./nats/replay.js";
export {
  HistoryProjection,
  projectHistory,
  type ConnectionView,
  type EdgeHistory,
  type HistoryTotals,
  type SessionView,
} from "./nats/history.js";
export { NatsClient, NatsConnectFailed, InvalidNatsServers, type NatsClientService } from "./nats/connection.js";
export { NatsJetStreamUnavailable, NatsServerTooOld, MIN_NATS_SERVER_VERSION } from "./nats/server-version.js";
export { NatsServerBinaryMissing, NatsServerStartFailed } from "./nats/embedded-server.js";
export { EventStreamSetupFailed, InvalidEventStreamOptions, DEFAULT_STREAM_NAME } from "./nats/event-stream.js";
export { OutboxIoError } from "./nats/outbox.js";
export { EVENT_TYPES, ACTOR_KINDS, type ActorKind, type EventData, type EventType } from "./events/catalog.js";
export type { DomainEvent } from "./events/envelope.js";
export { EventDecodeError, UnsupportedEventVersion, upcastEvent } from "./events/upcast.js";
export { filterSubjects, parseSubject, subjectOf, type EventFilter } from "./events/subjects.js";
export { EVENTS_DEFAULTS } from "./config/hub.js";
