/** `portway hub`: runs a hub until SIGINT/SIGTERM; SIGHUP reloads the allowed edges from the config file. */
import { Effect, Runtime, Stream } from "effect";
import { hubFieldSpecs, loadHubConfig, type AllowedEdge } from "../config/hub.js";
import type { ClusterError } from "../cluster/connection.js";
import type { AddonLoadError, ConfigError, HubStartError } from "../errors.js";
import type { EventLogStartError } from "../hub/event-log.js";
import { Hub, type HubService } from "../hub/service.js";
import { formatBytes, formatDuration } from "./event-format.js";
import { commonFlags, parseCommandArgs, renderHelp, type UsageError } from "./args.js";
import { makeDrainingFork } from "./drain.js";
import { loggerLayer, makeLineLog, type LineLog } from "./log.js";

const extras = commonFlags("PORTWAY_HUB_CONFIG");

export const hubHelp = renderHelp(
  "portway hub [flags]",
  "Runs a hub: accepts edges over TLS (TCP) and QUIC (UDP, unless --no-quic) on the tunnel port and forwards their clients to targets with a PROXY header.\n" +
    "Prints its certificate fingerprint at start (edges pin it; `portway token` puts it in tokens).\n" +
    "SIGHUP re-reads the config file and applies its `edges` list without a restart.",
  hubFieldSpecs,
  extras,
  [
    "Config file example (YAML):",
    "  tunnelPort: 8443",
    "  edges:",
    "    - id: e1",
    "      secret: change-me",
    "      listenPorts: [80, 443]",
    "      listenPortsUdp: [53]",
    '      targets: { "443": "10.0.0.5:8443", "53": "10.0.0.53:53" }',
    "On the command line, --edge e1:80,443,53/udp:change-me gives UDP ports a /udp suffix.",
  ].join("\n"),
);

/** Says where events go, and (once known) what the start-up recovery closed. */
const describeEventLog = (
  hub: HubService,
  log: LineLog,
  source: string,
  fork: (effect: Effect.Effect<void>) => Effect.Effect<void>,
): Effect.Effect<void> =>
  Effect.gen(function* () {
    const ev = hub.eventLog;
    if (ev === undefined) {
      log.line("warn", source, "event log off (--no-events): lifecycle events are not recorded");
      return;
    }
    const where =
      ev.nats === "embedded" ? `embedded nats-server ${ev.servers.join(",")} (store ${ev.storeDir ?? "?"})` : `NATS ${ev.servers.join(",")}`;
    const limits = hub.config.events;
    log.line(
      "info",
      source,
      `event log: ${where}, stream ${ev.stream} (replicas ${limits.replicas}, max age ${formatDuration(limits.maxAge)}, max ${formatBytes(limits.maxBytes)}); run ${hub.runId}`,
    );
    const status = ev.status();
    if (!status.connected) log.line("warn", source, "event log: NATS not reachable yet; events wait in the disk outbox until it is");
    const left = status.outboxAtStart;
    if (left.records > 0) {
      log.line(
        "info",
        source,
        `event log: flushing ${left.records} batches (${left.events} events, ${formatBytes(left.bytes)}) the previous run left in the outbox`,
      );
    }
    yield* fork(
      Effect.flatMap(ev.recovery, (r) =>
        Effect.sync(() => {
          if (r.state === "failed") log.line("error", source, `event log: recovery failed: ${r.error}`);
          else if (r.state === "done") {
            const closed = r.streamsClosed + r.sessionsClosed + r.udpClosed + r.runsClosed;
            log.line(
              "info",
              source,
              closed === 0
                ? `event log: recovered (previous run ${r.previousRunId ?? "-"} left nothing open; ${r.replayedEvents} events replayed in ${r.durationMs} ms)`
                : `event log: recovered: closed what run ${r.previousRunId ?? "-"} left open with hubRestarted: ${r.streamsClosed} streams, ` +
                    `${r.sessionsClosed} sessions, ${r.udpClosed} UDP sessions (${r.replayedEvents} events replayed in ${r.durationMs} ms)`,
            );
          }
        }),
      ),
    );
  });

/** Describes an allowed edge without its secret. */
export const describeEdge = (edge: AllowedEdge, targetHost: string): string => {
  const tcp = edge.listenPorts.length === 0 ? "none" : edge.listenPorts.join(",");
  const udp = edge.listenPortsUdp.length === 0 ? "" : ` udp ${edge.listenPortsUdp.join(",")}`;
  const overrides = Object.entries(edge.targets).map(([port, target]) => `${port}->${target}`);
  const targets = overrides.length === 0 ? `targets ${targetHost}:<port>` : `targets ${overrides.join(" ")} (others ${targetHost}:<port>)`;
  return `allowed edge ${edge.id}: tcp ${tcp}${udp}; ${targets}`;
};

export const runHub = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<void, UsageError | ConfigError | HubStartError | AddonLoadError | EventLogStartError | ClusterError> =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("hub", argv, hubFieldSpecs, extras);
    if (flags["help"] === true) {
      process.stdout.write(hubHelp);
      return;
    }
    const log = makeLineLog(flags["json"] === true ? "json" : "text");
    const configFlag = flags["config"];
    const file = typeof configFlag === "string" ? configFlag : env["PORTWAY_HUB_CONFIG"] || undefined;
    const config = yield* loadHubConfig({ file, env, flags });
    const source = config.hubId === "hub" ? "hub" : `hub ${config.hubId}`;

    yield* Effect.scoped(
      Effect.gen(function* () {
        const forkDraining = yield* makeDrainingFork;
        const hub = yield* Hub.make(config);
        yield* forkDraining(Stream.runForEach(hub.events, (event) => Effect.sync(() => log.event(source, event))));
        const identity = hub.dataDir === undefined ? "given certificate" : `identity kept in ${hub.dataDir}`;
        log.line("info", source, `listening on ${config.bindHost}:${hub.tunnelPort}`);
        log.line("info", source, `certificate fingerprint ${hub.fingerprint} (${identity})`);
        const showEdges = (edges: ReadonlyArray<AllowedEdge>) => {
          if (edges.length === 0) log.line("warn", source, "no edges allowed yet: add `edges` to the config file (then SIGHUP) or use --edge");
          for (const edge of edges) log.line("info", source, describeEdge(edge, config.targetHost));
        };
        if (hub.cluster !== undefined) {
          const c = hub.cluster;
          log.line(
            "info",
            source,
            `cluster ${c.name}: buckets ${c.names.edges}, ${c.names.hubs}, ${c.names.owners} (replicas ${c.config.replicas}); heartbeat ${c.config.heartbeatMs} ms, hub timeout ${c.config.hubTimeoutMs} ms`,
          );
          showEdges(yield* hub.allowedEdges);
        } else showEdges(config.edges);
        yield* describeEventLog(hub, log, source, forkDraining);

        if (file !== undefined) {
          const runtime = yield* Effect.runtime<never>();
          const reload = loadHubConfig({ file, env, flags }).pipe(
            Effect.tap((next) => hub.updateAllowedEdges(next.edges)),
            Effect.tap((next) =>
              Effect.sync(() => {
                log.line("info", source, `reloaded ${file}: ${next.edges.length} allowed edge(s) (other settings need a restart)`);
                showEdges(next.edges);
              }),
            ),
            Effect.catchAll((error) => Effect.sync(() => log.line("error", source, `reload failed, keeping the old edges: ${error.message}`))),
          );
          yield* Effect.acquireRelease(
            Effect.sync(() => {
              const onHup = () => void Runtime.runFork(runtime)(reload);
              process.on("SIGHUP", onHup);
              return onHup;
            }),
            (onHup) => Effect.sync(() => process.off("SIGHUP", onHup)),
          );
        }
        yield* Effect.addFinalizer(() => Effect.sync(() => log.line("info", source, "stopping")));
        return yield* Effect.never;
      }),
    ).pipe(Effect.provide(loggerLayer(log, source)));
  });
