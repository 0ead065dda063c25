/**
 * A restarted hub rebuilds its view from the event log and closes what the previous run left open (reason
 * `hubRestarted`), then logs `hub.recovered` (docs/events.md). Runs in the background after the hub started:
 * the data path and `start()` never wait for it.
 *
 * 1. Wait until the outbox the previous run left behind is flushed (its events must be in the log first).
 * 2. Read this hub's `hub.*` events (one handful per run) to find the window to replay: from the start of
 *    the newest earlier run that completed a recovery (everything before it was closed by that recovery),
 *    or from the beginning when none did.
 * 3. Replay this hub's events in that window, keeping only actors that have not ended (memory follows what
 *    is open), and hand them to the pure `recover()`; append its closing events.
 *
 * Events of the current run are stored concurrently (the hub is already serving): they are recognised by
 * their session ids, which the caller records as it appends them (`isOwnSession`).
 */
import { Data, Duration, Effect, Schedule } from "effect";
import { recover } from "../actors/recover.js";
import { RecentKeys } from "../actors/recent-keys.js";
import { NOTICE_TYPES, type ActorKind } from "../events/catalog.js";
import type { DomainEvent } from "../events/envelope.js";
import { actorKey } from "../events/ids.js";
import type { NatsClientService } from "../nats/connection.js";
import type { EventLogService } from "../nats/event-log.js";
import { replayHistoryIterable } from "../nats/replay.js";

export class RecoveryFailed extends Data.TaggedError("RecoveryFailed")<{ readonly reason: string }> {
  override get message(): string {
    return `recovery from the event log failed: ${this.reason}`;
  }
}

export interface RecoveryOutcome {
  readonly previousRunId: string | null;
  /** Events of this hub read from the log (in the replay window). */
  readonly replayedEvents: number;
  readonly sessionsClosed: number;
  readonly streamsClosed: number;
  readonly udpClosed: number;
  /** Earlier runs that never logged `hub.stopped` (crashed or killed). */
  readonly runsClosed: number;
  /** Start of the replay window (epoch ms); null = the whole log. */
  readonly since: number | null;
  readonly durationMs: number;
  /** The closing events, appended to the event log by `recoverFromLog`. */
  readonly closingEvents: ReadonlyArray<DomainEvent>;
}

export interface RecoverFromLogOptions {
  readonly hubId: string;
  readonly runId: string;
  readonly stream: string;
  readonly client: NatsClientService;
  readonly log: EventLogService;
  /** True for sessions of the current run (recorded as its events are appended). */
  readonly isOwnSession: (sessionId: string) => boolean;
  readonly now?: () => number;
  /** Events stored this long before a run's first event still count as that run's (clock jitter). Default 5 s. */
  readonly marginMs?: number;
}

const TERMINAL = new Set<string>(["hub.stopped", "edge.disconnected", "edge.authFailed", "edge.refused", "stream.closed", "udp.closed"]);
const kindOf = (e: DomainEvent): ActorKind => e.type.slice(0, e.type.indexOf(".")) as ActorKind;
const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

interface RunInfo {
  start: number;
  recovered: boolean;
}

/** Runs of this hub as its `hub.*` events tell (excluding the current one and the publisher's own actor). */
const readRuns = async (
  nc: Parameters<typeof replayHistoryIterable>[0],
  opts: RecoverFromLogOptions,
): Promise<Map<string, RunInfo>> => {
  const runs = new Map<string, RunInfo>();
  for await (const e of replayHistoryIterable(nc, { hubId: opts.hubId, edgeId: null, kinds: ["hub"], stream: opts.stream, onInvalid: "skip" })) {
    if (e.sessionId === opts.runId || e.type === "hub.eventsDropped") continue;
    const run = runs.get(e.sessionId) ?? { start: e.time, recovered: false };
    run.start = Math.min(run.start, e.time);
    if (e.type === "hub.recovered") run.recovered = true;
    runs.set(e.sessionId, run);
  }
  return runs;
};

/** Recovery as described above; fails only when the log cannot be read. */
export const recoverFromLog = (opts: RecoverFromLogOptions): Effect.Effect<RecoveryOutcome, RecoveryFailed> =>
  Effect.gen(function* () {
    const now = opts.now ?? Date.now;
    // 1. The previous run's outbox first: until then the log misses some of its events.
    yield* Effect.sync(() => opts.log.status()).pipe(
      Effect.repeat({ schedule: Schedule.spaced(Duration.millis(50)), until: (s) => s.mode === "direct" && s.natsUp }),
    );
    const nc = yield* opts.client.connection;
    const started = now();
    const isOwn = (sessionId: string): boolean =>
      sessionId === opts.runId || sessionId.startsWith(`${opts.runId}-auth-`) || sessionId.startsWith(`${opts.runId}.`) || opts.isOwnSession(sessionId);

    const outcome = yield* Effect.tryPromise({
      try: async (): Promise<RecoveryOutcome> => {
        // 2. The window.
        const runs = await readRuns(nc, opts);
        let since: number | null = null;
        let previous: { runId: string; start: number } | null = null;
        for (const [runId, run] of runs) {
          if (run.recovered && (since === null || run.start > since)) since = run.start;
          if (previous === null || run.start > previous.start) previous = { runId, start: run.start };
        }
        const from = since === null ? undefined : Math.max(0, since - (opts.marginMs ?? 5_000));

        // 3. Replay, keeping only actors that have not ended.
        const pending = new Map<string, DomainEvent[]>();
        const ended = new RecentKeys(200_000);
        let replayed = 0;
        for await (const e of replayHistoryIterable(nc, {
          hubId: opts.hubId,
          stream: opts.stream,
          onInvalid: "skip",
          ...(from === undefined ? {} : { since: from }),
        })) {
          if (isOwn(e.sessionId)) continue;
          replayed += 1;
          if (NOTICE_TYPES.has(e.type)) continue;
          const key = actorKey({ hubId: e.hubId, kind: kindOf(e), sessionId: e.sessionId, streamId: e.streamId });
          if (TERMINAL.has(e.type)) {
            pending.delete(key);
            ended.add(key);
          } else if (!ended.has(key)) {
            const list = pending.get(key);
            if (list === undefined) pending.set(key, [e]);
            else list.push(e);
          }
        }
        const open: DomainEvent[] = [];
        for (const list of pending.values()) open.push(...list.sort((a, b) => a.seq - b.seq));
        const result = recover(open, { hubId: opts.hubId, currentRunId: opts.runId, atMs: now() });
        return {
          previousRunId: previous?.runId ?? null,
          replayedEvents: replayed,
          sessionsClosed: result.summary.sessionsClosed,
          streamsClosed: result.summary.streamsClosed,
          udpClosed: result.summary.udpClosed,
          runsClosed: result.openHubRuns.length,
          since: from ?? null,
          durationMs: Math.max(0, now() - started),
          closingEvents: result.closingEvents,
        };
      },
      catch: (e) => new RecoveryFailed({ reason: errMsg(e) }),
    });
    opts.log.appendAll(outcome.closingEvents);
    return outcome;
  });
