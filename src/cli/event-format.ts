/**
 * How `portway events` and `portway history` print: one readable line per event (colour on a TTY), the
 * history projection as short tables, and the time arguments (`--since 1h`, `--until 2025-01-31T12:00Z`).
 */
import { parseDuration } from "../config/fields.js";
import type { DomainEvent } from "../events/envelope.js";
import type { ConnectionView, EdgeHistory, SessionView } from "../nats/history.js";

/** `1h`/`30m`/`2d` (ago), an ISO date/time, or epoch milliseconds → epoch ms; undefined when unreadable. */
export const parseTimeArg = (text: string, now: number = Date.now()): number | undefined => {
  const t = text.trim();
  if (t === "now") return now;
  const ago = parseDuration(t);
  if (ago !== undefined) return now - ago;
  if (/^\d{10,}$/.test(t)) return Number(t);
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const ms = Date.parse(t);
    return Number.isNaN(ms) ? undefined : ms;
  }
  return undefined;
};

export const formatBytes = (n: number): string => {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
};

export const formatDuration = (ms: number | null): string => {
  if (ms === null) return "-";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(s / 3600);
  if (h < 48) return `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return h % 24 === 0 ? `${h / 24}d` : `${Math.floor(h / 24)}d${h % 24}h`;
};

export const formatTime = (ms: number | null): string => (ms === null ? "-" : new Date(ms).toISOString());

const short = (id: string): string => (id.length > 10 ? id.slice(0, 8) : id);
const show = (s: string | null): string => (s === null || s === "" ? "-" : s);

/** Colours for a TTY; identity functions otherwise. */
export interface Paint {
  readonly dim: (s: string) => string;
  readonly good: (s: string) => string;
  readonly warn: (s: string) => string;
  readonly bad: (s: string) => string;
}

const code = (n: number) => (s: string) => `\u001b[${n}m${s}\u001b[0m`;
export const colours: Paint = { dim: code(2), good: code(32), warn: code(33), bad: code(31) };
export const noColours: Paint = { dim: (s) => s, good: (s) => s, warn: (s) => s, bad: (s) => s };

/** Colour on when writing to a terminal and NO_COLOR is not set. */
export const paintFor = (stream: { readonly isTTY?: boolean }, env: Readonly<Record<string, string | undefined>>): Paint =>
  stream.isTTY === true && (env["NO_COLOR"] ?? "") === "" ? colours : noColours;

const route = (clientAddr: string, edgePort: number, target: string | null): string =>
  `${show(clientAddr)} → :${edgePort} → ${show(target)}`;

const typePaint = (e: DomainEvent, p: Paint): ((s: string) => string) => {
  switch (e.type) {
    case "hub.eventsDropped":
    case "edge.authFailed":
      return p.bad;
    case "udp.refused":
    case "udp.oversized":
      return p.warn;
    case "stream.closed":
    case "udp.closed":
      return e.data.reason === "clientClosed" || e.data.reason === "targetClosed" || e.data.reason === "expired" ? p.warn : p.bad;
    case "edge.disconnected":
      return e.data.reason === "edgeClosed" || e.data.reason === "hubShutdown" ? p.warn : p.bad;
    case "hub.stopped":
      return e.data.reason === "error" ? p.bad : p.warn;
    default:
      return p.good;
  }
};

/** What an event says, without its envelope. */
export const describeEvent = (e: DomainEvent): string => {
  switch (e.type) {
    case "hub.started":
      return `tunnel port ${e.data.tunnelPort ?? "-"}, portway ${e.data.portwayVersion}, certificate ${e.data.fingerprint === null ? "-" : `${e.data.fingerprint.slice(0, 16)}…`}`;
    case "hub.stopped":
      return `${e.data.reason}${e.data.message === null ? "" : `: ${e.data.message}`}`;
    case "hub.recovered":
      if (e.data.streamsClosed + e.data.sessionsClosed + e.data.udpClosed === 0) {
        return `run ${e.data.previousRunId ?? "-"} left nothing open (replayed ${e.data.replayedEvents} events in ${formatDuration(e.data.durationMs)})`;
      }
      return (
        `closed what run ${e.data.previousRunId ?? "-"} left open: ${e.data.streamsClosed} streams, ${e.data.sessionsClosed} sessions, ` +
        `${e.data.udpClosed} UDP sessions (replayed ${e.data.replayedEvents} events in ${formatDuration(e.data.durationMs)})`
      );
    case "hub.eventsDropped":
      return `${e.data.count} events DROPPED (${e.data.reason}) between ${formatTime(e.data.firstTime)} and ${formatTime(e.data.lastTime)}`;
    case "edge.connected":
      return `from ${e.data.remoteAddr}`;
    case "edge.authFailed":
      return `from ${e.data.remoteAddr}, claimed edge ${show(e.data.claimedEdgeId)}: ${e.data.reason}`;
    case "edge.configPushed":
      return `ports tcp ${e.data.listenPorts.join(",") || "-"} udp ${e.data.listenPortsUdp.join(",") || "-"}`;
    case "edge.superseded":
      return `by session ${short(e.data.bySessionId)}${e.data.remoteAddr === null ? "" : ` from ${e.data.remoteAddr}`}`;
    case "edge.refused":
      return `from ${e.data.remoteAddr}: ${e.data.reason}${e.data.message === "" ? "" : ` (${e.data.message})`}`;
    case "edge.failedOver":
      return (
        `from hub ${e.data.fromHubId} to hub ${e.data.toHubId}` +
        `${e.data.toSessionId === null ? "" : ` (session ${short(e.data.toSessionId)})`}${e.data.gapMs === null ? "" : `, gap ${formatDuration(e.data.gapMs)}`}`
      );
    case "edge.disconnected":
      return `${e.data.reason}${e.data.message === "" ? "" : ` (${e.data.message})`} after ${formatDuration(e.data.durationMs)}`;
    case "stream.opened":
    case "udp.opened":
      return route(e.data.clientAddr, e.data.edgePort, e.data.target);
    case "stream.closed":
      return (
        `${route(e.data.clientAddr, e.data.edgePort, e.data.target)}  in ${formatBytes(e.data.bytesIn)}, out ${formatBytes(e.data.bytesOut)}, ` +
        `${formatDuration(e.data.durationMs)}, ${e.data.reason}${e.data.message === "" ? "" : ` (${e.data.message})`}`
      );
    case "udp.expired":
      return `idle for ${formatDuration(e.data.idleMs)}`;
    case "udp.closed":
      return (
        `${route(e.data.clientAddr, e.data.edgePort, e.data.target)}  in ${formatBytes(e.data.bytesIn)} (${e.data.packetsIn} packets), ` +
        `out ${formatBytes(e.data.bytesOut)} (${e.data.packetsOut}), ${formatDuration(e.data.durationMs)}, ${e.data.reason}` +
        `${e.data.message === "" ? "" : ` (${e.data.message})`}`
      );
    case "udp.refused":
      return `${show(e.data.clientAddr)} → :${e.data.edgePort} refused (${e.data.reason}), ${e.data.count} since the previous notice`;
    case "udp.oversized":
      return (
        `${show(e.data.clientAddr)} → :${e.data.edgePort} dropped a ${e.data.size}-byte datagram` +
        `${e.data.maxSize === null ? "" : ` (max ${e.data.maxSize})`}, ${e.data.count} since the previous notice`
      );
  }
};

/**
 * One line: time, hub, edge, type, actor (session/stream), what happened.
 * `2025-11-21T23:22:24.123Z hub-1 e1 stream.closed 3f9a2c1d/7 127.0.0.1:5555 → :8080 → 10.0.0.5:80  in 120 B, …`
 */
export const formatEventLine = (e: DomainEvent, p: Paint = noColours): string => {
  const actor = e.streamId === null ? short(e.sessionId) : `${short(e.sessionId)}/${e.streamId}`;
  return `${p.dim(formatTime(e.time))} ${e.hubId} ${e.edgeId ?? "~"} ${typePaint(e, p)(e.type.padEnd(17))} ${p.dim(actor)} ${describeEvent(e)}`;
};

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string[] => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: ReadonlyArray<string>) =>
    `  ${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ")}`.trimEnd();
  return [line(header), ...rows.map(line)];
};

const sessionRow = (s: SessionView): string[] => [
  formatTime(s.from),
  formatTime(s.to),
  formatDuration(s.durationMs),
  s.hubId,
  show(s.remoteAddr),
  s.to === null ? "(open)" : `${show(s.endReason)}${s.supersededBy === null ? "" : ` by ${short(s.supersededBy)}`}`,
];

/** UDP rows show packets next to bytes: `1.2 KiB/12p`. */
const withPackets = (bytes: string, packets: number | null): string => (packets === null ? bytes : `${bytes}/${packets}p`);

const connectionRow = (c: ConnectionView): string[] => [
  formatTime(c.openedAt),
  c.protocol,
  show(c.clientAddr),
  c.edgePort === null ? "-" : String(c.edgePort),
  show(c.target),
  withPackets(formatBytes(c.bytesIn), c.packetsIn),
  withPackets(formatBytes(c.bytesOut), c.packetsOut),
  formatDuration(c.durationMs),
  c.closedAt === null ? "(open)" : show(c.closeReason),
];

export interface HistoryTextOptions {
  readonly since?: number | undefined;
  readonly until?: number | undefined;
  /** Most recent connections shown; 0 = all. */
  readonly limit: number;
}

/** The history projection as text: sessions, connections (most recent `limit`), totals. */
export const formatHistory = (h: EdgeHistory, o: HistoryTextOptions): string => {
  const lines: string[] = [];
  lines.push(`History of edge ${h.edgeId} from ${o.since === undefined ? "the start of the log" : formatTime(o.since)} to ${o.until === undefined ? "now" : formatTime(o.until)}`);
  lines.push("", `Sessions (${h.sessions.length})`);
  if (h.sessions.length > 0) lines.push(...table(["FROM", "TO", "DURATION", "HUB", "EDGE ADDRESS", "ENDED"], h.sessions.map(sessionRow)));
  const t = h.totals;
  lines.push("", `Connections (${t.connections}: ${t.tcp} TCP, ${t.udp} UDP, ${t.openConnections} open)`);
  const shown = o.limit > 0 ? h.connections.slice(-o.limit) : h.connections;
  if (shown.length < h.connections.length) {
    lines.push(`  … ${h.connections.length - shown.length} earlier connections not shown (--limit 0 shows all)`);
  }
  if (shown.length > 0) {
    lines.push(...table(["OPENED", "PROTO", "CLIENT", "PORT", "TARGET", "IN", "OUT", "DURATION", "CLOSED"], shown.map(connectionRow)));
  }
  const reasons = Object.entries(t.closeReasons)
    .sort((a, b) => b[1] - a[1])
    .map(([r, n]) => `${r} ${n}`)
    .join(", ");
  lines.push(
    "",
    `Totals: ${t.sessions} sessions, ${t.connections} connections, ${formatBytes(t.bytesIn)} in (client→target), ` +
      `${formatBytes(t.bytesOut)} out (target→client)` +
      `${t.udp === 0 ? "" : `, UDP packets ${t.packetsIn} in, ${t.packetsOut} out`}; close reasons: ${reasons || "-"}; failed handshakes: ${t.authFailures}`,
  );
  return `${lines.join("\n")}\n`;
};
