/**
 * The edge's actors: one for its tunnel, one per TCP stream (from the edge's view, no target). Fed
 * synchronously with the addon's decoded edge events; every lifecycle transition goes to a non-blocking
 * sink as an edge lifecycle event (the JetStream catalog is the hub's log and has no edge events).
 */
import type { Effect } from "effect";
import type { Actor } from "xstate";
import {
  edgeTunnelMachine,
  type EdgeTunnelContext,
  type EdgeTunnelFact,
  type ListenerFailure,
} from "../machines/edge-tunnel.js";
import { tcpStreamMachine, type TcpStreamFact } from "../machines/tcp-stream.js";
import type { NativeEdgeEvent, NativeEdgeEventOf } from "../native/events.js";
import { fromPlainEffect } from "./from-effect.js";
import { startNumberedActor, toEpochMs, type Clock } from "./logged-actor.js";
import { RecentKeys } from "./recent-keys.js";

type Timed<F> = F extends { readonly time: number | null } ? Omit<F, "time"> & { readonly time: number } : never;

/** One edge lifecycle event: a tunnel or stream fact with its actor's identity and seq. */
export type EdgeLifecycleEvent = Timed<EdgeTunnelFact | TcpStreamFact> & {
  readonly edgeId: string;
  /** The tunnel session a stream belongs to; null for the tunnel actor. */
  readonly sessionId: string | null;
  /** null for the tunnel actor. */
  readonly streamId: string | null;
  readonly seq: number;
};

export interface EdgeLifecycleSink {
  readonly append: (event: EdgeLifecycleEvent) => void;
}

export interface EdgeActorTiming {
  readonly streamCloseGraceMs: number;
  readonly stopTimeoutMs: number;
  /** Same values as the addon's config; used only when the addon gives no `retryInMs`. */
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
  readonly rememberEnded: number;
}

export const defaultEdgeActorTiming: EdgeActorTiming = {
  streamCloseGraceMs: 2_000,
  stopTimeoutMs: 10_000,
  reconnectInitialMs: 250,
  reconnectMaxMs: 30_000,
  rememberEnded: 10_000,
};

export type EdgeActorProblem =
  | { readonly type: "duplicateStream"; readonly sessionId: string; readonly streamId: number }
  | { readonly type: "lateEvent"; readonly event: NativeEdgeEvent["type"]; readonly sessionId: string; readonly streamId: number }
  | { readonly type: "sinkFailed"; readonly eventType: string; readonly message: string };

export interface EdgeActorSystemOptions {
  readonly edgeId: string;
  readonly sink: EdgeLifecycleSink;
  /** Stops the addon's edge; run as the tunnel machine's `stopEdge` actor, interrupted on stop timeout. */
  readonly stop: Effect.Effect<void, unknown>;
  readonly now?: () => number;
  readonly clock?: Clock;
  readonly timing?: Partial<EdgeActorTiming>;
  readonly report?: (problem: EdgeActorProblem) => void;
}

export interface EdgeActorsSnapshot {
  readonly state: "connecting" | "handshaking" | "connected" | "backingOff" | "stopping" | "stopped";
  readonly connected: boolean;
  readonly hub: string | null;
  readonly hubId: string | null;
  readonly sessionId: string | null;
  readonly hubFingerprint: string | null;
  readonly pinned: boolean;
  readonly attempt: number;
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
  readonly listenerErrors: ReadonlyArray<ListenerFailure>;
  readonly lastError: EdgeTunnelContext["lastError"];
  readonly activeStreams: number;
}

export interface EdgeActorSystem {
  /** Feeds decoded native edge events, in `seq` order. Never throws. */
  readonly ingest: (events: Iterable<NativeEdgeEvent>) => void;
  /** Stops the edge; resolves once the tunnel and every stream actor have ended. */
  readonly stop: () => Promise<void>;
  readonly settled: Promise<void>;
  readonly snapshot: () => EdgeActorsSnapshot;
}

type StreamActor = Actor<typeof tcpStreamMachine>;

const streamKey = (sessionId: string, streamId: number): string => `${sessionId}\u0000${streamId}`;

export const createEdgeActorSystem = (options: EdgeActorSystemOptions): EdgeActorSystem => {
  const timing: EdgeActorTiming = { ...defaultEdgeActorTiming, ...options.timing };
  const now = options.now ?? Date.now;
  const report = (problem: EdgeActorProblem) => {
    try {
      options.report?.(problem);
    } catch {
      // A failing reporter must not stop the feed.
    }
  };
  const append = (
    fact: EdgeTunnelFact | TcpStreamFact,
    identity: { readonly sessionId: string | null; readonly streamId: string | null },
    seq: number,
  ) => {
    const event = { ...fact, ...identity, edgeId: options.edgeId, seq, time: toEpochMs(fact.time ?? now()) } as EdgeLifecycleEvent;
    try {
      options.sink.append(event);
    } catch (error) {
      report({ type: "sinkFailed", eventType: fact.type, message: error instanceof Error ? error.message : String(error) });
    }
  };

  const streams = new Map<string, StreamActor>();
  const ended = new RecentKeys(timing.rememberEnded);
  let tunnelDone = false;
  let resolveSettled: () => void = () => undefined;
  const settled = new Promise<void>((resolve) => {
    resolveSettled = resolve;
  });
  const checkSettled = () => {
    if (tunnelDone && streams.size === 0) resolveSettled();
  };
  const loseStreams = (atMs: number) => {
    for (const stream of [...streams.values()]) stream.send({ type: "policy.tunnelLost", atMs });
  };

  const tunnel = startNumberedActor({
    machine: edgeTunnelMachine.provide({ actors: { stopEdge: fromPlainEffect(() => options.stop) } }),
    input: {
      edgeId: options.edgeId,
      reconnectInitialMs: timing.reconnectInitialMs,
      reconnectMaxMs: timing.reconnectMaxMs,
      stopTimeoutMs: timing.stopTimeoutMs,
    },
    clock: options.clock,
    onFact: (fact, seq) => append(fact, { sessionId: null, streamId: null }, seq),
    onDone: () => {
      tunnelDone = true;
      loseStreams(now());
      checkSettled();
    },
  });

  const streamFor = (event: NativeEdgeEventOf<"stream.opened" | "stream.closed">): StreamActor | undefined => {
    const key = streamKey(event.sessionId, event.streamId);
    const existing = streams.get(key);
    if (existing !== undefined) return existing;
    if (ended.has(key)) {
      report({ type: "lateEvent", event: event.type, sessionId: event.sessionId, streamId: event.streamId });
      return undefined;
    }
    const identity = { sessionId: event.sessionId, streamId: String(event.streamId) };
    const stream = startNumberedActor({
      machine: tcpStreamMachine,
      input: {
        edgeId: options.edgeId,
        sessionId: event.sessionId,
        streamId: event.streamId,
        edgePort: event.edgePort,
        clientAddr: event.clientAddr,
        target: null,
        closeGraceMs: timing.streamCloseGraceMs,
      },
      clock: options.clock,
      onFact: (fact, seq) => append(fact, identity, seq),
      onDone: () => {
        streams.delete(key);
        ended.add(key);
        checkSettled();
      },
    });
    streams.set(key, stream);
    if (tunnelDone) stream.send({ type: "policy.tunnelLost", atMs: event.atMs });
    return stream;
  };

  const dispatch = (event: NativeEdgeEvent): void => {
    switch (event.type) {
      case "stream.opened":
        if (streams.has(streamKey(event.sessionId, event.streamId))) {
          report({ type: "duplicateStream", sessionId: event.sessionId, streamId: event.streamId });
          return;
        }
        streamFor(event)?.send({ type: "stream.opened", atMs: event.atMs });
        return;
      case "stream.closed":
        streamFor(event)?.send(event);
        return;
      case "tunnel.disconnected":
      case "tunnel.rejected":
        loseStreams(event.atMs);
        tunnel.send(event);
        return;
      // UDP sessions and transport fallback are not tunnel-machine events (reported by the edge service).
      case "tunnel.fallback":
      case "publicIp.discovered":
      case "udp.opened":
      case "udp.expired":
      case "udp.closed":
      case "udp.refused":
      case "udp.oversized":
      case "stream.refused":
        return;
      default:
        tunnel.send(event);
    }
  };

  return {
    ingest: (events) => {
      for (const event of events) dispatch(event);
    },
    stop: () => {
      tunnel.send({ type: "policy.stop", atMs: now() });
      return settled;
    },
    settled,
    snapshot: () => {
      const s = tunnel.getSnapshot();
      const c = s.context;
      let activeStreams = 0;
      for (const stream of streams.values()) if (stream.getSnapshot().value !== "closing") activeStreams += 1;
      return {
        state: s.value,
        connected: s.value === "connected",
        hub: c.hub,
        hubId: c.hubId,
        sessionId: c.sessionId,
        hubFingerprint: c.hubFingerprint,
        pinned: c.pinned,
        attempt: c.attempt,
        listenPorts: c.listenPorts,
        listenPortsUdp: c.listenPortsUdp,
        listenerErrors: c.listenerErrors,
        lastError: c.lastError,
        activeStreams,
      };
    },
  };
};
