import { Effect } from "effect";
import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import {
  createHubActorSystem,
  type HubActorProblem,
  type HubActorSystemOptions,
} from "../src/actors/hub-actor-system.js";
import { RecentKeys } from "../src/actors/recent-keys.js";
import type { DomainEvent } from "../src/events/envelope.js";
import { eventId } from "../src/events/ids.js";
import type { NativeHubEvent } from "../src/native/events.js";

/** Synthetic native batches: what makeBatchDecoder hands on, with consecutive seq numbers. */
function nativeFeed() {
  let seq = 0;
  let atMs = 1_000;
  type Body<E> = E extends NativeHubEvent ? Omit<E, "seq" | "atMs"> : never;
  const ev = (body: Body<NativeHubEvent>, at?: number): NativeHubEvent => {
    seq += 1;
    atMs = at ?? atMs + 10;
    return { ...body, seq, atMs } as NativeHubEvent;
  };
  return {
    listening: () => ev({ type: "hub.listening", port: 8443 }),
    connected: (edgeId: string, sessionId: string, at?: number) =>
      ev({ type: "edge.connected", edgeId, sessionId, remoteAddr: `198.51.100.2:${40000 + seq}` }, at),
    disconnected: (edgeId: string, sessionId: string, reason: "edgeClosed" | "superseded" | "revoked" | "hubShutdown" | "timeout", at?: number) =>
      ev({ type: "edge.disconnected", edgeId, sessionId, reason, message: "" }, at),
    opened: (sessionId: string, streamId: number, at?: number) =>
      ev(
        {
          type: "stream.opened",
          edgeId: "e1",
          sessionId,
          streamId,
          edgePort: 80,
          clientAddr: "203.0.113.9:51000",
          target: "10.0.0.5:8080",
        },
        at,
      ),
    closed: (
      sessionId: string,
      streamId: number,
      reason: "clientClosed" | "targetRefused" | "tunnelLost" | "hubShutdown" = "clientClosed",
      bytes: [number, number] = [100, 2_000],
      at?: number,
    ) =>
      ev(
        {
          type: "stream.closed",
          edgeId: "e1",
          sessionId,
          streamId,
          edgePort: 80,
          clientAddr: "203.0.113.9:51000",
          target: "10.0.0.5:8080",
          bytesIn: bytes[0],
          bytesOut: bytes[1],
          durationMs: 40,
          reason,
          message: "",
        },
        at,
      ),
    authFailed: () => ev({ type: "edge.authFailed", remoteAddr: "203.0.113.66:1", claimedEdgeId: "e1", reason: "authFailed" }),
    hubStopped: () => ev({ type: "hub.stopped" }),
  };
}

function system(overrides: Partial<HubActorSystemOptions> = {}) {
  const events: DomainEvent[] = [];
  const problems: HubActorProblem[] = [];
  const clock = new SimulatedClock();
  clock.set(1_000_000);
  const drained: string[] = [];
  const actors = createHubActorSystem({
    hubId: "hub-1",
    runId: "run-2",
    portwayVersion: "0.1.0",
    fingerprint: "ab".repeat(32),
    sink: { append: (e) => void events.push(e) },
    drain: Effect.sync(() => void drained.push("drained")),
    now: () => clock.now(),
    clock,
    timing: { streamCloseGraceMs: 1_000, sessionCloseTimeoutMs: 3_000, drainTimeoutMs: 5_000 },
    report: (p) => void problems.push(p),
    ...overrides,
  });
  const of = (type: DomainEvent["type"]) => events.filter((e) => e.type === type);
  return { actors, events, problems, clock, drained, of, feed: nativeFeed() };
}

describe("hub actor system", () => {
  it("turns a session with streams into exactly one opened and one closed per stream, bytes carried over", () => {
    const { actors, events, of, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    actors.ingest([feed.opened("s1", 1), feed.opened("s1", 2), feed.closed("s1", 1, "clientClosed", [10, 20])]);
    actors.ingest([feed.opened("s1", 3), feed.closed("s1", 2, "clientClosed", [300, 4_000]), feed.closed("s1", 3)]);
    actors.ingest([feed.disconnected("e1", "s1", "edgeClosed")]);

    expect(of("stream.opened").map((e) => e.streamId)).toEqual(["1", "2", "3"]);
    expect(of("stream.closed").map((e) => e.streamId)).toEqual(["1", "2", "3"]);
    const closed2 = of("stream.closed").find((e) => e.streamId === "2");
    expect(closed2).toMatchObject({
      hubId: "hub-1",
      edgeId: "e1",
      sessionId: "s1",
      seq: 2,
      data: { bytesIn: 300, bytesOut: 4_000, reason: "clientClosed", target: "10.0.0.5:8080", edgePort: 80 },
    });
    expect(events.map((e) => e.type)).toEqual([
      "hub.started",
      "edge.connected",
      "stream.opened",
      "stream.opened",
      "stream.closed",
      "stream.opened",
      "stream.closed",
      "stream.closed",
      "edge.disconnected",
    ]);
    expect(actors.snapshot()).toMatchObject({ hub: { state: "running", tunnelPort: 8443 }, edges: [], streams: [] });
  });

  it("numbers events per actor from 1 and derives their ids from the actor's identity", () => {
    const { actors, events, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.opened("s1", 9), feed.closed("s1", 9)]);
    actors.ingest([feed.disconnected("e1", "s1", "edgeClosed")]);
    const bySeq = events.map((e) => `${e.type}#${e.seq}`);
    expect(bySeq).toEqual(["hub.started#1", "edge.connected#1", "stream.opened#1", "stream.closed#2", "edge.disconnected#2"]);
    const streamClosed = events[3];
    expect(streamClosed?.id).toBe(eventId({ hubId: "hub-1", kind: "stream", sessionId: "s1", streamId: "9" }, 2));
    expect(events[0]).toMatchObject({ sessionId: "run-2", edgeId: null, streamId: null, v: 1 });
    expect(events[4]).toMatchObject({ v: 2, data: { reason: "edgeClosed", durationMs: 30 } });
    // Event times are the addon's atMs, not the time the batch was processed.
    expect(events[1]?.time).toBe(1_020);
  });

  it("exposes connected edges and open streams for status", () => {
    const { actors, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1", 5_000), feed.opened("s1", 1, 5_100), feed.opened("s1", 2)]);
    expect(actors.snapshot()).toEqual({
      hub: { state: "running", tunnelPort: 8443 },
      edges: [
        {
          edgeId: "e1",
          sessionId: "s1",
          remoteAddr: "198.51.100.2:40001",
          connectedAtMs: 5_000,
          state: "active",
          activeStreams: 2,
          listenPorts: [],
          listenPortsUdp: [],
        },
      ],
      streams: [
        expect.objectContaining({ sessionId: "s1", streamId: 1, state: "open", openedAtMs: 5_100, target: "10.0.0.5:8080" }),
        expect.objectContaining({ streamId: 2, state: "open" }),
      ],
    });
  });

  it("logs a refused stream as a single close", () => {
    const { actors, events, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.closed("s1", 4, "targetRefused", [0, 0])]);
    expect(events.slice(2)).toEqual([
      expect.objectContaining({ type: "stream.closed", seq: 1, streamId: "4", data: expect.objectContaining({ reason: "targetRefused" }) }),
    ]);
  });

  it("supersedes the older session of the same edge", () => {
    const { actors, events, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.connected("e1", "s2")]);
    expect(actors.snapshot().edges.map((e) => [e.sessionId, e.state])).toEqual([
      ["s1", "closing"],
      ["s2", "active"],
    ]);
    actors.ingest([feed.disconnected("e1", "s1", "superseded")]);
    const s1 = events.filter((e) => e.sessionId === "s1").map((e) => [e.type, e.seq]);
    expect(s1).toEqual([
      ["edge.connected", 1],
      ["edge.superseded", 2],
      ["edge.disconnected", 3],
    ]);
    expect(events.find((e) => e.type === "edge.superseded")?.data).toEqual({ bySessionId: "s2", remoteAddr: "198.51.100.2:40002" });
    expect(actors.snapshot().edges.map((e) => e.sessionId)).toEqual(["s2"]);
  });

  it("revokes an edge's session, which closes on the addon's confirmation", () => {
    const { actors, of, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    actors.revoke("e1");
    actors.revoke("unknown-edge");
    expect(actors.snapshot().edges[0]?.state).toBe("closing");
    actors.ingest([feed.disconnected("e1", "s1", "revoked")]);
    expect(of("edge.disconnected")[0]?.data).toMatchObject({ reason: "revoked" });
  });

  it("closes a lost tunnel's streams with the addon's counts, or with tunnelLost after the grace", () => {
    const { actors, of, clock, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.opened("s1", 1), feed.opened("s1", 2)]);
    actors.ingest([feed.disconnected("e1", "s1", "timeout"), feed.closed("s1", 1, "tunnelLost", [5, 6])]);
    expect(of("stream.closed").map((e) => [e.streamId, e.data])).toEqual([["1", expect.objectContaining({ bytesIn: 5 })]]);
    expect(actors.snapshot().streams.map((s) => [s.streamId, s.state])).toEqual([[2, "closing"]]);
    clock.increment(1_000);
    expect(of("stream.closed").map((e) => [e.streamId, e.data])).toEqual([
      ["1", expect.objectContaining({ reason: "tunnelLost" })],
      ["2", expect.objectContaining({ reason: "tunnelLost", bytesIn: 0 })],
    ]);
    expect(actors.snapshot().streams).toEqual([]);
  });

  it("logs each failed handshake as its own one-shot actor", () => {
    const { actors, of, feed } = system();
    actors.ingest([feed.listening(), feed.authFailed(), feed.authFailed()]);
    expect(of("edge.authFailed").map((e) => [e.sessionId, e.edgeId, e.seq])).toEqual([
      ["run-2-auth-1", "e1", 1],
      ["run-2-auth-2", "e1", 1],
    ]);
    expect(actors.snapshot().edges).toEqual([]);
  });

  it("stop drains, shuts every session and stream down, and settles once all ended", async () => {
    const { actors, events, drained, clock, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.opened("s1", 1)]);
    const stopped = actors.stop("signal");
    await Promise.resolve();
    expect(drained).toEqual(["drained"]);
    // The addon confirms the session's end; the stream's close never comes, so the grace closes it.
    actors.ingest([feed.disconnected("e1", "s1", "hubShutdown")]);
    clock.increment(1_000);
    await expect(stopped).resolves.toEqual({ reason: "signal", message: null });
    expect(events.slice(-3).map((e) => [e.type, e.type === "hub.stopped" ? e.data.reason : ""])).toEqual(
      expect.arrayContaining([
        ["hub.stopped", "signal"],
        ["edge.disconnected", ""],
        ["stream.closed", ""],
      ]),
    );
    expect(events.find((e) => e.type === "stream.closed")?.data).toMatchObject({ reason: "hubShutdown" });
    expect(actors.snapshot().hub.state).toBe("stopped");
  });

  it("interrupts a drain Effect that outlasts the drain timeout", async () => {
    let interrupted = false;
    const { actors, of, clock, feed } = system({
      drain: Effect.never.pipe(Effect.onInterrupt(() => Effect.sync(() => void (interrupted = true)))),
    });
    actors.ingest([feed.listening()]);
    const stopped = actors.stop();
    await new Promise((resolve) => setImmediate(resolve));
    clock.increment(5_000);
    await expect(stopped).resolves.toEqual({ reason: "shutdown", message: "drain did not finish within 5000 ms" });
    await new Promise((resolve) => setImmediate(resolve));
    expect(interrupted).toBe(true);
    expect(of("hub.stopped")[0]?.time).toBe(1_000_000 + 5_000);
  });

  it("closes what is open when the addon stops the hub on its own", async () => {
    const { actors, of, clock, feed } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1"), feed.opened("s1", 1), feed.hubStopped()]);
    clock.increment(3_000);
    await expect(actors.settled).resolves.toMatchObject({ reason: "error" });
    expect(of("edge.disconnected")[0]?.data).toMatchObject({ reason: "hubShutdown" });
    expect(of("stream.closed")[0]?.data).toMatchObject({ reason: "hubShutdown" });
  });

  it("reports events it cannot place instead of throwing, and never starts an ended actor twice", () => {
    const { actors, problems, of, feed } = system();
    actors.ingest([feed.listening(), feed.disconnected("e9", "nope", "edgeClosed")]);
    actors.ingest([feed.connected("e1", "s1"), feed.connected("e1", "s1")]);
    actors.ingest([feed.opened("s1", 1), feed.opened("s1", 1), feed.closed("s1", 1), feed.closed("s1", 1)]);
    actors.ingest([feed.disconnected("e1", "s1", "edgeClosed"), feed.disconnected("e1", "s1", "edgeClosed")]);
    actors.ingest([feed.connected("e1", "s1")]);
    expect(problems).toEqual([
      { type: "unknownSession", event: "edge.disconnected", sessionId: "nope" },
      { type: "duplicateSession", sessionId: "s1" },
      { type: "duplicateStream", sessionId: "s1", streamId: 1 },
      { type: "lateEvent", event: "stream.closed", sessionId: "s1", streamId: 1 },
      { type: "lateEvent", event: "edge.disconnected", sessionId: "s1", streamId: null },
      { type: "duplicateSession", sessionId: "s1" },
    ]);
    expect(of("stream.closed")).toHaveLength(1);
    expect(of("edge.connected")).toHaveLength(1);
  });

  it("closes a stream whose session it never saw, and reports it", () => {
    const { actors, problems, of, clock, feed } = system();
    actors.ingest([feed.listening(), feed.opened("ghost", 1)]);
    expect(problems).toEqual([{ type: "unknownSession", event: "stream.opened", sessionId: "ghost" }]);
    clock.increment(1_000);
    expect(of("stream.closed")[0]?.data).toMatchObject({ reason: "tunnelLost" });
  });

  it("keeps going when the sink throws", () => {
    let calls = 0;
    const { actors, problems, feed } = system({
      sink: {
        append: () => {
          calls += 1;
          if (calls === 1) throw new Error("outbox full");
        },
      },
    });
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    expect(calls).toBe(2);
    expect(problems).toEqual([{ type: "sinkFailed", eventType: "hub.started", message: "outbox full" }]);
  });

  it("logs recovery and a failed start on the hub actor", async () => {
    const { actors, events } = system();
    const data = { previousRunId: "run-1", replayedEvents: 4, sessionsClosed: 1, streamsClosed: 1, udpClosed: 0, durationMs: 2 };
    actors.recovered(data);
    actors.startFailed("EADDRINUSE: 0.0.0.0:8443");
    await expect(actors.settled).resolves.toEqual({ reason: "error", message: "EADDRINUSE: 0.0.0.0:8443" });
    expect(events.map((e) => [e.type, e.seq])).toEqual([
      ["hub.recovered", 1],
      ["hub.stopped", 2],
    ]);
    expect(events[0]?.data).toEqual(data);
  });
});

describe("hub actor system: UDP sessions", () => {
  const udp = { edgeId: "e1", sessionId: "s1", edgePort: 53, clientAddr: "203.0.113.9:53000", target: "10.0.0.53:53" };
  const totals = { packetsIn: 3, packetsOut: 2, bytesIn: 90, bytesOut: 400 };
  const nat = (body: Record<string, unknown>, seq: number, atMs: number) => ({ ...body, seq: 100 + seq, atMs }) as unknown as NativeHubEvent;

  it("runs one actor per session: opened, then expired by the addon with its totals (and udp.closed expired)", () => {
    const { actors, of, feed, problems } = system({ timing: { udpIdleTimeoutMs: 5_000 } });
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    actors.ingest([
      nat({ type: "udp.opened", ...udp, udpSessionId: 1 }, 1, 2_000),
      nat({ type: "udp.opened", ...udp, udpSessionId: 2, clientAddr: "203.0.113.9:53001" }, 2, 2_100),
    ]);
    actors.ingest([
      nat({ type: "udp.expired", ...udp, udpSessionId: 1, ...totals, durationMs: 9_000, reason: "idle" }, 3, 11_000),
      nat({ type: "udp.closed", ...udp, udpSessionId: 2, clientAddr: "203.0.113.9:53001", ...totals, durationMs: 100, reason: "targetError" }, 4, 2_200),
    ]);
    expect(of("udp.opened").map((e) => [e.streamId, e.seq])).toEqual([["1", 1], ["2", 1]]);
    expect(of("udp.expired")).toEqual([expect.objectContaining({ streamId: "1", seq: 2, time: 11_000, data: { idleMs: 5_000 } })]);
    expect(of("udp.closed")).toEqual([
      expect.objectContaining({ streamId: "1", seq: 3, data: { edgePort: 53, clientAddr: udp.clientAddr, target: udp.target, ...totals, durationMs: 9_000, reason: "expired", message: "" } }),
      expect.objectContaining({ streamId: "2", seq: 2, data: expect.objectContaining({ reason: "targetUnreachable", packetsIn: 3, durationMs: 100 }) }),
    ]);
    expect(problems).toEqual([]);
    expect(actors.snapshot().edges[0]?.activeStreams).toBe(0);
  });

  it("closes open UDP sessions with the addon's counts when the tunnel goes, or on its own after the grace", () => {
    const { actors, of, feed, clock } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    actors.ingest([nat({ type: "udp.opened", ...udp, udpSessionId: 1 }, 1, 2_000), nat({ type: "udp.opened", ...udp, udpSessionId: 2 }, 2, 2_000)]);
    actors.ingest([feed.disconnected("e1", "s1", "edgeClosed", 3_000)]);
    actors.ingest([nat({ type: "udp.closed", ...udp, udpSessionId: 1, ...totals, durationMs: 1_000, reason: "tunnelLost" }, 3, 3_000)]);
    expect(of("udp.closed").map((e) => e.streamId)).toEqual(["1"]);
    clock.increment(1_000);
    expect(of("udp.closed").map((e) => [e.streamId, (e.data as { reason: string }).reason, (e.data as { packetsIn: number }).packetsIn])).toEqual([
      ["1", "tunnelLost", 3],
      ["2", "tunnelLost", 0],
    ]);
  });

  it("logs rate-limited refusals and oversized drops as notices of the hub run, without a lifecycle", () => {
    const { actors, of, feed, problems } = system();
    actors.ingest([feed.listening(), feed.connected("e1", "s1")]);
    actors.ingest([
      nat({ type: "udp.refused", edgeId: "e1", edgePort: 53, clientAddr: "203.0.113.10:1", reason: "sessionCap", count: 4 }, 1, 2_000),
      nat({ type: "udp.oversized", edgeId: "e1", edgePort: 53, clientAddr: "203.0.113.10:1", size: 70_000, maxSize: 65_507, count: 1 }, 2, 2_001),
      nat({ type: "udp.refused", edgeId: "e1", edgePort: 53, clientAddr: "203.0.113.10:1", reason: "somethingNew", count: 1 }, 3, 2_002),
    ]);
    expect([...of("udp.refused"), ...of("udp.oversized")]).toEqual([
      expect.objectContaining({ sessionId: "run-2.udp", streamId: null, seq: 1, edgeId: "e1", data: { edgePort: 53, clientAddr: "203.0.113.10:1", reason: "sessionCap", count: 4 } }),
      expect.objectContaining({ sessionId: "run-2.udp", streamId: null, seq: 2, data: { edgePort: 53, clientAddr: "203.0.113.10:1", size: 70_000, maxSize: 65_507, count: 1 } }),
    ]);
    expect(problems).toEqual([{ type: "unknownUdpReason", event: "udp.refused", reason: "somethingNew" }]);
  });
});

describe("RecentKeys (ended actors)", () => {
  it("always remembers the newest `capacity` keys and holds at most twice as many", () => {
    const keys = new RecentKeys(100);
    const forgotten: number[] = [];
    let mostHeld = 0;
    for (let i = 0; i < 1_000; i++) {
      keys.add(`k${i}`);
      // The newest 100 are remembered after every add.
      for (let j = Math.max(0, i - 99); j <= i; j++) if (!keys.has(`k${j}`)) forgotten.push(j);
      let held = 0;
      for (let j = 0; j <= i; j++) if (keys.has(`k${j}`)) held++;
      mostHeld = Math.max(mostHeld, held);
    }
    expect(forgotten).toEqual([]);
    expect(mostHeld).toBeLessThanOrEqual(200);
    expect(keys.has("k0")).toBe(false);
    expect(keys.has("never")).toBe(false);
  });

  it("a key added again counts as new", () => {
    const keys = new RecentKeys(2);
    keys.add("a");
    keys.add("b");
    keys.add("a");
    keys.add("c");
    keys.add("d");
    expect(keys.has("a")).toBe(true);
    expect(keys.has("d")).toBe(true);
  });
});
