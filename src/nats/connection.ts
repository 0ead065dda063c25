/**
 * The one adapter file for NATS: connects to a server list, reconnects forever, and reports connection
 * status. Everything else in Portway talks to NATS through the `NatsClient` service.
 *
 * The first connection is awaited for `startupWaitMs` only: a hub whose NATS is down at start still
 * starts (events wait in the outbox), and `connection` resolves once NATS is reachable.
 */
import { connect, type NatsConnection, type Status } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Context, Data, Deferred, Effect, Layer, PubSub, Scope, Stream } from "effect";

export type { NatsConnection } from "@nats-io/transport-node";

export class NatsConnectFailed extends Data.TaggedError("NatsConnectFailed")<{
  readonly servers: ReadonlyArray<string>;
  readonly cause: unknown;
}> {
  override get message(): string {
    const why = this.cause instanceof Error ? this.cause.message : String(this.cause);
    return `cannot connect to NATS at ${this.servers.join(", ")}: ${why}`;
  }
}

export class InvalidNatsServers extends Data.TaggedError("InvalidNatsServers")<{
  readonly input: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `invalid NATS server list "${this.input}": ${this.reason}`;
  }
}

/** Connection status as Portway reports it (a subset of nats.js statuses, plain data). */
export type NatsConnStatus =
  | { readonly type: "connected"; readonly server: string }
  | { readonly type: "disconnected"; readonly server: string }
  | { readonly type: "reconnecting" }
  | { readonly type: "reconnected"; readonly server: string }
  | { readonly type: "error"; readonly message: string }
  | { readonly type: "closed" };

export interface NatsClientOptions {
  /** e.g. ["nats://127.0.0.1:4222"]; see parseNatsServers for the CLI form. */
  readonly servers: ReadonlyArray<string>;
  readonly name?: string;
  /** How long the layer waits for the first connection before carrying on without it. Default 5000. */
  readonly startupWaitMs?: number;
  /** Time between reconnect attempts to the same server. Default 250. */
  readonly reconnectTimeWaitMs?: number;
  readonly user?: string;
  readonly pass?: string;
  readonly token?: string;
}

export interface NatsClientService {
  readonly servers: ReadonlyArray<string>;
  /** Waits for the first connection (never fails; interrupt to stop waiting). */
  readonly connection: Effect.Effect<NatsConnection>;
  /** The connection if it was ever established (it may be reconnecting right now). */
  readonly current: () => NatsConnection | undefined;
  readonly isConnected: () => boolean;
  readonly jetstream: () => JetStreamClient | undefined;
  readonly jetstreamManager: Effect.Effect<JetStreamManager, NatsConnectFailed>;
  /** Status changes from now on. */
  readonly statusChanges: Stream.Stream<NatsConnStatus>;
  /** Callback form of statusChanges for non-Effect code; returns an unsubscribe function. */
  readonly onStatus: (listener: (s: NatsConnStatus) => void) => () => void;
}

export class NatsClient extends Context.Tag("portway/NatsClient")<NatsClient, NatsClientService>() {}

/** Parses `nats://a:4222,nats://b:4222` (also `a:4222`, `tls://…`). */
export const parseNatsServers = (input: string): Effect.Effect<ReadonlyArray<string>, InvalidNatsServers> =>
  Effect.suspend(() => {
    const items = input.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    if (items.length === 0) return Effect.fail(new InvalidNatsServers({ input, reason: "no server given" }));
    const out: string[] = [];
    for (const item of items) {
      const withScheme = /^[a-z]+:\/\//.test(item) ? item : `nats://${item}`;
      let url: URL;
      try {
        url = new URL(withScheme);
      } catch {
        return Effect.fail(new InvalidNatsServers({ input, reason: `"${item}" is not a URL` }));
      }
      if (!["nats:", "tls:", "ws:", "wss:"].includes(url.protocol)) {
        return Effect.fail(new InvalidNatsServers({ input, reason: `"${item}": scheme must be nats:// or tls://` }));
      }
      if (url.hostname === "") return Effect.fail(new InvalidNatsServers({ input, reason: `"${item}": missing host` }));
      out.push(withScheme);
    }
    return Effect.succeed(out);
  });

const toConnStatus = (s: Status): NatsConnStatus | undefined => {
  switch (s.type) {
    case "disconnect":
      return { type: "disconnected", server: s.server };
    case "reconnecting":
      return { type: "reconnecting" };
    case "reconnect":
      return { type: "reconnected", server: s.server };
    case "error":
      return { type: "error", message: s.error.message };
    case "close":
      return { type: "closed" };
    default:
      return undefined;
  }
};

/** Builds the service; the connection is drained and closed when the scope closes. */
export const makeNatsClient = (opts: NatsClientOptions): Effect.Effect<NatsClientService, never, Scope.Scope> =>
  Effect.gen(function* () {
    const listeners = new Set<(s: NatsConnStatus) => void>();
    const pubsub = yield* Effect.acquireRelease(PubSub.sliding<NatsConnStatus>(1024), PubSub.shutdown);
    const emit = (s: NatsConnStatus): void => {
      Effect.runSync(PubSub.publish(pubsub, s));
      for (const l of listeners) l(s);
    };
    const ready = yield* Deferred.make<NatsConnection>();
    let nc: NatsConnection | undefined;
    let js: JetStreamClient | undefined;
    let connected = false;
    let closing = false;

    const pending = connect({
      servers: [...opts.servers],
      name: opts.name ?? "portway",
      maxReconnectAttempts: -1,
      waitOnFirstConnect: true,
      reconnectTimeWait: opts.reconnectTimeWaitMs ?? 250,
      reconnectJitter: 100,
      pingInterval: 5_000,
      maxPingOut: 2,
      // Otherwise every request (each JetStream publish) captures two Error stack traces up front for its
      // possible failure, 10-19 µs each measured here, on the event log's hot path. Failures still carry
      // their message and cause.
      noAsyncTraces: true,
      ...(opts.user !== undefined ? { user: opts.user } : {}),
      ...(opts.pass !== undefined ? { pass: opts.pass } : {}),
      ...(opts.token !== undefined ? { token: opts.token } : {}),
    });
    pending.then(
      (conn) => {
        if (closing) {
          void conn.close();
          return;
        }
        nc = conn;
        js = jetstream(conn);
        connected = true;
        emit({ type: "connected", server: conn.getServer() });
        Deferred.unsafeDone(ready, Effect.succeed(conn));
        void (async () => {
          for await (const s of conn.status()) {
            if (s.type === "disconnect") connected = false;
            if (s.type === "reconnect") connected = true;
            const mapped = toConnStatus(s);
            if (mapped) emit(mapped);
          }
        })();
        void conn.closed().then(() => {
          connected = false;
          emit({ type: "closed" });
        });
      },
      (err: unknown) => emit({ type: "error", message: err instanceof Error ? err.message : String(err) }),
    );

    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        closing = true;
        if (!nc || nc.isClosed()) return;
        // drain() waits for the server; a disconnected client would wait for a reconnect that may never come.
        if (!connected) return void (await nc.close().catch(() => undefined));
        const timer = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 2_000).unref());
        if ((await Promise.race([nc.drain().catch(() => undefined), timer])) === "timeout") await nc.close().catch(() => undefined);
      }),
    );

    yield* Deferred.await(ready).pipe(Effect.timeout(opts.startupWaitMs ?? 5_000), Effect.ignore);

    const service: NatsClientService = {
      servers: opts.servers,
      connection: Deferred.await(ready),
      current: () => nc,
      isConnected: () => connected && nc !== undefined && !nc.isClosed(),
      jetstream: () => js,
      jetstreamManager: Effect.flatMap(Deferred.await(ready), (conn) =>
        Effect.tryPromise({
          try: () => jetstreamManager(conn, { checkAPI: false }),
          catch: (cause) => new NatsConnectFailed({ servers: opts.servers, cause }),
        }),
      ),
      statusChanges: Stream.fromPubSub(pubsub),
      onStatus: (l) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    };
    return service;
  });

export const layer = (opts: NatsClientOptions): Layer.Layer<NatsClient> => Layer.scoped(NatsClient, makeNatsClient(opts));

/** Connects and requires the first connection within `startupWaitMs` (fails otherwise). */
export const layerRequireConnected = (opts: NatsClientOptions): Layer.Layer<NatsClient, NatsConnectFailed> =>
  Layer.scoped(
    NatsClient,
    Effect.gen(function* () {
      const client = yield* makeNatsClient(opts);
      if (client.current() === undefined) {
        return yield* Effect.fail(
          new NatsConnectFailed({ servers: opts.servers, cause: new Error(`no connection within ${opts.startupWaitMs ?? 5_000} ms`) }),
        );
      }
      return client;
    }),
  );
