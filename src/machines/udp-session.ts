import { assign, emit, setup } from "xstate";

/** Why a UDP session ended. `expired` is ours (idle past the expiry); the rest come from the tunnel's life. */
export type UdpCloseReason = "expired" | "closed" | "tunnelLost" | "hubShutdown";

export interface UdpSessionInput {
  readonly edgeId: string;
  readonly sessionId: string;
  /** Identifies one client's flow through one edge port, e.g. `"53/198.51.100.7:40000"`. */
  readonly flowId: string;
  readonly edgePort: number;
  readonly clientAddr: string;
  readonly target: string | null;
  readonly atMs: number;
  /** No datagram for this long → idle. */
  readonly idleAfterMs: number;
  /** Idle for this much longer → expired. */
  readonly expireAfterMs: number;
}

/** Activity arrives as per-batch deltas, never per datagram. */
export type UdpSessionEvent =
  | { readonly type: "udp.activity"; readonly atMs: number; readonly bytesIn: number; readonly bytesOut: number }
  | { readonly type: "udp.closed"; readonly atMs: number; readonly message?: string }
  | { readonly type: "policy.tunnelLost"; readonly atMs: number }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

interface UdpFlowKey {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly flowId: string;
}

export type UdpSessionFact =
  | (UdpFlowKey & {
      readonly type: "udp.opened";
      readonly atMs: number;
      readonly edgePort: number;
      readonly clientAddr: string;
      readonly target: string | null;
    })
  | (UdpFlowKey & { readonly type: "udp.idle"; readonly atMs: number })
  | (UdpFlowKey & { readonly type: "udp.resumed"; readonly atMs: number })
  | (UdpFlowKey & {
      readonly type: "udp.closed";
      readonly atMs: number;
      readonly reason: UdpCloseReason;
      readonly message: string;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly durationMs: number;
    });

export interface UdpSessionContext extends UdpSessionInput {
  readonly openedAtMs: number;
  readonly lastActivityAtMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly closeReason: UdpCloseReason | null;
  readonly closedAtMs: number | null;
  readonly closeMessage: string;
}

export type UdpSessionOutput = Extract<UdpSessionFact, { type: "udp.closed" }>;

function flowKey(context: UdpSessionContext): UdpFlowKey {
  return { edgeId: context.edgeId, sessionId: context.sessionId, flowId: context.flowId };
}

function closedFact(context: UdpSessionContext): UdpSessionOutput {
  const atMs = context.closedAtMs ?? context.lastActivityAtMs;
  return {
    ...flowKey(context),
    type: "udp.closed",
    atMs,
    reason: context.closeReason ?? "closed",
    message: context.closeMessage,
    bytesIn: context.bytesIn,
    bytesOut: context.bytesOut,
    durationMs: Math.max(0, atMs - context.openedAtMs),
  };
}

const closeOn = (reason: Exclude<UdpCloseReason, "expired">) =>
  assign<UdpSessionContext, UdpSessionEvent, undefined, UdpSessionEvent, never>(({ event }) => ({
    closeReason: reason,
    closedAtMs: event.atMs,
    closeMessage: event.type === "udp.closed" ? (event.message ?? "") : "",
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
    emit: emit((_, fact: UdpSessionFact) => fact),
    recordActivity: assign(({ context, event }) =>
      event.type === "udp.activity"
        ? {
            lastActivityAtMs: Math.max(context.lastActivityAtMs, event.atMs),
            bytesIn: context.bytesIn + event.bytesIn,
            bytesOut: context.bytesOut + event.bytesOut,
          }
        : {},
    ),
    closeByAddon: closeOn("closed"),
    closeByTunnelLoss: closeOn("tunnelLost"),
    closeByShutdown: closeOn("hubShutdown"),
    recordExpiry: assign(({ context }) => ({
      closeReason: "expired" as const,
      // Deterministic: the session expired exactly when both timers ran out after the last datagram.
      closedAtMs: context.lastActivityAtMs + context.idleAfterMs + context.expireAfterMs,
      closeMessage: "",
    })),
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
    closeReason: null,
    closedAtMs: null,
    closeMessage: "",
  }),
  entry: {
    type: "emit",
    params: ({ context }) => ({
      ...flowKey(context),
      type: "udp.opened",
      atMs: context.openedAtMs,
      edgePort: context.edgePort,
      clientAddr: context.clientAddr,
      target: context.target,
    }),
  },
  output: ({ context }) => closedFact(context),
  on: {
    "udp.closed": { target: ".closed", actions: "closeByAddon" },
    "policy.tunnelLost": { target: ".closed", actions: "closeByTunnelLoss" },
    "policy.shutdown": { target: ".closed", actions: "closeByShutdown" },
  },
  states: {
    active: {
      on: {
        // Re-entering restarts the idle timer.
        "udp.activity": { target: "active", reenter: true, actions: "recordActivity" },
      },
      after: { idleAfter: "idle" },
    },
    idle: {
      entry: {
        type: "emit",
        params: ({ context }) => ({
          ...flowKey(context),
          type: "udp.idle",
          atMs: context.lastActivityAtMs + context.idleAfterMs,
        }),
      },
      on: {
        "udp.activity": {
          target: "active",
          actions: [
            "recordActivity",
            { type: "emit", params: ({ context, event }) => ({ ...flowKey(context), type: "udp.resumed", atMs: event.atMs }) },
          ],
        },
      },
      after: { expireAfter: { target: "expired", actions: "recordExpiry" } },
    },
    expired: {
      type: "final",
      entry: { type: "emit", params: ({ context }) => closedFact(context) },
    },
    closed: {
      type: "final",
      entry: { type: "emit", params: ({ context }) => closedFact(context) },
    },
  },
});

export type UdpSessionMachine = typeof udpSessionMachine;
