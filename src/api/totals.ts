/**
 * What an ended stream or UDP session carried: the part of the `streamClosed` / `udpSessionClosed` payloads that
 * the hub and the edge report alike (each adds its own identifying fields).
 */
import type { StreamCloseReason } from "../native/events.js";

/** How a relayed stream ended and what it carried. */
export interface StreamTotals {
  /** Client → target bytes. */
  readonly bytesIn: number;
  /** Target → client bytes. */
  readonly bytesOut: number;
  readonly reason: StreamCloseReason;
  readonly message: string;
  readonly durationMs: number;
}

/** How a UDP session ended (`reason: "idle"` when it expired) and what it carried. */
export interface UdpSessionTotals {
  readonly packetsIn: number;
  readonly packetsOut: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly durationMs: number;
  readonly reason: string;
}

/** The totals of a native `stream.closed` event (without its other fields). */
export const streamTotals = (e: StreamTotals): StreamTotals => ({
  bytesIn: e.bytesIn,
  bytesOut: e.bytesOut,
  reason: e.reason,
  message: e.message,
  durationMs: e.durationMs,
});

/** The totals of a native `udp.expired` / `udp.closed` event (without its other fields). */
export const udpSessionTotals = (e: UdpSessionTotals): UdpSessionTotals => ({
  packetsIn: e.packetsIn,
  packetsOut: e.packetsOut,
  bytesIn: e.bytesIn,
  bytesOut: e.bytesOut,
  durationMs: e.durationMs,
  reason: e.reason,
});
