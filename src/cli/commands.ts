/**
 * Command dispatch for `portway hub | edge | token | events | history | help`. Exit codes: 0 ok (also after SIGINT/SIGTERM, once
 * everything stopped), 1 runtime failure, 2 bad usage or config.
 */
import { Cause, Effect, Exit, Option } from "effect";
import { portwayVersion } from "../hub/version.js";
import { UsageError } from "./args.js";
import { clusterEdgesRemoveHelp, clusterEdgesSetHelp, clusterHelp, clusterStatusHelp, runCluster } from "./cluster.js";
import { edgeHelp, runEdge } from "./edge.js";
import { eventsHelp, eventsReplayHelp, eventsTailHelp, historyHelp, runEvents, runHistory } from "./events.js";
import { hubHelp, runHub } from "./hub.js";
import { runToken, tokenHelp } from "./token.js";

const GENERAL_HELP = `Usage: portway <command> [flags]

Commands:
  hub      run a hub (accepts edges, forwards their clients to targets)
  edge     run an edge (public listeners, tunnels clients to the hub)
  token    print a connection token for an edge
  events   the event log: \`events tail\` (live) and \`events replay\` (a time range)
  history  one edge's sessions and connections, from the event log
  cluster  several hubs sharing state in NATS: \`cluster status\`, \`cluster edges set|remove\`
  help     show help for a command: portway help <command>

Each command takes --help, --config FILE (JSON or YAML) and PORTWAY_* environment variables; flags win.
`;

const version = portwayVersion;

const USAGE_TAGS = new Set(["UsageError", "ConfigError", "TokenError", "InvalidNatsServers", "InvalidEventStreamOptions"]);

/** 2 for usage/config mistakes, 1 for anything else that failed, 0 for success or a signal-initiated stop. */
export const exitCodeOf = (exit: Exit.Exit<unknown, unknown>): number => {
  if (Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause)) return 0;
  const failure = Cause.failureOption(exit.cause);
  if (Option.isSome(failure)) {
    const tag = (failure.value as { _tag?: unknown } | null)?._tag;
    return typeof tag === "string" && USAGE_TAGS.has(tag) ? 2 : 1;
  }
  return 1;
};

export const describeFailure = (cause: Cause.Cause<unknown>): string => {
  const failure = Cause.failureOption(cause);
  if (Option.isSome(failure)) {
    const error = failure.value;
    return error instanceof Error ? error.message : String(error);
  }
  return Cause.pretty(cause);
};

/** Runs one command line; fails with the command's error (printed by `main`). */
export const runCommand = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<void, unknown> => {
  const [command, ...rest] = argv;
  switch (command) {
    case "hub":
      return runHub(rest, env);
    case "edge":
      return runEdge(rest, env);
    case "token":
      return runToken(rest, env);
    case "events":
      return runEvents(rest, env);
    case "history":
      return runHistory(rest, env);
    case "cluster":
      return runCluster(rest, env);
    case "help":
    case "--help":
    case "-h": {
      const topic = rest[0];
      const topics: Readonly<Record<string, string>> = {
        hub: hubHelp,
        edge: edgeHelp,
        token: tokenHelp,
        events: rest[1] === "tail" ? eventsTailHelp : rest[1] === "replay" ? eventsReplayHelp : eventsHelp,
        history: historyHelp,
        cluster:
          rest[1] === "status"
            ? clusterStatusHelp
            : rest[1] === "edges"
              ? rest[2] === "remove"
                ? clusterEdgesRemoveHelp
                : clusterEdgesSetHelp
              : clusterHelp,
      };
      const text = (topic === undefined ? undefined : topics[topic]) ?? GENERAL_HELP;
      return topic === undefined || text !== GENERAL_HELP
        ? Effect.sync(() => void process.stdout.write(text))
        : Effect.fail(new UsageError({ message: `portway help: unknown command "${topic}"\n\n${GENERAL_HELP}` }));
    }
    case "--version":
    case "-v":
      return Effect.sync(() => void process.stdout.write(`portway ${version()}\n`));
    case undefined:
      return Effect.fail(new UsageError({ message: `portway: a command is needed\n\n${GENERAL_HELP}` }));
    default:
      return Effect.fail(new UsageError({ message: `portway: unknown command "${command}"\n\n${GENERAL_HELP}` }));
  }
};

