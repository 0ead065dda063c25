import { describe, expect, it } from "vitest";
import { makeEvent, type DomainEvent } from "../src/events/envelope.js";
import { describeEvent, formatHistory } from "../src/cli/event-format.js";
import { HistoryProjection, projectHistory } from "../src/nats/history.js";

const hubId = "hub-1";
const t = 1_000_000;
const where = { edgePort: 443, clientAddr: "203.0.113.7:5000", target: "10.0.0.5:443" };

const sessionA: DomainEvent[] = [
  makeEvent({ type: "edge.connected", hubId, edgeId: "e1", sessionId: "A", streamId: null, seq: 1, time: t, data: { remoteAddr: "198.51.100.1:1" } }),
  makeEvent({ type: "stream.opened", hubId, edgeId: "e1", sessionId: "A", streamId: "1", seq: 1, time: t + 10, data: where }),
  makeEvent({ type: "stream.closed", hubId, edgeId: "e1", sessionId: "A", streamId: "1", seq: 2, time: t + 110, data: { ...where, bytesIn: 100, bytesOut: 2000, durationMs: 100, reason: "clientClosed", message: "" } }),
  makeEvent({ type: "udp.opened", hubId, edgeId: "e1", sessionId: "A", streamId: "u1", seq: 1, time: t + 20, data: { edgePort: 53, clientAddr: "203.0.113.9:53000", target: "10.0.0.53:53" } }),
  makeEvent({ type: "udp.expired", hubId, edgeId: "e1", sessionId: "A", streamId: "u1", seq: 2, time: t + 30020, data: { idleMs: 30000 } }),
  makeEvent({ type: "udp.closed", hubId, edgeId: "e1", sessionId: "A", streamId: "u1", seq: 3, time: t + 30020, data: { edgePort: 53, clientAddr: "203.0.113.9:53000", target: "10.0.0.53:53", bytesIn: 60, bytesOut: 240, packetsIn: 1, packetsOut: 1, durationMs: 30000, reason: "expired", message: "" } }),
  makeEvent({ type: "edge.superseded", hubId, edgeId: "e1", sessionId: "A", streamId: null, seq: 2, time: t + 40000, data: { bySessionId: "B", remoteAddr: "198.51.100.2:2" } }),
  makeEvent({ type: "edge.disconnected", hubId, edgeId: "e1", sessionId: "A", streamId: null, seq: 3, time: t + 40000, data: { reason: "superseded", message: "", durationMs: 40000 } }),
];
const sessionB: DomainEvent[] = [
  makeEvent({ type: "edge.connected", hubId, edgeId: "e1", sessionId: "B", streamId: null, seq: 1, time: t + 40000, data: { remoteAddr: "198.51.100.2:2" } }),
  makeEvent({ type: "stream.opened", hubId, edgeId: "e1", sessionId: "B", streamId: "1", seq: 1, time: t + 40100, data: where }),
];
const other: DomainEvent[] = [
  makeEvent({ type: "edge.connected", hubId, edgeId: "e2", sessionId: "C", streamId: null, seq: 1, time: t, data: { remoteAddr: "x" } }),
  makeEvent({ type: "edge.authFailed", hubId, edgeId: "e1", sessionId: "run.auth.1", streamId: null, seq: 1, time: t + 5, data: { remoteAddr: "192.0.2.1:9", claimedEdgeId: "e1", reason: "authFailed" } }),
  makeEvent({ type: "hub.started", hubId, edgeId: null, sessionId: "run", streamId: null, seq: 1, time: t - 100, data: { tunnelPort: 8443, fingerprint: null, portwayVersion: "0.1.0" } }),
];
const all = [...sessionA, ...sessionB, ...other];

describe("history projection", () => {
  it("lists an edge's sessions with from, to, hub and why they ended", () => {
    const h = projectHistory(all, "e1");
    expect(h.sessions).toEqual([
      expect.objectContaining({ sessionId: "A", hubId, from: t, to: t + 40000, endReason: "superseded", supersededBy: "B", durationMs: 40000, remoteAddr: "198.51.100.1:1" }),
      expect.objectContaining({ sessionId: "B", from: t + 40000, to: null, endReason: null }),
    ]);
  });

  it("lists connections with addresses, bytes each way, duration and close reason", () => {
    const h = projectHistory(all, "e1");
    expect(h.connections).toEqual([
      expect.objectContaining({ protocol: "tcp", sessionId: "A", id: "1", clientAddr: "203.0.113.7:5000", edgePort: 443, target: "10.0.0.5:443", openedAt: t + 10, closedAt: t + 110, bytesIn: 100, bytesOut: 2000, durationMs: 100, closeReason: "clientClosed" }),
      expect.objectContaining({ protocol: "udp", id: "u1", bytesIn: 60, bytesOut: 240, packetsIn: 1, closeReason: "expired" }),
      expect.objectContaining({ protocol: "tcp", sessionId: "B", id: "1", closedAt: null, closeReason: null }),
    ]);
  });

  it("totals sessions, connections, bytes, open connections, auth failures and close reasons", () => {
    expect(projectHistory(all, "e1").totals).toEqual({
      sessions: 2,
      connections: 3,
      tcp: 2,
      udp: 1,
      openConnections: 1,
      bytesIn: 160,
      bytesOut: 2240,
      packetsIn: 1,
      packetsOut: 1,
      authFailures: 1,
      closeReasons: { clientClosed: 1, expired: 1 },
    });
  });

  it("is the same whatever the order and with duplicates", () => {
    const shuffled = [...all].reverse();
    const doubled = [...all, ...sessionA];
    const ref = projectHistory(all, "e1");
    expect(projectHistory(shuffled, "e1")).toEqual(ref);
    expect(projectHistory(doubled, "e1")).toEqual(ref);
  });

  it("keeps edges apart and ignores hub-level events", () => {
    const p = new HistoryProjection();
    for (const e of all) p.apply(e);
    expect(p.edgeIds()).toEqual(["e1", "e2"]);
    expect(p.view("e2").totals.sessions).toBe(1);
    expect(p.view("nobody").totals).toMatchObject({ sessions: 0, connections: 0, bytesIn: 0 });
  });

  it("derives a session's duration when the event has none (upcast v1)", () => {
    const v1ish = makeEvent({ type: "edge.disconnected", hubId, edgeId: "e3", sessionId: "D", streamId: null, seq: 2, time: t + 500, data: { reason: "timeout", message: "", durationMs: null } });
    const conn = makeEvent({ type: "edge.connected", hubId, edgeId: "e3", sessionId: "D", streamId: null, seq: 1, time: t, data: { remoteAddr: "r" } });
    expect(projectHistory([conn, v1ish], "e3").sessions[0]?.durationMs).toBe(500);
    expect(projectHistory([v1ish, conn], "e3").sessions[0]?.durationMs).toBe(500);
  });
});

describe("history text with UDP sessions", () => {
  it("shows each UDP session's client, edge port, target, bytes/packets each way, duration and reason, and UDP totals", () => {
    const text = formatHistory(projectHistory(all, "e1"), { limit: 0 });
    const row = text.split("\n").find((l) => l.includes("203.0.113.9:53000")) ?? "";
    expect(row).toMatch(/udp\s+203\.0\.113\.9:53000\s+53\s+10\.0\.0\.53:53\s+60 B\/1p\s+240 B\/1p\s+30\.0 s\s+expired/);
    expect(text).toMatch(/UDP packets 1 in, 1 out/);
    expect(text).toMatch(/Connections \(3: 2 TCP, 1 UDP, 1 open\)/);
  });

  it("describes UDP closes with packets, and the UDP notices", () => {
    const closed = sessionA.find((e) => e.type === "udp.closed") as DomainEvent;
    expect(describeEvent(closed)).toMatch(/in 60 B \(1 packets\), out 240 B \(1\), .*expired/);
    const refused = makeEvent({ type: "udp.refused", hubId, edgeId: "e1", sessionId: "run.udp", streamId: null, seq: 1, time: t, data: { edgePort: 53, clientAddr: "203.0.113.10:1", reason: "sessionCap", count: 4 } });
    expect(describeEvent(refused)).toBe("203.0.113.10:1 → :53 refused (sessionCap), 4 since the previous notice");
    const oversized = makeEvent({ type: "udp.oversized", hubId, edgeId: "e1", sessionId: "run.udp", streamId: null, seq: 2, time: t, data: { edgePort: 53, clientAddr: "203.0.113.10:1", size: 70000, maxSize: null, count: 2 } });
    expect(describeEvent(oversized)).toBe("203.0.113.10:1 → :53 dropped a 70000-byte datagram, 2 since the previous notice");
  });
});
