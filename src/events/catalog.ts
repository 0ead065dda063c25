/**
 * The catalog of JetStream-facing lifecycle events: every event type, the schema of its `data` at the
 * current version, and the reasons it can carry. `docs/events.md` is the prose twin of this file.
 *
 * Identity fields (hubId, edgeId, sessionId, streamId, seq) live in the envelope (`envelope.ts`), never in
 * `data`. Changing a data schema means bumping its version in `CURRENT_VERSIONS` and adding an upcaster in
 * `upcast.ts`; old shapes are frozen in `test/fixtures/events/`.
 */
import { Schema } from "effect";
import {
  AuthFailedReason as AddonAuthFailedReason,
  EdgeDisconnectReason as AddonEdgeDisconnectReason,
  StreamCloseReason as AddonStreamCloseReason,
} from "../native/events.js";

const Count = Schema.NonNegativeInt;
const Port = Schema.Int.pipe(Schema.between(0, 65535));
const NullableString = Schema.NullOr(Schema.String);

// The reasons the addon reports (src/native/events.ts) are stored as they are; the hub adds its own.

/** Why a tunnel session ended: the addon's reasons (leaseLost / notOwner: HA, the hub dropped the edge), then the hub's. */
export const EdgeDisconnectReason = Schema.Literal(
  ...AddonEdgeDisconnectReason.literals,
  /** The hub died with this session open; closed while rebuilding state at the next start. */
  "hubRestarted",
  /** The edge lost this hub and moved to another (HA). */
  "hubLost",
);
export type EdgeDisconnectReason = typeof EdgeDisconnectReason.Type;

/** Why the hub refused an edge during the handshake: exactly the addon's reasons. */
export const AuthFailReason = AddonAuthFailedReason;
export type AuthFailReason = typeof AuthFailReason.Type;

/** Why a stream ended: the addon's reasons, then the hub's. */
export const StreamCloseReason = Schema.Literal(
  ...AddonStreamCloseReason.literals,
  /** The hub died with this stream open; closed while rebuilding state at the next start. */
  "hubRestarted",
  /** HA: the hub carrying it died; closed in the log by the hub that took the edge over. */
  "hubLost",
);
export type StreamCloseReason = typeof StreamCloseReason.Type;

export const UdpCloseReason = Schema.Literal(
  "expired",
  "targetUnreachable",
  /** The addon closed it to make room under the per-edge session cap. */
  "sessionCap",
  /** Its edge port was closed (config pushed without it). */
  "portClosed",
  "tunnelLost",
  "hubShutdown",
  "hubRestarted",
  "protocolError",
  /** HA: the hub carrying it died; closed in the log by the hub that took the edge over. */
  "hubLost",
);
export type UdpCloseReason = typeof UdpCloseReason.Type;

export const HubStopReason = Schema.Literal("shutdown", "signal", "error");
export type HubStopReason = typeof HubStopReason.Type;

/** Why a hub refused an edge whose secret was right (HA admission, docs/cluster.md). */
export const EdgeRefuseReason = Schema.Literal("notOwner", "ownershipUnavailable", "admissionTimeout", "ioError");
export type EdgeRefuseReason = typeof EdgeRefuseReason.Type;

/**
 * HA: set when a hub writes events about another hub's actors (closing a dead hub's leftovers after a
 * takeover): the envelope names the hub the actor belonged to, `writtenBy` the hub that wrote the event.
 */
const WrittenBy = Schema.optional(Schema.String);

export const EventsDroppedReason = Schema.Literal("outboxFull", "outboxWriteFailed");
export type EventsDroppedReason = typeof EventsDroppedReason.Type;

// ---- hub actor (sessionId = hub run id, streamId = null, edgeId = null) ----

export const HubStarted = Schema.Struct({
  tunnelPort: Schema.NullOr(Port),
  fingerprint: NullableString,
  portwayVersion: Schema.String,
});

export const HubStopped = Schema.Struct({
  reason: HubStopReason,
  message: NullableString,
});

/** State rebuilt from history at start: what the previous run left open was closed with `hubRestarted`. */
export const HubRecovered = Schema.Struct({
  previousRunId: NullableString,
  replayedEvents: Count,
  sessionsClosed: Count,
  streamsClosed: Count,
  udpClosed: Count,
  durationMs: Count,
});

/** Emitted once the outbox accepts writes again after dropping events: the gap made visible. */
export const HubEventsDropped = Schema.Struct({
  count: Count,
  firstTime: Count,
  lastTime: Count,
  reason: EventsDroppedReason,
});

// ---- edge session actor (sessionId = tunnel session, streamId = null) ----

/** A tunnel session is established: TLS done, hello verified (authentication is folded in here). */
export const EdgeConnected = Schema.Struct({
  remoteAddr: Schema.String,
});

/** One-shot actor per failed handshake; sessionId is an attempt id chosen by the hub. */
export const EdgeAuthFailed = Schema.Struct({
  remoteAddr: Schema.String,
  claimedEdgeId: NullableString,
  reason: AuthFailReason,
});

export const EdgeConfigPushed = Schema.Struct({
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.Array(Port),
});

/** A newer session of the same edge replaced this one; followed by edge.disconnected(superseded). */
export const EdgeSuperseded = Schema.Struct({
  bySessionId: Schema.String,
  remoteAddr: NullableString,
});

/** HA: the edge could not be admitted by this hub (another hub owns it, or ownership cannot be decided). */
export const EdgeRefused = Schema.Struct({
  remoteAddr: Schema.String,
  reason: EdgeRefuseReason,
  message: Schema.String,
});

/**
 * HA: the edge moved from a dead hub to another. Logged on the dead hub's session (envelope hubId = fromHubId,
 * sessionId = fromSessionId), followed by its edge.disconnected(hubLost). v2 adds everything but the hub ids
 * (null when upcast from v1). gapMs = takeover time − the previous owner's last lease renewal.
 */
export const EdgeFailedOver = Schema.Struct({
  fromHubId: Schema.String,
  fromRunId: NullableString,
  fromSessionId: NullableString,
  toHubId: Schema.String,
  toSessionId: NullableString,
  gapMs: Schema.NullOr(Count),
  writtenBy: WrittenBy,
});

/** v2: adds `durationMs` (session length, null when unknown — e.g. upcast from v1). */
export const EdgeDisconnected = Schema.Struct({
  reason: EdgeDisconnectReason,
  message: Schema.String,
  durationMs: Schema.NullOr(Count),
  writtenBy: WrittenBy,
});

// ---- TCP stream actor (streamId = stream id within the session) ----

export const StreamOpened = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  target: NullableString,
});

/** bytesIn = client→target, bytesOut = target→client. */
export const StreamClosed = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  target: NullableString,
  bytesIn: Count,
  bytesOut: Count,
  durationMs: Count,
  reason: StreamCloseReason,
  message: Schema.String,
  writtenBy: WrittenBy,
});

// ---- UDP session actor (streamId = UDP session id within the tunnel session) ----

export const UdpOpened = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  target: NullableString,
});

/** Idle timeout fired; followed by udp.closed(expired). */
export const UdpExpired = Schema.Struct({
  idleMs: Count,
});

/**
 * v2: `packetsIn`/`packetsOut` (the addon's names) instead of v1's `datagramsIn`/`datagramsOut`.
 * In = client→target, out = target→client, for bytes and packets alike.
 */
export const UdpClosed = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  target: NullableString,
  bytesIn: Count,
  bytesOut: Count,
  packetsIn: Count,
  packetsOut: Count,
  durationMs: Count,
  reason: UdpCloseReason,
  message: Schema.String,
  writtenBy: WrittenBy,
});

export const UdpRefuseReason = Schema.Literal("sessionCap", "portClosed");
export type UdpRefuseReason = typeof UdpRefuseReason.Type;

// ---- UDP notices (no lifecycle: sessionId = `<hub run id>.udp`, streamId = null, seq per hub run) ----

/** New UDP clients were refused; at most one per second per edge, `count` = refusals since the previous one. */
export const UdpRefused = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  reason: UdpRefuseReason,
  count: Count,
});

/** Datagrams too large for the tunnel or the target path were dropped (never truncated); rate-limited likewise. */
export const UdpOversized = Schema.Struct({
  edgePort: Port,
  clientAddr: Schema.String,
  size: Count,
  maxSize: Schema.NullOr(Count),
  count: Count,
});

/** Current data schema of every event type. */
export const EventDataSchemas = {
  "hub.started": HubStarted,
  "hub.stopped": HubStopped,
  "hub.recovered": HubRecovered,
  "hub.eventsDropped": HubEventsDropped,
  "edge.connected": EdgeConnected,
  "edge.authFailed": EdgeAuthFailed,
  "edge.configPushed": EdgeConfigPushed,
  "edge.superseded": EdgeSuperseded,
  "edge.refused": EdgeRefused,
  "edge.failedOver": EdgeFailedOver,
  "edge.disconnected": EdgeDisconnected,
  "stream.opened": StreamOpened,
  "stream.closed": StreamClosed,
  "udp.opened": UdpOpened,
  "udp.expired": UdpExpired,
  "udp.closed": UdpClosed,
  "udp.refused": UdpRefused,
  "udp.oversized": UdpOversized,
} as const;

export type EventType = keyof typeof EventDataSchemas;
export const EVENT_TYPES = Object.keys(EventDataSchemas) as ReadonlyArray<EventType>;
export const EventTypeSchema = Schema.Literal(...EVENT_TYPES);

/** Data of an event type at the current version. */
export type EventData<T extends EventType> = Schema.Schema.Type<(typeof EventDataSchemas)[T]>;

/** Current schema version per type. Bump together with an upcaster in upcast.ts. */
export const CURRENT_VERSIONS: { readonly [T in EventType]: number } = {
  "hub.started": 1,
  "hub.stopped": 1,
  "hub.recovered": 1,
  "hub.eventsDropped": 1,
  "edge.connected": 1,
  "edge.authFailed": 1,
  "edge.configPushed": 1,
  "edge.superseded": 1,
  "edge.refused": 1,
  "edge.failedOver": 2,
  "edge.disconnected": 2,
  "stream.opened": 1,
  "stream.closed": 1,
  "udp.opened": 1,
  "udp.expired": 1,
  "udp.closed": 2,
  "udp.refused": 1,
  "udp.oversized": 1,
};

/** Events that belong to no actor's lifecycle (nothing opens or closes them): recovery passes them by. */
export const NOTICE_TYPES: ReadonlySet<EventType> = new Set<EventType>(["hub.eventsDropped", "udp.refused", "udp.oversized"]);

/** The actor kind is the first segment of the type: it picks the subject token and the actor identity. */
export type ActorKind = "hub" | "edge" | "stream" | "udp";
export const ACTOR_KINDS: ReadonlyArray<ActorKind> = ["hub", "edge", "stream", "udp"];

export const actorKindOf = (type: EventType): ActorKind => type.slice(0, type.indexOf(".")) as ActorKind;

/** The action is the rest of the type: `stream.closed` → `closed`. */
export const actionOf = (type: EventType): string => type.slice(type.indexOf(".") + 1);

export const isEventType = (s: string): s is EventType => Object.hasOwn(EventDataSchemas, s);
