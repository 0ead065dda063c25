/**
 * The hub's event log as one Effect service: server check, stream setup, outbox and batching publisher
 * over the NatsClient. `append` is synchronous and never waits for NATS.
 *
 * At start, if NATS is reachable, a too-old server or a stream that cannot be set up fails the layer with
 * a clear error. If NATS is not reachable yet, the layer starts anyway (events go to the outbox) and the
 * same checks run on the first connection and after every reconnect; failures then show in status().
 */
import { join } from "node:path";
import { Context, Effect, Layer } from "effect";
import type { DomainEvent } from "../events/envelope.js";
import { NatsClient, type NatsClientService, type NatsConnection } from "./connection.js";
import {
  ensureEventStream,
  resolveStreamOptions,
  type EventStreamOptions,
  type EventStreamSetupFailed,
  type InvalidEventStreamOptions,
} from "./event-stream.js";
import { Outbox, OutboxIoError, type FsyncPolicy, type OutboxRecovery } from "./outbox.js";
import { EventPublisher, type JetStreamSink, type PublisherOptions, type PublisherStatus } from "./publisher.js";
import { checkServerInfo, type NatsJetStreamUnavailable, type NatsServerTooOld } from "./server-version.js";
import { jetstreamManager } from "@nats-io/jetstream";

export interface EventLogOptions {
  readonly hubId: string;
  readonly runId: string;
  /** The outbox lives in `<dataDir>/outbox`. */
  readonly dataDir: string;
  readonly stream?: EventStreamOptions;
  readonly outbox?: { readonly maxBytes?: number; readonly segmentBytes?: number; readonly fsync?: FsyncPolicy };
  readonly publisher?: Omit<PublisherOptions, "hubId" | "runId" | "log">;
  readonly log?: (level: "info" | "warn" | "error", msg: string) => void;
}

export interface EventLogStatus extends PublisherStatus {
  readonly stream: string;
  readonly serverVersion: string | null;
  readonly setupError: string | null;
  readonly recovered: OutboxRecovery;
}

export interface EventLogService {
  readonly append: (event: DomainEvent) => void;
  readonly appendAll: (events: Iterable<DomainEvent>) => void;
  readonly status: () => EventLogStatus;
  readonly metrics: () => Record<string, number>;
  /** Every accepted event is acknowledged or safely in the outbox. */
  readonly flush: Effect.Effect<void>;
  /** Every accepted event is acknowledged by JetStream (waits while NATS is down). */
  readonly whenIdle: Effect.Effect<void>;
}

export class EventLog extends Context.Tag("portway/EventLog")<EventLog, EventLogService>() {}

type SetupError = NatsServerTooOld | NatsJetStreamUnavailable | EventStreamSetupFailed | InvalidEventStreamOptions;

const defaultLog = (level: "info" | "warn" | "error", msg: string): void => {
  if (level !== "info") console.error(`[events] ${msg}`);
};

/** Server check + stream setup on one connection. */
const prepare = (nc: NatsConnection, stream: EventStreamOptions): Effect.Effect<void, SetupError> =>
  Effect.gen(function* () {
    yield* checkServerInfo(nc.info);
    const jsm = yield* Effect.promise(() => jetstreamManager(nc, { checkAPI: false }));
    yield* ensureEventStream(jsm, stream);
  });

/** Backoff of the stream setup retried after a failure while connected. */
const RETRY_SETUP_MIN_MS = 250;
const RETRY_SETUP_MAX_MS = 5000;

export const makeEventLog = (client: NatsClientService, opts: EventLogOptions) =>
  Effect.gen(function* () {
    const log = opts.log ?? defaultLog;
    const streamOpts = yield* resolveStreamOptions(opts.stream);
    let ready = false;
    let setupError: string | null = null;
    let serverVersion: string | null = null;
    const upListeners = new Set<() => void>();

    const runSetup = (nc: NatsConnection): Effect.Effect<void, SetupError> =>
      prepare(nc, streamOpts).pipe(
        Effect.tap(() =>
          Effect.sync(() => {
            serverVersion = nc.info?.version ?? null;
            setupError = null;
            ready = true;
            for (const l of upListeners) l();
          }),
        ),
        Effect.tapError((e) =>
          Effect.sync(() => {
            setupError = e.message;
            ready = false;
            log("error", `event log not ready: ${e.message}`);
          }),
        ),
      );

    // Reachable now: a bad server fails the start, loudly and at once.
    const now = client.current();
    if (now) yield* runSetup(now);

    let setupRunning = false;
    let retryTimer: NodeJS.Timeout | undefined;
    let retryDelayMs = RETRY_SETUP_MIN_MS;
    const setupInBackground = (): void => {
      const nc = client.current();
      if (!nc || setupRunning) return;
      setupRunning = true;
      void Effect.runPromise(Effect.either(runSetup(nc))).then((result) => {
        setupRunning = false;
        if (result._tag === "Right") {
          retryDelayMs = RETRY_SETUP_MIN_MS;
          return;
        }
        // Still connected but the setup failed (e.g. a timeout while a JetStream cluster elects a new stream
        // leader after losing a node): try again, backing off, instead of waiting for the next reconnect.
        if (client.isConnected() && retryTimer === undefined) {
          retryTimer = setTimeout(() => {
            retryTimer = undefined;
            if (!ready) setupInBackground();
          }, retryDelayMs);
          retryTimer.unref();
          retryDelayMs = Math.min(retryDelayMs * 2, RETRY_SETUP_MAX_MS);
        }
      });
    };
    yield* Effect.addFinalizer(() => Effect.sync(() => clearTimeout(retryTimer)));
    const offStatus = client.onStatus((s) => {
      if (s.type === "disconnected" || s.type === "closed") ready = false;
      if (s.type === "connected" || s.type === "reconnected") setupInBackground();
    });
    yield* Effect.addFinalizer(() => Effect.sync(offStatus));

    const sink: JetStreamSink = {
      isUp: () => ready && client.isConnected(),
      publish: async (subject, payload, msgId, timeoutMs) => {
        const js = client.jetstream();
        if (!js) throw new Error("not connected to NATS");
        const ack = await js.publish(subject, payload, { msgID: msgId, timeout: timeoutMs });
        return { duplicate: ack.duplicate };
      },
      onUp: (l) => {
        upListeners.add(l);
        return () => upListeners.delete(l);
      },
    };

    const { outbox, recovery } = yield* Effect.tryPromise({
      try: () => Outbox.open({ dir: join(opts.dataDir, "outbox"), ...opts.outbox, log }),
      catch: (e) => (e instanceof OutboxIoError ? e : new OutboxIoError({ op: "open", cause: e })),
    });
    if (recovery.records > 0) {
      log("info", `event log: outbox holds ${recovery.events} events in ${recovery.records} messages from a previous run; flushing when NATS is up`);
    }
    const publisher = yield* Effect.acquireRelease(
      Effect.sync(() => new EventPublisher({ ...opts.publisher, hubId: opts.hubId, runId: opts.runId, log }, sink, outbox)),
      (p) => Effect.promise(() => p.close()),
    );

    const service: EventLogService = {
      append: (e) => publisher.append(e),
      appendAll: (es) => publisher.appendAll(es),
      status: () => ({ ...publisher.status(), stream: streamOpts.name, serverVersion, setupError, recovered: recovery }),
      metrics: () => publisher.metrics(),
      flush: Effect.promise(() => publisher.flush()),
      whenIdle: Effect.promise(() => publisher.whenIdle()),
    };
    return service;
  });

export const layer = (opts: EventLogOptions): Layer.Layer<EventLog, SetupError | OutboxIoError, NatsClient> =>
  Layer.scoped(EventLog, Effect.flatMap(NatsClient, (client) => makeEventLog(client, opts)));
