import { Effect } from "effect";
import { describe, expect, it } from "vitest";
import { SimulatedClock } from "xstate";
import { createHubActorSystem } from "../src/actors/hub-actor-system.js";
import { recover } from "../src/actors/recover.js";
import { makeEvent, type DomainEvent } from "../src/events/envelope.js";
import { eventId } from "../src/events/ids.js";
import type { NativeHubEvent } from "../src/native/events.js";

/** A previous run's log, produced by the real actor system, cut off mid-flight (the process died). */
function crashedRunLog(): DomainEvent[] {
  const log: DomainEvent[] = [];
  const clock = new SimulatedClock();
  const actors = createHubActorSystem({
    hubId: "hub-1",
    runId: "run-1",
    portwayVersion: "0.1.0",
    fingerprint: null,
    sink: { append: (e) => void log.push(e) },
    drain: Effect.void,
    now: () => clock.now(),
    clock,
  });
  let seq = 0;
  const at = (ms: number) => ({ seq: ++seq, atMs: ms });
  const stream = (streamId: number, sessionId: string) =>
    ({ edgeId: sessionId === "s1" ? "e1" : "e2", sessionId, streamId, edgePort: 80, clientAddr: "203.0.113.9:5000", target: "10.0.0.5:80" }) as const;
  const events: NativeHubEvent[] = [
    { type: "hub.listening", port: 8443, ...at(1_000) },
    { type: "edge.connected", edgeId: "e1", sessionId: "s1", remoteAddr: "198.51.100.1:1", ...at(1_100) },
    { type: "edge.connected", edgeId: "e2", sessionId: "s2", remoteAddr: "198.51.100.2:2", ...at(1_200) },
    { type: "stream.opened", ...stream(1, "s1"), ...at(2_000) },
    { type: "stream.opened", ...stream(2, "s1"), ...at(2_100) },
    { type: "stream.opened", ...stream(3, "s2"), ...at(2_200) },
    {
      type: "stream.closed",
      ...stream(1, "s1"),
      bytesIn: 1,
      bytesOut: 2,
      durationMs: 500,
      reason: "clientClosed",
      message: "",
      ...at(2_500),
    },
    { type: "edge.disconnected", edgeId: "e2", sessionId: "s2", reason: "edgeClosed", message: "", ...at(3_000) },
    {
      type: "stream.closed",
      ...stream(3, "s2"),
      bytesIn: 5,
      bytesOut: 6,
      durationMs: 800,
      reason: "tunnelLost",
      message: "",
      ...at(3_000),
    },
  ];
  actors.ingest(events);
  return log;
}

const options = { hubId: "hub-1", currentRunId: "run-2", atMs: 10_000 };

describe("recover", () => {
  it("finds what the crashed run left open: its run, one session, one stream", () => {
    const r = recover(crashedRunLog(), options);
    expect(r.openHubRuns).toEqual([{ runId: "run-1", lastSeq: 1, lastTime: 1_000 }]);
    expect(r.openSessions).toEqual([
      { edgeId: "e1", sessionId: "s1", remoteAddr: "198.51.100.1:1", connectedAtMs: 1_100, lastSeq: 1 },
    ]);
    expect(r.openStreams).toEqual([
      {
        kind: "stream",
        edgeId: "e1",
        sessionId: "s1",
        streamId: "2",
        edgePort: 80,
        clientAddr: "203.0.113.9:5000",
        target: "10.0.0.5:80",
        openedAtMs: 2_100,
        lastSeq: 1,
      },
    ]);
    expect(r.summary).toEqual({ previousRunId: "run-1", replayedEvents: 9, sessionsClosed: 1, streamsClosed: 1, udpClosed: 0 });
  });

  it("closes them with hubRestarted, continuing each actor's seq, streams before sessions before runs", () => {
    const r = recover(crashedRunLog(), options);
    expect(r.closingEvents.map((e) => [e.type, e.sessionId, e.streamId, e.seq])).toEqual([
      ["stream.closed", "s1", "2", 2],
      ["edge.disconnected", "s1", null, 2],
      ["hub.stopped", "run-1", null, 2],
    ]);
    const [stream, session, run] = r.closingEvents;
    expect(stream).toMatchObject({
      time: 10_000,
      edgeId: "e1",
      data: { reason: "hubRestarted", durationMs: 7_900, bytesIn: 0, bytesOut: 0, edgePort: 80, target: "10.0.0.5:80" },
    });
    expect(stream?.id).toBe(eventId({ hubId: "hub-1", kind: "stream", sessionId: "s1", streamId: "2" }, 2));
    expect(session).toMatchObject({ v: 2, data: { reason: "hubRestarted", durationMs: 8_900 } });
    expect(run).toMatchObject({ data: { reason: "error" } });
  });

  it("leaves nothing open once its closing events are in the log", () => {
    const log = crashedRunLog();
    const first = recover(log, options);
    const second = recover([...log, ...first.closingEvents], { ...options, currentRunId: "run-3" });
    expect(second.closingEvents).toEqual([]);
    expect(second.openSessions).toEqual([]);
    expect(second.openStreams).toEqual([]);
    expect(second.summary.previousRunId).toBe("run-1");
  });

  it("leaves a cleanly stopped history alone", () => {
    const e = (type: "hub.started" | "hub.stopped", seq: number) =>
      makeEvent({
        type,
        hubId: "hub-1",
        edgeId: null,
        sessionId: "run-1",
        streamId: null,
        seq,
        time: seq,
        data: type === "hub.started" ? { tunnelPort: 1, fingerprint: null, portwayVersion: "x" } : { reason: "shutdown", message: null },
      } as Parameters<typeof makeEvent>[0]);
    const r = recover([e("hub.started", 1), e("hub.stopped", 2)], options);
    expect(r.closingEvents).toEqual([]);
    expect(r.summary).toEqual({ previousRunId: "run-1", replayedEvents: 2, sessionsClosed: 0, streamsClosed: 0, udpClosed: 0 });
  });

  it("closes open UDP sessions, and actors whose opening event is older than the log", () => {
    const base = { hubId: "hub-1", edgeId: "e1", sessionId: "s7" } as const;
    const events: DomainEvent[] = [
      makeEvent({ ...base, type: "udp.opened", streamId: "u1", seq: 1, time: 100, data: { edgePort: 53, clientAddr: "198.51.100.7:4000", target: null } }),
      // s7's edge.connected was trimmed by retention; only a later event of it survives.
      makeEvent({ ...base, type: "edge.configPushed", streamId: null, seq: 4, time: 200, data: { listenPorts: [53], listenPortsUdp: [53] } }),
    ];
    const r = recover(events, options);
    expect(r.closingEvents.map((e) => [e.type, e.seq, e.data])).toEqual([
      [
        "udp.closed",
        2,
        {
          edgePort: 53,
          clientAddr: "198.51.100.7:4000",
          target: null,
          bytesIn: 0,
          bytesOut: 0,
          packetsIn: 0,
          packetsOut: 0,
          durationMs: 9_900,
          reason: "hubRestarted",
          message: "the hub restarted while this was open; byte counts unknown",
        },
      ],
      ["edge.disconnected", 5, { reason: "hubRestarted", message: "the hub restarted while this session was open", durationMs: 9_800 }],
    ]);
    expect(r.summary).toMatchObject({ udpClosed: 1, streamsClosed: 0, sessionsClosed: 1, previousRunId: null });
  });

  it("does not take the publisher's dropped-events notices for a hub run", () => {
    const notice = makeEvent({
      type: "hub.eventsDropped",
      hubId: "hub-1",
      edgeId: null,
      sessionId: "run-1.publisher",
      streamId: null,
      seq: 1,
      time: 5,
      data: { count: 3, firstTime: 1, lastTime: 4, reason: "outboxFull" },
    });
    const r = recover([notice], options);
    expect(r.openHubRuns).toEqual([]);
    expect(r.closingEvents).toEqual([]);
    expect(r.summary).toMatchObject({ previousRunId: null, replayedEvents: 1 });
  });

  it("closes nothing for UDP notices (udp.refused, udp.oversized): they belong to no lifecycle", () => {
    const notice = { hubId: "hub-1", edgeId: "e1", sessionId: "run-1.udp", streamId: null, time: 5 } as const;
    const r = recover(
      [
        makeEvent({ ...notice, type: "udp.refused", seq: 1, data: { edgePort: 53, clientAddr: "203.0.113.10:1", reason: "sessionCap", count: 2 } }),
        makeEvent({ ...notice, type: "udp.oversized", seq: 2, data: { edgePort: 53, clientAddr: "203.0.113.10:1", size: 9_000, maxSize: null, count: 1 } }),
      ],
      options,
    );
    expect(r.openStreams).toEqual([]);
    expect(r.closingEvents).toEqual([]);
    expect(r.summary).toMatchObject({ udpClosed: 0, replayedEvents: 2 });
  });

  it("ignores other hubs' events and the current run's own", () => {
    const log = crashedRunLog().map((e) => ({ ...e, hubId: "hub-other" }));
    expect(recover(log, options).closingEvents).toEqual([]);
    expect(recover(crashedRunLog(), { ...options, currentRunId: "run-1" }).openHubRuns).toEqual([]);
  });
});
