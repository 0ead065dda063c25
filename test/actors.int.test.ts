// The actor systems fed by the real addon: a real hub and edge on loopback, real TCP clients through the
// tunnel, and the resulting lifecycle history checked end to end (and against recover()).
import { Effect } from "effect";
import { describe, expect, it } from "vitest";
import { createEdgeActorSystem, type EdgeLifecycleEvent } from "../src/actors/edge-actor-system.js";
import { createHubActorSystem, type HubActorProblem } from "../src/actors/hub-actor-system.js";
import { recover } from "../src/actors/recover.js";
import type { DomainEvent } from "../src/events/envelope.js";
import { connectTcp, echoRoundTrip, hashExchange } from "./helpers/client.js";
import { startEchoTarget, startHashTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { startTunnel, type TunnelFixture } from "./helpers/tunnel.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

/** Starts a tunnel whose hub and edge events feed actor systems from the first edge event on. */
async function tunnelWithActors(target: string) {
  const hubLog: DomainEvent[] = [];
  const edgeLog: EdgeLifecycleEvent[] = [];
  const problems: HubActorProblem[] = [];
  let fixture: TunnelFixture | undefined;
  const hubActors = createHubActorSystem({
    hubId: "test-hub",
    runId: "run-1",
    portwayVersion: "test",
    fingerprint: null,
    sink: { append: (e) => void hubLog.push(e) },
    drain: Effect.promise(() => fixture?.hub.stop() ?? Promise.resolve()),
    report: (p) => void problems.push(p),
  });
  const edgeActors = createEdgeActorSystem({
    edgeId: "edge-1",
    sink: { append: (e) => void edgeLog.push(e) },
    stop: Effect.promise(() => fixture?.edge.stop() ?? Promise.resolve()),
  });
  fixture = teardown.track(
    await startTunnel({
      routes: [{ target }],
      beforeEdgeStart: (edge, hub) => {
        hub.on("nativeEvent", (e) => hubActors.ingest([e]));
        edge.on("nativeEvent", (e) => edgeActors.ingest([e]));
      },
    }),
  );
  hubActors.listening(fixture.tunnelPort);
  return { tunnel: fixture, hubActors, edgeActors, hubLog, edgeLog, problems };
}

const ofType = <T extends DomainEvent["type"]>(log: DomainEvent[], type: T) =>
  log.filter((e): e is Extract<DomainEvent, { type: T }> => e.type === type);

describe("actor systems on the real addon", () => {
  it("log exactly one opened and one closed per stream with the relayed byte counts, and a complete history", async () => {
    const target = teardown.track(await startHashTarget("v1"));
    const { tunnel, hubActors, edgeActors, hubLog, edgeLog, problems } = await tunnelWithActors(target.address);
    await waitFor(() => edgeActors.snapshot().connected && hubActors.snapshot().edges.length === 1, {
      what: "both actor systems seeing the tunnel",
    });
    const [port] = tunnel.listenPorts as [number];

    const plan = Array.from({ length: 20 }, (_, i) => ({ send: i * 1_000, receive: (20 - i) * 3_000 }));
    await Promise.all(plan.map(({ send, receive }) => hashExchange(port, send, receive)));
    await waitFor(() => ofType(hubLog, "stream.closed").length === 20 && hubActors.snapshot().streams.length === 0, {
      what: "20 streams closed on the hub",
    });

    const opened = ofType(hubLog, "stream.opened");
    const closed = ofType(hubLog, "stream.closed");
    expect(opened.map((e) => e.seq)).toEqual(Array(20).fill(1));
    expect(closed.map((e) => e.seq)).toEqual(Array(20).fill(2));
    expect(new Set(closed.map((e) => `${e.sessionId}/${e.streamId}`))).toEqual(new Set(opened.map((e) => `${e.sessionId}/${e.streamId}`)));
    // Hash target protocol: a 16-byte request header up, a 64-byte digest trailer down.
    expect(closed.map((e) => `${e.data.bytesIn}/${e.data.bytesOut}`).sort()).toEqual(
      plan.map(({ send, receive }) => `${send + 16}/${receive + 64}`).sort(),
    );
    expect(closed.every((e) => e.data.target === target.address && e.edgeId === "edge-1")).toBe(true);

    await waitFor(() => edgeLog.filter((e) => e.type === "stream.closed").length === 20, { what: "20 streams closed on the edge" });
    const edgeClosed = edgeLog.filter((e) => e.type === "stream.closed");
    expect(edgeClosed.map((e) => (e.type === "stream.closed" ? e.data.bytesIn : -1)).sort((a, b) => a - b)).toEqual(
      plan.map(({ send }) => send + 16).sort((a, b) => a - b),
    );

    await edgeActors.stop();
    await waitFor(() => ofType(hubLog, "edge.disconnected").length === 1, { what: "the hub seeing the edge go" });
    await expect(hubActors.stop()).resolves.toMatchObject({ reason: "shutdown" });

    expect(hubLog[0]).toMatchObject({ type: "hub.started", seq: 1, data: { tunnelPort: tunnel.tunnelPort } });
    expect(hubLog.at(-1)).toMatchObject({ type: "hub.stopped", seq: 2, data: { reason: "shutdown" } });
    expect(ofType(hubLog, "edge.connected")).toHaveLength(1);
    expect(ofType(hubLog, "edge.disconnected")[0]?.data.reason).toBe("edgeClosed");
    expect(edgeLog.filter((e) => e.streamId === null).map((e) => e.type)).toEqual([
      "tunnel.connecting",
      "tunnel.connected",
      "tunnel.stopped",
    ]);
    expect(problems).toEqual([]);
    // A complete history: nothing for a restarted hub to close.
    expect(recover(hubLog, { hubId: "test-hub", currentRunId: "run-2", atMs: Date.now() }).closingEvents).toEqual([]);
  });

  it("leave a crashed run's open stream and session to recover(), which closes them with hubRestarted", async () => {
    const target = teardown.track(await startEchoTarget("v1"));
    const { tunnel, hubActors, hubLog } = await tunnelWithActors(target.address);
    await waitFor(() => hubActors.snapshot().edges.length === 1, { what: "the hub actors seeing the edge" });
    const client = await connectTcp(tunnel.listenPorts[0] as number);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
    await waitFor(() => hubActors.snapshot().streams.length === 1, { what: "an open stream" });

    // The process "dies" here: whatever was logged so far is all the next run gets.
    const log = [...hubLog];
    const r = recover(log, { hubId: "test-hub", currentRunId: "run-2", atMs: Date.now() });
    expect(r.openSessions.map((s) => s.edgeId)).toEqual(["edge-1"]);
    expect(r.openStreams).toHaveLength(1);
    expect(r.closingEvents.map((e) => [e.type, e.seq, "reason" in e.data ? e.data.reason : null])).toEqual([
      ["stream.closed", 2, "hubRestarted"],
      ["edge.disconnected", 2, "hubRestarted"],
      ["hub.stopped", 2, "error"],
    ]);
  });
});
