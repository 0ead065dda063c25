import { describe, expect, it } from "vitest";
import { createActor, SimulatedClock } from "xstate";
import { udpSessionMachine, type UdpSessionFact, type UdpSessionInput } from "../../src/machines/udp-session.js";

const input: UdpSessionInput = {
  edgeId: "e1",
  sessionId: "s1",
  udpId: "u1",
  edgePort: 53,
  clientAddr: "198.51.100.7:40000",
  target: "10.0.0.53:53",
  atMs: 10_000,
  idleAfterMs: 30_000,
  expireAfterMs: 60_000,
  closeGraceMs: 2_000,
};

function start() {
  const facts: UdpSessionFact[] = [];
  const clock = new SimulatedClock();
  clock.set(input.atMs);
  const machine = udpSessionMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
  const actor = createActor(machine, { input, clock }).start();
  return { actor, facts, clock };
}

const activity = (atMs: number, bytesIn: number, bytesOut: number) =>
  ({ type: "udp.activity", atMs, bytesIn, bytesOut, packetsIn: 1, packetsOut: 1 }) as const;

describe("udpSessionMachine", () => {
  it("starts active and reports its opening", () => {
    const { actor, facts } = start();
    expect(actor.getSnapshot().value).toBe("active");
    expect(facts).toEqual([
      { type: "udp.opened", time: 10_000, data: { edgePort: 53, clientAddr: "198.51.100.7:40000", target: "10.0.0.53:53" } },
    ]);
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
    expect(facts.map((f) => f.type)).toEqual(["udp.opened", "udp.expired", "udp.closed"]);
    expect(facts[1]).toEqual({ type: "udp.expired", time: 100_000, data: { idleMs: 90_000 } });
    expect(facts[2]).toMatchObject({ time: 100_000, data: { reason: "expired", durationMs: 90_000, bytesIn: 0 } });
  });

  it("activity restarts the idle timer and adds up bytes and datagrams", () => {
    const { actor, facts, clock } = start();
    clock.increment(20_000);
    actor.send(activity(30_000, 100, 400));
    clock.increment(20_000);
    expect(actor.getSnapshot().value).toBe("active");
    actor.send(activity(50_000, 50, 0));
    clock.increment(30_000);
    expect(actor.getSnapshot().value).toBe("idle");
    expect(actor.getSnapshot().context).toMatchObject({
      bytesIn: 150,
      bytesOut: 400,
      packetsIn: 2,
      packetsOut: 2,
      lastActivityAtMs: 50_000,
    });
    clock.increment(60_000);
    expect(facts.at(-1)).toMatchObject({
      type: "udp.closed",
      time: 140_000,
      data: { reason: "expired", bytesIn: 150, bytesOut: 400, packetsIn: 2, durationMs: 130_000 },
    });
  });

  it("resumes from idle on activity and does not expire on the old timer", () => {
    const { actor, facts, clock } = start();
    clock.increment(30_000);
    expect(actor.getSnapshot().value).toBe("idle");
    actor.send(activity(40_000, 1, 1));
    expect(actor.getSnapshot().value).toBe("active");
    clock.increment(59_999);
    expect(actor.getSnapshot().status).toBe("active");
    expect(actor.getSnapshot().value).toBe("idle");
    expect(facts.map((f) => f.type)).toEqual(["udp.opened"]);
  });

  it("does not count a zero-delta activity report as traffic (guard carriesTraffic)", () => {
    const { actor, clock } = start();
    clock.increment(20_000);
    actor.send({ type: "udp.activity", atMs: 30_000, bytesIn: 0, bytesOut: 0, packetsIn: 0, packetsOut: 0 });
    clock.increment(10_000);
    expect(actor.getSnapshot().value).toBe("idle");
    actor.send({ type: "udp.activity", atMs: 41_000, bytesIn: 0, bytesOut: 0, packetsIn: 0, packetsOut: 0 });
    expect(actor.getSnapshot().value).toBe("idle");
    expect(actor.getSnapshot().context.lastActivityAtMs).toBe(10_000);
  });

  it("lets a test replace the guard with .provide()", () => {
    const machine = udpSessionMachine.provide({ guards: { carriesTraffic: () => true } });
    const clock = new SimulatedClock();
    const actor = createActor(machine, { input, clock }).start();
    clock.increment(29_000);
    actor.send({ type: "udp.activity", atMs: 39_000, bytesIn: 0, bytesOut: 0, packetsIn: 0, packetsOut: 0 });
    clock.increment(29_000);
    expect(actor.getSnapshot().value).toBe("active");
  });

  it.each([
    [{ type: "udp.closed", atMs: 50_000, reason: "targetUnreachable", message: "ICMP port unreachable" }, "targetUnreachable"],
    [{ type: "udp.closed", atMs: 50_000, reason: "protocolError" }, "protocolError"],
    [{ type: "udp.closed", atMs: 50_000, reason: "sessionCap" }, "sessionCap"],
    [{ type: "udp.closed", atMs: 50_000, reason: "portClosed" }, "portClosed"],
  ] as const)("the addon's %o closes it with reason %s, from active or idle", (event, reason) => {
    for (const idleFirst of [false, true]) {
      const { actor, facts, clock } = start();
      actor.send(activity(11_000, 7, 9));
      if (idleFirst) clock.increment(30_000);
      expect(actor.getSnapshot().value).toBe(idleFirst ? "idle" : "active");
      actor.send(event);
      expect(actor.getSnapshot().value).toBe("closed");
      expect(facts.at(-1)).toEqual({
        type: "udp.closed",
        time: 50_000,
        data: {
          edgePort: 53,
          clientAddr: "198.51.100.7:40000",
          target: "10.0.0.53:53",
          reason,
          message: "message" in event ? event.message : "",
          bytesIn: 7,
          bytesOut: 9,
          packetsIn: 1,
          packetsOut: 1,
          durationMs: 40_000,
        },
      });
      expect(actor.getSnapshot().output).toEqual({ atMs: 50_000, closed: facts.at(-1)?.data });
      clock.increment(1_000_000);
      expect(facts.filter((f) => f.type === "udp.closed")).toHaveLength(1);
    }
  });

  it.each([
    [{ type: "policy.tunnelLost", atMs: 50_000 }, "tunnelLost"],
    [{ type: "policy.shutdown", atMs: 50_000 }, "hubShutdown"],
  ] as const)("%o waits the grace for the addon's close, then closes on its own with reason %s", (event, reason) => {
    const { actor, facts, clock } = start();
    actor.send(activity(11_000, 7, 9));
    clock.increment(40_000);
    actor.send(event);
    expect(actor.getSnapshot().value).toBe("closing");
    actor.send({ ...event, atMs: 50_500 });
    clock.increment(1_999);
    expect(actor.getSnapshot().value).toBe("closing");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("closed");
    expect(facts.map((f) => f.type)).toEqual(["udp.opened", "udp.closed"]);
    expect(facts.at(-1)).toMatchObject({ time: 50_000, data: { reason, bytesIn: 7, packetsIn: 1, durationMs: 40_000 } });
  });

  it("takes the addon's close with its totals during the grace", () => {
    const { actor, facts, clock } = start();
    actor.send({ type: "policy.tunnelLost", atMs: 50_000 });
    clock.increment(500);
    const totals = { bytesIn: 300, bytesOut: 900, packetsIn: 3, packetsOut: 3 };
    actor.send({ type: "udp.closed", atMs: 50_400, reason: "tunnelLost", totals });
    expect(actor.getSnapshot().value).toBe("closed");
    expect(facts.at(-1)).toMatchObject({ time: 50_400, data: { reason: "tunnelLost", ...totals, durationMs: 40_400 } });
    clock.increment(10_000);
    expect(facts.filter((f) => f.type === "udp.closed")).toHaveLength(1);
  });

  describe("with the addon keeping the idle timer (idleAfterMs null, as on the hub)", () => {
    const addonInput: UdpSessionInput = { ...input, idleAfterMs: null };
    const startAddon = () => {
      const facts: UdpSessionFact[] = [];
      const clock = new SimulatedClock();
      clock.set(input.atMs);
      const machine = udpSessionMachine.provide({ actions: { emit: (_, fact) => void facts.push(fact) } });
      const actor = createActor(machine, { input: addonInput, clock }).start();
      return { actor, facts, clock };
    };

    it("never goes idle or expires on its own", () => {
      const { actor, facts, clock } = startAddon();
      clock.increment(10_000_000);
      expect(actor.getSnapshot().value).toBe("active");
      expect(facts.map((f) => f.type)).toEqual(["udp.opened"]);
    });

    it("expires on the addon's udp.expired with the addon's totals and idle time", () => {
      const { actor, facts } = startAddon();
      const totals = { bytesIn: 1_000, bytesOut: 2_000, packetsIn: 10, packetsOut: 10 };
      actor.send({ type: "udp.expired", atMs: 25_000, idleMs: 5_000, totals });
      expect(actor.getSnapshot().status).toBe("done");
      expect(facts).toEqual([
        expect.objectContaining({ type: "udp.opened", time: 10_000 }),
        { type: "udp.expired", time: 25_000, data: { idleMs: 5_000 } },
        {
          type: "udp.closed",
          time: 25_000,
          data: { edgePort: 53, clientAddr: "198.51.100.7:40000", target: "10.0.0.53:53", ...totals, durationMs: 15_000, reason: "expired", message: "" },
        },
      ]);
    });
  });
});
