/**
 * Reading the event log back: a finite replay of history (`replayHistory`) and a live feed (`liveEvents`),
 * each as an Effect Stream and as an async iterable. Filters are subject filters (`filter_subjects`,
 * hence the 2.10 minimum), so only matching messages leave the server.
 *
 * Time: `since`/`until` are compared with each event's own `time`. Storage time is never earlier than the
 * event time, so reading starts at `since` by storage time; events flushed late from an outbox are stored
 * after `until`, so a replay reads to the end of the stream unless `maxLatenessMs` bounds how late an
 * event may be stored and still count.
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Data, Effect, Either, Stream } from "effect";
import type { DomainEvent } from "../events/envelope.js";
import { filterSubjects, type EventFilter } from "../events/subjects.js";
import { upcastEvent, type EventDecodeError, type UnsupportedEventVersion } from "../events/upcast.js";
import { NatsClient } from "./connection.js";
import { DEFAULT_STREAM_NAME } from "./event-stream.js";
import { HistoryProjection, type EdgeHistory } from "./history.js";

export class ReplayFailed extends Data.TaggedError("ReplayFailed")<{ readonly reason: string }> {
  override get message(): string {
    return `event replay failed: ${this.reason}`;
  }
}

export type ReplayError = ReplayFailed | EventDecodeError | UnsupportedEventVersion;

export interface ReplayOptions extends EventFilter {
  /** Inclusive, epoch ms or Date. */
  readonly since?: number | Date;
  /** Exclusive, epoch ms or Date. */
  readonly until?: number | Date;
  readonly stream?: string;
  /** Stop once messages are stored this long after `until` (default: read to the end of the stream). */
  readonly maxLatenessMs?: number;
  /** What to do with an event that does not decode: fail the replay (default) or skip it. */
  readonly onInvalid?: "fail" | "skip";
  /** Stops the iteration (even while it waits for the server); the Stream forms use it on interruption. */
  readonly signal?: AbortSignal;
}

export interface LiveOptions extends EventFilter {
  /** Start with events stored from this time on (default: only new ones). */
  readonly since?: number | Date;
  readonly stream?: string;
  readonly onInvalid?: "fail" | "skip";
  /** Stops the iteration (even while it waits for the next event); the Stream forms use it on interruption. */
  readonly signal?: AbortSignal;
}

/** Closes `messages` when `signal` aborts; returns the listener's remover. */
const closeOnAbort = (signal: AbortSignal | undefined, messages: { close(): Promise<void | Error> }): (() => void) => {
  if (signal === undefined) return () => undefined;
  const onAbort = () => void messages.close().catch(() => undefined);
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  return () => signal.removeEventListener("abort", onAbort);
};

const ms = (t: number | Date | undefined): number | undefined => (t instanceof Date ? t.getTime() : t);
const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const decoder = new TextDecoder();

/** Decodes one batch message, applying type filters and dedup; throws tagged errors. */
function* eventsOf(
  msg: JsMsg,
  f: EventFilter & { onInvalid?: "fail" | "skip" },
  seen: Set<string>,
  since: number | undefined,
  until: number | undefined,
): Generator<DomainEvent> {
  let items: unknown;
  try {
    items = JSON.parse(decoder.decode(msg.data));
  } catch (e) {
    if (f.onInvalid === "skip") return;
    throw new ReplayFailed({ reason: `message ${msg.seq} on ${msg.subject} is not JSON: ${errMsg(e)}` });
  }
  for (const raw of Array.isArray(items) ? items : [items]) {
    const r = upcastEvent(raw);
    if (Either.isLeft(r)) {
      if (f.onInvalid === "skip") continue;
      throw r.left;
    }
    const e = r.right;
    if (since !== undefined && e.time < since) continue;
    if (until !== undefined && e.time >= until) continue;
    if (seen.has(e.id)) continue;
    seen.add(e.id);
    yield e;
  }
}

/** History between since and until, in stream order. */
export async function* replayHistoryIterable(nc: NatsConnection, opts: ReplayOptions = {}): AsyncGenerator<DomainEvent> {
  const stream = opts.stream ?? DEFAULT_STREAM_NAME;
  const since = ms(opts.since);
  const until = ms(opts.until);
  let jsm;
  let name: string;
  let pending: number;
  let lastSeq: number;
  try {
    jsm = await jetstreamManager(nc, { checkAPI: false });
    // The end of the stream now: a replay under constant appends still ends.
    lastSeq = (await jsm.streams.info(stream)).state.last_seq;
    // An ephemeral pull consumer (not ordered) because its info tells how many messages match right now.
    const info = await jsm.consumers.add(stream, {
      filter_subjects: [...filterSubjects(opts)],
      ack_policy: AckPolicy.None,
      mem_storage: true,
      inactive_threshold: 30_000_000_000,
      ...(since !== undefined
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(since).toISOString() }
        : { deliver_policy: DeliverPolicy.All }),
    });
    name = info.name;
    pending = info.num_pending;
  } catch (e) {
    throw new ReplayFailed({ reason: `cannot open a consumer on ${stream}: ${errMsg(e)}` });
  }
  const seen = new Set<string>();
  try {
    if (pending === 0) return;
    if (opts.signal?.aborted === true) return;
    const consumer = await jetstream(nc).consumers.get(stream, name);
    const messages = await consumer.consume({ max_messages: 256 });
    const off = closeOnAbort(opts.signal, messages);
    try {
      for await (const m of messages) {
        if (opts.maxLatenessMs !== undefined && until !== undefined && m.info.timestampNanos / 1e6 > until + opts.maxLatenessMs) {
          return;
        }
        yield* eventsOf(m, opts, seen, since, until);
        if (m.info.pending === 0 || m.seq >= lastSeq) return;
      }
    } finally {
      off();
      await messages.close().catch(() => undefined);
    }
  } finally {
    await jsm.consumers.delete(stream, name).catch(() => undefined);
  }
}

/** Events as they are appended (and, with `since`, from that storage time on). Never ends by itself. */
export async function* liveEventsIterable(nc: NatsConnection, opts: LiveOptions = {}): AsyncGenerator<DomainEvent> {
  const stream = opts.stream ?? DEFAULT_STREAM_NAME;
  const since = ms(opts.since);
  let messages;
  try {
    const consumer = await jetstream(nc).consumers.get(stream, {
      filter_subjects: [...filterSubjects(opts)],
      ...(since !== undefined
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(since).toISOString() }
        : { deliver_policy: DeliverPolicy.New }),
    });
    messages = await consumer.consume({ max_messages: 256 });
  } catch (e) {
    throw new ReplayFailed({ reason: `cannot subscribe to ${stream}: ${errMsg(e)}` });
  }
  const off = closeOnAbort(opts.signal, messages);
  const seen = new Set<string>();
  try {
    for await (const m of messages) {
      yield* eventsOf(m, opts, seen, since, undefined);
      // Dedup only needs to cover the re-publish horizon; keep memory bounded on a long-lived feed.
      if (seen.size > 200_000) seen.clear();
    }
  } finally {
    off();
    await messages.close().catch(() => undefined);
  }
}

export const toReplayError = (e: unknown): ReplayError =>
  typeof e === "object" && e !== null && "_tag" in e &&
  ["ReplayFailed", "EventDecodeError", "UnsupportedEventVersion"].includes((e as { _tag: string })._tag)
    ? (e as ReplayError)
    : new ReplayFailed({ reason: errMsg(e) });

/**
 * An iterable as a Stream that can be interrupted while the iterable waits for the server: interruption
 * aborts the iterable's signal (closing its consumer) instead of waiting for its next value.
 */
const abortableStream = (
  iterate: (signal: AbortSignal) => AsyncIterable<DomainEvent>,
): Stream.Stream<DomainEvent, ReplayError> =>
  Stream.asyncScoped<DomainEvent, ReplayError>((emit) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const ctl = new AbortController();
        void (async () => {
          try {
            for await (const e of iterate(ctl.signal)) {
              if (ctl.signal.aborted) return;
              await emit.single(e);
            }
            if (!ctl.signal.aborted) await emit.end();
          } catch (e) {
            if (!ctl.signal.aborted) await emit.fail(toReplayError(e));
          }
        })();
        return ctl;
      }),
      (ctl) => Effect.sync(() => ctl.abort()),
    ),
  );

/** `replayHistoryIterable` as a Stream over a given connection. */
export const replayHistoryOn = (nc: NatsConnection, opts: ReplayOptions = {}): Stream.Stream<DomainEvent, ReplayError> =>
  abortableStream((signal) => replayHistoryIterable(nc, { ...opts, signal }));

/** `liveEventsIterable` as a Stream over a given connection. */
export const liveEventsOn = (nc: NatsConnection, opts: LiveOptions = {}): Stream.Stream<DomainEvent, ReplayError> =>
  abortableStream((signal) => liveEventsIterable(nc, { ...opts, signal }));

export const replayHistory = (opts: ReplayOptions = {}): Stream.Stream<DomainEvent, ReplayError, NatsClient> =>
  Stream.unwrap(Effect.map(Effect.flatMap(NatsClient, (c) => c.connection), (nc) => replayHistoryOn(nc, opts)));

export const liveEvents = (opts: LiveOptions = {}): Stream.Stream<DomainEvent, ReplayError, NatsClient> =>
  Stream.unwrap(Effect.map(Effect.flatMap(NatsClient, (c) => c.connection), (nc) => liveEventsOn(nc, opts)));

/** The history projection of one edge over a time range, read from the log. */
export const edgeHistory = (
  opts: Omit<ReplayOptions, "edgeId" | "kinds" | "types"> & { readonly edgeId: string },
): Effect.Effect<EdgeHistory, ReplayError, NatsClient> =>
  Stream.runFold(replayHistory(opts), new HistoryProjection(), (p, e) => {
    p.apply(e);
    return p;
  }).pipe(Effect.map((p) => p.view(opts.edgeId)));
