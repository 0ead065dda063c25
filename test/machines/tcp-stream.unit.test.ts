import { describe, expect, it } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import {
  tcpStreamMachine,
  type StreamCloseReason,
  type TcpStreamFact,
  type TcpStreamInput,
} from "../../src/machines/tcp-stream.js";

const input: TcpStreamInput = {
  edgeId: "e1",
  sessionId: "s1",
  streamId: 7,
  edgePort: 80,
  clientAddr: "203.0.113.9:51000",
  target: "10.0.0.5:8080",
  closeGraceMs: 1_000,
};

function start() {
  const facts: TcpStreamFact[] = [];
  const clock = new SimulatedClock();
  const machine = tcpStreamMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
  const actor = createActor(machine, { input, clock }).start();
  return { actor, facts, clock };
}

const closedBy = (reason: StreamCloseReason, atMs = 1_500) =>
  ({ type: "stream.closed", atMs, reason, message: "", bytesIn: 120, bytesOut: 4_096, durationMs: 500 }) as const;

describe("tcpStreamMachine", () => {
  it("opens, then closes with the addon's reason and byte counts", () => {
    const { actor, facts } = start();
    expect(actor.getSnapshot().value).toBe("opening");
    actor.send({ type: "stream.opened", atMs: 1_000 });
    expect(actor.getSnapshot().value).toBe("open");
    actor.send(closedBy("clientClosed"));
    expect(actor.getSnapshot().status).toBe("done");
    expect(facts).toEqual([
      { type: "stream.opened", time: 1_000, data: { edgePort: 80, clientAddr: "203.0.113.9:51000", target: "10.0.0.5:8080" } },
      {
        type: "stream.closed",
        time: 1_500,
        data: {
          edgePort: 80,
          clientAddr: "203.0.113.9:51000",
          target: "10.0.0.5:8080",
          bytesIn: 120,
          bytesOut: 4_096,
          durationMs: 500,
          reason: "clientClosed",
          message: "",
        },
      },
    ]);
    expect(actor.getSnapshot().output).toEqual({ atMs: 1_500, closed: facts[1]?.data });
  });

  it.each<StreamCloseReason>(["clientClosed", "targetClosed", "timeout", "tunnelLost", "hubShutdown", "reset", "protocolError"])(
    "carries close reason %s from the open state",
    (reason) => {
      const { actor, facts } = start();
      actor.send({ type: "stream.opened", atMs: 1_000 });
      actor.send(closedBy(reason));
      expect(facts.at(-1)).toMatchObject({ type: "stream.closed", data: { reason } });
      expect(facts.filter((f) => f.type === "stream.closed")).toHaveLength(1);
    },
  );

  it("closes straight from opening when the target refuses, without an opened fact", () => {
    const { actor, facts } = start();
    actor.send(closedBy("targetRefused"));
    expect(actor.getSnapshot().status).toBe("done");
    expect(facts).toEqual([expect.objectContaining({ type: "stream.closed", data: expect.objectContaining({ reason: "targetRefused" }) })]);
  });

  it("goes half-closed on one side's FIN and closes from there", () => {
    const { actor, facts } = start();
    actor.send({ type: "stream.opened", atMs: 1_000 });
    actor.send({ type: "stream.halfClosed", atMs: 1_200, side: "client" });
    expect(actor.getSnapshot().value).toBe("halfClosed");
    expect(actor.getSnapshot().context.halfClosedBy).toBe("client");
    actor.send(closedBy("targetClosed"));
    expect(facts.map((f) => f.type)).toEqual(["stream.opened", "stream.closed"]);
    expect(facts[1]?.data).toMatchObject({ reason: "targetClosed" });
  });

  it("takes the target from stream.opened when the input did not know it", () => {
    const facts: TcpStreamFact[] = [];
    const machine = tcpStreamMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
    const actor = createActor(machine, { input: { ...input, target: null } }).start();
    actor.send({ type: "stream.opened", atMs: 1, target: "10.0.0.9:22" });
    expect(facts[0]?.data).toMatchObject({ target: "10.0.0.9:22" });
  });

  it("uses the addon's close when it arrives within the grace after the tunnel is lost", () => {
    const { actor, facts, clock } = start();
    actor.send({ type: "stream.opened", atMs: 1_000 });
    actor.send({ type: "policy.tunnelLost", atMs: 2_000 });
    expect(actor.getSnapshot().value).toBe("closing");
    clock.increment(999);
    actor.send(closedBy("tunnelLost", 2_001));
    expect(facts.at(-1)).toMatchObject({ time: 2_001, data: { reason: "tunnelLost", bytesIn: 120 } });
    clock.increment(10_000);
    expect(facts.filter((f) => f.type === "stream.closed")).toHaveLength(1);
  });

  it("closes on its own with tunnelLost when the addon stays silent past the grace", () => {
    const { actor, facts, clock } = start();
    actor.send({ type: "stream.opened", atMs: 1_000 });
    actor.send({ type: "stream.halfClosed", atMs: 1_100, side: "target" });
    actor.send({ type: "policy.tunnelLost", atMs: 2_000 });
    clock.increment(999);
    expect(actor.getSnapshot().status).toBe("active");
    clock.increment(1);
    expect(actor.getSnapshot().status).toBe("done");
    expect(facts.at(-1)).toMatchObject({
      type: "stream.closed",
      time: 3_000,
      data: { reason: "tunnelLost", durationMs: 2_000, bytesIn: 0, bytesOut: 0 },
    });
    const last = facts.at(-1);
    expect(last?.type === "stream.closed" && last.data.message).toMatch(/byte counts unknown/);
  });

  it("closes with hubShutdown when the hub drains, from opening too", () => {
    const { actor, facts, clock } = start();
    actor.send({ type: "policy.shutdown", atMs: 5_000 });
    clock.increment(1_000);
    expect(facts).toEqual([
      expect.objectContaining({
        type: "stream.closed",
        time: 6_000,
        data: expect.objectContaining({ reason: "hubShutdown", durationMs: 0 }),
      }),
    ]);
  });

  it("ignores events after it closed", () => {
    const { actor, facts } = start();
    actor.send({ type: "stream.opened", atMs: 1_000 });
    actor.send(closedBy("clientClosed"));
    actor.send(closedBy("timeout"));
    actor.send({ type: "policy.tunnelLost", atMs: 9_000 });
    expect(facts).toHaveLength(2);
  });

  it("emits through xstate's emitter when nothing is provided", () => {
    const seen: string[] = [];
    const actor = createActor(tcpStreamMachine, { input: { ...input, target: null } });
    actor.on("*", (fact) => void seen.push(`${fact.type}:${fact.type === "stream.closed" ? fact.data.reason : ""}`));
    actor.start();
    actor.send({ type: "stream.opened", atMs: 1 });
    actor.send(closedBy("reset"));
    expect(seen).toEqual(["stream.opened:", "stream.closed:reset"]);
  });
});
