/**
 * Reading the event log from outside a hub: replay, live feed and the `history` projection, for the CLI
 * (`portway events …`, `portway history`) and for library users, as Effect Streams and as async iterables.
 *
 * Where the log is: the NATS servers given, else the embedded nats-server of a hub running with the given
 * data dir (its store is only readable through that server).
 */
import { Cause, Data, Effect, Exit, Layer, ManagedRuntime, type Scope, Stream } from "effect";
import { defaultHubDataDir } from "../hub/identity.js";
import type { DomainEvent } from "../events/envelope.js";
import {
  makeNatsClient,
  NatsClient,
  NatsConnectFailed,
  parseNatsServers,
  type InvalidNatsServers,
  type NatsClientService,
  type NatsConnection,
} from "../nats/connection.js";
import { findRunningEmbeddedServer } from "../nats/embedded-server.js";
import { DEFAULT_STREAM_NAME } from "../nats/event-stream.js";
import type { EdgeHistory } from "../nats/history.js";
import {
  edgeHistory,
  liveEvents,
  liveEventsIterable,
  replayHistory,
  replayHistoryIterable,
  ReplayFailed,
  type LiveOptions,
  type ReplayError,
  type ReplayOptions,
} from "../nats/replay.js";
import { checkServerInfo, type NatsJetStreamUnavailable, type NatsServerTooOld } from "../nats/server-version.js";

/** No NATS was given and no hub is running with the data dir, so there is nowhere to read events from. */
export class EventLogNotFound extends Data.TaggedError("EventLogNotFound")<{ readonly dataDir: string }> {
  override get message(): string {
    return (
      `no NATS server given and no hub is running with data dir ${this.dataDir} (its embedded nats-server serves the ` +
      "event log only while the hub runs): start the hub, point --data-dir at its data dir, or give --nats URLS / PORTWAY_NATS"
    );
  }
}

export type EventReaderError =
  | InvalidNatsServers
  | EventLogNotFound
  | NatsConnectFailed
  | NatsServerTooOld
  | NatsJetStreamUnavailable;

export interface EventReaderOptions {
  /** NATS servers (`nats://a:4222,nats://b:4222` or a list). Default: the embedded server of `dataDir`'s running hub. */
  readonly nats?: string | ReadonlyArray<string> | undefined;
  /** The hub's data dir, when `nats` is not given. Default `$PORTWAY_DATA_DIR`, else `~/.local/state/portway/hub`. */
  readonly dataDir?: string | undefined;
  /** How long to wait for the first connection. Default 5000. */
  readonly connectTimeoutMs?: number;
}

/** The servers to read from: the ones given, or the running embedded server of the data dir. */
export const readerServers = (
  opts: EventReaderOptions,
): Effect.Effect<{ readonly servers: ReadonlyArray<string>; readonly embedded: boolean }, InvalidNatsServers | EventLogNotFound> =>
  Effect.gen(function* () {
    const given = typeof opts.nats === "string" ? opts.nats : opts.nats?.join(",");
    if (given !== undefined && given.trim() !== "") return { servers: yield* parseNatsServers(given), embedded: false };
    const dataDir = opts.dataDir ?? defaultHubDataDir();
    const running = yield* Effect.promise(() => findRunningEmbeddedServer(dataDir));
    if (running === undefined) return yield* Effect.fail(new EventLogNotFound({ dataDir }));
    return { servers: [running.url], embedded: true };
  });

/** A connected NATS client for reading (fails if it cannot connect in time or the server is too old). */
export const makeEventReaderClient = (
  opts: EventReaderOptions,
): Effect.Effect<NatsClientService, EventReaderError, Scope.Scope> =>
  Effect.gen(function* () {
    const { servers } = yield* readerServers(opts);
    const timeout = opts.connectTimeoutMs ?? 5_000;
    const client = yield* makeNatsClient({ servers, name: "portway events", startupWaitMs: timeout });
    const nc = client.current();
    if (nc === undefined) {
      return yield* Effect.fail(new NatsConnectFailed({ servers, cause: new Error(`no connection within ${timeout} ms`) }));
    }
    yield* checkServerInfo(nc.info);
    return client;
  });

/** Provides `NatsClient` for `replayHistory` / `liveEvents` / `edgeHistory`. */
export const eventReaderLayer = (opts: EventReaderOptions = {}): Layer.Layer<NatsClient, EventReaderError> =>
  Layer.scoped(NatsClient, makeEventReaderClient(opts));

/** Checks that the stream exists, with an error that says what to do when it does not. */
export const requireEventStream = (nc: NatsConnection, stream: string = DEFAULT_STREAM_NAME): Effect.Effect<void, ReplayFailed> =>
  Effect.tryPromise({
    try: async () => {
      const { jetstreamManager } = await import("@nats-io/jetstream");
      const jsm = await jetstreamManager(nc, { checkAPI: false });
      await jsm.streams.info(stream);
    },
    catch: (e) => {
      const text = e instanceof Error ? e.message : String(e);
      return new ReplayFailed({
        reason: /not found/i.test(text)
          ? `stream ${stream} does not exist on ${nc.getServer()}: no hub has logged events there yet (or pass --stream NAME)`
          : `cannot read stream ${stream}: ${text}`,
      });
    },
  });

/**
 * The event log for Promise users: `for await (const e of reader.replayHistory({ edgeId: "e1", since }))`.
 *
 * ```ts
 * const reader = await EventReader.open({ nats: "nats://127.0.0.1:4222" });
 * for await (const e of reader.liveEvents({ edgeId: "e1", kinds: ["stream"] })) console.log(e.type, e.data);
 * ```
 */
export class EventReader {
  readonly #runtime: ManagedRuntime.ManagedRuntime<NatsClient, EventReaderError>;
  readonly #client: NatsClientService;

  private constructor(runtime: ManagedRuntime.ManagedRuntime<NatsClient, EventReaderError>, client: NatsClientService) {
    this.#runtime = runtime;
    this.#client = client;
  }

  /** Connects; rejects with `EventLogNotFound`, `NatsConnectFailed`, `NatsServerTooOld`, … */
  static async open(opts: EventReaderOptions = {}): Promise<EventReader> {
    const runtime = ManagedRuntime.make(eventReaderLayer(opts));
    const exit = await runtime.runPromiseExit(NatsClient);
    if (Exit.isSuccess(exit)) return new EventReader(runtime, exit.value);
    await runtime.dispose();
    throw Cause.squash(exit.cause);
  }

  get servers(): ReadonlyArray<string> {
    return this.#client.servers;
  }

  #nc(): NatsConnection {
    const nc = this.#client.current();
    if (nc === undefined) throw new ReplayFailed({ reason: "not connected to NATS" });
    return nc;
  }

  /** History between `since` and `until` (event time), in log order; ends at the end of the log. */
  replayHistory(opts: ReplayOptions = {}): AsyncIterable<DomainEvent> {
    return replayHistoryIterable(this.#nc(), opts);
  }

  /** Events as they are appended (from `since` by storage time, else only new ones); never ends by itself. */
  liveEvents(opts: LiveOptions = {}): AsyncIterable<DomainEvent> {
    return liveEventsIterable(this.#nc(), opts);
  }

  /** The `history` projection of one edge: sessions, connections, totals. */
  async history(opts: Omit<ReplayOptions, "edgeId" | "kinds" | "types"> & { readonly edgeId: string }): Promise<EdgeHistory> {
    const exit = await this.#runtime.runPromiseExit(edgeHistory(opts));
    if (Exit.isSuccess(exit)) return exit.value;
    throw Cause.squash(exit.cause);
  }

  async close(): Promise<void> {
    await this.#runtime.dispose();
  }
}

export { edgeHistory, liveEvents, replayHistory, type LiveOptions, type ReplayError, type ReplayOptions };

/** `replayHistory` as a Stream that brings its own connection (no `NatsClient` needed). */
export const replayHistoryFrom = (
  reader: EventReaderOptions,
  opts: ReplayOptions = {},
): Stream.Stream<DomainEvent, ReplayError | EventReaderError> =>
  replayHistory(opts).pipe(Stream.provideLayer(eventReaderLayer(reader)));

/** `liveEvents` as a Stream that brings its own connection. */
export const liveEventsFrom = (
  reader: EventReaderOptions,
  opts: LiveOptions = {},
): Stream.Stream<DomainEvent, ReplayError | EventReaderError> =>
  liveEvents(opts).pipe(Stream.provideLayer(eventReaderLayer(reader)));
