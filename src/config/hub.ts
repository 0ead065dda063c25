/** Hub configuration: the schema (with defaults), its env/flag names, and loading from all sources. */
import { Effect, Either, ParseResult, Schema } from "effect";
import { ConfigError } from "../errors.js";
import { parseNatsServers } from "../nats/connection.js";
import {
  BindHost,
  ByteSize,
  DurationMs,
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

/** `nats://a:4222,nats://b:4222` (bare `host:port` and `tls://` accepted) or a list; decodes to a list of URLs. */
export const NatsServers = Schema.transformOrFail(
  Schema.Union(Schema.String, Schema.Array(Schema.String)),
  Schema.Array(Schema.String),
  {
    strict: true,
    decode: (input, _, ast) => {
      const parsed = Effect.runSync(Effect.either(parseNatsServers(typeof input === "string" ? input : input.join(","))));
      return Either.isRight(parsed)
        ? ParseResult.succeed(parsed.right)
        : ParseResult.fail(
            new ParseResult.Type(ast, input, `must be NATS server URLs such as "nats://a:4222,nats://b:4222" (${parsed.left.reason})`),
          );
    },
    encode: (servers) => ParseResult.succeed(servers),
  },
);

/** Documented defaults of the event log (docs/events.md, "The stream"). */
export const EVENTS_DEFAULTS = {
  enabled: true,
  stream: "PORTWAY_EVENTS",
  replicas: 1,
  /** 30 days. */
  maxAge: 30 * 86_400_000,
  /** 10 GiB. */
  maxBytes: 10 * 1024 ** 3,
  /** 10 minutes. */
  duplicateWindow: 10 * 60_000,
  /** 256 MiB. */
  outboxMaxBytes: 256 * 1024 ** 2,
} as const;

const EventsSettings = Schema.Struct({
  /** Record lifecycle events in NATS JetStream. Default true. */
  enabled: Schema.optionalWith(expecting(Schema.Boolean, "true or false"), { default: () => EVENTS_DEFAULTS.enabled }),
  /** JetStream stream name. Default "PORTWAY_EVENTS". */
  stream: Schema.optionalWith(
    expecting(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{1,64}$/)), "a stream name of letters, digits, '_' or '-'"),
    { default: () => EVENTS_DEFAULTS.stream },
  ),
  /** Stream replicas: 1 for a single server (and the embedded one), 3 in a cluster. Default 1. */
  replicas: Schema.optionalWith(expecting(Schema.Int.pipe(Schema.between(1, 5)), "an integer 1..5"), {
    default: () => EVENTS_DEFAULTS.replicas,
  }),
  /** Events older than this are removed. Default "30d". */
  maxAge: Schema.optionalWith(DurationMs, { default: () => EVENTS_DEFAULTS.maxAge }),
  /** The oldest events are removed beyond this size. Default "10GiB". */
  maxBytes: Schema.optionalWith(ByteSize, { default: () => EVENTS_DEFAULTS.maxBytes }),
  /** JetStream de-duplication horizon for re-sent batches. Default "10m". */
  duplicateWindow: Schema.optionalWith(DurationMs, { default: () => EVENTS_DEFAULTS.duplicateWindow }),
  /** Bound of the disk outbox that holds events while NATS is unreachable. Default "256MiB". */
  outboxMaxBytes: Schema.optionalWith(ByteSize, { default: () => EVENTS_DEFAULTS.outboxMaxBytes }),
});

/** `events: false` / `events: true` are short for `{ enabled: … }`. */
export const EventsOptionsSchema = Schema.transform(
  Schema.Union(EventsSettings, Schema.Boolean),
  Schema.typeSchema(EventsSettings),
  {
    strict: false,
    decode: (input) =>
      typeof input === "boolean" ? { ...EVENTS_DEFAULTS, enabled: input } : input,
    encode: (settings) => settings,
  },
);

/** Documented defaults of cluster mode (docs/cluster.md). */
export const CLUSTER_DEFAULTS = {
  replicas: 1,
  heartbeatMs: 500,
  hubTimeoutMs: 2000,
  leaseMs: 2000,
  /** How long past its lease a hub keeps the edges it holds while the owners bucket has no leader (NATS up). */
  electionGraceMs: 10000,
  /** Tunnel heartbeat/idle defaults in cluster mode (fast failure detection). */
  pingIntervalMs: 1000,
  idleTimeoutMs: 2500,
} as const;

/** Several hubs sharing one registry and edge ownership through JetStream KV (docs/cluster.md). */
export const ClusterSettingsSchema = Schema.Struct({
  /** Cluster name: part of the KV bucket names `pw_<name>_edges|hubs|owners`. */
  name: expecting(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{1,32}$/)), "1 to 32 letters, digits, '_' or '-'"),
  /** Replicas of the KV buckets (and, unless events.replicas is set, of the event stream). Default 1; 3 on a 3-node cluster. */
  replicas: Schema.optionalWith(expecting(Schema.Int.pipe(Schema.between(1, 5)), "an integer 1..5"), {
    default: () => CLUSTER_DEFAULTS.replicas,
  }),
  /** How often the hub rewrites its liveness entry. Default 500. */
  heartbeatMs: Schema.optionalWith(Milliseconds(50, 60_000), { default: () => CLUSTER_DEFAULTS.heartbeatMs }),
  /** A hub whose heartbeat is older than this is dead. Default 2000; must exceed heartbeatMs. */
  hubTimeoutMs: Schema.optionalWith(Milliseconds(100, 600_000), { default: () => CLUSTER_DEFAULTS.hubTimeoutMs }),
  /** Ownership lease of an edge (renewed every leaseMs/4). Default 2000. */
  leaseMs: Schema.optionalWith(Milliseconds(200, 600_000), { default: () => CLUSTER_DEFAULTS.leaseMs }),
  /**
   * While the NATS connection is up but the owners bucket cannot commit (JetStream electing a leader after a
   * node loss, typically 4-9 s), keep serving the edges already held for up to this long past the lease's fence
   * point; new edges are refused meanwhile. 0 = fence at once as without it. Default 10000 (ADR 0009).
   */
  electionGraceMs: Schema.optionalWith(Milliseconds(0, 600_000), { default: () => CLUSTER_DEFAULTS.electionGraceMs }),
});
/** Cluster settings with defaults applied. */
export type ClusterConfig = typeof ClusterSettingsSchema.Type;

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
  /** Keeps the generated TLS identity, the event outbox and the embedded NATS store. Default `$PORTWAY_DATA_DIR`, else `~/.local/state/portway/hub`. */
  dataDir: Schema.optional(NonEmptyString),
  /** Heartbeat interval on each tunnel. Default 5000. */
  pingIntervalMs: Schema.optionalWith(Milliseconds(100, 3_600_000), { default: () => 5000 }),
  /** A tunnel silent this long is closed. Default 15000; must exceed `pingIntervalMs`. */
  idleTimeoutMs: Schema.optionalWith(Milliseconds(200, 3_600_000), { default: () => 15_000 }),
  /** An edge must finish TLS + hello within this. Default 5000. */
  handshakeTimeoutMs: Schema.optionalWith(Milliseconds(100, 600_000), { default: () => 5000 }),
  /** Connecting to a target gives up after this. Default 5000. */
  targetConnectTimeoutMs: Schema.optionalWith(Milliseconds(100, 600_000), { default: () => 5000 }),
  /** A UDP session idle this long expires. Default: the addon's (60000). */
  udpIdleTimeoutMs: Schema.optional(Milliseconds(100, 86_400_000)),
  /** Further UDP sessions of one edge are refused beyond this. Default: the addon's (1024). */
  maxUdpSessionsPerEdge: Schema.optional(Schema.Int.pipe(Schema.between(1, 1_000_000))),
  /** Also serve QUIC (UDP) at the tunnel port; `false`: TLS over TCP only. Default: the addon's (true). */
  quic: Schema.optional(Schema.Boolean),
  /** Edges allowed to connect. Default none (can be set later with `updateAllowedEdges`). */
  edges: Schema.optionalWith(AllowedEdgesSchema, { default: () => [] }),
  /**
   * NATS servers for the event log. Default: none given, the hub runs an embedded nats-server with its store
   * in `<dataDir>/nats` (docs/adr/0005-nats-server-provisioning.md).
   */
  nats: Schema.optional(NatsServers),
  /**
   * Cluster mode: share the allowed-edge registry and edge ownership with the other hubs of `cluster.name`
   * through JetStream KV on the `nats` servers (required). Default: off (a single hub).
   */
  cluster: Schema.optional(ClusterSettingsSchema),
  /** The JetStream event log: `false` turns it off; an object sets the stream's limits. Default on. */
  events: Schema.optionalWith(EventsOptionsSchema, { default: () => ({ ...EVENTS_DEFAULTS }) }),
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
  { path: ["dataDir"], flag: "data-dir", env: "PORTWAY_DATA_DIR", kind: "string", placeholder: "DIR", description: "TLS identity, event outbox and embedded NATS store (default ~/.local/state/portway/hub)" },
  { path: ["pingIntervalMs"], flag: "ping-interval-ms", env: "PORTWAY_HUB_PING_INTERVAL_MS", kind: "integer", placeholder: "MS", description: "tunnel heartbeat interval (default 5000)" },
  { path: ["idleTimeoutMs"], flag: "idle-timeout-ms", env: "PORTWAY_HUB_IDLE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "close a silent tunnel after this (default 15000)" },
  { path: ["handshakeTimeoutMs"], flag: "handshake-timeout-ms", env: "PORTWAY_HUB_HANDSHAKE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "TLS + hello deadline for edges (default 5000)" },
  { path: ["targetConnectTimeoutMs"], flag: "target-connect-timeout-ms", env: "PORTWAY_HUB_TARGET_CONNECT_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "target connect deadline (default 5000)" },
  { path: ["udpIdleTimeoutMs"], flag: "udp-idle-timeout-ms", env: "PORTWAY_HUB_UDP_IDLE_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "expire a UDP session idle this long (default 60000)" },
  { path: ["maxUdpSessionsPerEdge"], flag: "max-udp-sessions-per-edge", env: "PORTWAY_HUB_MAX_UDP_SESSIONS_PER_EDGE", kind: "integer", placeholder: "N", description: "refuse further UDP sessions of an edge beyond this (default 1024)" },
  { path: ["quic"], flag: "no-quic", env: "PORTWAY_HUB_QUIC", kind: "boolean", negatedFlag: true, placeholder: "", description: "do not serve QUIC at the tunnel port, TLS over TCP only (env: PORTWAY_HUB_QUIC=false)" },
  { path: ["edges"], flag: "edge", kind: "edgeSpec", placeholder: "ID:PORTS:SECRET", description: "allow an edge, e.g. e1:80,443,53/udp:s3cret (repeatable; replaces the file's edges; /udp marks UDP ports)" },
  { path: ["edges"], env: "PORTWAY_HUB_EDGES", kind: "json", placeholder: "JSON", description: 'allowed edges as JSON, e.g. [{"id":"e1","secret":"…","listenPorts":[80]}]' },
  { path: ["nats"], flag: "nats", env: "PORTWAY_NATS", kind: "string", placeholder: "URLS", description: "NATS servers for the event log, e.g. nats://a:4222,nats://b:4222 (default: an embedded nats-server in the data dir)" },
  { path: ["cluster", "name"], flag: "cluster", env: "PORTWAY_CLUSTER", kind: "string", placeholder: "NAME", description: "join hub cluster NAME: shared edge registry and ownership in JetStream KV (needs --nats)" },
  { path: ["cluster", "replicas"], flag: "cluster-replicas", env: "PORTWAY_CLUSTER_REPLICAS", kind: "integer", placeholder: "N", description: "replicas of the cluster's KV buckets and (unless --events-replicas) the event stream (default 1; 3 on 3 NATS nodes)" },
  { path: ["cluster", "heartbeatMs"], flag: "cluster-heartbeat-ms", env: "PORTWAY_CLUSTER_HEARTBEAT_MS", kind: "integer", placeholder: "MS", description: "hub liveness heartbeat interval (default 500)" },
  { path: ["cluster", "hubTimeoutMs"], flag: "cluster-hub-timeout-ms", env: "PORTWAY_CLUSTER_HUB_TIMEOUT_MS", kind: "integer", placeholder: "MS", description: "a hub silent this long is dead (default 2000)" },
  { path: ["cluster", "leaseMs"], flag: "cluster-lease-ms", env: "PORTWAY_CLUSTER_LEASE_MS", kind: "integer", placeholder: "MS", description: "edge ownership lease (default 2000)" },
  { path: ["cluster", "electionGraceMs"], flag: "cluster-election-grace-ms", env: "PORTWAY_CLUSTER_ELECTION_GRACE_MS", kind: "integer", placeholder: "MS", description: "keep held edges this long past the lease while the owners bucket elects a leader (default 10000, 0 = off)" },
  { path: ["events", "enabled"], flag: "no-events", env: "PORTWAY_EVENTS", kind: "boolean", negatedFlag: true, placeholder: "", description: "do not record lifecycle events (env: PORTWAY_EVENTS=false)" },
  { path: ["events", "stream"], flag: "events-stream", env: "PORTWAY_EVENTS_STREAM", kind: "string", placeholder: "NAME", description: 'JetStream stream of the event log (default "PORTWAY_EVENTS")' },
  { path: ["events", "replicas"], flag: "events-replicas", env: "PORTWAY_EVENTS_REPLICAS", kind: "integer", placeholder: "N", description: "stream replicas: 1 for one server, 3 in a cluster (default 1)" },
  { path: ["events", "maxAge"], flag: "events-max-age", env: "PORTWAY_EVENTS_MAX_AGE", kind: "string", placeholder: "DURATION", description: 'drop events older than this, e.g. 7d, 12h (default "30d")' },
  { path: ["events", "maxBytes"], flag: "events-max-bytes", env: "PORTWAY_EVENTS_MAX_BYTES", kind: "string", placeholder: "SIZE", description: 'drop the oldest events beyond this size, e.g. 1GiB (default "10GiB")' },
  { path: ["events", "outboxMaxBytes"], flag: "events-outbox-max-bytes", env: "PORTWAY_EVENTS_OUTBOX_MAX_BYTES", kind: "string", placeholder: "SIZE", description: 'disk outbox bound while NATS is unreachable (default "256MiB")' },
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
  if (config.events.duplicateWindow > config.events.maxAge) {
    return new ConfigError({
      field: "events.duplicateWindow",
      reason: `must not exceed events.maxAge (${config.events.maxAge} ms), got ${config.events.duplicateWindow} ms`,
      source: origin("events"),
    });
  }
  if (tls.certPem !== undefined && tls.certFile !== undefined) {
    return new ConfigError({ field: "tls.certFile", reason: "give either tls.certPem/keyPem or tls.certFile/keyFile, not both", source: origin("tls") });
  }
  if (config.cluster !== undefined) {
    const cluster = config.cluster;
    if (config.nats === undefined || config.nats.length === 0) {
      return new ConfigError({
        field: "nats",
        reason: `is required in cluster mode (cluster ${cluster.name}): give the NATS cluster's servers, e.g. --nats nats://n1:4222,nats://n2:4222,nats://n3:4222 (the embedded server serves one hub only)`,
        source: origin("cluster.name") ?? origin("cluster"),
      });
    }
    if (!config.events.enabled) {
      return new ConfigError({ field: "events.enabled", reason: "cluster mode needs the event log (failover is recorded in it)", source: origin("events.enabled") ?? origin("events") });
    }
    if (cluster.hubTimeoutMs <= cluster.heartbeatMs) {
      return new ConfigError({
        field: "cluster.hubTimeoutMs",
        reason: `must be greater than cluster.heartbeatMs (${cluster.heartbeatMs}), got ${cluster.hubTimeoutMs}`,
        source: origin("cluster.hubTimeoutMs") ?? origin("cluster"),
      });
    }
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

/**
 * Cluster mode changes three defaults (values given explicitly are kept): tunnel ping/idle 1000/2500 ms, and
 * the event stream's replicas follow `cluster.replicas`.
 */
const withClusterDefaults = (config: HubConfig, raw: SourcedConfig["value"]): HubConfig => {
  if (config.cluster === undefined) return config;
  const rawEvents = raw["events"];
  const replicasGiven = typeof rawEvents === "object" && rawEvents !== null && (rawEvents as Record<string, unknown>)["replicas"] !== undefined;
  return {
    ...config,
    pingIntervalMs: raw["pingIntervalMs"] === undefined ? CLUSTER_DEFAULTS.pingIntervalMs : config.pingIntervalMs,
    idleTimeoutMs: raw["idleTimeoutMs"] === undefined ? CLUSTER_DEFAULTS.idleTimeoutMs : config.idleTimeoutMs,
    events: replicasGiven ? config.events : { ...config.events, replicas: config.cluster.replicas },
  };
};

/** Checks hub options (from code or merged sources) and applies defaults. */
export const decodeHubConfig = (sourced: SourcedConfig): Effect.Effect<HubConfig, ConfigError> =>
  Effect.gen(function* () {
    const decoded = Schema.decodeUnknownEither(HubOptionsSchema, { onExcessProperty: "error" })(sourced.value);
    if (Either.isLeft(decoded)) return yield* Effect.fail(configErrorFromParse(decoded.left, sourced));
    const config = withClusterDefaults(decoded.right, sourced.value);
    const problem = checkHubConfig(config, sourced);
    if (problem !== undefined) return yield* Effect.fail(problem);
    return config;
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

/** `events: false` in a file becomes `{ enabled: false }`, so an env/flag setting a limit does not turn it back on. */
const normalizeEventsShorthand = (sourced: SourcedConfig): SourcedConfig =>
  typeof sourced.value["events"] === "boolean"
    ? { ...sourced, value: { ...sourced.value, events: { enabled: sourced.value["events"] } } }
    : sourced;

/** Inputs for `loadHubConfig`: a config file path, the environment, and parsed flags. */
export interface ConfigInputs {
  readonly file?: string | undefined;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly flags?: FlagValues;
}

/** Loads and merges the hub config: defaults < file < env < flags. */
export const loadHubConfig = (inputs: ConfigInputs): Effect.Effect<HubConfig, ConfigError> =>
  Effect.gen(function* () {
    const file = inputs.file === undefined ? fromValue({}) : normalizeEventsShorthand(yield* fromFile(inputs.file));
    const env = yield* fromEnv(hubFieldSpecs, inputs.env ?? {});
    const flags = yield* fromFlags(hubFieldSpecs, inputs.flags ?? {});
    return yield* decodeHubConfig(mergeSources(file, env, flags));
  });
