/**
 * `portway cluster status | edges set | edges remove`: the cluster's shared state in JetStream KV
 * (docs/cluster.md), read and written straight from NATS — no hub needs to be reachable.
 */
import { Data, Effect, Either, Schema } from "effect";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Kvm, type KV } from "@nats-io/kv";
import { jetstream } from "@nats-io/jetstream";
import { bucketNames, CLUSTER_NAME_PATTERN } from "../cluster/buckets.js";
import { removeRegistryEdge, setRegistryEdge } from "../cluster/registry.js";
import { formatClusterStatus, readClusterStatus, ClusterNotFound } from "../cluster/status.js";
import { AllowedEdgeSchema } from "../config/hub.js";
import { parseValue } from "../config/sources.js";
import { configErrorFromParse } from "../config/sources.js";
import type { ConfigError } from "../errors.js";
import { parseNatsServers, type InvalidNatsServers } from "../nats/connection.js";
import { parseCommandArgs, renderHelp, UsageError, type ExtraFlag } from "./args.js";

type Env = Readonly<Record<string, string | undefined>>;

const where: ReadonlyArray<ExtraFlag> = [
  { flag: "nats", env: "PORTWAY_NATS", placeholder: "URLS", description: "the cluster's NATS servers, e.g. nats://n1:4222,nats://n2:4222 (required)" },
  { flag: "cluster", env: "PORTWAY_CLUSTER", placeholder: "NAME", description: "the cluster name the hubs run with (required)" },
];
const help: ExtraFlag = { flag: "help", short: "h", boolean: true, description: "show this help" };

const statusExtras: ReadonlyArray<ExtraFlag> = [
  ...where,
  { flag: "events-stream", env: "PORTWAY_EVENTS_STREAM", placeholder: "NAME", description: 'the event stream whose replication to show (default "PORTWAY_EVENTS")' },
  { flag: "hub-timeout-ms", env: "PORTWAY_CLUSTER_HUB_TIMEOUT_MS", placeholder: "MS", description: "a hub whose heartbeat is older is shown dead (default 2000)" },
  { flag: "json", boolean: true, description: "print the status as JSON" },
  help,
];
const setExtras: ReadonlyArray<ExtraFlag> = [
  ...where,
  { flag: "id", placeholder: "ID", description: "edge id (required)" },
  { flag: "secret", env: "PORTWAY_CLUSTER_EDGE_SECRET", placeholder: "SECRET", description: "the edge's secret (required; stored only as a salted HMAC verifier)" },
  { flag: "ports", placeholder: "PORTS", description: "listen ports, e.g. 80,443,53/udp (default none)" },
  { flag: "target", placeholder: "PORT=HOST:PORT", description: "where edge ports go, e.g. 443=10.0.0.5:8443,53=10.0.0.53:53 (default targetHost:PORT on the hub)" },
  { flag: "stun-interval-secs", placeholder: "N", description: "STUN refresh interval of the edge (default 300; 0 off)" },
  { flag: "json", boolean: true, description: "print the result as JSON" },
  help,
];
const removeExtras: ReadonlyArray<ExtraFlag> = [...where, { flag: "id", placeholder: "ID", description: "edge id (required)" }, { flag: "json", boolean: true, description: "print the result as JSON" }, help];

export const clusterStatusHelp = renderHelp(
  "portway cluster status --nats URLS --cluster NAME [--json]",
  "Shows the hubs of a cluster (alive?, heartbeat age, run, tunnel address), the edges in its registry with\n" +
    "their owner and lease age, and the replication health (leader; replicas current/lagging/offline) of the\n" +
    "event stream and the cluster's KV buckets. Exit code 1 when the cluster does not exist.",
  [],
  statusExtras,
);
export const clusterEdgesSetHelp = renderHelp(
  "portway cluster edges set --nats URLS --cluster NAME --id ID --secret SECRET [--ports 80,443,53/udp] [--target 443=10.0.0.5:8443]",
  "Adds or changes one edge in the cluster's registry (what updateAllowedEdges does on a hub, for one edge);\n" +
    "every hub applies it within a second. The secret is stored as a salted HMAC verifier, never in clear.",
  [],
  setExtras,
);
export const clusterEdgesRemoveHelp = renderHelp(
  "portway cluster edges remove --nats URLS --cluster NAME --id ID",
  "Removes one edge from the cluster's registry; the hub serving it disconnects it.",
  [],
  removeExtras,
);
export const clusterHelp = `Usage: portway cluster <status|edges> [flags]

  status                 hubs, registry edges with owners and leases, replication health
  edges set --id ID …    add or change one edge in the registry
  edges remove --id ID   remove one edge from the registry

See \`portway cluster status --help\`, \`portway cluster edges set --help\`, docs/cluster.md.
`;

/** NATS could not be reached or refused a request. */
export class ClusterCliError extends Data.TaggedError("ClusterCliError")<{ readonly message: string }> {}

const str = (flags: Readonly<Record<string, unknown>>, name: string, env: Env, envName?: string): string | undefined => {
  const v = flags[name];
  if (typeof v === "string" && v !== "") return v;
  if (Array.isArray(v)) {
    const last = v[v.length - 1];
    if (typeof last === "string" && last !== "") return last;
  }
  return envName === undefined ? undefined : env[envName] || undefined;
};

interface Target {
  readonly servers: ReadonlyArray<string>;
  readonly cluster: string;
}

const resolveTarget = (command: string, flags: Readonly<Record<string, unknown>>, env: Env): Effect.Effect<Target, UsageError | InvalidNatsServers> =>
  Effect.gen(function* () {
    const nats = str(flags, "nats", env, "PORTWAY_NATS");
    const cluster = str(flags, "cluster", env, "PORTWAY_CLUSTER");
    if (nats === undefined) return yield* Effect.fail(new UsageError({ message: `portway ${command}: --nats URLS is required (or PORTWAY_NATS): the cluster's NATS servers` }));
    if (cluster === undefined) return yield* Effect.fail(new UsageError({ message: `portway ${command}: --cluster NAME is required (or PORTWAY_CLUSTER)` }));
    if (!CLUSTER_NAME_PATTERN.test(cluster)) {
      return yield* Effect.fail(new UsageError({ message: `portway ${command}: --cluster must be 1 to 32 letters, digits, '_' or '-', got "${cluster}"` }));
    }
    return { servers: yield* parseNatsServers(nats), cluster };
  });

const withNats = <A>(target: Target, use: (nc: NatsConnection) => Promise<A>): Effect.Effect<A, ClusterCliError> =>
  Effect.acquireUseRelease(
    Effect.tryPromise({
      try: () => connect({ servers: [...target.servers], name: "portway cluster", timeout: 5000, maxReconnectAttempts: 0 }),
      catch: (e) => new ClusterCliError({ message: `cannot connect to NATS at ${target.servers.join(",")}: ${e instanceof Error ? e.message : String(e)}` }),
    }),
    (nc) =>
      Effect.tryPromise({
        try: () => use(nc),
        catch: (e) =>
          new ClusterCliError({
            message: e instanceof ClusterNotFound ? e.message : `cluster ${target.cluster}: ${e instanceof Error ? e.message : String(e)}`,
          }),
      }),
    (nc) => Effect.promise(() => nc.close().catch(() => undefined)),
  );

/** The registry bucket of an existing cluster (the CLI never creates buckets: a hub does, with its replicas). */
const openRegistry = async (nc: NatsConnection, cluster: string): Promise<KV> => {
  const name = bucketNames(cluster).edges;
  try {
    const kv = await new Kvm(jetstream(nc)).open(name);
    await kv.status();
    return kv;
  } catch (e) {
    if (/not found/i.test(e instanceof Error ? e.message : String(e))) {
      throw new ClusterNotFound(`no cluster "${cluster}" on these NATS servers (bucket ${name} does not exist): start a hub with --cluster ${cluster} first`);
    }
    throw e;
  }
};

const print = (text: string) => Effect.sync(() => void process.stdout.write(text));

const runStatus = (argv: ReadonlyArray<string>, env: Env) =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("cluster status", argv, [], statusExtras);
    if (flags["help"] === true) return yield* print(clusterStatusHelp);
    const target = yield* resolveTarget("cluster status", flags, env);
    const timeoutText = str(flags, "hub-timeout-ms", env, "PORTWAY_CLUSTER_HUB_TIMEOUT_MS");
    const hubTimeoutMs = timeoutText === undefined ? undefined : Number(timeoutText);
    if (hubTimeoutMs !== undefined && !(Number.isSafeInteger(hubTimeoutMs) && hubTimeoutMs > 0)) {
      return yield* Effect.fail(new UsageError({ message: `portway cluster status: --hub-timeout-ms must be a positive whole number, got "${timeoutText}"` }));
    }
    const eventsStream = str(flags, "events-stream", env, "PORTWAY_EVENTS_STREAM");
    const status = yield* withNats(target, (nc) =>
      readClusterStatus(nc, { cluster: target.cluster, ...(eventsStream === undefined ? {} : { eventsStream }), ...(hubTimeoutMs === undefined ? {} : { hubTimeoutMs }) }),
    );
    yield* print(flags["json"] === true ? `${JSON.stringify(status, null, 2)}\n` : formatClusterStatus(status));
  });

/** `--target 443=10.0.0.5:8443` (repeatable, or comma-separated) → `{ "443": "10.0.0.5:8443" }`. */
const parseTargets = (values: ReadonlyArray<string>): Either.Either<Record<string, string>, string> => {
  const out: Record<string, string> = {};
  for (const item of values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v !== "")) {
    const eq = item.indexOf("=");
    if (eq <= 0) return Either.left(`--target must look like PORT=HOST:PORT, got "${item}"`);
    out[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return Either.right(out);
};

const runEdgesSet = (argv: ReadonlyArray<string>, env: Env) =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("cluster edges set", argv, [], setExtras);
    if (flags["help"] === true) return yield* print(clusterEdgesSetHelp);
    const target = yield* resolveTarget("cluster edges set", flags, env);
    const id = str(flags, "id", env);
    const secret = str(flags, "secret", env, "PORTWAY_CLUSTER_EDGE_SECRET");
    if (id === undefined) return yield* Effect.fail(new UsageError({ message: "portway cluster edges set: --id ID is required" }));
    if (secret === undefined) return yield* Effect.fail(new UsageError({ message: "portway cluster edges set: --secret SECRET is required (or PORTWAY_CLUSTER_EDGE_SECRET)" }));
    const ports = (yield* parseValue({ path: ["edges"], flag: "ports", kind: "edgeSpec", placeholder: "", description: "" }, `${id}:${str(flags, "ports", env) ?? ""}:${secret}`, "--ports")) as Record<string, unknown>;
    const rawTargets = flags["target"];
    const targets = parseTargets(typeof rawTargets === "string" ? [rawTargets] : []);
    if (Either.isLeft(targets)) return yield* Effect.fail(new UsageError({ message: `portway cluster edges set: ${targets.left}` }));
    const stun = str(flags, "stun-interval-secs", env);
    const input = { ...ports, targets: targets.right, ...(stun === undefined ? {} : { stunIntervalSecs: Number(stun) }) };
    const decoded = Schema.decodeUnknownEither(AllowedEdgeSchema, { onExcessProperty: "error" })(input);
    if (Either.isLeft(decoded)) return yield* Effect.fail(configErrorFromParse(decoded.left, { origins: new Map() }, ["edge"]));
    const edge = decoded.right;
    const written = yield* withNats(target, async (nc) => setRegistryEdge(await openRegistry(nc, target.cluster), edge, "cli"));
    yield* print(
      flags["json"] === true
        ? `${JSON.stringify({ cluster: target.cluster, id: edge.id, changed: written })}\n`
        : `cluster ${target.cluster}: edge ${edge.id} ${written ? "written" : "unchanged"} (tcp ${edge.listenPorts.join(",") || "-"}${edge.listenPortsUdp.length > 0 ? ` udp ${edge.listenPortsUdp.join(",")}` : ""})\n`,
    );
  });

const runEdgesRemove = (argv: ReadonlyArray<string>, env: Env) =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("cluster edges remove", argv, [], removeExtras);
    if (flags["help"] === true) return yield* print(clusterEdgesRemoveHelp);
    const target = yield* resolveTarget("cluster edges remove", flags, env);
    const id = str(flags, "id", env);
    if (id === undefined) return yield* Effect.fail(new UsageError({ message: "portway cluster edges remove: --id ID is required" }));
    const removed = yield* withNats(target, async (nc) => removeRegistryEdge(await openRegistry(nc, target.cluster), id));
    yield* print(
      flags["json"] === true
        ? `${JSON.stringify({ cluster: target.cluster, id, removed })}\n`
        : `cluster ${target.cluster}: edge ${id} ${removed ? "removed" : "was not in the registry"}\n`,
    );
  });

export const runCluster = (
  argv: ReadonlyArray<string>,
  env: Env,
): Effect.Effect<void, UsageError | ConfigError | InvalidNatsServers | ClusterCliError> => {
  const [sub, ...rest] = argv;
  if (sub === "status") return runStatus(rest, env);
  if (sub === "edges") {
    const [verb, ...more] = rest;
    if (verb === "set") return runEdgesSet(more, env);
    if (verb === "remove") return runEdgesRemove(more, env);
    return Effect.fail(new UsageError({ message: `portway cluster edges: expected "set" or "remove"${verb === undefined ? "" : `, got "${verb}"`}\n\n${clusterHelp}` }));
  }
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") return print(clusterHelp);
  return Effect.fail(new UsageError({ message: `portway cluster: unknown subcommand "${sub}"\n\n${clusterHelp}` }));
};
