import { describe, expect, it } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import { udpSessionMachine, type UdpSessionFact, type UdpSessionInput } from "../../src/machines/udp-session.js";

const input: UdpSessionInput = {
  edgeId: "e1",
  sessionId: "s1",
  flowId: "53/198.51.100.7:40000",
  edgePort: 53,
  clientAddr: "198.51.100.7:40000",
  target: "10.0.0.53:53",
  atMs: 10_000,
  idleAfterMs: 30_000,
  expireAfterMs: 60_000,
};

function start() {
  const facts: UdpSessionFact[] = [];
  const clock = new SimulatedClock();
  clock.set(input.atMs);
  const machine = udpSessionMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
  const actor = createActor(machine, { input, clock }).start();
  return { actor, facts, clock };
}

describe("udpSessionMachine", () => {
  it("starts active and reports its opening", () => {
    const { actor, facts } = start();
    expect(actor.getSnapshot().value).toBe("active");
    expect(facts).toEqual([expect.objectContaining({ type: "udp.opened", atMs: 10_000, flowId: input.flowId, target: "10.0.0.53:53" })]);
  });

  it("goes idle after the idle delay, then expires after the expiry delay, with the simulated clock", () => {
    const { actor, facts, clock } = start();
    clock.increment(29_999);
    expect(actor.getSnapshot().value).toBe("active");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("idle");
    clock.increment(59_999);
    expect(actor.getSnapshot().value).toBe("idle");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("expired");
    expect(actor.getSnapshot().status).toBe("done");
    expect(facts.map((f) => f.type)).toEqual(["udp.opened", "udp.idle", "udp.closed"]);
    expect(facts[1]).toMatchObject({ atMs: 40_000 });
    expect(facts[2]).toMatchObject({ reason: "expired", atMs: 100_000, durationMs: 90_000 });
  });

  it("activity restarts the idle timer and adds up the bytes", () => {
    const { actor, facts, clock } = start();
    clock.increment(20_000);
    actor.send({ type: "udp.activity", atMs: 30_000, bytesIn: 100, bytesOut: 400 });
    clock.increment(20_000);
    expect(actor.getSnapshot().value).toBe("active");
    actor.send({ type: "udp.activity", atMs: 50_000, bytesIn: 50, bytesOut: 0 });
    clock.increment(30_000);
    expect(actor.getSnapshot().value).toBe("idle");
    expect(actor.getSnapshot().context).toMatchObject({ bytesIn: 150, bytesOut: 400, lastActivityAtMs: 50_000 });
    expect(facts.at(-1)).toMatchObject({ type: "udp.idle", atMs: 80_000 });
  });

  it("resumes from idle on activity and does not expire on the old timer", () => {
    const { actor, facts, clock } = start();
    clock.increment(30_000);
    actor.send({ type: "udp.activity", atMs: 45_000, bytesIn: 1, bytesOut: 1 });
    expect(actor.getSnapshot().value).toBe("active");
    clock.increment(60_000 - 15_000);
    expect(actor.getSnapshot().status).toBe("active");
    expect(facts.map((f) => f.type)).toEqual(["udp.opened", "udp.idle", "udp.resumed", "udp.idle"]);
    expect(facts[2]).toMatchObject({ atMs: 45_000 });
  });

  it.each([
    ["udp.closed", "closed"],
    ["policy.tunnelLost", "tunnelLost"],
    ["policy.shutdown", "hubShutdown"],
  ] as const)("%s closes it with reason %s, from active or idle", (type, reason) => {
    for (const idleFirst of [false, true]) {
      const { actor, facts, clock } = start();
      actor.send({ type: "udp.activity", atMs: 11_000, bytesIn: 7, bytesOut: 9 });
      if (idleFirst) clock.increment(30_000);
      actor.send({ type, atMs: 50_000 });
      expect(actor.getSnapshot().value).toBe("closed");
      expect(facts.at(-1)).toEqual({
        type: "udp.closed",
        edgeId: "e1",
        sessionId: "s1",
        flowId: input.flowId,
        atMs: 50_000,
        reason,
        message: "",
        bytesIn: 7,
        bytesOut: 9,
        durationMs: 40_000,
      });
      expect(actor.getSnapshot().output).toEqual(facts.at(-1));
      clock.increment(1_000_000);
      expect(facts.filter((f) => f.type === "udp.closed")).toHaveLength(1);
    }
  });
});
