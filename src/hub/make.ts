import { Duration, Effect, Either, Ref, type Scope } from "effect";
import {
  resolveAllowedEdges,
  resolveHubOptions,
  type AllowedEdge,
  type HubConfig,
  type HubOptions,
} from "../config/hub.js";
import { ConfigError, HubStartError, NativeCallError, nativeErrorParts, type AddonLoadError } from "../errors.js";
import { loadAddon, type HubHandle, type NativeAddon } from "../native/addon.js";
import { makeEventChannel } from "../native/channel.js";
import { decodeNativeHubEvent } from "../native/events.js";
import { decodeNativeHubStatus, type NativeHubStatus } from "../native/status.js";
import { resolveHubIdentity, type HubIdentity } from "./identity.js";
import type { HubService } from "./service.js";

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

/** Starts a native hub (resolves once its tunnel port listens); closing the scope stops it. */
export const makeHub = (
  options: HubOptions = {},
): Effect.Effect<HubService, HubStartError | ConfigError | AddonLoadError, Scope.Scope> =>
  Effect.gen(function* () {
    const config = yield* resolveHubOptions(options);
    const addon = yield* loadAddon;
    const identity = yield* resolveHubIdentity(addon, config);
    const channel = yield* makeEventChannel(decodeNativeHubEvent, `hub ${config.hubId}`);
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
          yield* Effect.tryPromise(() => addon.hubStop(handle)).pipe(
            Effect.timeoutFail({ duration: STOP_TIMEOUT, onTimeout: () => new Error("hubStop timed out") }),
            Effect.catchAll((error) => Effect.logWarning(`hub ${config.hubId}: stop failed: ${String(error)}`)),
          );
          yield* channel.end;
        }),
    );

    const started = yield* Effect.either(readStatus(addon, handle));
    if (Either.isLeft(started)) yield* Effect.logWarning(`hub ${config.hubId}: ${started.left.message}`);
    const tunnelPort = Either.isRight(started) ? started.right.tunnelPort : config.tunnelPort;

    const edgesRef = yield* Ref.make<ReadonlyArray<AllowedEdge>>(config.edges);
    const closed = (operation: string) =>
      new NativeCallError({ operation, code: "ECLOSED", message: `ECLOSED: hub ${config.hubId} is stopped` });

    return {
      hubId: config.hubId,
      tunnelPort,
      fingerprint: identity.fingerprint,
      dataDir: identity.dataDir,
      config,
      status: Effect.suspend(() => (stopped ? Effect.fail(closed("hubStatus")) : readStatus(addon, handle))),
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
          yield* Ref.set(edgesRef, edges);
        }),
      events: channel.events,
    } satisfies HubService;
  });
