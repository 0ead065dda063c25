/**
 * What `portway cluster status` shows, read straight from NATS: the hubs and their liveness, the registry's
 * edges with their owner and lease age, and the replication health of the event stream and the buckets.
 */
import { Kvm, type KV } from "@nats-io/kv";
import { jetstream, jetstreamManager, type StreamInfo } from "@nats-io/jetstream";
import { Either } from "effect";
import type { NatsConnection } from "../nats/connection.js";
import { bucketNames, decodeEntry, OwnerEntrySchema, type OwnerEntry } from "./buckets.js";
import { isAlive, readHubs } from "./hubs.js";
import { readRegistry } from "./registry.js";

export interface ClusterHubStatus {
  readonly hubId: string;
  readonly runId: string;
  readonly alive: boolean;
  readonly heartbeatAgeMs: number;
  readonly tunnel: string;
  readonly startedAt: number;
  readonly version: string;
}

export interface ClusterEdgeStatus {
  readonly id: string;
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
  readonly targets: Readonly<Record<string, string>>;
  readonly updatedAt: number;
  readonly updatedBy: string;
  /** From `pw_<NAME>_owners`; null when no hub owns it. */
  readonly owner: {
    readonly hubId: string;
    readonly runId: string;
    readonly sessionId: string;
    readonly since: number;
    readonly leaseAgeMs: number;
    readonly leaseMs: number;
    /** renewedAt + leaseMs is in the past. */
    readonly expired: boolean;
    /** The owner's hub entry is alive and of the same run. */
    readonly hubAlive: boolean;
  } | null;
}

export type ReplicaState = "current" | "lagging" | "offline";

export interface StreamHealth {
  readonly stream: string;
  /** What it holds: `events`, or the bucket it backs. */
  readonly role: string;
  readonly exists: boolean;
  readonly replicas: number;
  readonly leader: string | null;
  readonly members: ReadonlyArray<{ readonly name: string; readonly leader: boolean; readonly state: ReplicaState; readonly lag: number; readonly activeMs: number | null }>;
  readonly messages: number;
  /** All members current and a leader elected. */
  readonly healthy: boolean;
}

export interface ClusterStatus {
  readonly cluster: string;
  readonly now: number;
  readonly hubTimeoutMs: number;
  readonly hubs: ReadonlyArray<ClusterHubStatus>;
  readonly edges: ReadonlyArray<ClusterEdgeStatus>;
  readonly replication: ReadonlyArray<StreamHealth>;
  /** Malformed entries and the like (never fatal). */
  readonly problems: ReadonlyArray<string>;
}

/** The cluster has no buckets on these servers. */
export class ClusterNotFound extends Error {
  override readonly name = "ClusterNotFound";
}

const isNotFound = (e: unknown): boolean =>
  (e as { code?: unknown } | null)?.code === 404 || /not found/i.test(e instanceof Error ? e.message : String(e));

/** Health of one stream from its info (`cluster` is absent on a single server: then the one replica is current). */
export const streamHealth = (role: string, info: StreamInfo): StreamHealth => {
  // A server outside a cluster reports no leader: its one replica is the leader.
  const leader = info.cluster === undefined ? "(single server)" : (info.cluster.leader ?? null);
  const members: Array<StreamHealth["members"][number]> = [];
  if (leader !== null) members.push({ name: leader, leader: true, state: "current", lag: 0, activeMs: 0 });
  for (const peer of info.cluster?.replicas ?? []) {
    const state: ReplicaState = peer.offline === true ? "offline" : peer.current ? "current" : "lagging";
    members.push({ name: peer.name, leader: false, state, lag: peer.lag ?? 0, activeMs: peer.active === undefined ? null : Math.round(peer.active / 1e6) });
  }
  const replicas = info.config.num_replicas;
  return {
    stream: info.config.name,
    role,
    exists: true,
    replicas,
    leader,
    members,
    messages: info.state.messages,
    healthy: leader !== null && members.length >= replicas && members.every((m) => m.state === "current"),
  };
};

const readOwners = async (kv: KV): Promise<{ owners: Map<string, OwnerEntry>; problems: string[] }> => {
  const owners = new Map<string, OwnerEntry>();
  const problems: string[] = [];
  const keys: string[] = [];
  for await (const key of await kv.keys()) keys.push(key);
  for (const key of keys) {
    const entry = await kv.get(key);
    if (entry === null || entry.operation !== "PUT") continue;
    const decoded = decodeEntry(OwnerEntrySchema, entry.value);
    if (Either.isRight(decoded)) owners.set(key, decoded.right);
    else problems.push(`owner entry ${key}: ${decoded.left}`);
  }
  return { owners, problems };
};

export interface ReadClusterStatusOptions {
  readonly cluster: string;
  /** Event stream name. Default PORTWAY_EVENTS. */
  readonly eventsStream?: string;
  /** Default 2000. */
  readonly hubTimeoutMs?: number;
}

/** Reads everything `portway cluster status` shows; fails with ClusterNotFound when the buckets are missing. */
export const readClusterStatus = async (nc: NatsConnection, o: ReadClusterStatusOptions): Promise<ClusterStatus> => {
  const names = bucketNames(o.cluster);
  const jsm = await jetstreamManager(nc, { checkAPI: false });
  const hubTimeoutMs = o.hubTimeoutMs ?? 2000;
  const infos = new Map<string, StreamInfo | undefined>();
  const streams: Array<[string, string]> = [
    [o.eventsStream ?? "PORTWAY_EVENTS", "events"],
    [`KV_${names.edges}`, "edges registry"],
    [`KV_${names.hubs}`, "hub liveness"],
    [`KV_${names.owners}`, "edge owners"],
  ];
  for (const [stream] of streams) {
    try {
      infos.set(stream, await jsm.streams.info(stream));
    } catch (e) {
      if (!isNotFound(e)) throw e;
      infos.set(stream, undefined);
    }
  }
  if (infos.get(`KV_${names.hubs}`) === undefined && infos.get(`KV_${names.edges}`) === undefined) {
    throw new ClusterNotFound(`no cluster "${o.cluster}" on these NATS servers (bucket ${names.hubs} does not exist; has a hub run with --cluster ${o.cluster}?)`);
  }
  const kvm = new Kvm(jetstream(nc));
  const open = async (name: string): Promise<KV | undefined> =>
    infos.get(`KV_${name}`) === undefined ? undefined : kvm.open(name);
  const [edgesKv, hubsKv, ownersKv] = await Promise.all([open(names.edges), open(names.hubs), open(names.owners)]);
  const now = Date.now();
  const problems: string[] = [];
  const hubRead = hubsKv === undefined ? { hubs: [], problems: [] } : await readHubs(hubsKv);
  problems.push(...hubRead.problems);
  const hubs: ClusterHubStatus[] = hubRead.hubs
    .map((h) => ({
      hubId: h.hubId,
      runId: h.runId,
      alive: isAlive(h, now, hubTimeoutMs),
      heartbeatAgeMs: Math.max(0, now - h.heartbeatAt),
      tunnel: `${h.tunnelHost}:${h.tunnelPort}`,
      startedAt: h.startedAt,
      version: h.version,
    }))
    .sort((a, b) => a.hubId.localeCompare(b.hubId));
  const ownerRead = ownersKv === undefined ? { owners: new Map<string, OwnerEntry>(), problems: [] } : await readOwners(ownersKv);
  problems.push(...ownerRead.problems);
  const registry = edgesKv === undefined ? { edges: [], problems: [] } : await readRegistry(edgesKv);
  problems.push(...registry.problems);
  const edges: ClusterEdgeStatus[] = registry.edges.map((e) => {
    const owner = ownerRead.owners.get(e.id);
    const ownerHub = owner === undefined ? undefined : hubs.find((h) => h.hubId === owner.hubId);
    return {
      id: e.id,
      listenPorts: e.listenPorts,
      listenPortsUdp: e.listenPortsUdp,
      targets: e.targets,
      updatedAt: e.updatedAt,
      updatedBy: e.updatedBy,
      owner:
        owner === undefined
          ? null
          : {
              hubId: owner.hubId,
              runId: owner.runId,
              sessionId: owner.sessionId,
              since: owner.since,
              leaseAgeMs: Math.max(0, now - owner.renewedAt),
              leaseMs: owner.leaseMs,
              expired: owner.renewedAt + owner.leaseMs < now,
              hubAlive: ownerHub !== undefined && ownerHub.alive && ownerHub.runId === owner.runId,
            },
    };
  });
  const replication = streams.map(([stream, role]): StreamHealth => {
    const info = infos.get(stream);
    return info === undefined
      ? { stream, role, exists: false, replicas: 0, leader: null, members: [], messages: 0, healthy: false }
      : streamHealth(role, info);
  });
  return { cluster: o.cluster, now, hubTimeoutMs, hubs, edges, replication, problems };
};

const age = (ms: number): string => (ms < 10_000 ? `${ms} ms` : ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`);

/** The readable form of a status (for a terminal). */
export const formatClusterStatus = (s: ClusterStatus): string => {
  const lines: string[] = [`cluster ${s.cluster}`, ""];
  const alive = s.hubs.filter((h) => h.alive).length;
  lines.push(`hubs (${alive} alive of ${s.hubs.length}; dead after ${s.hubTimeoutMs} ms without heartbeat)`);
  if (s.hubs.length === 0) lines.push("  none");
  for (const h of s.hubs) {
    lines.push(
      `  ${h.hubId.padEnd(16)} ${(h.alive ? "alive" : "DEAD").padEnd(6)} heartbeat ${age(h.heartbeatAgeMs).padEnd(8)} tunnel ${h.tunnel.padEnd(22)} run ${h.runId}  v${h.version}`,
    );
  }
  lines.push("", `edges (${s.edges.length} in the registry)`);
  if (s.edges.length === 0) lines.push("  none");
  for (const e of s.edges) {
    const ports = [e.listenPorts.join(",") || "-", e.listenPortsUdp.length > 0 ? ` udp ${e.listenPortsUdp.join(",")}` : ""].join("");
    const owner =
      e.owner === null
        ? "no owner"
        : `owner ${e.owner.hubId}${e.owner.hubAlive ? "" : " (hub not alive)"}, lease ${age(e.owner.leaseAgeMs)} old${e.owner.expired ? " EXPIRED" : ""} (lease ${e.owner.leaseMs} ms)`;
    lines.push(`  ${e.id.padEnd(16)} tcp ${ports.padEnd(20)} ${owner}`);
  }
  lines.push("", "replication");
  for (const r of s.replication) {
    if (!r.exists) {
      lines.push(`  ${r.stream.padEnd(28)} ${r.role.padEnd(15)} missing`);
      continue;
    }
    const members = r.members.map((m) => `${m.name}${m.leader ? "*" : ""}:${m.state}${m.lag > 0 ? `(lag ${m.lag})` : ""}`).join(" ");
    lines.push(
      `  ${r.stream.padEnd(28)} ${r.role.padEnd(15)} R${r.replicas} ${r.healthy ? "ok      " : "DEGRADED"} leader ${r.leader ?? "none"}  ${members}  ${r.messages} msgs`,
    );
  }
  if (s.problems.length > 0) lines.push("", "problems", ...s.problems.map((p) => `  ${p}`));
  return `${lines.join("\n")}\n`;
};
