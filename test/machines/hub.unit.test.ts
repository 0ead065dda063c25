import { describe, expect, it } from "vitest";
import { createActor, fromPromise, SimulatedClock, waitFor } from "xstate";
import { hubMachine, type HubFact } from "../../src/machines/hub.js";

const input = { portwayVersion: "0.1.0", fingerprint: "ab".repeat(32), drainTimeoutMs: 5_000 };

type Drain = Parameters<typeof fromPromise<void>>[0];

function start(drain: Drain = async () => undefined) {
  const facts: HubFact[] = [];
  const shutdowns: number[] = [];
  const clock = new SimulatedClock();
  const machine = hubMachine.provide({
    actions: {
      emit: (_, fact) => void facts.push(fact),
      shutdownSessions: (_, params) => void shutdowns.push(params.atMs),
    },
    actors: { drain: fromPromise<void>(drain) },
  });
  const actor = createActor(machine, { input, clock }).start();
  return { actor, facts, shutdowns, clock };
}

const listening = { type: "hub.listening", atMs: 1_000, port: 8443 } as const;

describe("hubMachine", () => {
  it("starts, runs, drains and stops: started and stopped facts, sessions told to shut down", async () => {
    const { actor, facts, shutdowns } = start();
    expect(actor.getSnapshot().value).toBe("starting");
    actor.send(listening);
    expect(actor.getSnapshot().value).toBe("running");
    actor.send({ type: "policy.stop", atMs: 9_000, reason: "signal" });
    expect(actor.getSnapshot().value).toBe("draining");
    expect(shutdowns).toEqual([9_000]);
    await waitFor(actor, (s) => s.status === "done");
    expect(facts).toEqual([
      { type: "hub.started", time: 1_000, data: { tunnelPort: 8443, fingerprint: input.fingerprint, portwayVersion: "0.1.0" } },
      // The drain finishing carries no time; the actor running the machine stamps it.
      { type: "hub.stopped", time: null, data: { reason: "signal", message: null } },
    ]);
    expect(actor.getSnapshot().output).toEqual({ reason: "signal", message: null });
  });

  it("stops when the addon reports hub.stopped during the drain, and aborts the drain", async () => {
    let aborted = false;
    const { actor, facts } = start(
      ({ signal }) =>
        new Promise<void>((resolve) => {
          signal.addEventListener("abort", () => {
            aborted = true;
            resolve();
          });
        }),
    );
    actor.send(listening);
    actor.send({ type: "policy.stop", atMs: 9_000, reason: "shutdown" });
    actor.send({ type: "hub.stopped", atMs: 9_050 });
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(aborted).toBe(true);
    expect(facts.at(-1)).toEqual({ type: "hub.stopped", time: 9_050, data: { reason: "shutdown", message: null } });
  });

  it("gives up on a drain that outlasts the drain timeout (simulated clock) and aborts it", () => {
    let aborted = false;
    const { actor, facts, clock } = start(
      ({ signal }) =>
        new Promise<void>(() => {
          signal.addEventListener("abort", () => void (aborted = true));
        }),
    );
    actor.send(listening);
    actor.send({ type: "policy.stop", atMs: 9_000, reason: "shutdown" });
    clock.increment(4_999);
    expect(actor.getSnapshot().value).toBe("draining");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(aborted).toBe(true);
    expect(facts.at(-1)).toEqual({
      type: "hub.stopped",
      time: 14_000,
      data: { reason: "shutdown", message: "drain did not finish within 5000 ms" },
    });
  });

  it("stops with reason error when the drain fails", async () => {
    const { actor, facts } = start(async () => {
      throw new Error("ECLOSED: already stopped");
    });
    actor.send(listening);
    actor.send({ type: "policy.stop", atMs: 9_000, reason: "shutdown" });
    await waitFor(actor, (s) => s.status === "done");
    expect(facts.at(-1)).toMatchObject({ data: { reason: "error", message: "drain failed: ECLOSED: already stopped" } });
  });

  it("stops with reason error when the start fails, without a started fact", () => {
    const { actor, facts } = start();
    actor.send({ type: "hub.startFailed", atMs: 500, message: "EADDRINUSE: port 8443 is taken" });
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(facts).toEqual([{ type: "hub.stopped", time: 500, data: { reason: "error", message: "EADDRINUSE: port 8443 is taken" } }]);
  });

  it("stops with reason error when the addon stops on its own while running", () => {
    const { actor, facts, shutdowns } = start();
    actor.send(listening);
    actor.send({ type: "hub.stopped", atMs: 2_000 });
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(shutdowns).toEqual([]);
    expect(facts.at(-1)).toMatchObject({ time: 2_000, data: { reason: "error" } });
  });

  it("drains when asked to stop while still starting", async () => {
    const { actor, facts } = start();
    actor.send({ type: "policy.stop", atMs: 100, reason: "signal" });
    await waitFor(actor, (s) => s.status === "done");
    expect(facts.map((f) => f.type)).toEqual(["hub.stopped"]);
  });

  it("reports recovery of the previous run", () => {
    const { actor, facts } = start();
    const data = { previousRunId: "r0", replayedEvents: 12, sessionsClosed: 1, streamsClosed: 2, udpClosed: 0, durationMs: 3 };
    actor.send({ type: "hub.recovered", atMs: 900, data });
    actor.send(listening);
    expect(facts.map((f) => f.type)).toEqual(["hub.recovered", "hub.started"]);
    expect(facts[0]).toEqual({ type: "hub.recovered", time: 900, data });
  });
});
