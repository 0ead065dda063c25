import { describe, expect, it } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import {
  hubSessionMachine,
  type EdgeDisconnectReason,
  type HubSessionFact,
} from "../../src/machines/hub-session.js";

function start() {
  const facts: HubSessionFact[] = [];
  const clock = new SimulatedClock();
  const machine = hubSessionMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
  const actor = createActor(machine, { input: { sessionId: "s1", closeTimeoutMs: 2_000 }, clock }).start();
  return { actor, facts, clock };
}

const connected = { type: "edge.connected", atMs: 1_000, edgeId: "e1", remoteAddr: "198.51.100.2:40100" } as const;

function startConnected() {
  const started = start();
  started.actor.send(connected);
  return started;
}

describe("hubSessionMachine", () => {
  it("authenticates, goes active and records the edge", () => {
    const { actor, facts } = start();
    expect(actor.getSnapshot().value).toBe("authenticating");
    actor.send(connected);
    expect(actor.getSnapshot().value).toBe("active");
    expect(actor.getSnapshot().context).toMatchObject({ edgeId: "e1", remoteAddr: "198.51.100.2:40100", connectedAtMs: 1_000 });
    expect(facts).toEqual([{ type: "edge.connected", time: 1_000, data: { remoteAddr: "198.51.100.2:40100" } }]);
  });

  it("ends in rejected on a failed handshake, reporting the attempt", () => {
    const { actor, facts } = start();
    actor.send({ type: "edge.authFailed", atMs: 500, remoteAddr: "203.0.113.1:1", claimedEdgeId: "e9", reason: "authFailed" });
    expect(actor.getSnapshot().value).toBe("rejected");
    expect(actor.getSnapshot().output).toEqual({ outcome: "rejected", atMs: 500, reason: "authFailed" });
    expect(facts).toEqual([
      { type: "edge.authFailed", time: 500, data: { remoteAddr: "203.0.113.1:1", claimedEdgeId: "e9", reason: "authFailed" } },
    ]);
  });

  it("records pushed config while active", () => {
    const { actor, facts } = startConnected();
    actor.send({ type: "edge.configPushed", atMs: 1_100, listenPorts: [80, 443], listenPortsUdp: [53] });
    expect(actor.getSnapshot().value).toBe("active");
    expect(actor.getSnapshot().context.listenPorts).toEqual([80, 443]);
    expect(facts.at(-1)).toEqual({ type: "edge.configPushed", time: 1_100, data: { listenPorts: [80, 443], listenPortsUdp: [53] } });
  });

  it.each<EdgeDisconnectReason>(["edgeClosed", "timeout", "protocolError", "ioError", "revoked", "hubShutdown"])(
    "closes on the addon's disconnect (%s) with the session's duration",
    (reason) => {
      const { actor, facts } = startConnected();
      actor.send({ type: "edge.disconnected", atMs: 4_000, reason, message: "bye" });
      expect(actor.getSnapshot().value).toBe("closed");
      expect(facts.at(-1)).toEqual({ type: "edge.disconnected", time: 4_000, data: { reason, message: "bye", durationMs: 3_000 } });
      expect(actor.getSnapshot().output).toEqual({ outcome: "disconnected", atMs: 4_000, reason });
    },
  );

  it("is superseded by a newer session: superseded fact, closing, then the addon's disconnect", () => {
    const { actor, facts } = startConnected();
    actor.send({ type: "policy.supersede", atMs: 2_000, bySessionId: "s2", remoteAddr: "198.51.100.3:40200" });
    expect(actor.getSnapshot().value).toBe("closing");
    actor.send({ type: "edge.disconnected", atMs: 2_010, reason: "superseded" });
    expect(facts.map((f) => f.type)).toEqual(["edge.connected", "edge.superseded", "edge.disconnected"]);
    expect(facts[1]).toEqual({ type: "edge.superseded", time: 2_000, data: { bySessionId: "s2", remoteAddr: "198.51.100.3:40200" } });
    expect(facts[2]).toMatchObject({ data: { reason: "superseded", message: "", durationMs: 1_010 } });
  });

  it("is not superseded by itself (guard byAnotherSession)", () => {
    const { actor, facts } = startConnected();
    actor.send({ type: "policy.supersede", atMs: 2_000, bySessionId: "s1", remoteAddr: null });
    expect(actor.getSnapshot().value).toBe("active");
    expect(facts.map((f) => f.type)).toEqual(["edge.connected"]);
  });

  it.each([
    [{ type: "policy.revoke", atMs: 3_000 }, "revoked"],
    [{ type: "policy.shutdown", atMs: 3_000 }, "hubShutdown"],
    [{ type: "policy.supersede", atMs: 3_000, bySessionId: "s2", remoteAddr: null }, "superseded"],
  ] as const)("closes on its own after the close timeout when the addon stays silent (%o)", (request, reason) => {
    const { actor, facts, clock } = startConnected();
    actor.send(request);
    expect(actor.getSnapshot().value).toBe("closing");
    clock.increment(1_999);
    expect(actor.getSnapshot().value).toBe("closing");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("closed");
    const last = facts.at(-1);
    expect(last).toMatchObject({ type: "edge.disconnected", time: 5_000, data: { reason, durationMs: 4_000 } });
    expect(last?.type === "edge.disconnected" && last.data.message).toMatch(/no disconnect from the addon/);
  });

  it("keeps the addon's reason when it confirms a revoke with its own", () => {
    const { actor, facts, clock } = startConnected();
    actor.send({ type: "policy.revoke", atMs: 3_000 });
    actor.send({ type: "edge.disconnected", atMs: 3_001, reason: "revoked", message: "edge removed" });
    clock.increment(10_000);
    expect(facts.filter((f) => f.type === "edge.disconnected")).toEqual([
      { type: "edge.disconnected", time: 3_001, data: { reason: "revoked", message: "edge removed", durationMs: 2_001 } },
    ]);
  });

  it("ignores policy requests before it is authenticated and after it closed", () => {
    const { actor, facts } = start();
    actor.send({ type: "policy.revoke", atMs: 1 });
    expect(actor.getSnapshot().value).toBe("authenticating");
    actor.send(connected);
    actor.send({ type: "edge.disconnected", atMs: 2_000, reason: "edgeClosed" });
    actor.send({ type: "policy.shutdown", atMs: 3_000 });
    expect(facts.map((f) => f.type)).toEqual(["edge.connected", "edge.disconnected"]);
  });
});
