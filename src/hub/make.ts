import { hostname } from "node:os";
import { Deferred, Duration, Effect, Either, Exit, Fiber, type Queue, Ref, Runtime, Stream, type Scope } from "effect";
import { makeSyncFeed, type SyncFeed } from "../actors/feed.js";
import { createHubActorSystem, type HubActorSystem } from "../actors/hub-actor-system.js";
import {
  resolveAllowedEdges,
  resolveHubOptions,
  type AllowedEdge,
  type HubConfig,
  type HubOptions,
} from "../config/hub.js";
import { openCluster, type ClusterConnection, type ClusterError } from "../cluster/connection.js";
import { nativeEdgeOf, readRegistry, setRegistryEdge, watchRegistry, writeRegistry, type NativeVerifierEdge } from "../cluster/registry.js";
import type { EdgeEntry } from "../cluster/buckets.js";
import { startOwnership, type DropReason, type Ownership } from "../cluster/ownership.js";
import { ConfigError, HubStartError, NativeCallError, nativeErrorParts, type AddonLoadError } from "../errors.js";
import type { DomainEvent } from "../events/envelope.js";
import { newRunId } from "../events/ids.js";
import { loadAddon, type EventStreamProblem, type HubHandle, type NativeAddon } from "../native/addon.js";
import { isEnd, makeEventChannel } from "../native/channel.js";
import { decodeNativeHubEvent, type NativeHubEvent } from "../native/events.js";
import { decodeNativeHubStatus, type NativeHubStatus } from "../native/status.js";
import {
  eventsStatusOf,
  openHubEventLog,
  type EventLogLevel,
  type EventLogStartError,
  type HubEventLogConnection,
  type RecoveryStatus,
} from "./event-log.js";
import { defaultHubDataDir, resolveHubIdentity, type HubIdentity } from "./identity.js";
import { recoverFromLog } from "./recovery.js";
import type { HubEventLog, HubService } from "./service.js";
import { portwayVersion } from "./version.js";

/** How long stopping may take before we give up waiting (tunnels get GoAway; streams are cut). */
const STOP_TIMEOUT = Duration.seconds(10);

/** The JSON `hubStart` takes (docs/architecture.md, "Hub config"). */
export const nativeHubConfig = (config: HubConfig, identity: Pick<HubIdentity, "certPem" | "keyPem">) => ({
  hubId: config.hubId,
  bindHost: config.bindHost,
  tunnelPort: config.tunnelPort,
  targetHost: config.targetHost,
  proxyProtocolTcp: config.proxyProtocol.tcp,
  proxyProtocolUdp: config.proxyProtocol.udp,
  certPem: identity.certPem,
  keyPem: identity.keyPem,
  pingIntervalMs: config.pingIntervalMs,
  idleTimeoutMs: config.idleTimeoutMs,
  handshakeTimeoutMs: config.handshakeTimeoutMs,
  targetConnectTimeoutMs: config.targetConnectTimeoutMs,
  ...(config.udpIdleTimeoutMs === undefined ? {} : { udpIdleTimeoutMs: config.udpIdleTimeoutMs }),
  ...(config.maxUdpSessionsPerEdge === undefined ? {} : { maxUdpSessionsPerEdge: config.maxUdpSessionsPerEdge }),
  ...(config.quic === undefined ? {} : { quic: config.quic }),
  edges: config.edges,
});

const readStatus = (addon: NativeAddon, handle: HubHandle): Effect.Effect<NativeHubStatus, NativeCallError> =>
  Effect.try({
    try: () => addon.hubStatus(handle),
    catch: (error) => new NativeCallError({ operation: "hubStatus", ...nativeErrorParts(error), cause: error }),
  }).pipe(
    Effect.flatMap((json) =>
      Either.match(decodeNativeHubStatus(json), {
        onLeft: (message) => Effect.fail(new NativeCallError({ operation: "hubStatus", code: "EPROTOCOL", message })),
        onRight: Effect.succeed,
      }),
    ),
  );

interface StartActorsOptions {
  readonly hubId: string;
  readonly runId: string;
  readonly events: HubEventLogConnection;
  readonly handle: HubHandle;
  readonly addon: NativeAddon;
  readonly tunnelPort: number;
  readonly fingerprint: string;
  /** Tapped on the event channel before hubStart; holds what arrives until the actors exist. */
  readonly feed: SyncFeed<NativeHubEvent>;
  readonly logAs: (level: EventLogLevel, msg: string) => void;
  /** The addon's UDP idle timeout, for `udp.expired` (undefined: the addon's default). */
  readonly udpIdleTimeoutMs: number | undefined;
}

/**
 * The hub's actors, fed by the addon's events, appending to the event log; recovery in the background.
 * At scope close the actors are stopped first (that drains the addon hub and waits for its final events),
 * then the addon hub is released, then the event log flushes and closes.
 */
const startActors = (o: StartActorsOptions) =>
  Effect.gen(function* () {
    // Sessions of this run, so recovery does not close what this run has open (see recovery.ts).
    let ownSessions: Set<string> | undefined = new Set<string>();
    const sink = {
      append: (event: DomainEvent) => {
        ownSessions?.add(event.sessionId);
        o.events.log.append(event);
      },
    };
    let problems = 0;
    const actors: HubActorSystem = createHubActorSystem({
      hubId: o.hubId,
      runId: o.runId,
      portwayVersion: portwayVersion(),
      fingerprint: o.fingerprint,
      sink,
      drain: Effect.tryPromise(() => o.addon.hubStop(o.handle)),
      ...(o.udpIdleTimeoutMs === undefined ? {} : { timing: { udpIdleTimeoutMs: o.udpIdleTimeoutMs } }),
      report: (problem) => {
        problems += 1;
        if (problems <= 20) o.logAs("warn", `event actors: ${JSON.stringify(problem)}`);
      },
    });

    // Fed synchronously, one ingest per native batch, inside the addon's callback (ADR 0007).
    o.feed.attach(actors.ingest);
    actors.listening(o.tunnelPort);
    // Runs before the addon hub's release: the actors' drain stops the addon hub and waits for its final
    // events (still fed by the tap); once every actor has ended, nothing the feed could still bring matters.
    yield* Effect.addFinalizer((exit) =>
      Effect.interruptible(Effect.promise(() => actors.stop(stopReasonOf(exit)))).pipe(
        Effect.timeout(ACTORS_STOP_TIMEOUT),
        Effect.catchAll(() => Effect.sync(() => o.logAs("warn", "event actors did not settle within 15 s; closing anyway"))),
        Effect.zipRight(Effect.sync(() => o.feed.detach())),
      ),
    );

    let recovery: RecoveryStatus = { state: "pending" };
    const recovered = yield* Deferred.make<RecoveryStatus>();
    yield* Effect.forkScoped(
      recoverFromLog({
        hubId: o.hubId,
        runId: o.runId,
        stream: o.events.stream,
        client: o.events.client,
        log: o.events.log,
        isOwnSession: (id) => ownSessions?.has(id) ?? false,
      }).pipe(
        Effect.tap((r) =>
          Effect.sync(() => {
            actors.recovered({
              previousRunId: r.previousRunId,
              replayedEvents: r.replayedEvents,
              sessionsClosed: r.sessionsClosed,
              streamsClosed: r.streamsClosed,
              udpClosed: r.udpClosed,
              durationMs: r.durationMs,
            });
            const { closingEvents: _, since: __, ...summary } = r;
            recovery = { state: "done", ...summary };
          }),
        ),
        Effect.catchAll((e) =>
          Effect.sync(() => {
            recovery = { state: "failed", error: e.message };
            o.logAs("error", e.message);
          }),
        ),
        Effect.ensuring(
          Effect.suspend(() => {
            ownSessions = undefined;
            return Deferred.succeed(recovered, recovery);
          }),
        ),
      ),
    );

    const eventLog: HubEventLog = {
      ...o.events,
      status: () => eventsStatusOf(o.events, recovery),
      recovery: Deferred.await(recovered),
      actors: () => actors.snapshot(),
    };
    return { eventLog, actors };
  });

/** How the hub's actors are stopped at scope close: by a signal (CLI), by an error, or as asked. */
const stopReasonOf = (exit: Exit.Exit<unknown, unknown>): "shutdown" | "signal" =>
  Exit.isFailure(exit) && Exit.isInterrupted(exit) ? "signal" : "shutdown";

/** Bound for the actors' stop (drain + final events); past it the scope carries on closing. */
const ACTORS_STOP_TIMEOUT = Duration.seconds(15);

/**
 * Starts a native hub (resolves once its tunnel port listens); closing the scope stops it.
 *
 * With events on (the default), first the event log: the data dir is locked, NATS connected (or the
 * embedded server started) and the stream set up — a server that is too old fails the start. Then the
 * addon, whose lifecycle events feed the hub's actors, whose facts are appended to the log without waiting.
 * Recovery from the previous run's log runs in the background (`eventLog.recovery`).
 */
export const makeHub = (
  options: HubOptions = {},
): Effect.Effect<HubService, HubStartError | ConfigError | AddonLoadError | EventLogStartError | ClusterError, Scope.Scope> =>
  Effect.gen(function* () {
    const config = yield* resolveHubOptions(options);
    const addon = yield* loadAddon;
    const identity = yield* resolveHubIdentity(addon, config);
    const runId = newRunId();
    const runtime = yield* Effect.runtime<never>();
    const logAs = (level: EventLogLevel, msg: string): void => {
      const text = `hub ${config.hubId}: ${msg}`;
      Runtime.runFork(runtime)(level === "error" ? Effect.logError(text) : level === "warn" ? Effect.logWarning(text) : Effect.logDebug(text));
    };

    const events: HubEventLogConnection | undefined = config.events.enabled
      ? yield* openHubEventLog({
          hubId: config.hubId,
          runId,
          dataDir: config.dataDir ?? identity.dataDir ?? defaultHubDataDir(),
          nats: config.nats,
          events: config.events,
          log: logAs,
        })
      : undefined;

    // Cluster mode (docs/cluster.md): buckets, heartbeat, and the registry's edges before the hub starts.
    let liveTunnelPort = config.tunnelPort;
    const cluster: ClusterConnection | undefined =
      config.cluster === undefined || events === undefined
        ? undefined
        : yield* openCluster({
            config: config.cluster,
            hubId: config.hubId,
            runId,
            client: events.client,
            tunnelHost: config.bindHost === "0.0.0.0" || config.bindHost === "::" ? hostname() : config.bindHost,
            tunnelPort: () => liveTunnelPort,
            version: portwayVersion(),
            log: logAs,
          });
    const initialEdges = cluster === undefined ? undefined : yield* clusterStartEdges(cluster, config.edges);
    // Cluster mode always defers admission to ownership (the addon is loaded only when it has hubAdmitEdge).
    const deferred = cluster !== undefined;

    const channel = yield* makeEventChannel(decodeNativeHubEvent, `hub ${config.hubId}`);
    // Tapped before hubStart: the actors must see every native event, `hub.listening` included.
    const actorFeed = events === undefined ? undefined : makeSyncFeed<NativeHubEvent>();
    if (actorFeed !== undefined) yield* channel.tap(actorFeed.push);
    const clusterFeed = cluster === undefined ? undefined : yield* channel.subscribe;
    const configJson = JSON.stringify({
      ...nativeHubConfig(config, identity),
      ...(initialEdges === undefined ? {} : { edges: initialEdges.map(nativeEdgeOf) }),
      ...(deferred ? { admission: "deferred" } : {}),
    });

    let stopped = false;
    const handle = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => addon.hubStart(configJson, channel.callback),
        catch: (error) => new HubStartError({ ...nativeErrorParts(error), cause: error }),
      }),
      (handle) =>
        Effect.gen(function* () {
          stopped = true;
          yield* Effect.interruptible(Effect.tryPromise(() => addon.hubStop(handle))).pipe(
            Effect.timeoutFail({ duration: STOP_TIMEOUT, onTimeout: () => new Error("hubStop timed out") }),
            Effect.catchAll((error) => Effect.logWarning(`hub ${config.hubId}: stop failed: ${String(error)}`)),
          );
          yield* channel.end;
        }),
    );

    const started = yield* Effect.either(readStatus(addon, handle));
    if (Either.isLeft(started)) yield* Effect.logWarning(`hub ${config.hubId}: ${started.left.message}`);
    const tunnelPort = Either.isRight(started) ? started.right.tunnelPort : config.tunnelPort;
    liveTunnelPort = tunnelPort;

    const withActors =
      events === undefined || actorFeed === undefined
        ? undefined
        : yield* startActors({ hubId: config.hubId, runId, events, handle, addon, tunnelPort, fingerprint: identity.fingerprint, feed: actorFeed, logAs, udpIdleTimeoutMs: config.udpIdleTimeoutMs });
    const eventLog = withActors?.eventLog;
    const actors = withActors?.actors;

    const edgesRef = yield* Ref.make<ReadonlyArray<AllowedEdge>>(
      initialEdges === undefined ? config.edges : initialEdges.map(allowedEdgeOfEntry),
    );
    const closed = (operation: string) =>
      new NativeCallError({ operation, code: "ECLOSED", message: `ECLOSED: hub ${config.hubId} is stopped` });

    const registry =
      cluster === undefined || clusterFeed === undefined
        ? undefined
        : yield* startClusterWiring({
            cluster,
            addon,
            handle,
            deferred,
            events,
            feed: clusterFeed,
            isStopped: () => stopped,
            onApplied: (entries) => {
              const kept = new Set(entries.map((e) => e.id));
              const before = Effect.runSync(Ref.get(edgesRef));
              for (const edge of before) if (!kept.has(edge.id)) actors?.revoke(edge.id);
              Effect.runSync(Ref.set(edgesRef, entries.map(allowedEdgeOfEntry)));
            },
            logAs,
          });

    return {
      hubId: config.hubId,
      runId,
      tunnelPort,
      fingerprint: identity.fingerprint,
      dataDir: identity.dataDir,
      config,
      status: Effect.suspend(() => (stopped ? Effect.fail(closed("hubStatus")) : readStatus(addon, handle))),
      eventLog,
      eventsStatus: Effect.sync(() => (eventLog === undefined ? { enabled: false as const } : eventLog.status())),
      allowedEdges: Ref.get(edgesRef),
      cluster,
      ownership: registry?.ownership?.status,
      updateAllowedEdges: (input) =>
        Effect.gen(function* () {
          const edges = yield* resolveAllowedEdges(input);
          if (stopped) return yield* Effect.fail(closed("hubUpdateEdges"));
          // Cluster mode: the registry is the source of truth; every hub (this one too) applies it from its watch.
          if (cluster !== undefined && registry !== undefined) return yield* registry.write(edges);
          yield* Effect.try({
            try: () => addon.hubUpdateEdges(handle, JSON.stringify(edges)),
            catch: (error) => {
              const parts = nativeErrorParts(error);
              return parts.code === "EINVALIDCONFIG"
                ? new ConfigError({ field: "edges", reason: parts.message })
                : new NativeCallError({ operation: "hubUpdateEdges", ...parts, cause: error });
            },
          });
          // Removed edges: their sessions are closing (revoked) until the addon reports the disconnect.
          const kept = new Set(edges.map((e) => e.id));
          for (const before of yield* Ref.get(edgesRef)) if (!kept.has(before.id)) actors?.revoke(before.id);
          yield* Ref.set(edgesRef, edges);
        }),
      events: channel.events,
    } satisfies HubService;
  });

// ---- cluster mode (docs/cluster.md) ---------------------------------------------------------------------

/** The cluster registry's view of an allowed edge: `secret` holds the verifier (the clear secret is not known). */
const allowedEdgeOfEntry = (e: EdgeEntry): AllowedEdge => ({
  id: e.id,
  secret: e.secretVerifier,
  listenPorts: e.listenPorts,
  listenPortsUdp: e.listenPortsUdp,
  targets: e.targets,
  stunIntervalSecs: e.stunIntervalSecs,
});

const clusterError = (cluster: ClusterConnection, what: string) => (e: unknown) =>
  new NativeCallError({
    operation: what,
    code: "ECLUSTER",
    message: `ECLUSTER: cluster ${cluster.name}: ${what} failed: ${e instanceof Error ? e.message : String(e)}`,
    cause: e,
  });

/** Edges of the config are added to the registry (upsert; others stay); returns the registry's edges. */
const clusterStartEdges = (cluster: ClusterConnection, seed: ReadonlyArray<AllowedEdge>) =>
  Effect.tryPromise({
    try: async () => {
      for (const edge of seed) await setRegistryEdge(cluster.kv.edges, edge, cluster.hubId);
      return (await readRegistry(cluster.kv.edges)).edges as ReadonlyArray<EdgeEntry>;
    },
    catch: (e) => new HubStartError({ code: "ECLUSTER", message: `ECLUSTER: cluster ${cluster.name}: cannot read the edge registry: ${e instanceof Error ? e.message : String(e)}`, cause: e }),
  });

interface ClusterWiringOptions {
  readonly cluster: ClusterConnection;
  readonly addon: NativeAddon;
  readonly handle: HubHandle;
  readonly deferred: boolean;
  /** The hub's event log (ownership reads a dead hub's session from it and closes it there). */
  readonly events: HubEventLogConnection | undefined;
  readonly feed: Queue.Dequeue<NativeHubEvent | EventStreamProblem | symbol>;
  readonly isStopped: () => boolean;
  /** After the addon took a new list from the registry. */
  readonly onApplied: (entries: ReadonlyArray<EdgeEntry>) => void;
  readonly logAs: (level: EventLogLevel, msg: string) => void;
}

/**
 * The registry watch (every change → `hubUpdateEdges` with verifiers) and, with deferred admission, ownership
 * (src/cluster/ownership.ts): it admits or refuses each edge that passed the secret check, renews the leases of
 * the edges this hub serves, drops an edge whose lease is lost, and closes a dead hub's leftovers on takeover.
 */
const startClusterWiring = (o: ClusterWiringOptions) =>
  Effect.gen(function* () {
    let applied: ReadonlyArray<EdgeEntry> = [];
    const waiters = new Set<() => void>();
    const sameList = (a: ReadonlyArray<NativeVerifierEdge>, b: ReadonlyArray<NativeVerifierEdge>) => JSON.stringify(a) === JSON.stringify(b);
    yield* watchRegistry({
      kv: o.cluster.kv.edges,
      log: o.logAs,
      apply: (entries) => {
        if (o.isStopped()) return;
        try {
          o.addon.hubUpdateEdges(o.handle, JSON.stringify(entries.map(nativeEdgeOf)));
        } catch (error) {
          o.logAs("error", `cluster ${o.cluster.name}: the addon refused the registry's edges: ${nativeErrorParts(error).message}`);
          return;
        }
        applied = entries;
        o.onApplied(entries);
        for (const w of [...waiters]) w();
      },
    });

    // With deferred admission, ownership (src/cluster/ownership.ts) decides which edges this hub serves.
    let ownership: Ownership | undefined;
    if (o.deferred && o.events !== undefined) {
      const addonFn = <F>(name: string): F => (o.addon as unknown as Record<string, unknown>)[name] as F;
      const hubAdmitEdge = addonFn<(hub: HubHandle, sessionId: string, admit: boolean, reason: string, message: string) => unknown>("hubAdmitEdge");
      const hubDropEdge = addonFn<((hub: HubHandle, edgeId: string, reason: DropReason, message: string) => unknown) | undefined>("hubDropEdge");
      const events = o.events;
      ownership = yield* startOwnership({
        cluster: o.cluster,
        hubId: o.cluster.hubId,
        runId: o.cluster.runId,
        admit: (sessionId, ok, reason, message) => {
          if (o.isStopped()) return false;
          try {
            return hubAdmitEdge(o.handle, sessionId, ok, reason, message) === true;
          } catch (error) {
            o.logAs("warn", `cluster ${o.cluster.name}: hubAdmitEdge(${sessionId}) failed: ${nativeErrorParts(error).message}`);
            return false;
          }
        },
        drop: (edgeId, reason, message) => {
          if (o.isStopped() || hubDropEdge === undefined) return false;
          try {
            return hubDropEdge(o.handle, edgeId, reason, message) === true;
          } catch (error) {
            o.logAs("warn", `cluster ${o.cluster.name}: hubDropEdge(${edgeId}) failed: ${nativeErrorParts(error).message}`);
            return false;
          }
        },
        append: (e) => events.log.append(e),
        log: { stream: events.stream, client: events.client },
        logAs: (level, msg) => o.logAs(level, `cluster ${o.cluster.name}: ${msg}`),
      });
      const own = ownership;
      yield* Effect.forkScoped(
        Stream.fromQueue(o.feed).pipe(
          Stream.takeWhile((e): e is NativeHubEvent | EventStreamProblem => !isEnd(e)),
          Stream.runForEach((e) => Effect.sync(() => own.onNativeEvent(e))),
        ),
      );
    }

    /** Writes the full list to the registry, then waits (up to 2 s) for this hub's watch to apply it. */
    const write = (edges: ReadonlyArray<AllowedEdge>): Effect.Effect<void, NativeCallError> =>
      Effect.gen(function* () {
        yield* Effect.tryPromise({
          try: () => writeRegistry(o.cluster.kv.edges, edges, o.cluster.hubId),
          catch: clusterError(o.cluster, "writing the edge registry"),
        });
        const { edges: want } = yield* Effect.tryPromise({
          try: () => readRegistry(o.cluster.kv.edges),
          catch: clusterError(o.cluster, "reading the edge registry"),
        });
        const wanted = want.map(nativeEdgeOf);
        yield* Effect.async<void>((resume) => {
          const check = () => {
            if (!sameList(applied.map(nativeEdgeOf), wanted)) return;
            waiters.delete(check);
            clearTimeout(timer);
            resume(Effect.void);
          };
          const timer = setTimeout(() => {
            waiters.delete(check);
            resume(Effect.void);
          }, 2000);
          waiters.add(check);
          check();
          return Effect.sync(() => {
            waiters.delete(check);
            clearTimeout(timer);
          });
        });
      });
    return { write, ownership };
  });
