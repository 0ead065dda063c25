/** `portway edge`: runs an edge until SIGINT/SIGTERM. */
import { Effect, Stream } from "effect";
import { edgeFieldSpecs, loadEdgeConfig } from "../config/edge.js";
import { Edge } from "../edge/service.js";
import type { AddonLoadError, ConfigError, EdgeStartError } from "../errors.js";
import { commonFlags, parseCommandArgs, renderHelp, type UsageError } from "./args.js";
import { makeDrainingFork } from "./drain.js";
import { loggerLayer, makeLineLog } from "./log.js";

const extras = commonFlags("PORTWAY_EDGE_CONFIG");

export const edgeHelp = renderHelp(
  "portway edge --token TOKEN [flags]",
  "Runs an edge: dials the hub, opens the public ports the hub assigns, and relays each client through the tunnel.\n" +
    "Give a token from `portway token`, or --hub-host/--hub-port/--edge-id/--secret (flags override the token).\n" +
    "Without a fingerprint (token `fp` or --hub-fingerprint) or --ca-file the edge connects unverified and warns.",
  edgeFieldSpecs,
  extras,
);

export const runEdge = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<void, UsageError | ConfigError | EdgeStartError | AddonLoadError> =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("edge", argv, edgeFieldSpecs, extras);
    if (flags["help"] === true) {
      process.stdout.write(edgeHelp);
      return;
    }
    const log = makeLineLog(flags["json"] === true ? "json" : "text");
    const configFlag = flags["config"];
    const file = typeof configFlag === "string" ? configFlag : env["PORTWAY_EDGE_CONFIG"] || undefined;
    const config = yield* loadEdgeConfig({ file, env, flags });
    const source = `edge ${config.edgeId}`;

    yield* Effect.scoped(
      Effect.gen(function* () {
        const forkDraining = yield* makeDrainingFork;
        const edge = yield* Edge.make(config);
        yield* forkDraining(Stream.runForEach(edge.events, (event) => Effect.sync(() => log.event(source, event))));
        const hubs = config.hubs.map((h) => `${h.host}:${h.port}`).join(", ");
        const trust =
          config.hubCertFingerprint !== null
            ? `pinning ${config.hubCertFingerprint}`
            : config.caPem !== null
              ? "verifying against the given CA"
              : "NOT verifying the hub certificate";
        log.line("info", source, `connecting to ${hubs} over ${config.transportMode ?? "tcpTls"} (${trust}); listeners bind ${config.bindAddress}`);
        yield* Effect.addFinalizer(() => Effect.sync(() => log.line("info", source, "stopping")));
        return yield* Effect.never;
      }),
    ).pipe(Effect.provide(loggerLayer(log, source)));
  });
