import { describe, expect, it } from "vitest";
import { createActor, fromPromise, SimulatedClock, waitFor } from "xstate";
import {
  edgeTunnelMachine,
  fallbackBackoffMs,
  type EdgeTunnelFact,
  type EdgeTunnelInput,
} from "../../src/machines/edge-tunnel.js";

const input: EdgeTunnelInput = { edgeId: "e1", reconnectInitialMs: 250, reconnectMaxMs: 30_000, stopTimeoutMs: 3_000 };
const hub = "hub.example:8443";

type StopEdge = Parameters<typeof fromPromise<void>>[0];

function start(stopEdge: StopEdge = async () => undefined) {
  const facts: EdgeTunnelFact[] = [];
  const clock = new SimulatedClock();
  const machine = edgeTunnelMachine.provide({
    actions: { emit: (_, fact) => void facts.push(fact) },
    actors: { stopEdge: fromPromise<void>(stopEdge) },
  });
  const actor = createActor(machine, { input, clock }).start();
  return { actor, facts, clock };
}

const connecting = (atMs: number, attempt: number) => ({ type: "tunnel.connecting", atMs, hub, attempt }) as const;
const connected = (atMs: number, sessionId = "s1") =>
  ({ type: "tunnel.connected", atMs, hub, hubId: "hub-1", sessionId, hubFingerprint: "ff".repeat(32), pinned: true }) as const;
const disconnected = (atMs: number, retryInMs: number | null) =>
  ({ type: "tunnel.disconnected", atMs, hub, reason: "timeout", message: "no pong", retryInMs }) as const;

describe("edgeTunnelMachine", () => {
  it("connecting → handshaking → connected, with facts for the attempt and the connection", () => {
    const { actor, facts } = start();
    expect(actor.getSnapshot().value).toBe("connecting");
    actor.send(connecting(100, 1));
    actor.send({ type: "tunnel.handshaking", atMs: 110, hub });
    expect(actor.getSnapshot().value).toBe("handshaking");
    actor.send(connected(120));
    expect(actor.getSnapshot().value).toBe("connected");
    expect(actor.getSnapshot().context).toMatchObject({ hubId: "hub-1", sessionId: "s1", pinned: true, failures: 0 });
    expect(facts).toEqual([
      { type: "tunnel.connecting", time: 100, data: { hub, attempt: 1 } },
      {
        type: "tunnel.connected",
        time: 120,
        data: { hub, hubId: "hub-1", sessionId: "s1", hubFingerprint: "ff".repeat(32), pinned: true },
      },
    ]);
  });

  it("backs off when the tunnel drops during the handshake", () => {
    const { actor, facts } = start();
    actor.send(connecting(100, 1));
    actor.send({ type: "tunnel.handshaking", atMs: 110, hub });
    actor.send({ type: "tunnel.rejected", atMs: 130, hub, reason: "fingerprintMismatch", message: "pin", retryInMs: 1_000 });
    expect(actor.getSnapshot().value).toBe("backingOff");
    expect(facts.at(-1)).toMatchObject({ type: "tunnel.rejected", data: { reason: "fingerprintMismatch", connectedMs: null } });
  });

  it("connects straight from connecting when the addon reports no handshake step", () => {
    const { actor } = start();
    actor.send(connecting(100, 1));
    actor.send(connected(120));
    expect(actor.getSnapshot().value).toBe("connected");
  });

  it("backs off after a disconnect for the addon's retryInMs (simulated clock), then expects a new attempt", () => {
    const { actor, facts, clock } = start();
    actor.send(connecting(0, 1));
    actor.send(connected(1_000));
    actor.send(disconnected(5_000, 800));
    expect(actor.getSnapshot().value).toBe("backingOff");
    expect(facts.at(-1)).toEqual({
      type: "tunnel.disconnected",
      time: 5_000,
      data: { hub, reason: "timeout", message: "no pong", retryInMs: 800, connectedMs: 4_000 },
    });
    expect(actor.getSnapshot().context).toMatchObject({ sessionId: null, connectedAtMs: null, failures: 1 });
    clock.increment(799);
    expect(actor.getSnapshot().value).toBe("backingOff");
    clock.increment(1);
    expect(actor.getSnapshot().value).toBe("connecting");
  });

  it("leaves backoff early when the addon already reports the next attempt", () => {
    const { actor, facts } = start();
    actor.send(disconnected(10, 800));
    actor.send(connecting(500, 2));
    expect(actor.getSnapshot().value).toBe("connecting");
    expect(facts.at(-1)).toEqual({ type: "tunnel.connecting", time: 500, data: { hub, attempt: 2 } });
  });

  it("doubles its own backoff per failure up to the maximum when the addon gives none", () => {
    const { actor, facts, clock } = start();
    const waits: number[] = [];
    for (let i = 0; i < 10; i++) {
      actor.send(disconnected(i, null));
      const fact = facts.at(-1);
      if (fact?.type === "tunnel.disconnected") waits.push(fact.data.retryInMs);
      clock.increment(fact?.type === "tunnel.disconnected" ? fact.data.retryInMs : 0);
      expect(actor.getSnapshot().value).toBe("connecting");
    }
    expect(waits).toEqual([250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    // A successful connection resets the count.
    actor.send(connected(100_000));
    actor.send(disconnected(100_001, null));
    expect(facts.at(-1)).toMatchObject({ data: { retryInMs: 250 } });
    expect(fallbackBackoffMs({ reconnectInitialMs: 250, reconnectMaxMs: 30_000, failures: 1_000 })).toBe(30_000);
  });

  it("records a rejection (auth failure, fingerprint mismatch) as the last error and backs off", () => {
    const { actor, facts } = start();
    actor.send(connecting(0, 1));
    actor.send({ type: "tunnel.rejected", atMs: 50, hub, reason: "authFailed", message: "bad secret", retryInMs: 5_000 });
    expect(actor.getSnapshot().value).toBe("backingOff");
    expect(actor.getSnapshot().context.lastError).toEqual({ kind: "rejected", reason: "authFailed", message: "bad secret" });
    expect(facts.at(-1)).toEqual({
      type: "tunnel.rejected",
      time: 50,
      data: { hub, reason: "authFailed", message: "bad secret", retryInMs: 5_000, connectedMs: null },
    });
  });

  it("tracks assigned ports, hot-reloaded ports, listener errors and an unpinned hub in context", () => {
    const { actor } = start();
    actor.send(connected(1));
    actor.send({ type: "tunnel.unpinned", atMs: 2, hub, hubFingerprint: "ff" });
    actor.send({ type: "ports.assigned", atMs: 3, listenPorts: [80], listenPortsUdp: [] });
    actor.send({ type: "ports.updated", atMs: 4, listenPorts: [80, 443], listenPortsUdp: [53] });
    actor.send({ type: "listener.error", atMs: 5, port: 443, protocol: "tcp", code: "EADDRINUSE", message: "taken" });
    actor.send({ type: "listener.error", atMs: 6, port: 443, protocol: "tcp", code: "EACCES", message: "denied" });
    expect(actor.getSnapshot().context).toMatchObject({
      pinned: false,
      listenPorts: [80, 443],
      listenPortsUdp: [53],
      listenerErrors: [{ port: 443, protocol: "tcp", code: "EACCES", message: "denied" }],
    });
    expect(actor.getSnapshot().value).toBe("connected");
  });

  it("stops from any state through the stopEdge actor; a second stop does not restart it", async () => {
    let stops = 0;
    const { actor, facts } = start(async () => {
      stops += 1;
    });
    actor.send(connected(1));
    actor.send({ type: "policy.stop", atMs: 10 });
    actor.send({ type: "policy.stop", atMs: 11 });
    expect(actor.getSnapshot().value).toBe("stopping");
    await waitFor(actor, (s) => s.status === "done");
    expect(stops).toBe(1);
    expect(facts.at(-1)).toEqual({ type: "tunnel.stopped", time: null, data: { message: null } });
  });

  it("declares itself stopped when the stop outlasts the stop timeout, and aborts it", () => {
    let aborted = false;
    const { actor, facts, clock } = start(
      ({ signal }) =>
        new Promise<void>(() => {
          signal.addEventListener("abort", () => void (aborted = true));
        }),
    );
    actor.send(disconnected(0, 1_000_000));
    actor.send({ type: "policy.stop", atMs: 10 });
    clock.increment(3_000);
    expect(actor.getSnapshot().value).toBe("stopped");
    expect(aborted).toBe(true);
    expect(facts.at(-1)).toEqual({ type: "tunnel.stopped", time: 3_010, data: { message: "stop did not finish within 3000 ms" } });
  });

  it("reports a failed stop in the stopped fact", async () => {
    const { actor, facts } = start(async () => {
      throw new Error("ECLOSED: edge already stopped");
    });
    actor.send({ type: "policy.stop", atMs: 10 });
    await waitFor(actor, (s) => s.status === "done");
    expect(facts.at(-1)).toMatchObject({ data: { message: "stop failed: ECLOSED: edge already stopped" } });
  });
});
