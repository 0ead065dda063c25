/**
 * The JetStream stream that holds the event log, created or brought up to date at hub start. Idempotent:
 * running it twice with the same options changes nothing; changed limits are applied with an update.
 */
import { Data, Effect } from "effect";
import {
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { ALL_EVENTS_SUBJECT } from "../events/subjects.js";

export const DEFAULT_STREAM_NAME = "PORTWAY_EVENTS";
/** Envelope/payload format version stamped in the stream metadata. */
export const EVENT_LOG_FORMAT = "1";

export interface EventStreamOptions {
  readonly name?: string;
  /** 1 (default) for a single server, 3 in a cluster. */
  readonly replicas?: number;
  /** Drop events older than this. Default 30 days. */
  readonly maxAgeMs?: number;
  /** Drop the oldest events beyond this many bytes. Default 10 GiB. */
  readonly maxBytes?: number;
  /** JetStream dedup horizon for message ids. Default 10 minutes. */
  readonly duplicateWindowMs?: number;
  /** Largest batch message accepted. Default 4 MiB (the publisher's batches stay well under). */
  readonly maxMsgSize?: number;
}

export const STREAM_DEFAULTS = {
  name: DEFAULT_STREAM_NAME,
  replicas: 1,
  maxAgeMs: 30 * 24 * 3600 * 1000,
  maxBytes: 10 * 1024 ** 3,
  duplicateWindowMs: 10 * 60 * 1000,
  maxMsgSize: 4 * 1024 * 1024,
} as const;

export class EventStreamSetupFailed extends Data.TaggedError("EventStreamSetupFailed")<{
  readonly stream: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `cannot set up JetStream stream ${this.stream}: ${this.reason}`;
  }
}

export class InvalidEventStreamOptions extends Data.TaggedError("InvalidEventStreamOptions")<{ readonly reason: string }> {
  override get message(): string {
    return `invalid event stream options: ${this.reason}`;
  }
}

const ms2ns = (ms: number): number => ms * 1_000_000;

export const resolveStreamOptions = (
  o: EventStreamOptions = {},
): Effect.Effect<Required<EventStreamOptions>, InvalidEventStreamOptions> => {
  const r = { ...STREAM_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) } as Required<EventStreamOptions>;
  if (!/^[A-Za-z0-9_-]+$/.test(r.name)) return Effect.fail(new InvalidEventStreamOptions({ reason: `stream name "${r.name}" must match [A-Za-z0-9_-]+` }));
  if (!Number.isInteger(r.replicas) || r.replicas < 1 || r.replicas > 5) return Effect.fail(new InvalidEventStreamOptions({ reason: `replicas must be 1..5, got ${r.replicas}` }));
  for (const k of ["maxAgeMs", "maxBytes", "duplicateWindowMs", "maxMsgSize"] as const) {
    if (!Number.isSafeInteger(r[k]) || r[k] <= 0) return Effect.fail(new InvalidEventStreamOptions({ reason: `${k} must be a positive integer, got ${r[k]}` }));
  }
  if (r.duplicateWindowMs > r.maxAgeMs) return Effect.fail(new InvalidEventStreamOptions({ reason: "duplicateWindowMs must not exceed maxAgeMs" }));
  return Effect.succeed(r);
};

/** The limits the hub owns; compared field by field to decide whether to update. */
export const eventStreamConfig = (o: Required<EventStreamOptions>): Partial<StreamConfig> & { name: string } => ({
  name: o.name,
  description: "Portway lifecycle events (docs/events.md)",
  subjects: [ALL_EVENTS_SUBJECT],
  retention: RetentionPolicy.Limits,
  storage: StorageType.File,
  discard: DiscardPolicy.Old,
  num_replicas: o.replicas,
  max_age: ms2ns(o.maxAgeMs),
  max_bytes: o.maxBytes,
  max_msg_size: o.maxMsgSize,
  duplicate_window: ms2ns(o.duplicateWindowMs),
  allow_direct: true,
  metadata: { "portway.format": EVENT_LOG_FORMAT },
});

const MANAGED_KEYS = [
  "subjects",
  "num_replicas",
  "max_age",
  "max_bytes",
  "max_msg_size",
  "duplicate_window",
  "allow_direct",
  "description",
] as const;

/** Differences between the wanted config and what the server has (empty: nothing to do). */
export const configDrift = (want: Partial<StreamConfig>, have: StreamConfig): ReadonlyArray<string> => {
  const drift: string[] = [];
  for (const k of MANAGED_KEYS) {
    if (JSON.stringify(want[k]) !== JSON.stringify(have[k])) drift.push(k);
  }
  if (have.metadata?.["portway.format"] !== want.metadata?.["portway.format"]) drift.push("metadata");
  return drift;
};

const reasonOf = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export interface EnsureResult {
  readonly action: "created" | "updated" | "unchanged";
  readonly info: StreamInfo;
  readonly drift: ReadonlyArray<string>;
}

export const ensureEventStream = (
  jsm: JetStreamManager,
  options: EventStreamOptions = {},
): Effect.Effect<EnsureResult, EventStreamSetupFailed | InvalidEventStreamOptions> =>
  Effect.gen(function* () {
    const o = yield* resolveStreamOptions(options);
    const want = eventStreamConfig(o);
    const fail = (reason: string) => new EventStreamSetupFailed({ stream: o.name, reason });
    const existing = yield* Effect.tryPromise({
      try: async () => {
        try {
          return await jsm.streams.info(o.name);
        } catch (e) {
          if ((e as { code?: number }).code === 404 || /stream not found/i.test(reasonOf(e))) return undefined;
          throw e;
        }
      },
      catch: (e) => fail(reasonOf(e)),
    });
    if (existing === undefined) {
      const info = yield* Effect.tryPromise({ try: () => jsm.streams.add(want), catch: (e) => fail(reasonOf(e)) });
      return { action: "created", info, drift: [] } as const;
    }
    if (existing.config.storage !== StorageType.File) {
      return yield* Effect.fail(fail(`it exists with ${existing.config.storage} storage; delete it or choose another name`));
    }
    const drift = configDrift(want, existing.config);
    if (drift.length === 0) return { action: "unchanged", info: existing, drift } as const;
    const info = yield* Effect.tryPromise({
      try: () => jsm.streams.update(o.name, { ...existing.config, ...want, metadata: { ...existing.config.metadata, ...want.metadata } }),
      catch: (e) => fail(`update of ${drift.join(", ")} refused: ${reasonOf(e)}`),
    });
    return { action: "updated", info, drift } as const;
  });
