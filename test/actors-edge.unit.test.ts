import { Effect } from "effect";
import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import {
  createEdgeActorSystem,
  type EdgeActorProblem,
  type EdgeActorSystemOptions,
  type EdgeLifecycleEvent,
} from "../src/actors/edge-actor-system.js";
import type { NativeEdgeEvent } from "../src/native/events.js";

const hub = "hub.example:8443";

function nativeFeed() {
  let seq = 0;
  let atMs = 1_000;
  type Body<E> = E extends NativeEdgeEvent ? Omit<E, "seq" | "atMs"> : never;
  const ev = (body: Body<NativeEdgeEvent>): NativeEdgeEvent => {
    seq += 1;
    atMs += 10;
    return { ...body, seq, atMs } as NativeEdgeEvent;
  };
  const streamFields = (sessionId: string, streamId: number) => ({ sessionId, streamId, edgePort: 80, clientAddr: "203.0.113.9:5000" });
  return {
    connecting: (attempt: number) => ev({ type: "tunnel.connecting", hub, attempt }),
    connected: (sessionId: string) =>
      ev({ type: "tunnel.connected", hub, hubId: "hub-1", sessionId, hubFingerprint: "ab".repeat(32), pinned: true }),
    disconnected: (retryInMs: number | null) => ev({ type: "tunnel.disconnected", hub, reason: "ioError", message: "reset", retryInMs }),
    rejected: () => ev({ type: "tunnel.rejected", hub, reason: "authFailed", message: "bad secret", retryInMs: 5_000 }),
    ports: () => ev({ type: "ports.assigned", listenPorts: [80, 443], listenPortsUdp: [] }),
    listenerError: () => ev({ type: "listener.error", port: 443, protocol: "tcp", code: "EACCES", message: "permission denied" }),
    opened: (sessionId: string, streamId: number) => ev({ type: "stream.opened", ...streamFields(sessionId, streamId) }),
    closed: (sessionId: string, streamId: number, bytes: [number, number] = [7, 9]) =>
      ev({
        type: "stream.closed",
        ...streamFields(sessionId, streamId),
        bytesIn: bytes[0],
        bytesOut: bytes[1],
        durationMs: 20,
        reason: "clientClosed",
        message: "",
      }),
  };
}

function system(overrides: Partial<EdgeActorSystemOptions> = {}) {
  const events: EdgeLifecycleEvent[] = [];
  const problems: EdgeActorProblem[] = [];
  const clock = new SimulatedClock();
  clock.set(50_000);
  let stops = 0;
  const actors = createEdgeActorSystem({
    edgeId: "e1",
    sink: { append: (e) => void events.push(e) },
    stop: Effect.sync(() => void (stops += 1)),
    now: () => clock.now(),
    clock,
    timing: { streamCloseGraceMs: 1_000, stopTimeoutMs: 3_000 },
    report: (p) => void problems.push(p),
    ...overrides,
  });
  return { actors, events, problems, clock, stops: () => stops, feed: nativeFeed() };
}

describe("edge actor system", () => {
  it("follows the tunnel and logs one opened and one closed per stream, numbered per actor", () => {
    const { actors, events, feed } = system();
    actors.ingest([feed.connecting(1), feed.connected("s1"), feed.ports(), feed.opened("s1", 1), feed.opened("s1", 2)]);
    actors.ingest([feed.closed("s1", 2, [100, 200]), feed.closed("s1", 1)]);
    expect(events.map((e) => [e.type, e.sessionId, e.streamId, e.seq])).toEqual([
      ["tunnel.connecting", null, null, 1],
      ["tunnel.connected", null, null, 2],
      ["stream.opened", "s1", "1", 1],
      ["stream.opened", "s1", "2", 1],
      ["stream.closed", "s1", "2", 2],
      ["stream.closed", "s1", "1", 2],
    ]);
    expect(events[4]).toMatchObject({ edgeId: "e1", data: { bytesIn: 100, bytesOut: 200, target: null, reason: "clientClosed" } });
    expect(actors.snapshot()).toMatchObject({
      state: "connected",
      connected: true,
      hubId: "hub-1",
      sessionId: "s1",
      listenPorts: [80, 443],
      activeStreams: 0,
    });
  });

  it("backs off after a disconnect, closing the lost tunnel's streams", () => {
    const { actors, events, clock, feed } = system();
    actors.ingest([feed.connecting(1), feed.connected("s1"), feed.opened("s1", 1), feed.disconnected(500)]);
    expect(actors.snapshot()).toMatchObject({ state: "backingOff", connected: false, lastError: { reason: "ioError" } });
    expect(events.at(-1)).toMatchObject({ type: "tunnel.disconnected", data: { retryInMs: 500 } });
    clock.increment(500);
    expect(actors.snapshot().state).toBe("connecting");
    clock.increment(500);
    expect(events.at(-1)).toMatchObject({ type: "stream.closed", streamId: "1", data: { reason: "tunnelLost" } });
    actors.ingest([feed.connecting(2), feed.rejected()]);
    expect(actors.snapshot()).toMatchObject({ state: "backingOff", lastError: { kind: "rejected", reason: "authFailed" } });
  });

  it("keeps listener errors for status", () => {
    const { actors, feed } = system();
    actors.ingest([feed.connected("s1"), feed.listenerError()]);
    expect(actors.snapshot().listenerErrors).toEqual([{ port: 443, protocol: "tcp", code: "EACCES", message: "permission denied" }]);
  });

  it("stop runs the stop Effect once and settles after the streams ended", async () => {
    const { actors, events, clock, stops, feed } = system();
    actors.ingest([feed.connected("s1"), feed.opened("s1", 1)]);
    const stopped = actors.stop();
    await new Promise((resolve) => setImmediate(resolve));
    expect(stops()).toBe(1);
    expect(actors.snapshot().state).toBe("stopped");
    clock.increment(1_000);
    await stopped;
    expect(events.map((e) => e.type).slice(-2)).toEqual(["tunnel.stopped", "stream.closed"]);
    expect(events.at(-2)).toMatchObject({ time: 50_000 });
  });

  it("reports duplicate and late stream events instead of starting a stream twice", () => {
    const { actors, events, problems, feed } = system();
    actors.ingest([feed.connected("s1"), feed.opened("s1", 1), feed.opened("s1", 1), feed.closed("s1", 1), feed.closed("s1", 1)]);
    expect(problems).toEqual([
      { type: "duplicateStream", sessionId: "s1", streamId: 1 },
      { type: "lateEvent", event: "stream.closed", sessionId: "s1", streamId: 1 },
    ]);
    expect(events.filter((e) => e.type === "stream.closed")).toHaveLength(1);
  });

  it("keeps going when the sink throws", () => {
    const problems: EdgeActorProblem[] = [];
    const { actors, feed } = system({
      sink: {
        append: () => {
          throw new Error("disk full");
        },
      },
      report: (p) => void problems.push(p),
    });
    actors.ingest([feed.connecting(1), feed.connected("s1")]);
    expect(actors.snapshot().connected).toBe(true);
    expect(problems.map((p) => p.type)).toEqual(["sinkFailed", "sinkFailed"]);
  });
});
