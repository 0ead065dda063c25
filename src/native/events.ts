/**
 * Lifecycle events delivered by the native addon (docs/architecture.md, "Event batches"), as schemas and a
 * discriminated union per role. Fields the contract does not list are ignored, so the addon may add fields
 * without breaking older TypeScript.
 */
import { Either, ParseResult, Schema } from "effect";

const Seq = Schema.Int.pipe(Schema.positive());
const Port = Schema.Int.pipe(Schema.between(0, 65535));
const Count = Schema.Number.pipe(Schema.nonNegative());
/** A free-text message; the addon may send `null` or leave it out. */
const Message = Schema.optionalWith(Schema.String, { nullable: true, default: () => "" });
const NullableString = Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null });

const event = <T extends string, F extends Schema.Struct.Fields>(type: T, fields: F) =>
  Schema.Struct({ type: Schema.Literal(type), seq: Seq, atMs: Schema.Number, ...fields });

// The reason lists below are also stored in the event log as they are (src/events/catalog.ts derives its lists
// from them): adding a reason here changes the stored schema too (docs/events.md).

/** Why the hub refused an edge during the handshake. */
export const AuthFailedReason = Schema.Literal(
  "authFailed",
  "versionUnsupported",
  "malformedHello",
  "handshakeTimeout",
  "tlsError",
);
export type AuthFailedReason = typeof AuthFailedReason.Type;

/** Why an edge's tunnel session ended, from the hub's view. */
export const EdgeDisconnectReason = Schema.Literal(
  "edgeClosed",
  "timeout",
  "protocolError",
  "revoked",
  "superseded",
  "hubShutdown",
  "ioError",
  /** Multi-hub: `hubDropEdge` closed the session (lease lost / another hub owns the edge). */
  "leaseLost",
  "notOwner",
);
export type EdgeDisconnectReason = typeof EdgeDisconnectReason.Type;

/** Why a relayed stream ended. */
export const StreamCloseReason = Schema.Literal(
  "clientClosed",
  "targetClosed",
  "targetRefused",
  "timeout",
  "tunnelLost",
  "hubShutdown",
  "reset",
  "protocolError",
);
export type StreamCloseReason = typeof StreamCloseReason.Type;

export const ListenerProtocol = Schema.Literal("tcp", "udp");
export type ListenerProtocol = typeof ListenerProtocol.Type;

/** Which transport carries a tunnel session. */
export const TunnelTransport = Schema.Literal("tcpTls", "quic");
export type TunnelTransport = typeof TunnelTransport.Type;

/** Why a UDP session expired or closed (`idle` for udp.expired). Free text is tolerated for forward compatibility. */
export const NativeUdpCloseReason = Schema.String;

/** Why a UDP session was refused (`sessionCap` | `portClosed`). */
export const NativeUdpRefusedReason = Schema.String;

const udpCommon = {
  edgeId: Schema.optional(Schema.String),
  sessionId: Schema.String,
  udpSessionId: Schema.Int,
  edgePort: Port,
  clientAddr: Schema.String,
};
const udpTotals = {
  packetsIn: Count,
  packetsOut: Count,
  bytesIn: Count,
  bytesOut: Count,
  durationMs: Count,
  reason: NativeUdpCloseReason,
};
const UdpRefused = event("udp.refused", {
  edgeId: Schema.optional(Schema.String),
  edgePort: Port,
  clientAddr: Schema.String,
  reason: NativeUdpRefusedReason,
  count: Count,
});
const UdpOversized = event("udp.oversized", {
  edgeId: Schema.optional(Schema.String),
  edgePort: Port,
  clientAddr: Schema.String,
  size: Count,
  maxSize: Schema.optionalWith(Schema.NullOr(Count), { default: () => null }),
  count: Count,
});

// ---- hub events ------------------------------------------------------------------------------------------

export const HubListening = event("hub.listening", { port: Port });
export const HubStopped = event("hub.stopped", {});
export const EdgeConnected = event("edge.connected", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  remoteAddr: Schema.String,
});
/** `admission: "deferred"`: an authenticated edge waits for `hubAdmitEdge(sessionId, …)`. */
export const EdgeAdmitting = event("edge.admitting", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  remoteAddr: Schema.String,
});
/**
 * `admission: "deferred"`: the edge was told `notOwner`. `reason` is the one given to `hubAdmitEdge`
 * (`notOwner` | `ownershipUnavailable` | …), `admissionTimeout`, or `ioError` (the edge went away before the reply).
 */
export const EdgeRefused = event("edge.refused", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  remoteAddr: Schema.String,
  reason: Schema.String,
  message: Message,
});
export const EdgeAuthFailed = event("edge.authFailed", {
  remoteAddr: Schema.String,
  claimedEdgeId: NullableString,
  reason: AuthFailedReason,
});
export const EdgeDisconnected = event("edge.disconnected", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  reason: EdgeDisconnectReason,
  message: Message,
});
export const EdgeConfigPushed = event("edge.configPushed", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.Array(Port),
});
export const HubStreamOpened = event("stream.opened", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  streamId: Schema.Int,
  edgePort: Port,
  clientAddr: Schema.String,
  target: Schema.String,
});
export const HubStreamClosed = event("stream.closed", {
  edgeId: Schema.String,
  sessionId: Schema.String,
  streamId: Schema.Int,
  edgePort: Port,
  clientAddr: Schema.String,
  target: Schema.String,
  bytesIn: Count,
  bytesOut: Count,
  durationMs: Count,
  reason: StreamCloseReason,
  message: Message,
});
export const TunnelProtocolError = event("tunnel.protocolError", {
  remoteAddr: Schema.String,
  edgeId: NullableString,
  sessionId: NullableString,
  message: Message,
});

export const HubUdpOpened = event("udp.opened", { ...udpCommon, edgeId: Schema.String, target: Schema.String });
export const HubUdpExpired = event("udp.expired", {
  ...udpCommon,
  edgeId: Schema.String,
  target: Schema.String,
  ...udpTotals,
});
export const HubUdpClosed = event("udp.closed", { ...udpCommon, edgeId: Schema.String, target: Schema.String, ...udpTotals });
export const HubUdpRefused = UdpRefused;
export const HubUdpOversized = UdpOversized;

const hubEventSchemas = {
  "hub.listening": HubListening,
  "hub.stopped": HubStopped,
  "edge.connected": EdgeConnected,
  "edge.authFailed": EdgeAuthFailed,
  "edge.admitting": EdgeAdmitting,
  "edge.refused": EdgeRefused,
  "edge.disconnected": EdgeDisconnected,
  "edge.configPushed": EdgeConfigPushed,
  "stream.opened": HubStreamOpened,
  "stream.closed": HubStreamClosed,
  "tunnel.protocolError": TunnelProtocolError,
  "udp.opened": HubUdpOpened,
  "udp.expired": HubUdpExpired,
  "udp.closed": HubUdpClosed,
  "udp.refused": HubUdpRefused,
  "udp.oversized": HubUdpOversized,
} as const;

/** Every event the native hub emits, discriminated by `type`. */
export const NativeHubEvent = Schema.Union(...Object.values(hubEventSchemas));
export type NativeHubEvent = typeof NativeHubEvent.Type;
export type NativeHubEventType = NativeHubEvent["type"];
/** The hub event of one `type`, e.g. `NativeHubEventOf<"stream.closed">`. */
export type NativeHubEventOf<T extends NativeHubEventType> = Extract<NativeHubEvent, { readonly type: T }>;

// ---- edge events -----------------------------------------------------------------------------------------

const HubAddress = Schema.String;

export const TunnelConnecting = event("tunnel.connecting", { hub: HubAddress, attempt: Schema.Int });
export const TunnelConnected = event("tunnel.connected", {
  hub: HubAddress,
  hubId: Schema.String,
  sessionId: Schema.String,
  hubFingerprint: Schema.String,
  pinned: Schema.Boolean,
  /** Older addons do not send it; they only speak TLS over TCP. */
  transport: Schema.optional(TunnelTransport),
  /** The previous session was with a different hub (older addons: absent). */
  failover: Schema.optional(Schema.Boolean),
});
/** Clients reset because no tunnel came up within `gapHoldMs`; rate-limited, `count` since the previous one. */
export const StreamRefused = event("stream.refused", {
  edgePort: Port,
  clientAddr: Schema.String,
  reason: Schema.String,
  count: Count,
});
export const TunnelFallback = event("tunnel.fallback", {
  hub: HubAddress,
  from: Schema.String,
  to: Schema.String,
  reason: Schema.String,
  message: Message,
});
export const TunnelUnpinned = event("tunnel.unpinned", { hub: HubAddress, hubFingerprint: Schema.String });
export const TunnelDisconnected = event("tunnel.disconnected", {
  hub: HubAddress,
  reason: Schema.String,
  message: Message,
  retryInMs: Schema.optionalWith(Schema.NullOr(Count), { default: () => null }),
});
export const TunnelRejected = event("tunnel.rejected", {
  hub: HubAddress,
  reason: Schema.String,
  message: Message,
  retryInMs: Schema.optionalWith(Schema.NullOr(Count), { default: () => null }),
});
export const PortsAssigned = event("ports.assigned", {
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.Array(Port),
});
export const PortsUpdated = event("ports.updated", {
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.Array(Port),
  added: Schema.Array(Port),
  removed: Schema.Array(Port),
});
export const ListenerError = event("listener.error", {
  port: Port,
  protocol: Schema.optionalWith(ListenerProtocol, { default: () => "tcp" as const }),
  code: Schema.String,
  message: Message,
});
export const EdgeStreamOpened = event("stream.opened", {
  edgeId: Schema.optional(Schema.String),
  sessionId: Schema.String,
  streamId: Schema.Int,
  edgePort: Port,
  clientAddr: Schema.String,
});
export const EdgeStreamClosed = event("stream.closed", {
  edgeId: Schema.optional(Schema.String),
  sessionId: Schema.String,
  streamId: Schema.Int,
  edgePort: Port,
  clientAddr: Schema.String,
  bytesIn: Count,
  bytesOut: Count,
  durationMs: Count,
  reason: StreamCloseReason,
  message: Message,
});

/** STUN: the edge's public address as `server` saw it (new or changed). */
export const PublicIpDiscovered = event("publicIp.discovered", {
  ip: Schema.String,
  port: Schema.optionalWith(Schema.NullOr(Port), { default: () => null }),
  server: Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null }),
});
export const EdgeUdpOpened = event("udp.opened", udpCommon);
export const EdgeUdpExpired = event("udp.expired", { ...udpCommon, ...udpTotals });
export const EdgeUdpClosed = event("udp.closed", { ...udpCommon, ...udpTotals });
export const EdgeUdpRefused = UdpRefused;
export const EdgeUdpOversized = UdpOversized;

const edgeEventSchemas = {
  "tunnel.connecting": TunnelConnecting,
  "tunnel.connected": TunnelConnected,
  "tunnel.unpinned": TunnelUnpinned,
  "tunnel.disconnected": TunnelDisconnected,
  "tunnel.rejected": TunnelRejected,
  "ports.assigned": PortsAssigned,
  "ports.updated": PortsUpdated,
  "listener.error": ListenerError,
  "stream.opened": EdgeStreamOpened,
  "stream.closed": EdgeStreamClosed,
  "stream.refused": StreamRefused,
  "tunnel.fallback": TunnelFallback,
  "publicIp.discovered": PublicIpDiscovered,
  "udp.opened": EdgeUdpOpened,
  "udp.expired": EdgeUdpExpired,
  "udp.closed": EdgeUdpClosed,
  "udp.refused": EdgeUdpRefused,
  "udp.oversized": EdgeUdpOversized,
} as const;

/** Every event the native edge emits, discriminated by `type`. */
export const NativeEdgeEvent = Schema.Union(...Object.values(edgeEventSchemas));
export type NativeEdgeEvent = typeof NativeEdgeEvent.Type;
export type NativeEdgeEventType = NativeEdgeEvent["type"];
/** The edge event of one `type`, e.g. `NativeEdgeEventOf<"ports.updated">`. */
export type NativeEdgeEventOf<T extends NativeEdgeEventType> = Extract<NativeEdgeEvent, { readonly type: T }>;

// ---- per-event decoding ----------------------------------------------------------------------------------

/** Decodes one raw event object; `Left` carries a message naming the event and what is wrong with it. */
export type EventDecoder<E> = (raw: unknown) => Either.Either<E, string>;

const describe = (raw: Record<string, unknown>): string =>
  `event ${JSON.stringify(raw["type"])} (seq ${String(raw["seq"])})`;

const makeEventDecoder = <E>(schemas: Record<string, Schema.Schema.AnyNoContext>): EventDecoder<E> => {
  const decoders = new Map<string, (u: unknown) => Either.Either<E, ParseResult.ParseError>>();
  for (const [type, schema] of Object.entries(schemas)) {
    // The map is keyed by each schema's own `type` literal, so a successful decode is a member of E.
    decoders.set(type, Schema.decodeUnknownEither(schema) as (u: unknown) => Either.Either<E, ParseResult.ParseError>);
  }
  return (raw) => {
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      return Either.left(`event is not an object: ${JSON.stringify(raw)}`);
    }
    const record = raw as Record<string, unknown>;
    const type = record["type"];
    const decode = typeof type === "string" ? decoders.get(type) : undefined;
    if (decode === undefined) return Either.left(`unknown ${describe(record)}`);
    return Either.mapLeft(decode(raw), (error) => {
      const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0];
      const where = issue === undefined || issue.path.length === 0 ? "" : `${issue.path.join(".")}: `;
      return `invalid ${describe(record)}: ${where}${issue?.message ?? error.message}`;
    });
  };
};

export const decodeNativeHubEvent: EventDecoder<NativeHubEvent> = makeEventDecoder(hubEventSchemas);
export const decodeNativeEdgeEvent: EventDecoder<NativeEdgeEvent> = makeEventDecoder(edgeEventSchemas);
