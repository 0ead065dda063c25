/**
 * Where the hub's NATS comes from (docs/adr/0005-nats-server-provisioning.md): `--nats <urls>` uses an
 * existing server or cluster; without it the hub runs an embedded nats-server whose store lives under
 * the hub's data directory, restarted on the same ports if it dies.
 */
import { Effect, Exit, Layer, Scope } from "effect";
import { makeNatsClient, NatsClient, parseNatsServers, type InvalidNatsServers, type NatsClientOptions } from "./connection.js";
import {
  startEmbeddedServer,
  type EmbeddedServer,
  type EmbeddedServerOptions,
  type NatsServerBinaryMissing,
  type NatsServerStartFailed,
} from "./embedded-server.js";

export interface NatsProvisionOptions {
  /** `nats://a:4222,nats://b:4222`; absent → embedded server. */
  readonly nats?: string | undefined;
  readonly dataDir: string;
  readonly embedded?: Omit<EmbeddedServerOptions, "dataDir">;
  readonly client?: Omit<NatsClientOptions, "servers">;
  readonly log?: (level: "info" | "warn" | "error", msg: string) => void;
}

/**
 * Runs the embedded server under `scope`, restarting it on the same ports when it exits unexpectedly (the
 * NATS client reconnects by itself; events wait in the outbox meanwhile).
 */
export const superviseEmbeddedServer = (
  opts: EmbeddedServerOptions,
  log: NonNullable<NatsProvisionOptions["log"]>,
): Effect.Effect<EmbeddedServer, NatsServerBinaryMissing | NatsServerStartFailed, Scope.Scope> =>
  Effect.gen(function* () {
    let stopping = false;
    let childScope = yield* Scope.make();
    const first = yield* startEmbeddedServer(opts).pipe(Scope.extend(childScope));
    const fixed = { ...opts, port: first.port, monitorPort: first.monitorPort };
    const watch = (server: EmbeddedServer): void => {
      void server.exited.then(async (code) => {
        if (stopping) return;
        log("error", `embedded nats-server exited (code ${code}); restarting on port ${fixed.port}\n${server.logTail()}`);
        await Effect.runPromise(Scope.close(childScope, Exit.void));
        for (let attempt = 1; !stopping; attempt++) {
          await new Promise((r) => setTimeout(r, Math.min(250 * attempt, 5_000)));
          if (stopping) return;
          childScope = Effect.runSync(Scope.make());
          const exit = await Effect.runPromiseExit(startEmbeddedServer(fixed).pipe(Scope.extend(childScope)));
          if (Exit.isSuccess(exit)) {
            log("info", `embedded nats-server restarted (pid ${exit.value.pid})`);
            watch(exit.value);
            return;
          }
          await Effect.runPromise(Scope.close(childScope, Exit.void));
          log("error", `embedded nats-server restart attempt ${attempt} failed`);
        }
      });
    };
    watch(first);
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        stopping = true;
        return Scope.close(childScope, Exit.void);
      }),
    );
    return first;
  });

const defaultLog = (level: "info" | "warn" | "error", msg: string): void => {
  if (level !== "info") console.error(`[nats] ${msg}`);
};

/** NatsClient from the hub's options: external servers, or the embedded default. */
export const layer = (
  opts: NatsProvisionOptions,
): Layer.Layer<NatsClient, InvalidNatsServers | NatsServerBinaryMissing | NatsServerStartFailed> =>
  Layer.scoped(
    NatsClient,
    Effect.gen(function* () {
      const log = opts.log ?? defaultLog;
      if (opts.nats !== undefined && opts.nats.trim() !== "") {
        const servers = yield* parseNatsServers(opts.nats);
        return yield* makeNatsClient({ ...opts.client, servers });
      }
      const server = yield* superviseEmbeddedServer({ ...opts.embedded, dataDir: opts.dataDir }, log);
      log("info", `embedded nats-server ${server.url} (store ${server.storeDir})`);
      return yield* makeNatsClient({ ...opts.client, servers: [server.url] });
    }),
  );
