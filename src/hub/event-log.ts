/**
 * The hub's event log: where NATS comes from (the servers given, or an embedded nats-server under the data
 * dir, docs/adr/0005-nats-server-provisioning.md), the JetStream stream with the configured limits, and the
 * outbox-backed publisher (`src/nats/event-log.ts`). Scoped: closing the scope flushes what it can, leaves
 * the rest in the outbox, disconnects and stops the embedded server.
 */
import { join } from "node:path";
import { Data, Effect, type Scope } from "effect";
import type { HubConfig } from "../config/hub.js";
import { makeNatsClient, type InvalidNatsServers, type NatsClientService } from "../nats/connection.js";
import type { NatsServerBinaryMissing, NatsServerStartFailed } from "../nats/embedded-server.js";
import { makeEventLog, type EventLogService } from "../nats/event-log.js";
import type { EventStreamSetupFailed, InvalidEventStreamOptions } from "../nats/event-stream.js";
import type { OutboxIoError } from "../nats/outbox.js";
import { superviseEmbeddedServer } from "../nats/provision.js";
import type { NatsJetStreamUnavailable, NatsServerTooOld } from "../nats/server-version.js";
import { lockDataDir, type DataDirInUse, type DataDirUnusable } from "./data-dir-lock.js";

/** Why the event log (and so the hub) could not start; each names its fix in its message. */
export type EventLogStartError =
  | DataDirInUse
  | DataDirUnusable
  | InvalidNatsServers
  | NatsServerBinaryMissing
  | NatsServerStartFailed
  | NatsServerTooOld
  | NatsJetStreamUnavailable
  | EventStreamSetupFailed
  | InvalidEventStreamOptions
  | OutboxIoError;

export type EventLogLevel = "info" | "warn" | "error";

export interface HubEventLogSettings {
  readonly hubId: string;
  readonly runId: string;
  readonly dataDir: string;
  /** External servers; undefined → the embedded server. */
  readonly nats: ReadonlyArray<string> | undefined;
  readonly events: HubConfig["events"];
  readonly log: (level: EventLogLevel, msg: string) => void;
}

/** Where the event log's NATS is and what it is connected to. */
export interface HubEventLogConnection {
  readonly nats: "embedded" | "external";
  /** Server URLs the hub connects to (the embedded server's loopback URL when embedded). */
  readonly servers: ReadonlyArray<string>;
  readonly stream: string;
  /** `<dataDir>/nats` when embedded. */
  readonly storeDir: string | null;
  readonly client: NatsClientService;
  readonly log: EventLogService;
}

/** State of the start-up recovery (closing what the previous run left open). */
export type RecoveryStatus =
  | { readonly state: "pending" }
  | {
      readonly state: "done";
      readonly previousRunId: string | null;
      readonly replayedEvents: number;
      readonly sessionsClosed: number;
      readonly streamsClosed: number;
      readonly udpClosed: number;
      readonly runsClosed: number;
      readonly durationMs: number;
    }
  | { readonly state: "failed"; readonly error: string };

/** Event log health, part of the hub's status. */
export interface HubEventsStatus {
  readonly enabled: true;
  readonly nats: "embedded" | "external";
  readonly servers: ReadonlyArray<string>;
  readonly stream: string;
  /** Connected to NATS and the stream is set up: events are being published directly. */
  readonly connected: boolean;
  readonly serverVersion: string | null;
  /** `outbox` while NATS is (or was recently) unreachable and events go to the disk outbox first. */
  readonly mode: "direct" | "outbox";
  readonly outbox: { readonly records: number; readonly bytes: number; readonly maxBytes: number; readonly full: boolean };
  /** What the outbox held when this run opened it (left by a previous run); flushed before recovery runs. */
  readonly outboxAtStart: { readonly records: number; readonly events: number; readonly bytes: number };
  readonly acceptedEvents: number;
  readonly appendedEvents: number;
  /** Events lost because the outbox was full or could not be written (also logged, and a `hub.eventsDropped` event). */
  readonly droppedEvents: number;
  readonly lastError: string | null;
  /** Why the stream could not be set up after a reconnect (server too old, stream refused). */
  readonly setupError: string | null;
  readonly recovery: RecoveryStatus;
}

export type HubEventsStatusOrOff = HubEventsStatus | { readonly enabled: false };

/** Connects (or starts the embedded server), sets up the stream and opens the outbox. */
export const openHubEventLog = (
  s: HubEventLogSettings,
): Effect.Effect<HubEventLogConnection, EventLogStartError, Scope.Scope> =>
  Effect.gen(function* () {
    yield* lockDataDir(s.dataDir);
    const name = `portway hub ${s.hubId}`;
    let connection: Pick<HubEventLogConnection, "nats" | "servers" | "storeDir" | "client">;
    if (s.nats !== undefined && s.nats.length > 0) {
      const client = yield* makeNatsClient({ servers: s.nats, name });
      connection = { nats: "external", servers: s.nats, storeDir: null, client };
    } else {
      const server = yield* superviseEmbeddedServer({ dataDir: s.dataDir }, s.log);
      const client = yield* makeNatsClient({ servers: [server.url], name });
      connection = { nats: "embedded", servers: [server.url], storeDir: join(s.dataDir, "nats"), client };
    }
    const log = yield* makeEventLog(connection.client, {
      hubId: s.hubId,
      runId: s.runId,
      dataDir: s.dataDir,
      stream: {
        name: s.events.stream,
        replicas: s.events.replicas,
        maxAgeMs: s.events.maxAge,
        maxBytes: s.events.maxBytes,
        duplicateWindowMs: s.events.duplicateWindow,
      },
      outbox: { maxBytes: s.events.outboxMaxBytes },
      log: s.log,
    });
    return { ...connection, stream: s.events.stream, log };
  });

export const eventsStatusOf = (c: HubEventLogConnection, recovery: RecoveryStatus): HubEventsStatus => {
  const st = c.log.status();
  return {
    enabled: true,
    nats: c.nats,
    servers: c.servers,
    stream: c.stream,
    connected: st.natsUp,
    serverVersion: st.serverVersion,
    mode: st.mode,
    outbox: { records: st.outbox.records, bytes: st.outbox.bytes, maxBytes: st.outbox.maxBytes, full: st.outbox.full },
    outboxAtStart: { records: st.recovered.records, events: st.recovered.events, bytes: st.recovered.bytes },
    acceptedEvents: st.acceptedEvents,
    appendedEvents: st.appendedEvents,
    droppedEvents: st.droppedEvents,
    lastError: st.lastError,
    setupError: st.setupError,
    recovery,
  };
};

/** An event-log operation on a hub running with `events: false`. */
export class EventLogDisabled extends Data.TaggedError("EventLogDisabled")<{ readonly hubId: string }> {
  override get message(): string {
    return `hub ${this.hubId} runs without an event log (events: false / --no-events)`;
  }
}
