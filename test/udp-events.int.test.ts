/**
 * UDP sessions in the event log, end to end: real UDP sockets, the real addon (hub + edge over TLS), the hub's
 * embedded nats-server. Clients send numbered datagrams through the tunnel to a UDP echo target, go quiet, and
 * their sessions expire on the (small) idle timeout: the log holds exactly one udp.opened, one udp.expired and
 * one udp.closed(expired) per session, with packet and byte counts equal to what each client sent and got back,
 * and `history` says the same.
 */
import { createSocket, type Socket } from "node:dgram";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { DomainEvent } from "../src/events/envelope.js";
import { outboxEvents, storedEvents } from "./helpers/event-log.js";
import { startTestNats } from "./helpers/nats.js";
import { startUdpTunnel, udpClient, udpRequest } from "./helpers/udp.js";
import { waitFor } from "./helpers/wait.js";

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

/** A plain UDP echo target (no PROXY header): every datagram goes back to its sender unchanged. */
const startEcho = async (): Promise<{ readonly port: number; readonly close: () => Promise<void> }> => {
  const socket = createSocket("udp4");
  socket.on("message", (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return { port: socket.address().port, close: () => new Promise<void>((resolve) => socket.close(() => resolve())) };
};

interface ClientTally {
  readonly addr: string;
  sentPackets: number;
  sentBytes: number;
  gotPackets: number;
  gotBytes: number;
}

const CLIENTS = 3;
const DATAGRAMS = 20;
const IDLE_MS = 400;

describe("UDP sessions in the event log", () => {
  it("logs one opened and one expired per session with the packets and bytes the clients sent and received", async () => {
    const echo = await startEcho();
    cleanups.push(() => echo.close());
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${echo.port}`,
      proxyUdp: "none",
      hubExtra: { udpIdleTimeoutMs: IDLE_MS },
    });
    cleanups.push(() => tunnel.stop());

    const sockets: Socket[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const s = await udpClient();
      sockets.push(s);
      cleanups.push(() => new Promise<void>((resolve) => s.close(() => resolve())));
    }
    const tallies: ClientTally[] = sockets.map((s) => ({ addr: `127.0.0.1:${s.address().port}`, sentPackets: 0, sentBytes: 0, gotPackets: 0, gotBytes: 0 }));
    // Numbered datagrams of varying size, one at a time (the echo comes back before the next is sent, so the
    // counts are exact: no resend, no loss to account for). Clients interleave.
    await Promise.all(
      sockets.map(async (socket, c) => {
        const tally = tallies[c] as ClientTally;
        for (let n = 1; n <= DATAGRAMS; n++) {
          const payload = Buffer.from(`client ${c} datagram ${n} ${"x".repeat(n * 7 + c)}`);
          tally.sentPackets += 1;
          tally.sentBytes += payload.length;
          // No resend within the timeout: a lost datagram fails the test instead of being counted twice.
          const reply = await udpRequest(socket, tunnel.udpPort, payload, 5_000, 60_000);
          expect(reply.toString()).toBe(payload.toString());
          tally.gotPackets += 1;
          tally.gotBytes += reply.length;
        }
      }),
    );

    // Quiet now: each session expires after IDLE_MS in the addon, and its actor logs the end.
    const udpEvents = async (): Promise<DomainEvent[]> => {
      const out: DomainEvent[] = [];
      for await (const e of tunnel.hub.replayHistory({ edgeId: tunnel.edgeId, kinds: ["udp"] })) out.push(e);
      return out;
    };
    let events: DomainEvent[] = [];
    await waitFor(
      async () => {
        events = await udpEvents();
        return events.filter((e) => e.type === "udp.closed").length >= CLIENTS;
      },
      { timeoutMs: 15_000, what: `${CLIENTS} udp.closed events in the log` },
    );
    await tunnel.hub.flushEvents();
    events = await udpEvents();

    const ids = new Set(events.map((e) => e.id));
    expect(ids.size).toBe(events.length);
    const bySession = new Map<string, DomainEvent[]>();
    for (const e of events) {
      const key = `${e.sessionId}/${e.streamId}`;
      bySession.set(key, [...(bySession.get(key) ?? []), e]);
    }
    expect(bySession.size).toBe(CLIENTS);
    for (const tally of tallies) {
      const session = [...bySession.values()].find((es) => es.some((e) => e.type === "udp.opened" && e.data.clientAddr === tally.addr));
      expect(session, `session of ${tally.addr}`).toBeDefined();
      const list = session ?? [];
      expect(list.map((e) => e.type).sort()).toEqual(["udp.closed", "udp.expired", "udp.opened"]);
      expect(list.map((e) => e.seq).sort()).toEqual([1, 2, 3]);
      const opened = list.find((e) => e.type === "udp.opened");
      expect(opened?.data).toEqual({ edgePort: tunnel.udpPort, clientAddr: tally.addr, target: `127.0.0.1:${echo.port}` });
      const expired = list.find((e) => e.type === "udp.expired");
      expect(expired?.data).toEqual({ idleMs: IDLE_MS });
      const closed = list.find((e) => e.type === "udp.closed");
      expect(closed?.data).toMatchObject({
        edgePort: tunnel.udpPort,
        clientAddr: tally.addr,
        target: `127.0.0.1:${echo.port}`,
        reason: "expired",
        packetsIn: tally.sentPackets,
        packetsOut: tally.gotPackets,
        bytesIn: tally.sentBytes,
        bytesOut: tally.gotBytes,
      });
      expect(closed?.time).toBe(expired?.time);
      expect(closed?.time ?? 0).toBeGreaterThanOrEqual(opened?.time ?? Infinity);
    }

    // `history` agrees: one UDP connection per client, same counts, totals add up.
    const history = await tunnel.hub.history({ edgeId: tunnel.edgeId });
    const udp = history.connections.filter((c) => c.protocol === "udp");
    expect(udp).toHaveLength(CLIENTS);
    for (const tally of tallies) {
      expect(udp.find((c) => c.clientAddr === tally.addr)).toMatchObject({
        edgePort: tunnel.udpPort,
        target: `127.0.0.1:${echo.port}`,
        closeReason: "expired",
        packetsIn: tally.sentPackets,
        packetsOut: tally.gotPackets,
        bytesIn: tally.sentBytes,
        bytesOut: tally.gotBytes,
      });
    }
    const sum = (f: (t: ClientTally) => number) => tallies.reduce((a, t) => a + f(t), 0);
    expect(history.totals).toMatchObject({
      udp: CLIENTS,
      openConnections: 0,
      packetsIn: sum((t) => t.sentPackets),
      packetsOut: sum((t) => t.gotPackets),
      bytesIn: sum((t) => t.sentBytes),
      bytesOut: sum((t) => t.gotBytes),
      closeReasons: { expired: CLIENTS },
    });
  });

  it("closes a UDP session still open when its edge goes away (tunnel lost), with the addon's counts", async () => {
    const echo = await startEcho();
    cleanups.push(() => echo.close());
    const tunnel = await startUdpTunnel({ target: `127.0.0.1:${echo.port}`, proxyUdp: "none", hubExtra: { udpIdleTimeoutMs: 60_000 } });
    cleanups.push(() => tunnel.stop());
    const socket = await udpClient();
    cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
    const payload = Buffer.from("still here");
    for (let n = 0; n < 3; n++) await udpRequest(socket, tunnel.udpPort, payload, 5_000, 60_000);

    const seen: DomainEvent[] = [];
    await waitFor(
      async () => {
        seen.length = 0;
        for await (const e of tunnel.hub.replayHistory({ edgeId: tunnel.edgeId, kinds: ["udp"] })) seen.push(e);
        return seen.some((e) => e.type === "udp.opened");
      },
      { timeoutMs: 10_000, what: "udp.opened in the log" },
    );
    // The edge goes away: the hub's actor waits (bounded) for the addon's own close, which carries the counts.
    await tunnel.edge.stop();
    const { hub } = tunnel;
    const events: DomainEvent[] = [];
    await waitFor(
      async () => {
        events.length = 0;
        for await (const e of hub.replayHistory({ edgeId: tunnel.edgeId, kinds: ["udp"] })) events.push(e);
        return events.some((e) => e.type === "udp.closed");
      },
      { timeoutMs: 10_000, what: "udp.closed after the edge went away" },
    );
    const closed = events.filter((e) => e.type === "udp.closed");
    expect(closed).toHaveLength(1);
    expect(closed[0]?.data).toMatchObject({ packetsIn: 3, packetsOut: 3, bytesIn: 3 * payload.length, bytesOut: 3 * payload.length });
    expect((closed[0]?.data as { reason: string }).reason).toBe("tunnelLost");
    expect(events.filter((e) => e.type === "udp.expired")).toHaveLength(0);
  });

  it("logs the end of a UDP session still open when the hub stops (hubShutdown), with the addon's counts", async () => {
    const echo = await startEcho();
    cleanups.push(() => echo.close());
    const tunnel = await startUdpTunnel({ target: `127.0.0.1:${echo.port}`, proxyUdp: "none", hubExtra: { udpIdleTimeoutMs: 60_000 } });
    cleanups.push(() => tunnel.stop());
    const socket = await udpClient();
    cleanups.push(() => new Promise<void>((resolve) => socket.close(() => resolve())));
    const payload = Buffer.from("until the hub stops");
    for (let n = 0; n < 2; n++) await udpRequest(socket, tunnel.udpPort, payload, 5_000, 60_000);
    await waitFor(
      async () => {
        for await (const e of tunnel.hub.replayHistory({ edgeId: tunnel.edgeId, types: ["udp.opened"] })) if (e.type === "udp.opened") return true;
        return false;
      },
      { timeoutMs: 10_000, what: "udp.opened in the log" },
    );
    await tunnel.hub.stop();

    // Read the stopped hub's log: its store with a fresh server, plus whatever its outbox kept.
    const nats = await startTestNats({ dataDir: tunnel.hubFixture.dataDir });
    cleanups.push(() => nats.stop());
    // (An outbox segment may still hold events that were also acknowledged: count each id once.)
    const byId = new Map<string, DomainEvent>();
    for (const e of [...(await storedEvents(nats.url)), ...outboxEvents(join(tunnel.hubFixture.dataDir, "outbox"))]) byId.set(e.id, e);
    const stored = [...byId.values()];
    const closed = stored.filter((e) => e.type === "udp.closed" && e.edgeId === tunnel.edgeId);
    expect(closed).toHaveLength(1);
    expect(closed[0]?.data).toMatchObject({ reason: "hubShutdown", packetsIn: 2, packetsOut: 2, bytesIn: 2 * payload.length, bytesOut: 2 * payload.length });
  });
});
