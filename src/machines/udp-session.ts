import { assign, emit, setup } from "xstate";
import type { EventData, UdpCloseReason } from "../events/catalog.js";
import { fact, type Fact } from "./fact.js";

export type { UdpCloseReason };

export interface UdpSessionInput {
  readonly edgeId: string;
  readonly sessionId: string;
  /** The UDP session's id within the tunnel session (the envelope's `streamId`). */
  readonly udpId: string;
  readonly edgePort: number;
  readonly clientAddr: string;
  readonly target: string | null;
  readonly atMs: number;
  /** No datagram for this long → idle. */
  readonly idleAfterMs: number;
  /** Idle for this much longer → expired. */
  readonly expireAfterMs: number;
}

/** Addon-side reasons a UDP session can end (expiry and recovery are decided in TypeScript). */
export type UdpAddonCloseReason = Extract<UdpCloseReason, "targetUnreachable" | "protocolError" | "tunnelLost" | "hubShutdown">;

/** Activity arrives as per-batch deltas, never per datagram. */
export type UdpSessionEvent =
  | {
      readonly type: "udp.activity";
      readonly atMs: number;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly datagramsIn: number;
      readonly datagramsOut: number;
    }
  | { readonly type: "udp.closed"; readonly atMs: number; readonly reason: UdpAddonCloseReason; readonly message?: string | null }
  | { readonly type: "policy.tunnelLost"; readonly atMs: number }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

export type UdpSessionFact = Fact<"udp.opened"> | Fact<"udp.expired"> | Fact<"udp.closed">;
export type UdpClosedData = EventData<"udp.closed">;

export interface UdpSessionContext extends UdpSessionInput {
  readonly openedAtMs: number;
  readonly lastActivityAtMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly datagramsIn: number;
  readonly datagramsOut: number;
  readonly closeReason: UdpCloseReason | null;
  readonly closedAtMs: number | null;
  readonly closeMessage: string;
}

export interface UdpSessionOutput {
  readonly atMs: number;
  readonly closed: UdpClosedData;
}

const closedAt = (context: UdpSessionContext): number => context.closedAtMs ?? context.lastActivityAtMs;

const closedData = (context: UdpSessionContext): UdpClosedData => ({
  edgePort: context.edgePort,
  clientAddr: context.clientAddr,
  target: context.target,
  bytesIn: context.bytesIn,
  bytesOut: context.bytesOut,
  datagramsIn: context.datagramsIn,
  datagramsOut: context.datagramsOut,
  durationMs: Math.max(0, closedAt(context) - context.openedAtMs),
  reason: context.closeReason ?? "expired",
  message: context.closeMessage,
});

const closeOn = (reason: "tunnelLost" | "hubShutdown") =>
  assign<UdpSessionContext, UdpSessionEvent, undefined, UdpSessionEvent, never>(({ event }) => ({
    closeReason: reason,
    closedAtMs: event.atMs,
    closeMessage: "",
  }));

export const udpSessionMachine = setup({
  types: {
    input: {} as UdpSessionInput,
    context: {} as UdpSessionContext,
    events: {} as UdpSessionEvent,
    emitted: {} as UdpSessionFact,
    output: {} as UdpSessionOutput,
  },
  actions: {
    /** The one way a UDP session reports a lifecycle transition; tests replace it with `.provide()`. */
    emit: emit((_, f: UdpSessionFact) => f),
    recordActivity: assign(({ context, event }) =>
      event.type === "udp.activity"
        ? {
            lastActivityAtMs: Math.max(context.lastActivityAtMs, event.atMs),
            bytesIn: context.bytesIn + event.bytesIn,
            bytesOut: context.bytesOut + event.bytesOut,
            datagramsIn: context.datagramsIn + event.datagramsIn,
            datagramsOut: context.datagramsOut + event.datagramsOut,
          }
        : {},
    ),
    closeByAddon: assign(({ event }) =>
      event.type === "udp.closed"
        ? { closeReason: event.reason, closedAtMs: event.atMs, closeMessage: event.message ?? "" }
        : {},
    ),
    closeByTunnelLoss: closeOn("tunnelLost"),
    closeByShutdown: closeOn("hubShutdown"),
    recordExpiry: assign(({ context }) => ({
      closeReason: "expired" as const,
      // Deterministic: the session expired exactly when both timers ran out after the last datagram.
      closedAtMs: context.lastActivityAtMs + context.idleAfterMs + context.expireAfterMs,
      closeMessage: "",
    })),
  },
  guards: {
    /** A zero delta (a counter report with no datagrams) is not activity and must not keep a session alive. */
    carriesTraffic: ({ event }) =>
      event.type === "udp.activity" && event.datagramsIn + event.datagramsOut + event.bytesIn + event.bytesOut > 0,
  },
  delays: {
    idleAfter: ({ context }) => context.idleAfterMs,
    expireAfter: ({ context }) => context.expireAfterMs,
  },
}).createMachine({
  id: "udpSession",
  initial: "active",
  context: ({ input }) => ({
    ...input,
    openedAtMs: input.atMs,
    lastActivityAtMs: input.atMs,
    bytesIn: 0,
    bytesOut: 0,
    datagramsIn: 0,
    datagramsOut: 0,
    closeReason: null,
    closedAtMs: null,
    closeMessage: "",
  }),
  entry: {
    type: "emit",
    params: ({ context }) =>
      fact("udp.opened", context.openedAtMs, {
        edgePort: context.edgePort,
        clientAddr: context.clientAddr,
        target: context.target,
      }),
  },
  output: ({ context }) => ({ atMs: closedAt(context), closed: closedData(context) }),
  on: {
    "udp.closed": { target: ".closed", actions: "closeByAddon" },
    "policy.tunnelLost": { target: ".closed", actions: "closeByTunnelLoss" },
    "policy.shutdown": { target: ".closed", actions: "closeByShutdown" },
  },
  states: {
    active: {
      on: {
        // Re-entering restarts the idle timer.
        "udp.activity": { guard: "carriesTraffic", target: "active", reenter: true, actions: "recordActivity" },
      },
      after: { idleAfter: "idle" },
    },
    idle: {
      // Idle and resumed are not logged: the catalog records a UDP session's expiry, not its quiet spells.
      on: { "udp.activity": { guard: "carriesTraffic", target: "active", actions: "recordActivity" } },
      after: { expireAfter: { target: "expired", actions: "recordExpiry" } },
    },
    expired: {
      type: "final",
      entry: [
        {
          type: "emit",
          params: ({ context }) =>
            fact("udp.expired", closedAt(context), { idleMs: context.idleAfterMs + context.expireAfterMs }),
        },
        { type: "emit", params: ({ context }) => fact("udp.closed", closedAt(context), closedData(context)) },
      ],
    },
    closed: {
      type: "final",
      entry: { type: "emit", params: ({ context }) => fact("udp.closed", closedAt(context), closedData(context)) },
    },
  },
});

export type UdpSessionMachine = typeof udpSessionMachine;
