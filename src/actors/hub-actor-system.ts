/**
 * The hub's actors: one for the hub, one per tunnel session (and per failed handshake), one per TCP stream.
 * Fed synchronously with the addon's decoded event batches; every lifecycle transition goes to the sink as
 * a domain event. Nothing here waits: the addon's data path never depends on it.
 */
import type { Effect } from "effect";
import type { Actor } from "xstate";
import type { NativeHubEvent, NativeHubEventOf } from "../native/events.js";
import { hubMachine, type HubOutput, type HubRecoveredData, type HubStopReason } from "../machines/hub.js";
import { hubSessionMachine } from "../machines/hub-session.js";
import { udpSessionMachine, type UdpAddonCloseReason, type UdpTotals } from "../machines/udp-session.js";
import { EdgeRefuseReason, type EventData, type UdpRefuseReason } from "../events/catalog.js";
import { makeEvent } from "../events/envelope.js";
import { fromPlainEffect } from "./from-effect.js";
import { RecentKeys } from "./recent-keys.js";
import { factLogger, startLoggedActor, type Clock, type EventSink } from "./logged-actor.js";
import { TcpStreamRunner } from "./tcp-stream-runner.js";

export interface HubActorTiming {
  /** A stream whose tunnel is gone waits this long for the addon's final `stream.closed`. */
  readonly streamCloseGraceMs: number;
  /** A session asked to close (revoke, supersede, shutdown) waits this long for `edge.disconnected`. */
  readonly sessionCloseTimeoutMs: number;
  /** Upper bound for the drain (the addon's hubStop). */
  readonly drainTimeoutMs: number;
  /** How many ended sessions and streams are remembered to catch late or repeated events. */
  readonly rememberEnded: number;
  /** The addon's UDP idle timeout (hub `udpIdleTimeoutMs`): the `idleMs` of `udp.expired`. */
  readonly udpIdleTimeoutMs: number;
}

export const defaultHubActorTiming: HubActorTiming = {
  streamCloseGraceMs: 2_000,
  sessionCloseTimeoutMs: 5_000,
  drainTimeoutMs: 10_000,
  rememberEnded: 10_000,
  udpIdleTimeoutMs: 60_000,
};

/** Something in the event feed that the actors could not make sense of; reported, never thrown. */
export type HubActorProblem =
  | { readonly type: "unknownSession"; readonly event: NativeHubEvent["type"]; readonly sessionId: string }
  | { readonly type: "duplicateSession"; readonly sessionId: string }
  | { readonly type: "duplicateStream"; readonly sessionId: string; readonly streamId: number }
  | { readonly type: "duplicateUdpSession"; readonly sessionId: string; readonly udpSessionId: number }
  /** A UDP notice with a reason the catalog does not know; not logged. */
  | { readonly type: "unknownUdpReason"; readonly event: NativeHubEvent["type"]; readonly reason: string }
  | { readonly type: "unknownEdgeRefuseReason"; readonly event: NativeHubEvent["type"]; readonly reason: string }
  /** An event for a session or stream whose actor already ended; dropped. */
  | { readonly type: "lateEvent"; readonly event: NativeHubEvent["type"]; readonly sessionId: string; readonly streamId: number | null }
  | { readonly type: "protocolError"; readonly remoteAddr: string; readonly sessionId: string | null; readonly message: string }
  | { readonly type: "sinkFailed"; readonly eventType: string; readonly message: string };

export interface HubActorSystemOptions {
  readonly hubId: string;
  /** This hub run's id: the hub actor's `sessionId` in the log. */
  readonly runId: string;
  readonly portwayVersion: string;
  readonly fingerprint: string | null;
  readonly sink: EventSink;
  /** Stops the addon's hub; run as the hub machine's `drain` actor and interrupted on drain timeout. */
  readonly drain: Effect.Effect<void, unknown>;
  readonly now?: () => number;
  readonly clock?: Clock;
  readonly timing?: Partial<HubActorTiming>;
  readonly report?: (problem: HubActorProblem) => void;
}

export interface ConnectedEdgeView {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly remoteAddr: string;
  readonly connectedAtMs: number;
  readonly state: "active" | "closing";
  readonly activeStreams: number;
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
}

export interface OpenStreamView {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly streamId: number;
  readonly edgePort: number;
  readonly clientAddr: string;
  readonly target: string | null;
  readonly state: "opening" | "open" | "halfClosed" | "closing";
  readonly openedAtMs: number | null;
}

export interface HubActorsSnapshot {
  readonly hub: { readonly state: "starting" | "running" | "draining" | "stopped"; readonly tunnelPort: number | null };
  readonly edges: ReadonlyArray<ConnectedEdgeView>;
  readonly streams: ReadonlyArray<OpenStreamView>;
}

export interface HubActorSystem {
  /** Feeds decoded native events, in `seq` order. Never throws. */
  readonly ingest: (events: Iterable<NativeHubEvent>) => void;
  /**
   * The hub is listening. The addon's own `hub.listening` is emitted while `hubStart` runs, usually before
   * anyone subscribed to the event stream, so the owner reports it from the start result; a second report
   * (or the addon's event arriving too) changes nothing.
   */
  readonly listening: (port: number) => void;
  /** The previous run was rebuilt from the log (recover.ts); logged as the hub's `hub.recovered`. */
  readonly recovered: (data: HubRecoveredData) => void;
  /** hubStart failed; the hub actor ends with reason `error`. */
  readonly startFailed: (message: string) => void;
  /** The edge was removed from the allowed list: its session is closing until the addon confirms. */
  readonly revoke: (edgeId: string) => void;
  /** Drains and stops the hub; resolves once the hub and every session and stream actor have ended. */
  readonly stop: (reason?: Exclude<HubStopReason, "error">) => Promise<HubOutput>;
  /** Resolves once the hub and every session and stream actor have ended. */
  readonly settled: Promise<HubOutput>;
  readonly snapshot: () => HubActorsSnapshot;
}

type SessionActor = Actor<typeof hubSessionMachine>;
type UdpActor = Actor<typeof udpSessionMachine>;
/** A TCP stream's machine, on its compiled common path until it needs the interpreter (tcp-stream-runner.ts). */
type StreamActor = TcpStreamRunner;

const streamKey = (sessionId: string, streamId: number): string => `${sessionId}\u0000${streamId}`;

/** The addon's UDP close reasons (docs/architecture.md) in the catalog's words. */
const udpCloseReasonOf = (reason: string): UdpAddonCloseReason | undefined => {
  switch (reason) {
    case "targetError":
      return "targetUnreachable";
    case "shutdown":
      return "hubShutdown";
    case "tunnelLost":
    case "sessionCap":
    case "portClosed":
      return reason;
    default:
      return undefined;
  }
};

const isUdpRefuseReason = (reason: string): reason is UdpRefuseReason => reason === "sessionCap" || reason === "portClosed";
const isEdgeRefuseReason = (reason: string): reason is EdgeRefuseReason => (EdgeRefuseReason.literals as ReadonlyArray<string>).includes(reason);

const totalsOf = (e: { readonly bytesIn: number; readonly bytesOut: number; readonly packetsIn: number; readonly packetsOut: number }): UdpTotals => ({
  bytesIn: e.bytesIn,
  bytesOut: e.bytesOut,
  packetsIn: e.packetsIn,
  packetsOut: e.packetsOut,
});

export const createHubActorSystem = (options: HubActorSystemOptions): HubActorSystem => {
  const timing: HubActorTiming = { ...defaultHubActorTiming, ...options.timing };
  const now = options.now ?? Date.now;
  const report = (problem: HubActorProblem) => {
    try {
      options.report?.(problem);
    } catch {
      // A failing reporter must not stop the feed.
    }
  };
  const common = {
    hubId: options.hubId,
    sink: options.sink,
    now,
    clock: options.clock,
    onSinkError: (error: unknown, event: { readonly type: string }) =>
      report({ type: "sinkFailed", eventType: event.type, message: error instanceof Error ? error.message : String(error) }),
  };

  const sessions = new Map<string, SessionActor>();
  /** The newest session of each edge, for supersede and revoke. */
  const sessionOfEdge = new Map<string, string>();
  const streams = new Map<string, StreamActor>();
  const streamsOfSession = new Map<string, Set<string>>();
  const endedSessions = new RecentKeys(timing.rememberEnded);
  const endedStreams = new RecentKeys(timing.rememberEnded);
  const udpSessions = new Map<string, UdpActor>();
  const udpOfSession = new Map<string, Set<string>>();
  const endedUdp = new RecentKeys(timing.rememberEnded);
  /** seq of this run's UDP notices (`udp.refused`, `udp.oversized`), one actor-less identity per hub run. */
  let udpNoticeSeq = 0;
  let authAttempts = 0;
  let hubDone = false;

  let resolveSettled: (output: HubOutput) => void = () => undefined;
  const settled = new Promise<HubOutput>((resolve) => {
    resolveSettled = resolve;
  });
  const checkSettled = () => {
    if (hubDone && sessions.size === 0 && streams.size === 0 && udpSessions.size === 0) {
      const output = hub.getSnapshot().output;
      if (output !== undefined) resolveSettled(output);
    }
  };

  const shutdownEverything = (atMs: number) => {
    for (const stream of [...streams.values()]) stream.send({ type: "policy.shutdown", atMs });
    for (const udp of [...udpSessions.values()]) udp.send({ type: "policy.shutdown", atMs });
    for (const session of [...sessions.values()]) session.send({ type: "policy.shutdown", atMs });
  };

  let shutdownRequestedAtMs: number | null = null;
  const hub = startLoggedActor({
    ...common,
    machine: hubMachine.provide({
      actors: { drain: fromPlainEffect(() => options.drain) },
      // Recorded here and carried out by `sendToHub` once the hub's transition is over: the hub machine's
      // action must not start or drive other actors while XState is still executing it.
      actions: { shutdownSessions: (_, params) => void (shutdownRequestedAtMs = params.atMs) },
    }),
    input: { portwayVersion: options.portwayVersion, fingerprint: options.fingerprint, drainTimeoutMs: timing.drainTimeoutMs },
    identity: { edgeId: null, sessionId: options.runId, streamId: null },
    onDone: () => {
      hubDone = true;
      // Covers a hub that stopped without draining (the addon stopped on its own, or start failed).
      shutdownEverything(now());
      checkSettled();
    },
  });

  const startSession = (sessionId: string, edgeId: string | null): SessionActor => {
    const session = startLoggedActor({
      ...common,
      machine: hubSessionMachine,
      input: { sessionId, closeTimeoutMs: timing.sessionCloseTimeoutMs },
      identity: { edgeId, sessionId, streamId: null },
      onDone: () => {
        sessions.delete(sessionId);
        endedSessions.add(sessionId);
        if (edgeId !== null && sessionOfEdge.get(edgeId) === sessionId) sessionOfEdge.delete(edgeId);
        checkSettled();
      },
    });
    sessions.set(sessionId, session);
    return session;
  };

  const streamFor = (event: NativeHubEventOf<"stream.opened" | "stream.closed">): StreamActor | undefined => {
    const key = streamKey(event.sessionId, event.streamId);
    const existing = streams.get(key);
    if (existing !== undefined) return existing;
    if (endedStreams.has(key)) {
      report({ type: "lateEvent", event: event.type, sessionId: event.sessionId, streamId: event.streamId });
      return undefined;
    }
    if (!sessions.has(event.sessionId)) report({ type: "unknownSession", event: event.type, sessionId: event.sessionId });
    const stream = new TcpStreamRunner({
      input: {
        edgeId: event.edgeId,
        sessionId: event.sessionId,
        streamId: event.streamId,
        edgePort: event.edgePort,
        clientAddr: event.clientAddr,
        target: event.target,
        closeGraceMs: timing.streamCloseGraceMs,
      },
      clock: options.clock,
      onFact: factLogger({ ...common, identity: { edgeId: event.edgeId, sessionId: event.sessionId, streamId: String(event.streamId) } }),
      onDone: () => {
        streams.delete(key);
        endedStreams.add(key);
        const ofSession = streamsOfSession.get(event.sessionId);
        ofSession?.delete(key);
        if (ofSession?.size === 0) streamsOfSession.delete(event.sessionId);
        checkSettled();
      },
    });
    streams.set(key, stream);
    const ofSession = streamsOfSession.get(event.sessionId) ?? new Set<string>();
    ofSession.add(key);
    streamsOfSession.set(event.sessionId, ofSession);
    if (hubDone || !sessions.has(event.sessionId)) {
      // Nobody will report this stream's tunnel going away: treat it as already gone, the addon's own close
      // still wins within the grace period.
      stream.send({ type: hubDone ? "policy.shutdown" : "policy.tunnelLost", atMs: event.atMs });
    }
    return stream;
  };

  /** The UDP session's actor; started on its first event (normally `udp.opened`, which it logs). */
  const udpFor = (event: NativeHubEventOf<"udp.opened" | "udp.expired" | "udp.closed">): UdpActor | undefined => {
    const key = streamKey(event.sessionId, event.udpSessionId);
    const existing = udpSessions.get(key);
    if (existing !== undefined) return existing;
    if (endedUdp.has(key)) {
      report({ type: "lateEvent", event: event.type, sessionId: event.sessionId, streamId: event.udpSessionId });
      return undefined;
    }
    if (!sessions.has(event.sessionId)) report({ type: "unknownSession", event: event.type, sessionId: event.sessionId });
    const udp = startLoggedActor({
      ...common,
      machine: udpSessionMachine,
      input: {
        edgeId: event.edgeId,
        sessionId: event.sessionId,
        udpId: String(event.udpSessionId),
        edgePort: event.edgePort,
        clientAddr: event.clientAddr,
        target: event.target,
        // An end without its opening (missed): it opened durationMs before it ended.
        atMs: event.type === "udp.opened" ? event.atMs : Math.max(0, event.atMs - event.durationMs),
        // The addon keeps the idle timer and reports udp.expired.
        idleAfterMs: null,
        expireAfterMs: 0,
        closeGraceMs: timing.streamCloseGraceMs,
      },
      identity: { edgeId: event.edgeId, sessionId: event.sessionId, streamId: String(event.udpSessionId) },
      onDone: () => {
        udpSessions.delete(key);
        endedUdp.add(key);
        const ofSession = udpOfSession.get(event.sessionId);
        ofSession?.delete(key);
        if (ofSession?.size === 0) udpOfSession.delete(event.sessionId);
        checkSettled();
      },
    });
    udpSessions.set(key, udp);
    const ofSession = udpOfSession.get(event.sessionId) ?? new Set<string>();
    ofSession.add(key);
    udpOfSession.set(event.sessionId, ofSession);
    if (hubDone || !sessions.has(event.sessionId)) udp.send({ type: hubDone ? "policy.shutdown" : "policy.tunnelLost", atMs: event.atMs });
    return udp;
  };

  /** `udp.refused` / `udp.oversized`: no lifecycle, one identity per hub run (`<runId>.udp`). */
  const notice = (
    edgeId: string | null,
    atMs: number,
    body:
      | { readonly type: "udp.refused"; readonly data: EventData<"udp.refused"> }
      | { readonly type: "udp.oversized"; readonly data: EventData<"udp.oversized"> },
  ): void => {
    udpNoticeSeq += 1;
    const event = makeEvent({
      ...body,
      hubId: options.hubId,
      edgeId,
      sessionId: `${options.runId}.udp`,
      streamId: null,
      seq: udpNoticeSeq,
      time: Math.max(0, Math.round(atMs)),
    } as Parameters<typeof makeEvent>[0]);
    try {
      options.sink.append(event);
    } catch (error) {
      report({ type: "sinkFailed", eventType: event.type, message: error instanceof Error ? error.message : String(error) });
    }
  };

  const sendToHub = (event: Parameters<typeof hub.send>[0]): void => {
    hub.send(event);
    if (shutdownRequestedAtMs === null) return;
    const atMs = shutdownRequestedAtMs;
    shutdownRequestedAtMs = null;
    shutdownEverything(atMs);
  };

  const dispatch = (event: NativeHubEvent): void => {
    switch (event.type) {
      case "hub.listening":
        sendToHub({ type: "hub.listening", atMs: event.atMs, port: event.port });
        return;
      case "hub.stopped":
        sendToHub({ type: "hub.stopped", atMs: event.atMs });
        return;
      case "edge.connected": {
        if (sessions.has(event.sessionId) || endedSessions.has(event.sessionId)) {
          report({ type: "duplicateSession", sessionId: event.sessionId });
          return;
        }
        const previous = sessionOfEdge.get(event.edgeId);
        if (previous !== undefined) {
          sessions.get(previous)?.send({
            type: "policy.supersede",
            atMs: event.atMs,
            bySessionId: event.sessionId,
            remoteAddr: event.remoteAddr,
          });
        }
        const session = startSession(event.sessionId, event.edgeId);
        sessionOfEdge.set(event.edgeId, event.sessionId);
        session.send({ type: "edge.connected", atMs: event.atMs, edgeId: event.edgeId, remoteAddr: event.remoteAddr });
        if (hubDone) session.send({ type: "policy.shutdown", atMs: event.atMs });
        return;
      }
      case "edge.authFailed": {
        authAttempts += 1;
        const attempt = startSession(`${options.runId}-auth-${authAttempts}`, event.claimedEdgeId);
        attempt.send({
          type: "edge.authFailed",
          atMs: event.atMs,
          remoteAddr: event.remoteAddr,
          claimedEdgeId: event.claimedEdgeId,
          reason: event.reason,
        });
        return;
      }
      case "edge.configPushed":
      case "edge.disconnected": {
        const session = sessions.get(event.sessionId);
        if (session === undefined) {
          report(
            endedSessions.has(event.sessionId)
              ? { type: "lateEvent", event: event.type, sessionId: event.sessionId, streamId: null }
              : { type: "unknownSession", event: event.type, sessionId: event.sessionId },
          );
          return;
        }
        if (event.type === "edge.disconnected") {
          for (const key of streamsOfSession.get(event.sessionId) ?? []) {
            streams.get(key)?.send({ type: "policy.tunnelLost", atMs: event.atMs });
          }
          for (const key of [...(udpOfSession.get(event.sessionId) ?? [])]) {
            udpSessions.get(key)?.send({ type: "policy.tunnelLost", atMs: event.atMs });
          }
        }
        session.send(event);
        return;
      }
      case "stream.opened": {
        if (streams.has(streamKey(event.sessionId, event.streamId))) {
          report({ type: "duplicateStream", sessionId: event.sessionId, streamId: event.streamId });
          return;
        }
        streamFor(event)?.send({ type: "stream.opened", atMs: event.atMs, target: event.target });
        return;
      }
      case "stream.closed":
        streamFor(event)?.send(event);
        return;
      case "tunnel.protocolError":
        report({ type: "protocolError", remoteAddr: event.remoteAddr, sessionId: event.sessionId, message: event.message });
        return;
      case "udp.opened":
        if (udpSessions.has(streamKey(event.sessionId, event.udpSessionId))) {
          report({ type: "duplicateUdpSession", sessionId: event.sessionId, udpSessionId: event.udpSessionId });
          return;
        }
        udpFor(event);
        return;
      case "udp.expired":
        udpFor(event)?.send({ type: "udp.expired", atMs: event.atMs, idleMs: timing.udpIdleTimeoutMs, totals: totalsOf(event) });
        return;
      case "udp.closed": {
        const reason = udpCloseReasonOf(event.reason);
        udpFor(event)?.send({
          type: "udp.closed",
          atMs: event.atMs,
          reason: reason ?? "protocolError",
          message: reason === undefined ? `the addon closed it with reason ${event.reason}` : "",
          totals: totalsOf(event),
        });
        return;
      }
      case "udp.refused":
        if (!isUdpRefuseReason(event.reason)) {
          report({ type: "unknownUdpReason", event: event.type, reason: event.reason });
          return;
        }
        notice(event.edgeId ?? null, event.atMs, {
          type: "udp.refused",
          data: { edgePort: event.edgePort, clientAddr: event.clientAddr, reason: event.reason, count: event.count },
        });
        return;
      case "edge.refused": {
        // Deferred admission said no (HA ownership): a one-shot actor, like a failed handshake.
        if (!isEdgeRefuseReason(event.reason)) {
          report({ type: "unknownEdgeRefuseReason", event: event.type, reason: event.reason });
          return;
        }
        const refused = makeEvent({
          type: "edge.refused",
          hubId: options.hubId,
          edgeId: event.edgeId,
          sessionId: event.sessionId,
          streamId: null,
          seq: 1,
          time: Math.max(0, Math.round(event.atMs)),
          data: { remoteAddr: event.remoteAddr, reason: event.reason, message: event.message },
        });
        try {
          options.sink.append(refused);
        } catch (error) {
          report({ type: "sinkFailed", eventType: refused.type, message: error instanceof Error ? error.message : String(error) });
        }
        return;
      }
      case "udp.oversized":
        notice(event.edgeId ?? null, event.atMs, {
          type: "udp.oversized",
          data: { edgePort: event.edgePort, clientAddr: event.clientAddr, size: event.size, maxSize: event.maxSize, count: event.count },
        });
        return;
    }
  };

  const snapshot = (): HubActorsSnapshot => {
    const hubSnapshot = hub.getSnapshot();
    const counts = new Map<string, number>();
    for (const [sessionId, keys] of streamsOfSession) counts.set(sessionId, keys.size);
    const edges: ConnectedEdgeView[] = [];
    for (const session of sessions.values()) {
      const s = session.getSnapshot();
      const c = s.context;
      if ((s.value !== "active" && s.value !== "closing") || c.edgeId === null) continue;
      edges.push({
        edgeId: c.edgeId,
        sessionId: c.sessionId,
        remoteAddr: c.remoteAddr ?? "",
        connectedAtMs: c.connectedAtMs ?? 0,
        state: s.value,
        activeStreams: counts.get(c.sessionId) ?? 0,
        listenPorts: c.listenPorts,
        listenPortsUdp: c.listenPortsUdp,
      });
    }
    const open: OpenStreamView[] = [];
    for (const stream of streams.values()) {
      const s = stream.view();
      if (s.value === "closed") continue;
      const c = s.context;
      open.push({
        edgeId: c.edgeId,
        sessionId: c.sessionId,
        streamId: c.streamId,
        edgePort: c.edgePort,
        clientAddr: c.clientAddr,
        target: c.target,
        state: s.value,
        openedAtMs: c.openedAtMs,
      });
    }
    return { hub: { state: hubSnapshot.value, tunnelPort: hubSnapshot.context.tunnelPort }, edges, streams: open };
  };

  return {
    ingest: (events) => {
      for (const event of events) dispatch(event);
    },
    listening: (port) => sendToHub({ type: "hub.listening", atMs: now(), port }),
    recovered: (data) => sendToHub({ type: "hub.recovered", atMs: now(), data }),
    startFailed: (message) => sendToHub({ type: "hub.startFailed", atMs: now(), message }),
    revoke: (edgeId) => {
      const sessionId = sessionOfEdge.get(edgeId);
      if (sessionId !== undefined) sessions.get(sessionId)?.send({ type: "policy.revoke", atMs: now() });
    },
    stop: (reason = "shutdown") => {
      sendToHub({ type: "policy.stop", atMs: now(), reason });
      return settled;
    },
    settled,
    snapshot,
  };
};
