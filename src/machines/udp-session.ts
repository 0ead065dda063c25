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
  /**
   * No datagram for this long → idle (then `expireAfterMs` more → expired). `null`: the addon keeps the idle
   * timer (the native relay sees every datagram, the actors only its lifecycle events) and reports the expiry
   * with `udp.expired`; the machine then has no timer of its own while active.
   */
  readonly idleAfterMs: number | null;
  /** Idle for this much longer → expired (own timers only). */
  readonly expireAfterMs: number;
  /** After the tunnel is lost or the hub shuts down, how long to wait for the addon's own close (with counts). */
  readonly closeGraceMs: number;
}

/** Addon-side reasons a UDP session can end (expiry and recovery are decided in TypeScript). */
export type UdpAddonCloseReason = Extract<
  UdpCloseReason,
  "targetUnreachable" | "protocolError" | "tunnelLost" | "hubShutdown" | "sessionCap" | "portClosed"
>;

/** A session's counters as the addon reports them at its end (absolute, not deltas). */
export interface UdpTotals {
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly packetsIn: number;
  readonly packetsOut: number;
}

/** Activity arrives as per-batch deltas, never per datagram; the addon's end events carry totals. */
export type UdpSessionEvent =
  | {
      readonly type: "udp.activity";
      readonly atMs: number;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly packetsIn: number;
      readonly packetsOut: number;
    }
  /** The addon's idle timer expired the session. */
  | { readonly type: "udp.expired"; readonly atMs: number; readonly idleMs: number; readonly totals: UdpTotals }
  | {
      readonly type: "udp.closed";
      readonly atMs: number;
      readonly reason: UdpAddonCloseReason;
      readonly message?: string | null;
      readonly totals?: UdpTotals;
    }
  | { readonly type: "policy.tunnelLost"; readonly atMs: number }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

export type UdpSessionFact = Fact<"udp.opened"> | Fact<"udp.expired"> | Fact<"udp.closed">;
export type UdpClosedData = EventData<"udp.closed">;

export interface UdpSessionContext extends UdpSessionInput {
  readonly openedAtMs: number;
  readonly lastActivityAtMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly packetsIn: number;
  readonly packetsOut: number;
  readonly closeReason: UdpCloseReason | null;
  readonly closedAtMs: number | null;
  readonly closeMessage: string;
  /** How long it was idle when it expired, when the addon said so. */
  readonly idleMs: number | null;
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
  packetsIn: context.packetsIn,
  packetsOut: context.packetsOut,
  durationMs: Math.max(0, closedAt(context) - context.openedAtMs),
  reason: context.closeReason ?? "expired",
  message: context.closeMessage,
});

const totalsOf = (totals: UdpTotals | undefined) =>
  totals === undefined
    ? {}
    : { bytesIn: totals.bytesIn, bytesOut: totals.bytesOut, packetsIn: totals.packetsIn, packetsOut: totals.packetsOut };

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
            packetsIn: context.packetsIn + event.packetsIn,
            packetsOut: context.packetsOut + event.packetsOut,
          }
        : {},
    ),
    closeByAddon: assign(({ event }) =>
      event.type === "udp.closed"
        ? { closeReason: event.reason, closedAtMs: event.atMs, closeMessage: event.message ?? "", ...totalsOf(event.totals) }
        : {},
    ),
    expireByAddon: assign(({ event }) =>
      event.type === "udp.expired"
        ? { closeReason: "expired" as const, closedAtMs: event.atMs, closeMessage: "", idleMs: event.idleMs, ...totalsOf(event.totals) }
        : {},
    ),
    closeByTunnelLoss: closeOn("tunnelLost"),
    closeByShutdown: closeOn("hubShutdown"),
    recordExpiry: assign(({ context }) => ({
      closeReason: "expired" as const,
      // Deterministic: the session expired exactly when both timers ran out after the last datagram.
      closedAtMs: context.lastActivityAtMs + (context.idleAfterMs ?? 0) + context.expireAfterMs,
      closeMessage: "",
    })),
  },
  guards: {
    /** A zero delta (a counter report with no datagrams) is not activity and must not keep a session alive. */
    carriesTraffic: ({ event }) =>
      event.type === "udp.activity" && event.packetsIn + event.packetsOut + event.bytesIn + event.bytesOut > 0,
    /** The machine keeps the idle timer itself (`idleAfterMs` set) rather than the addon. */
    ownsExpiry: ({ context }) => context.idleAfterMs !== null,
  },
  delays: {
    idleAfter: ({ context }) => context.idleAfterMs ?? 0,
    expireAfter: ({ context }) => context.expireAfterMs,
    closeGrace: ({ context }) => context.closeGraceMs,
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
    packetsIn: 0,
    packetsOut: 0,
    closeReason: null,
    closedAtMs: null,
    closeMessage: "",
    idleMs: null,
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
    "udp.expired": { target: ".expired", actions: "expireByAddon" },
    "udp.closed": { target: ".closed", actions: "closeByAddon" },
    "policy.tunnelLost": { target: ".closing", actions: "closeByTunnelLoss" },
    "policy.shutdown": { target: ".closing", actions: "closeByShutdown" },
  },
  states: {
    active: {
      on: {
        // Re-entering restarts the idle timer.
        "udp.activity": { guard: "carriesTraffic", target: "active", reenter: true, actions: "recordActivity" },
      },
      // With the addon keeping the timer (idleAfterMs null) this fires at once and the guard declines it.
      after: { idleAfter: { guard: "ownsExpiry", target: "idle" } },
    },
    idle: {
      // Idle and resumed are not logged: the catalog records a UDP session's expiry, not its quiet spells.
      on: { "udp.activity": { guard: "carriesTraffic", target: "active", actions: "recordActivity" } },
      after: { expireAfter: { target: "expired", actions: "recordExpiry" } },
    },
    closing: {
      // The tunnel is gone or the hub is stopping. The addon normally still reports this session's end with its
      // counts, so wait a little for that before closing on our own (with the reason recorded on entry).
      on: {
        "policy.tunnelLost": { actions: [] },
        "policy.shutdown": { actions: [] },
      },
      after: { closeGrace: "closed" },
    },
    expired: {
      type: "final",
      entry: [
        {
          type: "emit",
          params: ({ context }) =>
            fact("udp.expired", closedAt(context), {
              idleMs: context.idleMs ?? (context.idleAfterMs ?? 0) + context.expireAfterMs,
            }),
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
