/**
 * Hub liveness in `pw_<NAME>_hubs`: every hub rewrites its entry each `heartbeatMs` and deletes it on a clean
 * stop. A hub is alive while its last heartbeat is younger than `hubTimeoutMs`.
 */
import type { KV } from "@nats-io/kv";
import { Effect, Either, type Scope } from "effect";
import { decodeEntry, encodeEntry, HubEntrySchema, type HubEntry } from "./buckets.js";

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
 * Writes the hub entry now (fails the start when NATS refuses it) and then every `heartbeatMs`; closing the
 * scope stops the timer and deletes the entry (best effort: a hub that cannot reach NATS just times out).
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
    yield* Effect.tryPromise({ try: beat, catch: (e) => (e instanceof Error ? e : new Error(String(e))) });
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
