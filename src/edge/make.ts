import { Duration, Effect, Either, Queue, type Scope } from "effect";
import { resolveEdgeOptions, type EdgeConfig, type EdgeOptions } from "../config/edge.js";
import {
  EdgeConnectTimeoutError,
  EdgeStartError,
  NativeCallError,
  nativeErrorParts,
  type AddonLoadError,
  type ConfigError,
} from "../errors.js";
import { loadAddon, type EdgeHandle, type NativeAddon } from "../native/addon.js";
import { isEnd, makeEventChannel } from "../native/channel.js";
import { decodeNativeEdgeEvent } from "../native/events.js";
import { decodeNativeEdgeStatus, type NativeEdgeStatus } from "../native/status.js";
import type { EdgeService } from "./service.js";

const STOP_TIMEOUT = Duration.seconds(10);

const readStatus = (addon: NativeAddon, handle: EdgeHandle): Effect.Effect<NativeEdgeStatus, NativeCallError> =>
  Effect.try({
    try: () => addon.edgeStatus(handle),
    catch: (error) => new NativeCallError({ operation: "edgeStatus", ...nativeErrorParts(error), cause: error }),
  }).pipe(
    Effect.flatMap((json) =>
      Either.match(decodeNativeEdgeStatus(json), {
        onLeft: (message) => Effect.fail(new NativeCallError({ operation: "edgeStatus", code: "EPROTOCOL", message })),
        onRight: Effect.succeed,
      }),
    ),
  );

const unpinnedWarning = (config: EdgeConfig, hub: string, fingerprint: string) =>
  `edge ${config.edgeId}: connected to ${hub} WITHOUT verifying its certificate (fingerprint ${fingerprint}); ` +
  "pin it with hubCertFingerprint (or a token that carries fp) to stop trusting whoever answers";

/** Starts a native edge (returns at once; it connects in the background); closing the scope stops it. */
export const makeEdge = (
  options: EdgeOptions,
): Effect.Effect<EdgeService, EdgeStartError | ConfigError | AddonLoadError, Scope.Scope> =>
  Effect.gen(function* () {
    const config = yield* resolveEdgeOptions(options);
    const addon = yield* loadAddon;
    const channel = yield* makeEventChannel(decodeNativeEdgeEvent, `edge ${config.edgeId}`);

    // Subscribed before the edge starts, so the unpinned warning cannot be missed.
    const watch = yield* channel.subscribe;
    const verifies = config.hubCertFingerprint !== null || config.caPem !== null;
    yield* Effect.forkScoped(
      Effect.gen(function* () {
        for (;;) {
          const event = yield* Queue.take(watch);
          if (isEnd(event)) return;
          if (event.type === "tunnel.unpinned" || (event.type === "tunnel.connected" && !event.pinned && !verifies)) {
            yield* Effect.logWarning(unpinnedWarning(config, event.hub, event.hubFingerprint));
            return;
          }
        }
      }),
    );

    let stopped = false;
    const handle = yield* Effect.acquireRelease(
      Effect.try({
        try: () => addon.edgeStart(JSON.stringify(config), channel.callback),
        catch: (error) => new EdgeStartError({ ...nativeErrorParts(error), cause: error }),
      }),
      (handle) =>
        Effect.gen(function* () {
          stopped = true;
          yield* Effect.tryPromise(() => addon.edgeStop(handle)).pipe(
            Effect.timeoutFail({ duration: STOP_TIMEOUT, onTimeout: () => new Error("edgeStop timed out") }),
            Effect.catchAll((error) => Effect.logWarning(`edge ${config.edgeId}: stop failed: ${String(error)}`)),
          );
          yield* channel.end;
        }),
    );

    const closed = (operation: string) =>
      new NativeCallError({ operation, code: "ECLOSED", message: `ECLOSED: edge ${config.edgeId} is stopped` });
    const status = Effect.suspend(() => (stopped ? Effect.fail(closed("edgeStatus")) : readStatus(addon, handle)));

    const waitConnected = (timeout: Duration.DurationInput) => {
      let lastError: string | null = null;
      const wait = Effect.scoped(
        Effect.gen(function* () {
          const queue = yield* channel.subscribe;
          const now = yield* status;
          if (now.connected) return now;
          lastError = now.lastError;
          for (;;) {
            const event = yield* Queue.take(queue);
            if (isEnd(event)) return yield* Effect.fail(closed("waitConnected"));
            if (event.type === "tunnel.connected") return yield* status;
            if (event.type === "tunnel.rejected" || event.type === "tunnel.disconnected") {
              lastError = `${event.reason}${event.message === "" ? "" : `: ${event.message}`}`;
            }
          }
        }),
      );
      return wait.pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => {
            const ms = Duration.toMillis(Duration.decode(timeout));
            return new EdgeConnectTimeoutError({
              timeoutMs: ms,
              lastError,
              message: `edge ${config.edgeId} did not connect within ${ms} ms${lastError === null ? "" : ` (last error: ${lastError})`}`,
            });
          },
        }),
      );
    };

    return {
      edgeId: config.edgeId,
      config,
      status,
      waitConnected,
      events: channel.events,
    } satisfies EdgeService;
  });
