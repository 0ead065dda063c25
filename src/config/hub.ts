/** Hub configuration: the schema (with defaults), its env/flag names, and loading from all sources. */
import { Effect, Either, Schema } from "effect";
import { ConfigError } from "../errors.js";
import {
  BindHost,
  expecting,
  HostPort,
  Identifier,
  ListenPort,
  Milliseconds,
  NonEmptyString,
  PortList,
} from "./fields.js";
import {
  configErrorFromParse,
  fromEnv,
  fromFile,
  fromFlags,
  fromValue,
  mergeSources,
  type FieldSpec,
  type FlagValues,
  type SourcedConfig,
} from "./sources.js";

/** Target overrides keyed by edge port; keys are checked here so a bad key is named in the error. */
const Targets = Schema.Record({ key: Schema.String, value: HostPort }).pipe(
  Schema.filter((targets) => {
    for (const key of Object.keys(targets)) {
      const port = Number(key);
      if (!/^\d+$/.test(key) || port < 1 || port > 65535) {
        return { path: [key], message: `must be keyed by a port number 1..65535, got key ${JSON.stringify(key)}` };
      }
    }
    return true;
  }),
);

/** One edge the hub accepts, with the ports it should listen on. */
export const AllowedEdgeSchema = Schema.Struct({
  /** Edge id; also a NATS subject token, hence the restricted alphabet. */
  id: Identifier,
  secret: NonEmptyString,
  /** TCP ports the edge listens on. Default: none. */
  listenPorts: Schema.optionalWith(PortList, { default: () => [] }),
  /** UDP ports the edge listens on. Default: none. */
  listenPortsUdp: Schema.optionalWith(PortList, { default: () => [] }),
  /** Per-port target `host:port`. Default: edge port N goes to `targetHost:N`. */
  targets: Schema.optionalWith(Targets, { default: () => ({}) }),
  /** How often the edge refreshes its public address with STUN. Default 300 s; 0 disables. */
  stunIntervalSecs: Schema.optionalWith(
    expecting(Schema.Int.pipe(Schema.between(0, 86_400)), "a whole number of seconds 0..86400"),
    { default: () => 300 },
  ),
});
/** An allowed edge as given (optional fields may be left out). */
export type AllowedEdgeInput = typeof AllowedEdgeSchema.Encoded;
/** An allowed edge with defaults applied. */
export type AllowedEdge = typeof AllowedEdgeSchema.Type;

export const AllowedEdgesSchema = Schema.Array(AllowedEdgeSchema);

export const TcpProxyProtocol = expecting(Schema.Literal("v1", "v2", "none"), '"v1", "v2" or "none"');
export const UdpProxyProtocol = expecting(Schema.Literal("v2", "none"), '"v2" or "none"');

/** The hub's TLS identity. Give PEM text or file paths (not both); give neither to use/generate one in `dataDir`. */
export const HubTlsSchema = Schema.Struct({
  certPem: Schema.optional(NonEmptyString),
  keyPem: Schema.optional(NonEmptyString),
  certFile: Schema.optional(NonEmptyString),
  keyFile: Schema.optional(NonEmptyString),
  /** Extra names/addresses for a generated certificate (localhost, 127.0.0.1 and the host name are always in). */
  subjectAltNames: Schema.optional(Schema.Array(NonEmptyString)),
});

export const HubOptionsSchema = Schema.Struct({
  /** Names this hub in events and to edges. Default "hub". */
  hubId: Schema.optionalWith(Identifier, { default: () => "hub" }),
  /** Address the tunnel port binds to. Default "0.0.0.0". */
  bindHost: Schema.optionalWith(BindHost, { default: () => "0.0.0.0" }),
  /** Port edges connect to. Default 8443; 0 picks a free port (see status `tunnelPort`). */
  tunnelPort: Schema.optionalWith(ListenPort, { default: () => 8443 }),
  /** Where edge port N is forwarded when `targets` does not say. Default "127.0.0.1". */
  targetHost: Schema.optionalWith(BindHost, { default: () => "127.0.0.1" }),
  /** PROXY protocol header sent to targets. Default tcp "v1", udp "v2". */
  proxyProtocol: Schema.optionalWith(
    Schema.Struct({
      tcp: Schema.optionalWith(TcpProxyProtocol, { default: () => "v1" as const }),
      udp: Schema.optionalWith(UdpProxyProtocol, { default: () => "v2" as const }),
    }),
    { default: () => ({ tcp: "v1" as const, udp: "v2" as const }) },
  ),
  tls: Schema.optionalWith(HubTlsSchema, { default: () => ({}) }),
  /** Keeps the generated TLS identity. Default `$PORTWAY_DATA_DIR`, else `~/.local/state/portway/hub`. */
  dataDir: Schema.optional(NonEmptyString),
  /** Heartbeat interval on each tunnel. Default 5000. */
  pingIntervalMs: Schema.optionalWith(Milliseconds(100, 3_600_000), { default: () => 5000 }),
  /** A tunnel silent this long is closed. Default 15000; must exceed `pingIntervalMs`. */
  idleTimeoutMs: Schema.optionalWith(Milliseconds(200, 3_600_000), { default: () => 15_000 }),
  /** An edge must finish TLS + hello within this. Default 5000. */
  handshakeTimeoutMs: Schema.optionalWith(Milliseconds(100, 600_000), { default: () => 5000 }),
  /** Connecting to a target gives up after this. Default 5000. */
  targetConnectTimeoutMs: Schema.optionalWith(Milliseconds(100, 600_000), { default: () => 5000 }),
  /** Edges allowed to connect. Default none (can be set later with `updateAllowedEdges`). */
  edges: Schema.optionalWith(AllowedEdgesSchema, { default: () => [] }),
});

/** Hub options as given by code, a config file, env or flags; every field optional. */
export type HubOptions = typeof HubOptionsSchema.Encoded;
/** Hub options with defaults applied and checked. */
export type HubConfig = typeof HubOptionsSchema.Type;

/** Env variables and flags for `portway hub`. */
export const hubFieldSpecs: ReadonlyArray<FieldSpec> = [
  { path: ["hubId"], flag: "hub-id", env: "PORTWAY_HUB_ID", kind: "string", placeholder: "ID", description: 'hub id (default "hub")' },
  { path: ["bindHost"], flag: "bind-host", env: "PORTWAY_HUB_BIND_HOST", kind: "string", placeholder: "ADDR", description: 'address the tunnel port binds to (default "0.0.0.0")' },
  { path: ["tunnelPort"], flag: "tunnel-port", env: "PORTWAY_HUB_TUNNEL_PORT", kind: "integer", placeholder: "PORT", description: "port edges connect to (default 8443)" },
  { path: ["targetHost"], flag: "target-host", env: "PORTWAY_HUB_TARGET_HOST", kind: "string", placeholder: "HOST", description: 'edge port N goes to HOST:N unless an edge has targets (default "127.0.0.1")' },
  { path: ["proxyProtocol", "tcp"], flag: "proxy-protocol-tcp", env: "PORTWAY_HUB_PROXY_PROTOCOL_TCP", kind: "string", placeholder: "v1|v2|none", description: 'PROXY header to TCP targets (default "v1")' },
  { path: ["proxyProtocol", "udp"], flag: "proxy-protocol-udp", env: "PORTWAY_HUB_PROXY_PROTOCOL_UDP", kind: "string", placeholder: "v2|none", description: 'PROXY header to UDP targets (default "v2")' },
  { path: ["tls", "certFile"], flag: "cert", env: "PORTWAY_HUB_CERT_FILE", kind: "string", placeholder: "FILE", description: "TLS certificate (PEM); default: generated and kept in the data dir" },
  { path: ["tls", "keyFile"], flag: "key", env: "PORTWAY_HUB_KEY_FILE", kind: "string", placeholder: "FILE", description: "TLS private key (PEM) for --cert" },
  { path: ["tls", "subjectAltNames"], flag: "cert-names", env: "PORTWAY_HUB_CERT_NAMES", kind: "list", placeholder: "NAMES", description: "extra comma-separated names for a generated certificate" },
  { path: ["dataDir"], flag: "data-dir", env: "PORTWAY_DATA_DIR", kind: "string", placeholder: "DIR", description: "keeps the generated TLS identity (default ~/.local/state/portway/hub)" },
  { path: ["pingIntervalMs"], flag: "ping-interval-ms", env: "PORTWAY_HUB_PING_INTERVAL_MS", kind: "integer", placeholder: "MS", description: "tunnel heartbeat interval (default 5000)" },
  { path: ["idleTimeoutMs"], flag: "idle-timeout-ms", env: "PORTWAY_HUB_IDLE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "close a silent tunnel after this (default 15000)" },
  { path: ["handshakeTimeoutMs"], flag: "handshake-timeout-ms", env: "PORTWAY_HUB_HANDSHAKE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "TLS + hello deadline for edges (default 5000)" },
  { path: ["targetConnectTimeoutMs"], flag: "target-connect-timeout-ms", env: "PORTWAY_HUB_TARGET_CONNECT_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "target connect deadline (default 5000)" },
  { path: ["edges"], flag: "edge", kind: "edgeSpec", placeholder: "ID:PORTS:SECRET", description: "allow an edge, e.g. e1:80,443:s3cret (repeatable; replaces the file's edges)" },
  { path: ["edges"], env: "PORTWAY_HUB_EDGES", kind: "json", placeholder: "JSON", description: 'allowed edges as JSON, e.g. [{"id":"e1","secret":"…","listenPorts":[80]}]' },
];

const checkHubConfig = (config: HubConfig, sourced: Pick<SourcedConfig, "origins" | "file">): ConfigError | undefined => {
  const origin = (field: string) => sourced.origins.get(field) ?? sourced.file;
  if (config.idleTimeoutMs <= config.pingIntervalMs) {
    return new ConfigError({
      field: "idleTimeoutMs",
      reason: `must be greater than pingIntervalMs (${config.pingIntervalMs}), got ${config.idleTimeoutMs}`,
      source: origin("idleTimeoutMs"),
    });
  }
  const tls = config.tls;
  const pairs: ReadonlyArray<readonly [string, string | undefined, string, string | undefined]> = [
    ["tls.certPem", tls.certPem, "tls.keyPem", tls.keyPem],
    ["tls.certFile", tls.certFile, "tls.keyFile", tls.keyFile],
  ];
  for (const [certField, cert, keyField, key] of pairs) {
    if ((cert === undefined) !== (key === undefined)) {
      const [given, missing] = cert === undefined ? [keyField, certField] : [certField, keyField];
      return new ConfigError({ field: missing, reason: `is required when ${given} is given`, source: origin(given) });
    }
  }
  if (tls.certPem !== undefined && tls.certFile !== undefined) {
    return new ConfigError({ field: "tls.certFile", reason: "give either tls.certPem/keyPem or tls.certFile/keyFile, not both", source: origin("tls") });
  }
  return allowedEdgesProblem(config.edges, "edges", origin("edges"));
};

/** Duplicate edge ids are a mistake worth stopping for (the second would silently shadow the first). */
export const allowedEdgesProblem = (
  edges: ReadonlyArray<AllowedEdge>,
  field: string,
  source?: string,
): ConfigError | undefined => {
  const seen = new Set<string>();
  for (const [i, edge] of edges.entries()) {
    if (seen.has(edge.id)) return new ConfigError({ field: `${field}.${i}.id`, reason: `duplicate edge id "${edge.id}"`, source });
    seen.add(edge.id);
  }
  return undefined;
};

/** Checks hub options (from code or merged sources) and applies defaults. */
export const decodeHubConfig = (sourced: SourcedConfig): Effect.Effect<HubConfig, ConfigError> =>
  Effect.gen(function* () {
    const decoded = Schema.decodeUnknownEither(HubOptionsSchema, { onExcessProperty: "error" })(sourced.value);
    if (Either.isLeft(decoded)) return yield* Effect.fail(configErrorFromParse(decoded.left, sourced));
    const problem = checkHubConfig(decoded.right, sourced);
    if (problem !== undefined) return yield* Effect.fail(problem);
    return decoded.right;
  });

/** Checks hub options passed in code. */
export const resolveHubOptions = (options: HubOptions | undefined): Effect.Effect<HubConfig, ConfigError> =>
  decodeHubConfig(fromValue((options ?? {}) as Record<string, unknown>));

/** Checks an allowed-edge list (for `updateAllowedEdges`). */
export const resolveAllowedEdges = (
  edges: ReadonlyArray<AllowedEdgeInput>,
): Effect.Effect<ReadonlyArray<AllowedEdge>, ConfigError> =>
  Effect.gen(function* () {
    const decoded = Schema.decodeUnknownEither(AllowedEdgesSchema, { onExcessProperty: "error" })(edges);
    if (Either.isLeft(decoded)) {
      return yield* Effect.fail(configErrorFromParse(decoded.left, { origins: new Map() }, ["edges"]));
    }
    const problem = allowedEdgesProblem(decoded.right, "edges");
    if (problem !== undefined) return yield* Effect.fail(problem);
    return decoded.right;
  });

/** Inputs for `loadHubConfig`: a config file path, the environment, and parsed flags. */
export interface ConfigInputs {
  readonly file?: string | undefined;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly flags?: FlagValues;
}

/** Loads and merges the hub config: defaults < file < env < flags. */
export const loadHubConfig = (inputs: ConfigInputs): Effect.Effect<HubConfig, ConfigError> =>
  Effect.gen(function* () {
    const file = inputs.file === undefined ? fromValue({}) : yield* fromFile(inputs.file);
    const env = yield* fromEnv(hubFieldSpecs, inputs.env ?? {});
    const flags = yield* fromFlags(hubFieldSpecs, inputs.flags ?? {});
    return yield* decodeHubConfig(mergeSources(file, env, flags));
  });
