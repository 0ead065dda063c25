/**
 * Rebuilding the hub's view from its event log after a restart. Whatever the previous run left open — hub
 * runs, tunnel sessions, TCP streams, UDP sessions — cannot still be open (the addon that carried it is
 * gone), so it is closed with reason `hubRestarted`: history never shows a stream that never ended.
 *
 * Pure: events in (log order), the view and the closing events out. An actor's events travel on different
 * subjects (`stream.opened` vs `stream.closed`), and the log keeps no order across subjects, so an actor's
 * end may come before its start: ended actors are remembered (bounded) and their late events ignored.
 * Memory is proportional to what is open plus that bounded memory, not to the length of the log.
 */
import { NOTICE_TYPES, type ActorKind, type EventData, type EventType } from "../events/catalog.js";
import { makeEvent, type DomainEvent } from "../events/envelope.js";
import { actorKey } from "../events/ids.js";
import { RecentKeys } from "./recent-keys.js";

export interface OpenSession {
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly remoteAddr: string | null;
  readonly connectedAtMs: number;
  readonly lastSeq: number;
}

export interface OpenStream {
  readonly kind: "stream" | "udp";
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly streamId: string;
  readonly edgePort: number;
  readonly clientAddr: string;
  readonly target: string | null;
  readonly openedAtMs: number;
  readonly lastSeq: number;
}

export interface OpenHubRun {
  readonly runId: string;
  readonly lastSeq: number;
  readonly lastTime: number;
}

export interface Recovery {
  /** The view as the log left it, before closing anything. */
  readonly openHubRuns: ReadonlyArray<OpenHubRun>;
  readonly openSessions: ReadonlyArray<OpenSession>;
  readonly openStreams: ReadonlyArray<OpenStream>;
  /** Append these, in order: streams and UDP sessions first, then tunnel sessions, then hub runs. */
  readonly closingEvents: ReadonlyArray<DomainEvent>;
  /** For the new run's `hub.recovered` (the caller adds how long recovery took). */
  readonly summary: Omit<EventData<"hub.recovered">, "durationMs">;
}

export interface RecoverOptions {
  readonly hubId: string;
  /** The run being started; its own events (if any) are left alone. */
  readonly currentRunId: string;
  /** When the closing events happen: now, at the new run's start. */
  readonly atMs: number;
  /** How many ended actors are remembered to ignore their events stored after the end. Default 200,000. */
  readonly rememberEnded?: number;
}

interface OpenActor {
  readonly kind: ActorKind;
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly streamId: string | null;
  readonly firstTime: number;
  lastSeq: number;
  lastTime: number;
  /** From `*.opened` / `edge.connected`; missing when that event is older than the log's retention. */
  opened: DomainEvent | null;
}

/** Events after which an actor can no longer be open. */
const TERMINAL: ReadonlySet<EventType> = new Set<EventType>([
  "hub.stopped",
  "edge.disconnected",
  "edge.authFailed",
  "edge.refused",
  "stream.closed",
  "udp.closed",
]);

const OPENING: ReadonlySet<EventType> = new Set<EventType>(["hub.started", "edge.connected", "stream.opened", "udp.opened"]);

const kindOf = (event: DomainEvent): ActorKind => event.type.slice(0, event.type.indexOf(".")) as ActorKind;

const durationUntil = (atMs: number, since: number): number => Math.max(0, Math.round(atMs - since));

export const recover = (events: Iterable<DomainEvent>, options: RecoverOptions): Recovery => {
  const open = new Map<string, OpenActor>();
  const ended = new RecentKeys(options.rememberEnded ?? 200_000);
  let replayed = 0;
  let previousRun: { runId: string; lastTime: number } | null = null;

  for (const event of events) {
    if (event.hubId !== options.hubId) continue;
    replayed += 1;
    // Notices (dropped events, refused or oversized UDP) belong to no lifecycle: nothing to close.
    if (NOTICE_TYPES.has(event.type)) continue;
    const kind = kindOf(event);
    if (kind === "hub") {
      if (event.sessionId === options.currentRunId) continue;
      if (previousRun === null || event.time >= previousRun.lastTime) {
        previousRun = { runId: event.sessionId, lastTime: event.time };
      }
    }
    const key = actorKey({ hubId: event.hubId, kind, sessionId: event.sessionId, streamId: event.streamId });
    if (TERMINAL.has(event.type)) {
      open.delete(key);
      ended.add(key);
      continue;
    }
    if (ended.has(key)) continue;
    const actor = open.get(key);
    if (actor === undefined) {
      open.set(key, {
        kind,
        edgeId: event.edgeId,
        sessionId: event.sessionId,
        streamId: event.streamId,
        firstTime: event.time,
        lastSeq: event.seq,
        lastTime: event.time,
        opened: OPENING.has(event.type) ? event : null,
      });
    } else {
      actor.lastSeq = Math.max(actor.lastSeq, event.seq);
      actor.lastTime = Math.max(actor.lastTime, event.time);
      if (OPENING.has(event.type)) actor.opened = event;
    }
  }

  const openHubRuns: OpenHubRun[] = [];
  const openSessions: OpenSession[] = [];
  const openStreams: OpenStream[] = [];
  const closeStreams: DomainEvent[] = [];
  const closeSessions: DomainEvent[] = [];
  const closeRuns: DomainEvent[] = [];
  const { hubId, atMs } = options;
  const time = Math.max(0, Math.round(atMs));

  for (const actor of open.values()) {
    const identity = { hubId, edgeId: actor.edgeId, sessionId: actor.sessionId, streamId: actor.streamId, seq: actor.lastSeq + 1, time };
    const since = actor.opened?.time ?? actor.firstTime;
    switch (actor.kind) {
      case "hub":
        openHubRuns.push({ runId: actor.sessionId, lastSeq: actor.lastSeq, lastTime: actor.lastTime });
        closeRuns.push(
          makeEvent({
            ...identity,
            type: "hub.stopped",
            data: { reason: "error", message: "the hub run ended without stopping; closed when the hub restarted" },
          }),
        );
        break;
      case "edge": {
        const connected = actor.opened?.type === "edge.connected" ? actor.opened.data : null;
        openSessions.push({
          edgeId: actor.edgeId,
          sessionId: actor.sessionId,
          remoteAddr: connected?.remoteAddr ?? null,
          connectedAtMs: since,
          lastSeq: actor.lastSeq,
        });
        closeSessions.push(
          makeEvent({
            ...identity,
            type: "edge.disconnected",
            data: {
              reason: "hubRestarted",
              message: "the hub restarted while this session was open",
              durationMs: durationUntil(atMs, since),
            },
          }),
        );
        break;
      }
      case "stream":
      case "udp": {
        const opened =
          actor.opened?.type === "stream.opened" || actor.opened?.type === "udp.opened" ? actor.opened.data : null;
        const where = { edgePort: opened?.edgePort ?? 0, clientAddr: opened?.clientAddr ?? "", target: opened?.target ?? null };
        openStreams.push({
          kind: actor.kind,
          edgeId: actor.edgeId,
          sessionId: actor.sessionId,
          streamId: actor.streamId ?? "",
          ...where,
          openedAtMs: since,
          lastSeq: actor.lastSeq,
        });
        const common = {
          ...where,
          bytesIn: 0,
          bytesOut: 0,
          durationMs: durationUntil(atMs, since),
          reason: "hubRestarted" as const,
          message: "the hub restarted while this was open; byte counts unknown",
        };
        closeStreams.push(
          actor.kind === "stream"
            ? makeEvent({ ...identity, type: "stream.closed", data: common })
            : makeEvent({ ...identity, type: "udp.closed", data: { ...common, packetsIn: 0, packetsOut: 0 } }),
        );
        break;
      }
    }
  }

  return {
    openHubRuns,
    openSessions,
    openStreams,
    closingEvents: [...closeStreams, ...closeSessions, ...closeRuns],
    summary: {
      previousRunId: previousRun?.runId ?? null,
      replayedEvents: replayed,
      sessionsClosed: closeSessions.length,
      streamsClosed: openStreams.filter((s) => s.kind === "stream").length,
      udpClosed: openStreams.filter((s) => s.kind === "udp").length,
    },
  };
};
