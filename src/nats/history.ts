/**
 * The `history` projection: events → what happened at an edge. Sessions (from, to, hub, why ended),
 * connections (client, edge port, target, opened/closed, bytes each way, duration, close reason) and totals.
 *
 * Pure: no I/O, no clock. Tolerates what a log can contain — the same event twice (by id) and a close seen
 * before its open — so it can be fed from a replay, a live feed, or both.
 */
import type { DomainEvent } from "../events/envelope.js";

export interface SessionView {
  readonly hubId: string;
  readonly edgeId: string;
  readonly sessionId: string;
  readonly remoteAddr: string | null;
  readonly from: number | null;
  readonly to: number | null;
  readonly durationMs: number | null;
  readonly endReason: string | null;
  readonly endMessage: string | null;
  readonly supersededBy: string | null;
  readonly failedOverTo: string | null;
}

export interface ConnectionView {
  readonly protocol: "tcp" | "udp";
  readonly hubId: string;
  readonly edgeId: string;
  readonly sessionId: string;
  readonly id: string;
  readonly clientAddr: string | null;
  readonly edgePort: number | null;
  readonly target: string | null;
  readonly openedAt: number | null;
  readonly closedAt: number | null;
  /** client → target */
  readonly bytesIn: number;
  /** target → client */
  readonly bytesOut: number;
  readonly durationMs: number | null;
  readonly closeReason: string | null;
  readonly closeMessage: string | null;
  readonly packetsIn: number | null;
  readonly packetsOut: number | null;
}

export interface HistoryTotals {
  readonly sessions: number;
  readonly connections: number;
  readonly tcp: number;
  readonly udp: number;
  readonly openConnections: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** UDP sessions only: client → target packets. */
  readonly packetsIn: number;
  /** UDP sessions only: target → client packets. */
  readonly packetsOut: number;
  readonly authFailures: number;
  readonly closeReasons: Readonly<Record<string, number>>;
}

export interface EdgeHistory {
  readonly edgeId: string;
  readonly sessions: ReadonlyArray<SessionView>;
  readonly connections: ReadonlyArray<ConnectionView>;
  readonly totals: HistoryTotals;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

interface EdgeState {
  sessions: Map<string, Mutable<SessionView>>;
  connections: Map<string, Mutable<ConnectionView>>;
  authFailures: number;
}

const newSession = (e: DomainEvent, edgeId: string): Mutable<SessionView> => ({
  hubId: e.hubId,
  edgeId,
  sessionId: e.sessionId,
  remoteAddr: null,
  from: null,
  to: null,
  durationMs: null,
  endReason: null,
  endMessage: null,
  supersededBy: null,
  failedOverTo: null,
});

const newConnection = (e: DomainEvent, edgeId: string, protocol: "tcp" | "udp"): Mutable<ConnectionView> => ({
  protocol,
  hubId: e.hubId,
  edgeId,
  sessionId: e.sessionId,
  id: e.streamId ?? "",
  clientAddr: null,
  edgePort: null,
  target: null,
  openedAt: null,
  closedAt: null,
  bytesIn: 0,
  bytesOut: 0,
  durationMs: null,
  closeReason: null,
  closeMessage: null,
  packetsIn: null,
  packetsOut: null,
});

/** Incremental form: feed events with apply(), read with view(). */
export class HistoryProjection {
  private readonly edges = new Map<string, EdgeState>();
  private readonly seen = new Set<string>();

  apply(e: DomainEvent): void {
    if (e.edgeId === null || this.seen.has(e.id)) return;
    this.seen.add(e.id);
    const edgeId = e.edgeId;
    let st = this.edges.get(edgeId);
    if (!st) {
      st = { sessions: new Map(), connections: new Map(), authFailures: 0 };
      this.edges.set(edgeId, st);
    }
    const sessionKey = `${e.hubId}\u0000${e.sessionId}`;
    const session = (): Mutable<SessionView> => {
      let s = st.sessions.get(sessionKey);
      if (!s) {
        s = newSession(e, edgeId);
        st.sessions.set(sessionKey, s);
      }
      return s;
    };
    const connection = (protocol: "tcp" | "udp"): Mutable<ConnectionView> => {
      const key = `${protocol}\u0000${sessionKey}\u0000${e.streamId ?? ""}`;
      let c = st.connections.get(key);
      if (!c) {
        c = newConnection(e, edgeId, protocol);
        st.connections.set(key, c);
      }
      return c;
    };
    switch (e.type) {
      case "edge.connected": {
        const s = session();
        s.from = e.time;
        s.remoteAddr = e.data.remoteAddr;
        break;
      }
      case "edge.disconnected": {
        const s = session();
        s.to = e.time;
        s.endReason = e.data.reason;
        s.endMessage = e.data.message;
        s.durationMs = e.data.durationMs;
        break;
      }
      case "edge.superseded":
        session().supersededBy = e.data.bySessionId;
        break;
      case "edge.failedOver":
        session().failedOverTo = e.data.toHubId;
        break;
      case "edge.authFailed":
        st.authFailures++;
        break;
      case "stream.opened":
      case "udp.opened": {
        const c = connection(e.type === "stream.opened" ? "tcp" : "udp");
        c.openedAt = e.time;
        c.clientAddr = e.data.clientAddr;
        c.edgePort = e.data.edgePort;
        c.target = e.data.target;
        break;
      }
      case "stream.closed":
      case "udp.closed": {
        const c = connection(e.type === "stream.closed" ? "tcp" : "udp");
        c.closedAt = e.time;
        c.clientAddr ??= e.data.clientAddr;
        c.edgePort ??= e.data.edgePort;
        c.target ??= e.data.target;
        c.bytesIn = e.data.bytesIn;
        c.bytesOut = e.data.bytesOut;
        c.durationMs = e.data.durationMs;
        c.closeReason = e.data.reason;
        c.closeMessage = e.data.message;
        if (e.type === "udp.closed") {
          c.packetsIn = e.data.packetsIn;
          c.packetsOut = e.data.packetsOut;
        }
        break;
      }
      default:
        break;
    }
  }

  edgeIds(): ReadonlyArray<string> {
    return [...this.edges.keys()].sort();
  }

  view(edgeId: string): EdgeHistory {
    const st = this.edges.get(edgeId);
    const sessions = st
      ? [...st.sessions.values()].map((s) => ({
          ...s,
          // v1 disconnects carry no duration: derive it when both ends are known.
          durationMs: s.durationMs ?? (s.from !== null && s.to !== null ? s.to - s.from : null),
        }))
      : [];
    const connections = st ? [...st.connections.values()].map((c) => ({ ...c })) : [];
    sessions.sort((a, b) => (a.from ?? a.to ?? 0) - (b.from ?? b.to ?? 0));
    connections.sort((a, b) => (a.openedAt ?? a.closedAt ?? 0) - (b.openedAt ?? b.closedAt ?? 0));
    const closeReasons: Record<string, number> = {};
    let bytesIn = 0;
    let bytesOut = 0;
    let packetsIn = 0;
    let packetsOut = 0;
    let open = 0;
    let tcp = 0;
    for (const c of connections) {
      bytesIn += c.bytesIn;
      bytesOut += c.bytesOut;
      packetsIn += c.packetsIn ?? 0;
      packetsOut += c.packetsOut ?? 0;
      if (c.closedAt === null) open++;
      if (c.protocol === "tcp") tcp++;
      if (c.closeReason !== null) closeReasons[c.closeReason] = (closeReasons[c.closeReason] ?? 0) + 1;
    }
    return {
      edgeId,
      sessions,
      connections,
      totals: {
        sessions: sessions.length,
        connections: connections.length,
        tcp,
        udp: connections.length - tcp,
        openConnections: open,
        bytesIn,
        bytesOut,
        packetsIn,
        packetsOut,
        authFailures: st?.authFailures ?? 0,
        closeReasons,
      },
    };
  }
}

/** History of one edge from a set of events (any order, duplicates allowed). */
export const projectHistory = (events: Iterable<DomainEvent>, edgeId: string): EdgeHistory => {
  const p = new HistoryProjection();
  for (const e of events) if (e.edgeId === edgeId) p.apply(e);
  return p.view(edgeId);
};
