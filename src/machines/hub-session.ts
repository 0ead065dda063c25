import { assign, emit, setup } from "xstate";
import type { AuthFailReason, EdgeDisconnectReason } from "../events/catalog.js";
import { fact, type Fact } from "./fact.js";

export type { AuthFailReason, EdgeDisconnectReason };

/** The hub's view of one tunnel session (or of one failed handshake attempt, which ends in `rejected`). */
export interface HubSessionInput {
  readonly sessionId: string;
  /** Waiting this long for the addon's `edge.disconnected` after we asked a session to go. */
  readonly closeTimeoutMs: number;
}

/** Reasons the hub itself decides to end a session; the addon confirms with `edge.disconnected`. */
export type HubSessionCloseRequest = Extract<EdgeDisconnectReason, "revoked" | "superseded" | "hubShutdown">;

/** The addon's `edge.*` events (docs/architecture.md) and `policy.*` from the hub's actor system. */
export type HubSessionEvent =
  | { readonly type: "edge.connected"; readonly atMs: number; readonly edgeId: string; readonly remoteAddr: string }
  | {
      readonly type: "edge.authFailed";
      readonly atMs: number;
      readonly remoteAddr: string;
      readonly claimedEdgeId: string | null;
      readonly reason: AuthFailReason;
    }
  | {
      readonly type: "edge.configPushed";
      readonly atMs: number;
      readonly listenPorts: ReadonlyArray<number>;
      readonly listenPortsUdp: ReadonlyArray<number>;
    }
  | {
      readonly type: "edge.disconnected";
      readonly atMs: number;
      readonly reason: EdgeDisconnectReason;
      readonly message?: string | null;
    }
  | { readonly type: "policy.revoke"; readonly atMs: number }
  | {
      readonly type: "policy.supersede";
      readonly atMs: number;
      readonly bySessionId: string;
      readonly remoteAddr: string | null;
    }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

export type HubSessionFact =
  | Fact<"edge.connected">
  | Fact<"edge.authFailed">
  | Fact<"edge.configPushed">
  | Fact<"edge.superseded">
  | Fact<"edge.disconnected">;

export interface HubSessionContext extends HubSessionInput {
  readonly edgeId: string | null;
  readonly remoteAddr: string | null;
  readonly connectedAtMs: number | null;
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
  /** What we asked for and when; the addon's own disconnect reason wins if it arrives. */
  readonly closeRequest: { readonly reason: HubSessionCloseRequest; readonly atMs: number } | null;
  readonly disconnect: { readonly reason: EdgeDisconnectReason; readonly message: string; readonly atMs: number } | null;
  readonly authFailure: { readonly reason: AuthFailReason; readonly atMs: number } | null;
}

export interface HubSessionOutput {
  readonly outcome: "disconnected" | "rejected";
  readonly atMs: number;
  readonly reason: EdgeDisconnectReason | AuthFailReason;
}

const requestClose = (reason: HubSessionCloseRequest) =>
  assign<HubSessionContext, HubSessionEvent, undefined, HubSessionEvent, never>(({ event }) => ({
    closeRequest: { reason, atMs: event.atMs },
  }));

const disconnectData = (context: HubSessionContext) => {
  const d = context.disconnect ?? { reason: "edgeClosed" as const, message: "", atMs: context.connectedAtMs ?? 0 };
  return {
    reason: d.reason,
    message: d.message,
    durationMs: context.connectedAtMs === null ? null : Math.max(0, d.atMs - context.connectedAtMs),
  };
};

export const hubSessionMachine = setup({
  types: {
    input: {} as HubSessionInput,
    context: {} as HubSessionContext,
    events: {} as HubSessionEvent,
    emitted: {} as HubSessionFact,
    output: {} as HubSessionOutput,
  },
  actions: {
    /** The one way a session reports a lifecycle transition; tests replace it with `.provide()`. */
    emit: emit((_, f: HubSessionFact) => f),
    recordConnected: assign(({ event }) =>
      event.type === "edge.connected"
        ? { edgeId: event.edgeId, remoteAddr: event.remoteAddr, connectedAtMs: event.atMs }
        : {},
    ),
    recordConfig: assign(({ event }) =>
      event.type === "edge.configPushed" ? { listenPorts: event.listenPorts, listenPortsUdp: event.listenPortsUdp } : {},
    ),
    recordDisconnect: assign(({ event }) =>
      event.type === "edge.disconnected"
        ? { disconnect: { reason: event.reason, message: event.message ?? "", atMs: event.atMs } }
        : {},
    ),
    requestRevoke: requestClose("revoked"),
    requestSupersede: requestClose("superseded"),
    requestShutdown: requestClose("hubShutdown"),
    recordCloseTimeout: assign(({ context }) => {
      const request = context.closeRequest ?? { reason: "hubShutdown" as const, atMs: context.connectedAtMs ?? 0 };
      return {
        disconnect: {
          reason: request.reason,
          message: `no disconnect from the addon within ${context.closeTimeoutMs} ms of asking the session to close`,
          atMs: request.atMs + context.closeTimeoutMs,
        },
      };
    }),
  },
  guards: {
    /** A session cannot be superseded by itself (a repeated `edge.connected` is not a newer session). */
    byAnotherSession: ({ context, event }) => event.type === "policy.supersede" && event.bySessionId !== context.sessionId,
  },
  delays: {
    closeTimeout: ({ context }) => context.closeTimeoutMs,
  },
}).createMachine({
  id: "hubSession",
  initial: "authenticating",
  context: ({ input }) => ({
    ...input,
    edgeId: null,
    remoteAddr: null,
    connectedAtMs: null,
    listenPorts: [],
    listenPortsUdp: [],
    closeRequest: null,
    disconnect: null,
    authFailure: null,
  }),
  output: ({ context }) =>
    context.authFailure !== null
      ? { outcome: "rejected", atMs: context.authFailure.atMs, reason: context.authFailure.reason }
      : { outcome: "disconnected", atMs: context.disconnect?.atMs ?? 0, reason: disconnectData(context).reason },
  states: {
    authenticating: {
      on: {
        "edge.connected": {
          target: "active",
          actions: [
            "recordConnected",
            {
              type: "emit",
              params: ({ event }) => fact("edge.connected", event.atMs, { remoteAddr: event.remoteAddr }),
            },
          ],
        },
        "edge.authFailed": {
          target: "rejected",
          actions: [
            assign({ authFailure: ({ event }) => ({ reason: event.reason, atMs: event.atMs }) }),
            {
              type: "emit",
              params: ({ event }) =>
                fact("edge.authFailed", event.atMs, {
                  remoteAddr: event.remoteAddr,
                  claimedEdgeId: event.claimedEdgeId,
                  reason: event.reason,
                }),
            },
          ],
        },
      },
    },
    active: {
      on: {
        "edge.configPushed": {
          actions: [
            "recordConfig",
            {
              type: "emit",
              params: ({ event }) =>
                fact("edge.configPushed", event.atMs, {
                  listenPorts: event.listenPorts,
                  listenPortsUdp: event.listenPortsUdp,
                }),
            },
          ],
        },
        "edge.disconnected": { target: "closed", actions: "recordDisconnect" },
        "policy.revoke": { target: "closing", actions: "requestRevoke" },
        "policy.supersede": {
          guard: "byAnotherSession",
          target: "closing",
          actions: [
            "requestSupersede",
            {
              type: "emit",
              params: ({ event }) =>
                fact("edge.superseded", event.atMs, { bySessionId: event.bySessionId, remoteAddr: event.remoteAddr }),
            },
          ],
        },
        "policy.shutdown": { target: "closing", actions: "requestShutdown" },
      },
    },
    closing: {
      on: { "edge.disconnected": { target: "closed", actions: "recordDisconnect" } },
      after: { closeTimeout: { target: "closed", actions: "recordCloseTimeout" } },
    },
    closed: {
      type: "final",
      entry: {
        type: "emit",
        params: ({ context }) => fact("edge.disconnected", context.disconnect?.atMs ?? null, disconnectData(context)),
      },
    },
    /** A handshake that failed; the session never existed. */
    rejected: { type: "final" },
  },
});

export type HubSessionMachine = typeof hubSessionMachine;
