/**
 * `portway events tail | replay` and `portway history`: read the event log from NATS (`--nats`, the hub
 * config's `nats`, `PORTWAY_NATS`) or from the embedded nats-server of a hub running with `--data-dir`.
 */
import { Effect, Stream } from "effect";
import { loadHubConfig } from "../config/hub.js";
import { makeEventReaderClient, requireEventStream, type EventReaderError } from "../api/events.js";
import { ACTOR_KINDS, isEventType, type ActorKind, type EventType } from "../events/catalog.js";
import type { DomainEvent } from "../events/envelope.js";
import type { ConfigError } from "../errors.js";
import { defaultHubDataDir } from "../hub/identity.js";
import { DEFAULT_STREAM_NAME } from "../nats/event-stream.js";
import { HistoryProjection } from "../nats/history.js";
import type { NatsConnection } from "../nats/connection.js";
import { liveEventsOn, replayHistoryOn, type ReplayError } from "../nats/replay.js";
import { parseCommandArgs, renderHelp, UsageError, type ExtraFlag } from "./args.js";
import { formatEventLine, formatHistory, paintFor, parseTimeArg } from "./event-format.js";

type Env = Readonly<Record<string, string | undefined>>;

const sourceFlags: ReadonlyArray<ExtraFlag> = [
  { flag: "nats", env: "PORTWAY_NATS", placeholder: "URLS", description: "NATS servers holding the log (default: the hub config's, else the embedded server of --data-dir)" },
  { flag: "data-dir", env: "PORTWAY_DATA_DIR", placeholder: "DIR", description: "data dir of a hub running with its embedded nats-server (default ~/.local/state/portway/hub)" },
  { flag: "config", env: "PORTWAY_HUB_CONFIG", placeholder: "FILE", description: "the hub's config file: supplies nats, dataDir and events.stream" },
  { flag: "stream", env: "PORTWAY_EVENTS_STREAM", placeholder: "NAME", description: 'JetStream stream of the log (default "PORTWAY_EVENTS")' },
];
const filterFlags: ReadonlyArray<ExtraFlag> = [
  { flag: "edge", placeholder: "ID", description: "only this edge's events" },
  { flag: "hub", placeholder: "ID", description: "only events of this hub" },
  { flag: "kind", placeholder: "KINDS", description: "comma-separated kinds (hub, edge, stream, udp) or types (stream.closed, edge.connected, …)" },
];
const outputFlags: ReadonlyArray<ExtraFlag> = [
  { flag: "json", boolean: true, description: "one JSON event (the stored envelope) per line" },
  { flag: "help", short: "h", boolean: true, description: "show this help" },
];
const since = (what: string): ExtraFlag => ({ flag: "since", placeholder: "TIME", description: `${what}: 1h, 30m, 2d (ago), an ISO time, or epoch ms` });
const until: ExtraFlag = { flag: "until", placeholder: "TIME", description: "events before this (same forms as --since; default: now)" };

const TIME_FOOTER = "Times: durations count back from now (1h = one hour ago); ISO times without a zone are local time.";

const tailExtras = [...filterFlags, since("start with events stored since then (default: only new ones)"), ...sourceFlags, ...outputFlags];
const replayExtras = [...filterFlags, since("events from this time on (default: the start of the log)"), until, ...sourceFlags, ...outputFlags];
const historyExtras: ReadonlyArray<ExtraFlag> = [
  { flag: "edge", placeholder: "ID", description: "the edge (required)" },
  since("from this time on (default: the start of the log)"),
  until,
  { flag: "limit", placeholder: "N", description: "show the N most recent connections (default 50; 0 = all)" },
  ...sourceFlags,
  { flag: "json", boolean: true, description: "the whole projection as JSON" },
  { flag: "help", short: "h", boolean: true, description: "show this help" },
];

export const eventsTailHelp = renderHelp(
  "portway events tail [--edge ID] [--kind stream.closed] [--json]",
  "Prints lifecycle events as the hub appends them to the log, until Ctrl-C. One readable line per event\n" +
    "(time, hub, edge, type, session/stream, what happened); --json prints the stored envelopes.",
  [],
  tailExtras,
  TIME_FOOTER,
);
export const eventsReplayHelp = renderHelp(
  "portway events replay [--edge ID] [--since 1h] [--until TIME] [--kind KINDS] [--json]",
  "Prints the events of the log between --since and --until (event time) and exits.",
  [],
  replayExtras,
  TIME_FOOTER,
);
export const historyHelp = renderHelp(
  "portway history --edge ID [--since 1h] [--until TIME] [--limit N] [--json]",
  "The history of one edge, projected from the event log: its tunnel sessions (from, to, hub, why they ended),\n" +
    "its connections (client, edge port, target, opened/closed, bytes each way, duration, close reason) and totals.",
  [],
  historyExtras,
  TIME_FOOTER,
);
export const eventsHelp = `Usage: portway events <tail|replay> [flags]

  tail     print events as they are appended (live), until Ctrl-C
  replay   print the events between --since and --until, then exit

See \`portway events tail --help\` and \`portway events replay --help\`; \`portway history --help\` for the
per-edge projection.
`;

interface Source {
  readonly nats: string | undefined;
  readonly dataDir: string;
  readonly stream: string;
}

const str = (flags: Readonly<Record<string, unknown>>, name: string): string | undefined => {
  const v = flags[name];
  return typeof v === "string" && v !== "" ? v : undefined;
};

/** Where to read: flags > env > the hub config file > defaults. */
const resolveSource = (flags: Readonly<Record<string, unknown>>, env: Env): Effect.Effect<Source, ConfigError> =>
  Effect.gen(function* () {
    const file = str(flags, "config") ?? (env["PORTWAY_HUB_CONFIG"] || undefined);
    const hub = file === undefined ? undefined : yield* loadHubConfig({ file, env });
    return {
      nats: str(flags, "nats") ?? (env["PORTWAY_NATS"] || undefined) ?? (hub?.nats === undefined ? undefined : hub.nats.join(",")),
      dataDir: str(flags, "data-dir") ?? hub?.dataDir ?? defaultHubDataDir(env),
      stream: str(flags, "stream") ?? (env["PORTWAY_EVENTS_STREAM"] || undefined) ?? hub?.events.stream ?? DEFAULT_STREAM_NAME,
    };
  });

const timeFlag = (command: string, flags: Readonly<Record<string, unknown>>, name: string): Effect.Effect<number | undefined, UsageError> => {
  const text = str(flags, name);
  if (text === undefined) return Effect.succeed(undefined);
  const ms = parseTimeArg(text);
  return ms === undefined
    ? Effect.fail(new UsageError({ message: `portway ${command}: --${name} must be a duration such as 1h or 30m, an ISO time such as 2025-01-31T12:00:00Z, or epoch ms; got "${text}"` }))
    : Effect.succeed(ms);
};

/** `--kind stream,edge.connected` → kinds and types. */
export const parseKinds = (
  command: string,
  text: string | undefined,
): Effect.Effect<{ readonly kinds?: ReadonlyArray<ActorKind>; readonly types?: ReadonlyArray<EventType> }, UsageError> =>
  Effect.suspend(() => {
    if (text === undefined) return Effect.succeed({});
    const kinds: ActorKind[] = [];
    const types: EventType[] = [];
    for (const item of text.split(",").map((s) => s.trim()).filter((s) => s !== "")) {
      if ((ACTOR_KINDS as ReadonlyArray<string>).includes(item)) kinds.push(item as ActorKind);
      else if (isEventType(item)) types.push(item);
      else {
        return Effect.fail(
          new UsageError({
            message: `portway ${command}: --kind "${item}" is neither a kind (${ACTOR_KINDS.join(", ")}) nor an event type such as stream.closed (docs/events.md)`,
          }),
        );
      }
    }
    return Effect.succeed({ ...(kinds.length > 0 ? { kinds } : {}), ...(types.length > 0 ? { types } : {}) });
  });

const write = (text: string): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (process.stdout.write(text)) resume(Effect.void);
    else process.stdout.once("drain", () => resume(Effect.void));
  });

/** Connects (scoped) and checks the stream, then hands the connection on. */
const withConnection = <A, E>(
  source: Source,
  use: (nc: NatsConnection) => Effect.Effect<A, E>,
): Effect.Effect<A, E | EventReaderError | ReplayError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* makeEventReaderClient({ nats: source.nats, dataDir: source.dataDir });
      // A tail can outlive its server (a stopped hub takes its embedded one along): say so instead of going quiet.
      const off = client.onStatus((s) => {
        if (s.type === "disconnected") process.stderr.write(`lost the connection to NATS (${s.server}); waiting for it to come back (Ctrl-C to stop)\n`);
        if (s.type === "reconnected") process.stderr.write(`reconnected to NATS (${s.server})\n`);
      });
      yield* Effect.addFinalizer(() => Effect.sync(off));
      const nc = yield* client.connection;
      yield* requireEventStream(nc, source.stream);
      return yield* use(nc);
    }),
  );

const printEvents = (events: Stream.Stream<DomainEvent, ReplayError>, json: boolean, env: Env): Effect.Effect<number, ReplayError> => {
  const paint = paintFor(process.stdout, env);
  return events.pipe(
    Stream.runFoldEffect(0, (n, e) => write(`${json ? JSON.stringify(e) : formatEventLine(e, paint)}\n`).pipe(Effect.as(n + 1))),
  );
};

export type EventsCommandError = UsageError | ConfigError | EventReaderError | ReplayError;

export const runEvents = (argv: ReadonlyArray<string>, env: Env): Effect.Effect<void, EventsCommandError> =>
  Effect.gen(function* () {
    const [sub, ...rest] = argv;
    if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
      process.stdout.write(eventsHelp);
      return;
    }
    if (sub !== "tail" && sub !== "replay") {
      return yield* Effect.fail(new UsageError({ message: `portway events: unknown subcommand "${sub}"\n\n${eventsHelp}` }));
    }
    const command = `events ${sub}`;
    const flags = yield* parseCommandArgs(command, rest, [], sub === "tail" ? tailExtras : replayExtras);
    if (flags["help"] === true) {
      process.stdout.write(sub === "tail" ? eventsTailHelp : eventsReplayHelp);
      return;
    }
    const filter = {
      ...(str(flags, "edge") === undefined ? {} : { edgeId: str(flags, "edge") as string }),
      ...(str(flags, "hub") === undefined ? {} : { hubId: str(flags, "hub") as string }),
      ...(yield* parseKinds(command, str(flags, "kind"))),
    };
    const from = yield* timeFlag(command, flags, "since");
    const to = sub === "replay" ? yield* timeFlag(command, flags, "until") : undefined;
    if (from !== undefined && to !== undefined && to <= from) {
      return yield* Effect.fail(new UsageError({ message: `portway ${command}: --until must be later than --since` }));
    }
    const source = yield* resolveSource(flags, env);
    const json = flags["json"] === true;
    yield* withConnection(source, (nc) =>
      sub === "tail"
        ? printEvents(liveEventsOn(nc, { ...filter, stream: source.stream, ...(from === undefined ? {} : { since: from }) }), json, env)
        : printEvents(
            replayHistoryOn(nc, {
              ...filter,
              stream: source.stream,
              ...(from === undefined ? {} : { since: from }),
              ...(to === undefined ? {} : { until: to }),
            }),
            json,
            env,
          ).pipe(
            Effect.tap((n) => Effect.sync(() => (json || n > 0 ? undefined : void process.stderr.write("no events match\n")))),
          ),
    );
  });

export const runHistory = (argv: ReadonlyArray<string>, env: Env): Effect.Effect<void, EventsCommandError> =>
  Effect.gen(function* () {
    const flags = yield* parseCommandArgs("history", argv, [], historyExtras);
    if (flags["help"] === true) {
      process.stdout.write(historyHelp);
      return;
    }
    const edgeId = str(flags, "edge");
    if (edgeId === undefined) return yield* Effect.fail(new UsageError({ message: "portway history: --edge ID is required (see `portway history --help`)" }));
    const from = yield* timeFlag("history", flags, "since");
    const to = yield* timeFlag("history", flags, "until");
    const limitText = str(flags, "limit") ?? "50";
    if (!/^\d+$/.test(limitText)) {
      return yield* Effect.fail(new UsageError({ message: `portway history: --limit must be a whole number, got "${limitText}"` }));
    }
    const source = yield* resolveSource(flags, env);
    const history = yield* withConnection(source, (nc) =>
      replayHistoryOn(nc, {
        edgeId,
        stream: source.stream,
        ...(from === undefined ? {} : { since: from }),
        ...(to === undefined ? {} : { until: to }),
      }).pipe(
        Stream.runFold(new HistoryProjection(), (p, e) => {
          p.apply(e);
          return p;
        }),
        Effect.map((p) => p.view(edgeId)),
      ),
    );
    yield* write(
      flags["json"] === true
        ? `${JSON.stringify(history, null, 2)}\n`
        : formatHistory(history, { since: from, until: to, limit: Number(limitText) }),
    );
  });
