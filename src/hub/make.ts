import { Deferred, Duration, Effect, Either, Exit, Fiber, type Queue, Ref, Runtime, Stream, type Scope } from "effect";
import { feedHubActors } from "../actors/feed.js";
import { createHubActorSystem, type HubActorSystem } from "../actors/hub-actor-system.js";
import {
  resolveAllowedEdges,
  resolveHubOptions,
  type AllowedEdge,
  type HubConfig,
  type HubOptions,
} from "../config/hub.js";
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
  /** The channel subscription taken before hubStart (ends with the channel's end marker). */
  readonly feed: Queue.Dequeue<NativeHubEvent | EventStreamProblem | symbol>;
  readonly logAs: (level: EventLogLevel, msg: string) => void;
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
      report: (problem) => {
        problems += 1;
        if (problems <= 20) o.logAs("warn", `event actors: ${JSON.stringify(problem)}`);
      },
    });

    const feed = Stream.fromQueue(o.feed).pipe(
      Stream.takeWhile((e): e is NativeHubEvent | EventStreamProblem => !isEnd(e)),
    );
    const feeding = yield* Effect.forkDaemon(feedHubActors(actors, feed));
    actors.listening(o.tunnelPort);
    // Runs before the addon hub's release: the actors' drain stops the addon hub and waits for its final
    // events (fed by `feeding`); once every actor has ended, nothing the feed could still bring matters.
    yield* Effect.addFinalizer((exit) =>
      Effect.interruptible(Effect.promise(() => actors.stop(stopReasonOf(exit)))).pipe(
        Effect.timeout(ACTORS_STOP_TIMEOUT),
        Effect.catchAll(() => Effect.sync(() => o.logAs("warn", "event actors did not settle within 15 s; closing anyway"))),
        Effect.zipRight(Fiber.interrupt(feeding)),
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
): Effect.Effect<HubService, HubStartError | ConfigError | AddonLoadError | EventLogStartError, Scope.Scope> =>
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

    const channel = yield* makeEventChannel(decodeNativeHubEvent, `hub ${config.hubId}`);
    // Subscribed before hubStart: the actors must see every native event, `hub.listening` included.
    const actorFeed = events === undefined ? undefined : yield* channel.subscribe;
    const configJson = JSON.stringify(nativeHubConfig(config, identity));

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

    const withActors =
      events === undefined || actorFeed === undefined
        ? undefined
        : yield* startActors({ hubId: config.hubId, runId, events, handle, addon, tunnelPort, fingerprint: identity.fingerprint, feed: actorFeed, logAs });
    const eventLog = withActors?.eventLog;
    const actors = withActors?.actors;

    const edgesRef = yield* Ref.make<ReadonlyArray<AllowedEdge>>(config.edges);
    const closed = (operation: string) =>
      new NativeCallError({ operation, code: "ECLOSED", message: `ECLOSED: hub ${config.hubId} is stopped` });

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
      updateAllowedEdges: (input) =>
        Effect.gen(function* () {
          const edges = yield* resolveAllowedEdges(input);
          if (stopped) return yield* Effect.fail(closed("hubUpdateEdges"));
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
