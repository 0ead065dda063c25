// Issue 4, many UDP clients at once: 200 client sockets, each its own session through one edge UDP port to a
// PROXY v2 echo target, over each tunnel transport. Every datagram carries its client's index and a sequence
// number, so delivery, loss, duplicates and corruption are counted per session. The sessions then sit idle
// until the hub's (short) idle timeout expires them, and the hub's `udp.expired` events must account for
// every datagram each client sent.
import type { Socket } from "node:dgram";
import { describe, expect, it } from "vitest";
import type { NativeEdgeEvent, NativeHubEvent } from "../src/native/events.js";
import { useTeardown } from "./helpers/teardown.js";
import { TRANSPORTS } from "./helpers/tunnel.js";
import { startUdpProxyEcho, startUdpTunnel, udpClient } from "./helpers/udp.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

const SESSIONS = 200;
/** Datagrams per session; sent in rounds (every session sends its next one, then the replies are awaited). */
const ROUNDS = 50;
/** How long a round waits for its replies before the next round goes (a lost datagram costs at most this). */
const ROUND_WAIT_MS = 200;
/** Payload size: index (u32) + sequence (u32) + a filler derived from both, checked on the way back. */
const PAYLOAD_BYTES = 64;
/**
 * The hub's idle timeout. Long enough that no session idles out between rounds (a round waits at most
 * ROUND_WAIT_MS), short enough to keep the test quick.
 */
const UDP_IDLE_TIMEOUT_MS = 2_000;
/** Loss allowed in total on loopback. */
const MAX_LOSS = 0.01;

const payloadOf = (index: number, seq: number): Buffer => {
  const buf = Buffer.alloc(PAYLOAD_BYTES);
  buf.writeUInt32BE(index, 0);
  buf.writeUInt32BE(seq, 4);
  for (let i = 8; i < PAYLOAD_BYTES; i++) buf[i] = (index * 31 + seq * 7 + i) & 0xff;
  return buf;
};

interface Session {
  readonly index: number;
  readonly socket: Socket;
  readonly port: number;
  sent: number;
  /** Sequence numbers echoed back (each at most once). */
  readonly received: Set<number>;
  duplicates: number;
  corrupt: number;
}

type UdpEnd = Extract<NativeHubEvent, { type: "udp.expired" }>;

describe.each(TRANSPORTS)("200 UDP sessions at once over %s", (transport) => {
  it("delivers sequence-numbered datagrams per session with little loss, then every session expires with its counts", async () => {
    const echo = teardown.track(await startUdpProxyEcho());
    const hubEvents: NativeHubEvent[] = [];
    const edgeEvents: NativeEdgeEvent[] = [];
    const tunnel = teardown.track(
      await startUdpTunnel({
        target: `127.0.0.1:${echo.port}`,
        proxyUdp: "v2",
        hubExtra: { udpIdleTimeoutMs: UDP_IDLE_TIMEOUT_MS },
        edgeExtra: { transportMode: transport },
        beforeEdgeStart: (edge, hub) => {
          hub.on("nativeEvent", (e) => hubEvents.push(e));
          edge.on("nativeEvent", (e) => edgeEvents.push(e));
        },
      }),
    );
    expect((await tunnel.edge.getStatus()).transport).toBe(transport);
    expect((await tunnel.hub.getStatus()).connectedEdges[0]?.transport).toBe(transport);

    const sessions: Session[] = [];
    for (let index = 0; index < SESSIONS; index++) {
      const socket = await udpClient();
      teardown.add(() => new Promise<void>((resolve) => socket.close(() => resolve())));
      const session: Session = { index, socket, port: socket.address().port, sent: 0, received: new Set(), duplicates: 0, corrupt: 0 };
      socket.on("message", (msg: Buffer) => {
        const seq = msg.length === PAYLOAD_BYTES ? msg.readUInt32BE(4) : -1;
        if (seq < 0 || seq >= ROUNDS || msg.readUInt32BE(0) !== index || !msg.equals(payloadOf(index, seq))) session.corrupt += 1;
        else if (session.received.has(seq)) session.duplicates += 1;
        else session.received.add(seq);
      });
      sessions.push(session);
    }

    const started = performance.now();
    for (let seq = 0; seq < ROUNDS; seq++) {
      await Promise.all(
        sessions.map(
          (s) =>
            new Promise<void>((resolve, reject) =>
              s.socket.send(payloadOf(s.index, seq), tunnel.udpPort, "127.0.0.1", (error) => {
                if (error) reject(error);
                else {
                  s.sent += 1;
                  resolve();
                }
              }),
            ),
        ),
      );
      await waitFor(() => sessions.every((s) => s.received.has(seq)), { timeoutMs: ROUND_WAIT_MS, intervalMs: 2 }).catch(() => undefined);
    }
    // Stragglers of the last rounds.
    await waitFor(() => sessions.every((s) => s.received.size === ROUNDS), { timeoutMs: 1_000, intervalMs: 10 }).catch(() => undefined);
    const elapsedMs = performance.now() - started;

    const sent = sessions.reduce((n, s) => n + s.sent, 0);
    const received = sessions.reduce((n, s) => n + s.received.size, 0);
    const loss = (sent - received) / sent;
    const worst = Math.min(...sessions.map((s) => s.received.size));
    const lossy = sessions.filter((s) => s.received.size < s.sent).length;
    const status = await tunnel.edge.getStatus();
    console.log(
      `[udp-load ${transport}] ${SESSIONS} sessions × ${ROUNDS} datagrams: sent ${sent}, echoed back ${received}, ` +
        `loss ${(loss * 100).toFixed(3)} % (${sent - received}), sessions with loss ${lossy}, fewest replies in a session ${worst}/${ROUNDS}, ` +
        `${Math.round(elapsedMs)} ms (${Math.round((2 * received) / (elapsedMs / 1000))} datagrams/s through the tunnel, both ways); ` +
        `edge udpDropped ${status.udpDropped ?? 0}, udpRefused ${status.udpRefused ?? 0}`,
    );

    expect(sent).toBe(SESSIONS * ROUNDS);
    expect(sessions.filter((s) => s.received.size === 0).map((s) => s.index), "sessions that got no answer at all").toEqual([]);
    expect(sessions.reduce((n, s) => n + s.corrupt, 0), "corrupt or misrouted replies").toBe(0);
    expect(sessions.reduce((n, s) => n + s.duplicates, 0), "duplicated replies").toBe(0);
    expect(loss, `total loss ${(loss * 100).toFixed(3)} %`).toBeLessThan(MAX_LOSS);

    // One upstream session per client, each opened with a PROXY v2 header naming that client.
    expect(echo.errors).toEqual([]);
    expect(echo.peers).toHaveLength(SESSIONS);
    const byClientPort = new Map(echo.peers.map((p) => [p.header.sourcePort, p]));
    expect([...byClientPort.keys()].sort()).toEqual(sessions.map((s) => s.port).sort());
    for (const p of echo.peers) {
      expect(p.header).toMatchObject({ version: 2, protocol: "UDP4", sourceAddress: "127.0.0.1", destinationPort: tunnel.udpPort });
    }
    // (Events reach JS in batches, possibly after the replies did.)
    await waitFor(() => hubEvents.filter((e) => e.type === "udp.opened").length >= SESSIONS, { what: `${SESSIONS} udp.opened events on the hub` });
    expect(hubEvents.filter((e) => e.type === "udp.opened")).toHaveLength(SESSIONS);

    // Nothing more is sent: every session idles out, and the hub says so once per session, with its counts.
    await waitFor(() => hubEvents.filter((e) => e.type === "udp.expired").length >= SESSIONS, {
      timeoutMs: UDP_IDLE_TIMEOUT_MS + 10_000,
      what: `${SESSIONS} udp.expired events on the hub`,
    });
    const expired = hubEvents.filter((e): e is UdpEnd => e.type === "udp.expired");
    expect(expired).toHaveLength(SESSIONS);
    expect(hubEvents.filter((e) => e.type === "udp.closed"), "sessions that ended otherwise than by expiry").toEqual([]);
    const endByPort = new Map(expired.map((e) => [Number(e.clientAddr.split(":").pop()), e]));
    expect(endByPort.size).toBe(SESSIONS);
    for (const s of sessions) {
      const end = endByPort.get(s.port);
      const upstream = byClientPort.get(s.port);
      expect(end, `udp.expired for client port ${s.port}`).toBeDefined();
      expect(end?.reason).toBe("idle");
      if (end === undefined || upstream === undefined) continue;
      if (s.received.size === s.sent) {
        // Every datagram made the round trip, so the hub carried each of them exactly once, each way.
        expect({ port: s.port, packetsIn: end.packetsIn, packetsOut: end.packetsOut }).toEqual({ port: s.port, packetsIn: s.sent, packetsOut: s.sent });
        expect(end.bytesIn).toBe(s.sent * PAYLOAD_BYTES);
      } else {
        // Some were lost somewhere: what the hub counted lies between what the client sent, what reached the
        // target, and what came back.
        expect(end.packetsIn).toBeLessThanOrEqual(s.sent);
        expect(end.packetsIn).toBeGreaterThanOrEqual(upstream.datagrams);
        expect(end.packetsOut).toBeLessThanOrEqual(upstream.datagrams);
        expect(end.packetsOut).toBeGreaterThanOrEqual(s.received.size);
      }
    }
    const counted = expired.reduce((n, e) => n + e.packetsIn, 0);
    expect(counted).toBeGreaterThanOrEqual(received);
    expect(counted).toBeLessThanOrEqual(sent);

    // The edge expires them too, and both sides' status is back to no sessions.
    await waitFor(() => edgeEvents.filter((e) => e.type === "udp.expired").length >= SESSIONS, { timeoutMs: 5_000, what: `${SESSIONS} udp.expired events on the edge` });
    await waitFor(async () => ((await tunnel.edge.getStatus()).udpSessions ?? 0) === 0, { what: "edge status with no UDP session" });
    await waitFor(async () => ((await tunnel.hub.getStatus()).connectedEdges[0]?.udpSessions ?? 0) === 0, { what: "hub status with no UDP session" });
  });
});
