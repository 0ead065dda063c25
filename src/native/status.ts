/** Status snapshots returned by the addon (`hubStatus`, `edgeStatus`), per docs/architecture.md "Status JSON". */
import { Either, ParseResult, Schema } from "effect";
import { ListenerProtocol, TunnelTransport } from "./events.js";

const Port = Schema.Int.pipe(Schema.between(0, 65535));
const Count = Schema.Number.pipe(Schema.nonNegative());
const NullableString = Schema.optionalWith(Schema.NullOr(Schema.String), { default: () => null });

export const NativeHubEdgeStatus = Schema.Struct({
  edgeId: Schema.String,
  sessionId: Schema.String,
  remoteAddr: Schema.String,
  /** Epoch milliseconds. */
  connectedAt: Schema.Number,
  activeStreams: Count,
  bytesIn: Schema.optionalWith(Count, { default: () => 0 }),
  bytesOut: Schema.optionalWith(Count, { default: () => 0 }),
  /** Older addons leave these out (TLS only, no UDP). */
  transport: Schema.optionalWith(TunnelTransport, { default: () => "tcpTls" as const }),
  udpSessions: Schema.optionalWith(Count, { default: () => 0 }),
  udpDropped: Schema.optionalWith(Count, { default: () => 0 }),
  udpOversized: Schema.optionalWith(Count, { default: () => 0 }),
  udpRefused: Schema.optionalWith(Count, { default: () => 0 }),
});
export type NativeHubEdgeStatus = typeof NativeHubEdgeStatus.Type;

export const NativeHubStatus = Schema.Struct({
  running: Schema.Boolean,
  tunnelPort: Port,
  quic: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  hubId: Schema.String,
  fingerprint: Schema.String,
  edges: Schema.Array(NativeHubEdgeStatus),
});
export type NativeHubStatus = typeof NativeHubStatus.Type;

export const NativeListenerError = Schema.Struct({
  port: Port,
  protocol: Schema.optionalWith(ListenerProtocol, { default: () => "tcp" as const }),
  code: Schema.String,
  message: Schema.optionalWith(Schema.String, { nullable: true, default: () => "" }),
});
export type NativeListenerError = typeof NativeListenerError.Type;

export const NativeEdgeStatus = Schema.Struct({
  running: Schema.Boolean,
  connected: Schema.Boolean,
  hub: NullableString,
  hubId: NullableString,
  sessionId: NullableString,
  hubFingerprint: NullableString,
  pinned: Schema.optionalWith(Schema.Boolean, { nullable: true, default: () => false }),
  publicIp: NullableString,
  publicPort: Schema.optionalWith(Schema.NullOr(Port), { default: () => null }),
  transport: Schema.optionalWith(Schema.NullOr(TunnelTransport), { default: () => null }),
  activeStreams: Count,
  udpSessions: Schema.optionalWith(Count, { default: () => 0 }),
  udpDropped: Schema.optionalWith(Count, { default: () => 0 }),
  udpOversized: Schema.optionalWith(Count, { default: () => 0 }),
  udpRefused: Schema.optionalWith(Count, { default: () => 0 }),
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.optionalWith(Schema.Array(Port), { default: () => [] }),
  listenerErrors: Schema.optionalWith(Schema.Array(NativeListenerError), { default: () => [] }),
  lastError: NullableString,
  /** Clients reset because no tunnel came up within `gapHoldMs` (older addons: absent). */
  gapRefused: Schema.optionalWith(Count, { default: () => 0 }),
});
export type NativeEdgeStatus = typeof NativeEdgeStatus.Type;

const decodeJson =
  <A>(what: string, schema: Schema.Schema.AnyNoContext) =>
  (json: string): Either.Either<A, string> => {
    let raw: unknown;
    try {
      raw = JSON.parse(json);
    } catch (error) {
      return Either.left(`${what} is not JSON: ${error instanceof Error ? error.message : String(error)}`);
    }
    return Either.mapLeft(Schema.decodeUnknownEither(schema)(raw) as Either.Either<A, ParseResult.ParseError>, (e) => {
      const issue = ParseResult.ArrayFormatter.formatErrorSync(e)[0];
      return `${what} is invalid: ${issue === undefined ? e.message : `${issue.path.join(".")}: ${issue.message}`}`;
    });
  };

export const decodeNativeHubStatus: (json: string) => Either.Either<NativeHubStatus, string> = decodeJson<NativeHubStatus>(
  "hub status",
  NativeHubStatus,
);
export const decodeNativeEdgeStatus: (json: string) => Either.Either<NativeEdgeStatus, string> =
  decodeJson<NativeEdgeStatus>("edge status", NativeEdgeStatus);
