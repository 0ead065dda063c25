/**
 * `openCluster`: the cluster side of a hub (docs/cluster.md). Uses the hub's NATS connection, creates the
 * three KV buckets (idempotent), starts the hub's heartbeat, and hands out a `ClusterConnection` that the
 * registry watch and ownership (src/cluster/ownership.ts) work with.
 */
import { Kvm, type KV } from "@nats-io/kv";
import { jetstream } from "@nats-io/jetstream";
import { Data, Duration, Effect, Option, type Scope } from "effect";
import type { ClusterConfig } from "../config/hub.js";
import type { NatsClientService, NatsConnection } from "../nats/connection.js";
import { bucketNames, type BucketNames } from "./buckets.js";
import { startHeartbeat, type Heartbeat } from "./hubs.js";

/** The cluster part of a hub could not start (NATS unreachable, a bucket refused). */
export class ClusterError extends Data.TaggedError("ClusterError")<{
  readonly cluster: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `cluster ${this.cluster}: ${this.reason}`;
  }
}

export interface ClusterBuckets {
  readonly edges: KV;
  readonly hubs: KV;
  readonly owners: KV;
}

/** What the cluster modules share: the buckets, the config, and who this hub is. */
export interface ClusterConnection {
  readonly name: string;
  readonly config: ClusterConfig;
  readonly hubId: string;
  readonly runId: string;
  readonly names: BucketNames;
  readonly kv: ClusterBuckets;
  readonly nc: NatsConnection;
  readonly client: NatsClientService;
  readonly heartbeat: Heartbeat;
}

export interface OpenClusterOptions {
  readonly config: ClusterConfig;
  readonly hubId: string;
  readonly runId: string;
  /** The hub's NATS client (its event-log connection). */
  readonly client: NatsClientService;
  /** Written in the hub entry: where edges reach this hub. */
  readonly tunnelHost: string;
  /** Read at every heartbeat (0 until the hub listens). */
  readonly tunnelPort: () => number;
  readonly version: string;
  readonly log: (level: "warn" | "info", msg: string) => void;
  /** How long to wait for NATS before failing the start. Default 10000. */
  readonly connectTimeoutMs?: number;
}

const reasonOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** Creates (or opens, when it exists with other settings) one bucket with history 1. */
export const ensureBucket = (kvm: Kvm, name: string, replicas: number, log: OpenClusterOptions["log"]): Promise<KV> =>
  kvm.create(name, { history: 1, replicas, description: "Portway cluster state (docs/cluster.md)" }).catch(async (error: unknown) => {
    // Exists with other settings (e.g. other replicas): use it as it is, and say so.
    const kv = await kvm.open(name);
    await kv.status();
    log("warn", `bucket ${name} exists with other settings (${reasonOf(error)}); using it as it is`);
    return kv;
  });

/** Opens the three buckets of cluster `name` on a connection (also used by `portway cluster`). */
export const openBuckets = async (
  nc: NatsConnection,
  name: string,
  replicas: number,
  log: OpenClusterOptions["log"],
): Promise<ClusterBuckets> => {
  const kvm = new Kvm(jetstream(nc));
  const names = bucketNames(name);
  return {
    edges: await ensureBucket(kvm, names.edges, replicas, log),
    hubs: await ensureBucket(kvm, names.hubs, replicas, log),
    owners: await ensureBucket(kvm, names.owners, replicas, log),
  };
};

export const openCluster = (o: OpenClusterOptions): Effect.Effect<ClusterConnection, ClusterError, Scope.Scope> =>
  Effect.gen(function* () {
    const fail = (reason: string) => new ClusterError({ cluster: o.config.name, reason });
    const connected = yield* o.client.connection.pipe(Effect.timeout(Duration.millis(o.connectTimeoutMs ?? 10_000)), Effect.option);
    if (Option.isNone(connected)) {
      return yield* Effect.fail(
        fail(`NATS at ${o.client.servers.join(",")} not reachable within ${o.connectTimeoutMs ?? 10_000} ms; cluster mode needs NATS at start`),
      );
    }
    const nc = connected.value;
    const kv = yield* Effect.tryPromise({
      try: () => openBuckets(nc, o.config.name, o.config.replicas, o.log),
      catch: (e) => fail(`cannot create the KV buckets: ${reasonOf(e)}`),
    });
    const now = Date.now();
    const heartbeat = yield* startHeartbeat({
      kv: kv.hubs,
      heartbeatMs: o.config.heartbeatMs,
      log: o.log,
      entry: () => ({ hubId: o.hubId, runId: o.runId, tunnelHost: o.tunnelHost, tunnelPort: o.tunnelPort(), startedAt: now, version: o.version }),
    }).pipe(Effect.mapError((e) => fail(`cannot write the hub entry: ${e.message}`)));
    return {
      name: o.config.name,
      config: o.config,
      hubId: o.hubId,
      runId: o.runId,
      names: bucketNames(o.config.name),
      kv,
      nc,
      client: o.client,
      heartbeat,
    } satisfies ClusterConnection;
  });
