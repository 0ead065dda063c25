/**
 * After a takeover, the new owner closes in the log what the dead hub's session had open for the edge
 * (docs/events.md, "HA: events one hub writes about another hub's actors"). The same job a restarted hub does
 * for itself (`src/hub/recovery.ts`), reusing the pure `recover()` over the dead session's events, with
 * reason `hubLost` and the dead hub's identity in the envelope.
 *
 * Ids are deterministic (actor identity + seq after the last one in the log) and every event is published
 * alone with its id as `Nats-Msg-Id`: two hubs closing the same session store one copy.
 */
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { recover } from "../actors/recover.js";
import type { ActorKind } from "../events/catalog.js";
import { makeEvent, type DomainEvent } from "../events/envelope.js";
import { subjectOf } from "../events/subjects.js";
import { replayHistoryIterable } from "../nats/replay.js";
import type { OwnerEntry } from "./lease.js";

export interface TakeoverFacts {
  /** The previous owner's entry (the dead hub's run and session). */
  readonly previous: OwnerEntry;
  readonly toHubId: string;
  readonly toSessionId: string;
  readonly atMs: number;
}

export interface TakeoverSummary {
  readonly streamsClosed: number;
  readonly udpClosed: number;
  readonly sessionClosed: boolean;
  readonly gapMs: number;
  readonly events: ReadonlyArray<DomainEvent>;
}

const kindOf = (e: DomainEvent): ActorKind => e.type.slice(0, e.type.indexOf(".")) as ActorKind;

/**
 * Pure: the dead session's events (any order, any hub — others are ignored) → the events that close it.
 * Streams and UDP sessions first (reason hubLost), then `edge.failedOver` and `edge.disconnected(hubLost)`
 * on the dead session. A session already ended in the log gets no session events (its streams still close).
 */
export const takeoverEvents = (sessionEvents: Iterable<DomainEvent>, facts: TakeoverFacts): TakeoverSummary => {
  const { previous: p, atMs } = facts;
  const writtenBy = facts.toHubId;
  const mine: DomainEvent[] = [];
  let sessionLastSeq = 0;
  let sessionEnded = false;
  let connectedAt: number | null = null;
  for (const e of sessionEvents) {
    if (e.hubId !== p.hubId || e.sessionId !== p.sessionId) continue;
    mine.push(e);
    if (kindOf(e) === "edge") {
      sessionLastSeq = Math.max(sessionLastSeq, e.seq);
      if (e.type === "edge.disconnected" || e.type === "edge.authFailed") sessionEnded = true;
      if (e.type === "edge.connected") connectedAt = e.time;
    }
  }
  mine.sort((a, b) => a.seq - b.seq);
  const r = recover(mine, { hubId: p.hubId, currentRunId: facts.toSessionId, atMs });
  const gapMs = Math.max(0, Math.round(atMs - p.renewedAt));
  const lost = `hub ${p.hubId} was lost; closed by hub ${facts.toHubId}, which took edge ${p.edgeId} over`;
  const out: DomainEvent[] = [];
  for (const e of r.closingEvents) {
    if (e.type === "stream.closed") {
      out.push({ ...e, data: { ...e.data, reason: "hubLost", message: `${lost}; byte counts unknown`, writtenBy } });
    } else if (e.type === "udp.closed") {
      out.push({ ...e, data: { ...e.data, reason: "hubLost", message: `${lost}; byte counts unknown`, writtenBy } });
    }
  }
  if (!sessionEnded) {
    const time = Math.max(0, Math.round(atMs));
    const identity = { hubId: p.hubId, edgeId: p.edgeId, sessionId: p.sessionId, streamId: null, time };
    out.push(
      makeEvent({
        ...identity,
        type: "edge.failedOver",
        seq: sessionLastSeq + 1,
        data: {
          fromHubId: p.hubId,
          fromRunId: p.runId,
          fromSessionId: p.sessionId,
          toHubId: facts.toHubId,
          toSessionId: facts.toSessionId,
          gapMs,
          writtenBy,
        },
      }),
      makeEvent({
        ...identity,
        type: "edge.disconnected",
        seq: sessionLastSeq + 2,
        data: {
          reason: "hubLost",
          message: lost,
          durationMs: Math.max(0, Math.round(atMs - (connectedAt ?? p.since))),
          writtenBy,
        },
      }),
    );
  }
  return { streamsClosed: r.summary.streamsClosed, udpClosed: r.summary.udpClosed, sessionClosed: !sessionEnded, gapMs, events: out };
};

export interface CloseDeadSessionOptions extends TakeoverFacts {
  readonly nc: NatsConnection;
  readonly stream: string;
  /** Events stored this long before the previous owner's `since` still count (clock jitter). Default 5 s. */
  readonly marginMs?: number;
  readonly publishTimeoutMs?: number;
}

const encoder = new TextEncoder();

/** Reads the dead session's events from the log and publishes the closing events (each alone, id = msg id). */
export const closeDeadSession = async (o: CloseDeadSessionOptions): Promise<TakeoverSummary> => {
  const events: DomainEvent[] = [];
  for await (const e of replayHistoryIterable(o.nc, {
    hubId: o.previous.hubId,
    edgeId: o.previous.edgeId,
    kinds: ["edge", "stream", "udp"],
    stream: o.stream,
    since: Math.max(0, o.previous.since - (o.marginMs ?? 5_000)),
    onInvalid: "skip",
  })) {
    if (e.sessionId === o.previous.sessionId) events.push(e);
  }
  const summary = takeoverEvents(events, o);
  const js = jetstream(o.nc);
  for (const e of summary.events) {
    await js.publish(subjectOf(e), encoder.encode(JSON.stringify([e])), { msgID: e.id, timeout: o.publishTimeoutMs ?? 5_000 });
  }
  return summary;
};
