/** Edge configuration: the schema (with defaults), its env/flag names, and resolution of the token. */
import { readFileSync } from "node:fs";
import { Effect, Either, Schema } from "effect";
import { ConfigError, TokenError } from "../errors.js";
import { decodeConnectionToken, type HubAddress } from "../token.js";
import { BindHost, expecting, Fingerprint, Host, Milliseconds, NonEmptyString, Identifier, Port } from "./fields.js";
import type { ConfigInputs } from "./hub.js";
import {
  configErrorFromParse,
  fromEnv,
  fromFile,
  fromFlags,
  fromValue,
  mergeSources,
  originOf,
  type FieldSpec,
  type SourcedConfig,
} from "./sources.js";

/** How an edge carries its tunnel (docs/architecture.md, "Edge config"). */
export const TransportMode = expecting(
  Schema.Literal("tcpTls", "quic", "quicWithFallback"),
  '"tcpTls", "quic" or "quicWithFallback"',
);
export type TransportMode = typeof TransportMode.Type;

export const HubAddressSchema = Schema.Struct({ host: Host, port: Port });

export const EdgeOptionsSchema = Schema.Struct({
  /** A connection token (`portway token`); supplies hubs, edgeId, secret and the hub fingerprint. */
  token: Schema.optional(NonEmptyString),
  /** Hub to dial; overrides the token's. */
  hubHost: Schema.optional(Host),
  /** Hub tunnel port; overrides the token's. */
  hubPort: Schema.optional(Port),
  /** Several hubs to try in order; overrides hubHost/hubPort and the token's. */
  hubs: Schema.optional(Schema.Array(HubAddressSchema)),
  edgeId: Schema.optional(Identifier),
  secret: Schema.optional(NonEmptyString),
  /** Address the edge's public listeners bind to. Default "0.0.0.0". */
  bindAddress: Schema.optionalWith(BindHost, { default: () => "0.0.0.0" }),
  /** Pins the hub certificate (sha256, hex); overrides the token's `fp`. */
  hubCertFingerprint: Schema.optional(Schema.NullOr(Fingerprint)),
  /** Verifies the hub certificate against this CA (PEM) instead of pinning. */
  caPem: Schema.optional(Schema.NullOr(NonEmptyString)),
  /** Like caPem, read from a file. */
  caFile: Schema.optional(NonEmptyString),
  /** TLS server name (SNI); default the hub host. */
  serverName: Schema.optional(Schema.NullOr(NonEmptyString)),
  /** Heartbeat interval. Default 5000, or 1000 with more than one hub (failover detection). */
  pingIntervalMs: Schema.optional(Milliseconds(100, 3_600_000)),
  /** Reconnect when the tunnel is silent this long. Default 15000, or 2500 with more than one hub (hung-hub detection under 3 s); must exceed pingIntervalMs. */
  idleTimeoutMs: Schema.optional(Milliseconds(200, 3_600_000)),
  /** A client arriving while no tunnel is up waits this long for one, then is reset. Default 3000; 0 = reset at once. */
  gapHoldMs: Schema.optionalWith(Milliseconds(0, 600_000), { default: () => 3000 }),
  /** First reconnect delay; doubles up to reconnectMaxMs (with jitter). Default 250. */
  reconnectInitialMs: Schema.optionalWith(Milliseconds(10, 600_000), { default: () => 250 }),
  /** Longest reconnect delay. Default 30000. */
  reconnectMaxMs: Schema.optionalWith(Milliseconds(10, 3_600_000), { default: () => 30_000 }),
  /** How the tunnel is carried: TLS over TCP, QUIC, or QUIC falling back to TLS. Default "tcpTls". */
  transportMode: Schema.optional(TransportMode),
  /** quicWithFallback gives QUIC this long per attempt. Default: the addon's (5000). */
  quicFallbackTimeoutMs: Schema.optional(Milliseconds(100, 600_000)),
  /** STUN servers ("host:port") for public address discovery. Default none (off). */
  stunServers: Schema.optional(Schema.Array(NonEmptyString)),
});

/** Edge options as given: `{ token }`, or `{ hubHost, hubPort, edgeId, secret }`, plus optional extras. */
export type EdgeOptions = typeof EdgeOptionsSchema.Encoded;

/** The resolved edge config; exactly what the addon's `edgeStart` takes. */
export interface EdgeConfig {
  readonly hubs: ReadonlyArray<HubAddress>;
  readonly edgeId: string;
  readonly secret: string;
  readonly bindAddress: string;
  readonly hubCertFingerprint: string | null;
  readonly caPem: string | null;
  readonly serverName: string | null;
  readonly pingIntervalMs: number;
  readonly idleTimeoutMs: number;
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
  readonly gapHoldMs: number;
  /** Left out when not given: the addon then uses "tcpTls". */
  readonly transportMode?: TransportMode;
  readonly quicFallbackTimeoutMs?: number;
  readonly stunServers?: ReadonlyArray<string>;
}

/** Env variables and flags for `portway edge`. */
export const edgeFieldSpecs: ReadonlyArray<FieldSpec> = [
  { path: ["token"], flag: "token", env: "PORTWAY_EDGE_TOKEN", kind: "string", placeholder: "TOKEN", description: "connection token from `portway token`" },
  { path: ["hubHost"], flag: "hub-host", env: "PORTWAY_EDGE_HUB_HOST", kind: "string", placeholder: "HOST", description: "hub to connect to (overrides the token)" },
  { path: ["hubPort"], flag: "hub-port", env: "PORTWAY_EDGE_HUB_PORT", kind: "integer", placeholder: "PORT", description: "hub tunnel port (overrides the token)" },
  { path: ["edgeId"], flag: "edge-id", env: "PORTWAY_EDGE_ID", kind: "string", placeholder: "ID", description: "this edge's id (overrides the token)" },
  { path: ["secret"], flag: "secret", env: "PORTWAY_EDGE_SECRET", kind: "string", placeholder: "SECRET", description: "this edge's secret (overrides the token)" },
  { path: ["bindAddress"], flag: "bind-address", env: "PORTWAY_EDGE_BIND_ADDRESS", kind: "string", placeholder: "ADDR", description: 'address public listeners bind to (default "0.0.0.0")' },
  { path: ["hubCertFingerprint"], flag: "hub-fingerprint", env: "PORTWAY_EDGE_HUB_FINGERPRINT", kind: "string", placeholder: "SHA256", description: "pin the hub certificate (overrides the token)" },
  { path: ["caFile"], flag: "ca-file", env: "PORTWAY_EDGE_CA_FILE", kind: "string", placeholder: "FILE", description: "verify the hub against this CA (PEM) instead of pinning" },
  { path: ["serverName"], flag: "server-name", env: "PORTWAY_EDGE_SERVER_NAME", kind: "string", placeholder: "NAME", description: "TLS server name (default: the hub host)" },
  { path: ["pingIntervalMs"], flag: "ping-interval-ms", env: "PORTWAY_EDGE_PING_INTERVAL_MS", kind: "integer", placeholder: "MS", description: "tunnel heartbeat interval (default 5000; 1000 with several hubs)" },
  { path: ["idleTimeoutMs"], flag: "idle-timeout-ms", env: "PORTWAY_EDGE_IDLE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "reconnect after this much silence (default 15000; 2500 with several hubs)" },
  { path: ["gapHoldMs"], flag: "gap-hold-ms", env: "PORTWAY_EDGE_GAP_HOLD_MS", kind: "integer", placeholder: "MS", description: "a client arriving with no tunnel up waits this long, then is reset (default 3000)" },
  { path: ["reconnectInitialMs"], flag: "reconnect-initial-ms", env: "PORTWAY_EDGE_RECONNECT_INITIAL_MS", kind: "integer", placeholder: "MS", description: "first reconnect delay (default 250)" },
  { path: ["reconnectMaxMs"], flag: "reconnect-max-ms", env: "PORTWAY_EDGE_RECONNECT_MAX_MS", kind: "integer", placeholder: "MS", description: "longest reconnect delay (default 30000)" },
  { path: ["transportMode"], flag: "transport", env: "PORTWAY_EDGE_TRANSPORT", kind: "string", placeholder: "tcpTls|quic|quicWithFallback", description: 'tunnel transport (default "tcpTls")' },
  { path: ["quicFallbackTimeoutMs"], flag: "quic-fallback-timeout-ms", env: "PORTWAY_EDGE_QUIC_FALLBACK_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "quicWithFallback: time QUIC gets per attempt (default 5000)" },
  { path: ["stunServers"], flag: "stun-servers", env: "PORTWAY_EDGE_STUN_SERVERS", kind: "list", placeholder: "HOST:PORT,…", description: "STUN servers for public address discovery (default none)" },
];

const readCa = (path: string, source: string | undefined): Effect.Effect<string, ConfigError> =>
  Effect.try({
    try: () => readFileSync(path, "utf8"),
    catch: (error) =>
      new ConfigError({
        field: "caFile",
        source,
        reason: `cannot read "${path}" (${error instanceof Error ? error.message : String(error)})`,
      }),
  });

/** Checks edge options (code or merged sources), applies defaults and folds in the token. */
export const decodeEdgeConfig = (sourced: SourcedConfig): Effect.Effect<EdgeConfig, ConfigError> =>
  Effect.gen(function* () {
    const decoded = Schema.decodeUnknownEither(EdgeOptionsSchema, { onExcessProperty: "error" })(sourced.value);
    if (Either.isLeft(decoded)) return yield* Effect.fail(configErrorFromParse(decoded.left, sourced));
    const o = decoded.right;
    const origin = (field: string) => originOf(sourced, [field]);

    const token =
      o.token === undefined
        ? undefined
        : yield* Effect.try({
            try: () => decodeConnectionToken(o.token as string),
            catch: (error) =>
              new ConfigError({
                field: "token",
                source: origin("token"),
                reason: error instanceof TokenError ? error.message : String(error),
              }),
          });

    let hubs: ReadonlyArray<HubAddress>;
    if (o.hubs !== undefined && o.hubs.length > 0) {
      hubs = o.hubs;
    } else if (o.hubHost !== undefined) {
      const port = o.hubPort ?? token?.hubPort;
      if (port === undefined) {
        return yield* Effect.fail(new ConfigError({ field: "hubPort", reason: "is required with hubHost", source: origin("hubHost") }));
      }
      hubs = [{ host: o.hubHost, port }];
    } else if (token !== undefined) {
      hubs = o.hubPort === undefined ? token.hubs : token.hubs.map((h) => ({ ...h, port: o.hubPort as number }));
    } else {
      return yield* Effect.fail(new ConfigError({ field: "hubHost", reason: "is required (or give a token)" }));
    }

    const edgeId = o.edgeId ?? token?.edgeId;
    if (edgeId === undefined) return yield* Effect.fail(new ConfigError({ field: "edgeId", reason: "is required (or give a token)" }));
    const secret = o.secret ?? token?.secret;
    if (secret === undefined) return yield* Effect.fail(new ConfigError({ field: "secret", reason: "is required (or give a token)" }));

    if (o.caPem != null && o.caFile !== undefined) {
      return yield* Effect.fail(new ConfigError({ field: "caFile", reason: "give caPem or caFile, not both", source: origin("caFile") }));
    }
    const caPem = o.caFile !== undefined ? yield* readCa(o.caFile, origin("caFile")) : (o.caPem ?? null);

    // Several hubs: detect a dead hub within seconds so the edge fails over (docs/architecture.md, "Edge config").
    const severalHubs = hubs.length > 1;
    const pingIntervalMs = o.pingIntervalMs ?? (severalHubs ? 1000 : 5000);
    const idleTimeoutMs = o.idleTimeoutMs ?? Math.max(severalHubs ? 2500 : 15_000, 2 * pingIntervalMs);
    if (idleTimeoutMs <= pingIntervalMs) {
      return yield* Effect.fail(
        new ConfigError({
          field: "idleTimeoutMs",
          reason: `must be greater than pingIntervalMs (${pingIntervalMs}), got ${idleTimeoutMs}`,
          source: origin("idleTimeoutMs"),
        }),
      );
    }
    if (o.reconnectMaxMs < o.reconnectInitialMs) {
      return yield* Effect.fail(
        new ConfigError({
          field: "reconnectMaxMs",
          reason: `must be at least reconnectInitialMs (${o.reconnectInitialMs}), got ${o.reconnectMaxMs}`,
          source: origin("reconnectMaxMs"),
        }),
      );
    }

    return {
      hubs,
      edgeId,
      secret,
      bindAddress: o.bindAddress,
      hubCertFingerprint: o.hubCertFingerprint === undefined ? (token?.hubCertFingerprint ?? null) : o.hubCertFingerprint,
      caPem,
      serverName: o.serverName ?? null,
      pingIntervalMs,
      idleTimeoutMs,
      reconnectInitialMs: o.reconnectInitialMs,
      reconnectMaxMs: o.reconnectMaxMs,
      gapHoldMs: o.gapHoldMs,
      ...(o.transportMode === undefined ? {} : { transportMode: o.transportMode }),
      ...(o.quicFallbackTimeoutMs === undefined ? {} : { quicFallbackTimeoutMs: o.quicFallbackTimeoutMs }),
      ...(o.stunServers === undefined ? {} : { stunServers: o.stunServers }),
    };
  });

/** Checks edge options passed in code. */
export const resolveEdgeOptions = (options: EdgeOptions): Effect.Effect<EdgeConfig, ConfigError> =>
  decodeEdgeConfig(fromValue(options as Record<string, unknown>));

/** Loads and merges the edge config: defaults < file < env < flags. */
export const loadEdgeConfig = (inputs: ConfigInputs): Effect.Effect<EdgeConfig, ConfigError> =>
  Effect.gen(function* () {
    const file = inputs.file === undefined ? fromValue({}) : yield* fromFile(inputs.file);
    const env = yield* fromEnv(edgeFieldSpecs, inputs.env ?? {});
    const flags = yield* fromFlags(edgeFieldSpecs, inputs.flags ?? {});
    return yield* decodeEdgeConfig(mergeSources(file, env, flags));
  });
