/**
 * Hub liveness in `pw_<NAME>_hubs`: every hub rewrites its entry each `heartbeatMs` and deletes it on a clean
 * stop. A hub is alive while its last heartbeat is younger than `hubTimeoutMs`.
 */
import type { KV } from "@nats-io/kv";
import { Duration, Effect, Either, Schedule, type Scope } from "effect";
import { decodeEntry, encodeEntry, HubEntrySchema, type HubEntry } from "./buckets.js";
import { isBucketUnavailableError } from "./lease.js";

/** Alive: the heartbeat is younger than `hubTimeoutMs` (a clock skew into the future counts as alive). */
export const isAlive = (entry: Pick<HubEntry, "heartbeatAt">, nowMs: number, hubTimeoutMs: number): boolean =>
  nowMs - entry.heartbeatAt < hubTimeoutMs;

/** Every hub entry in the bucket (malformed ones are skipped and named in `problems`). */
export const readHubs = async (kv: KV): Promise<{ hubs: HubEntry[]; problems: string[] }> => {
  const hubs: HubEntry[] = [];
  const problems: string[] = [];
  const keys: string[] = [];
  for await (const key of await kv.keys()) keys.push(key);
  for (const key of keys) {
    const entry = await kv.get(key);
    if (entry === null || entry.operation !== "PUT") continue;
    const decoded = decodeEntry(HubEntrySchema, entry.value);
    if (Either.isRight(decoded)) hubs.push(decoded.right);
    else problems.push(`hub entry ${key}: ${decoded.left}`);
  }
  return { hubs, problems };
};

export interface HeartbeatOptions {
  readonly kv: KV;
  /** The entry to write at each heartbeat (read each time: the tunnel port is known only once listening). */
  readonly entry: () => Omit<HubEntry, "heartbeatAt" | "v">;
  readonly heartbeatMs: number;
  readonly log: (level: "warn" | "info", msg: string) => void;
}

export interface Heartbeat {
  /** ms since the epoch of the last successful write; 0 before the first. */
  readonly lastWrittenAt: () => number;
}

/**
 * How long the first heartbeat may wait for a forming cluster (100 ms, doubling, at most 1 s apart): a bucket
 * created a moment ago may have no stream leader yet, and JetStream answers "no responders", which nats.js reports
 * as JetStream not being enabled (`isBucketUnavailableError`).
 */
const FORMING_WAIT = Schedule.exponential(Duration.millis(100)).pipe(
  Schedule.either(Schedule.spaced(Duration.seconds(1))),
  Schedule.upTo(Duration.seconds(15)),
);

/**
 * Writes the hub entry now (waiting up to 15 s for a cluster that is still forming; fails the start when NATS refuses
 * it otherwise) and then every `heartbeatMs`; closing the scope stops the timer and deletes the entry (best effort:
 * a hub that cannot reach NATS just times out).
 */
export const startHeartbeat = (o: HeartbeatOptions): Effect.Effect<Heartbeat, Error, Scope.Scope> =>
  Effect.gen(function* () {
    let last = 0;
    let failing = false;
    let inFlight = false;
    const beat = async (): Promise<void> => {
      const now = Date.now();
      const entry = o.entry();
      await o.kv.put(entry.hubId, encodeEntry({ v: 1, ...entry, heartbeatAt: now }));
      last = now;
    };
    let waited = false;
    yield* Effect.tryPromise({ try: beat, catch: (e) => (e instanceof Error ? e : new Error(String(e))) }).pipe(
      Effect.tapError((error) =>
        Effect.sync(() => {
          if (waited || !isBucketUnavailableError(error)) return;
          waited = true;
          o.log("info", `cluster still forming (${error.message}); retrying the hub entry for up to 15 s`);
        }),
      ),
      Effect.retry({ schedule: FORMING_WAIT, while: isBucketUnavailableError }),
    );
    const timer = setInterval(() => {
      if (inFlight) return;
      inFlight = true;
      beat().then(
        () => {
          if (failing) o.log("info", "cluster heartbeat written again");
          failing = false;
        },
        (error: unknown) => {
          if (!failing) o.log("warn", `cluster heartbeat failed: ${error instanceof Error ? error.message : String(error)}`);
          failing = true;
        },
      ).finally(() => {
        inFlight = false;
      });
    }, o.heartbeatMs);
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        clearInterval(timer);
        const timeout = new Promise<void>((r) => setTimeout(r, 1000).unref());
        await Promise.race([o.kv.delete(o.entry().hubId).catch(() => undefined), timeout]);
      }),
    );
    return { lastWrittenAt: () => last };
  });
