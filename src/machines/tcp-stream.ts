import { assign, emit, setup } from "xstate";

/** Why a stream ended: the addon's reasons (docs/architecture.md) plus `hubRestarted` from recovery. */
export type StreamCloseReason =
  | "clientClosed"
  | "targetClosed"
  | "targetRefused"
  | "timeout"
  | "tunnelLost"
  | "hubShutdown"
  | "reset"
  | "protocolError";

export interface TcpStreamInput {
  readonly side: "hub" | "edge";
  readonly edgeId: string;
  readonly sessionId: string;
  readonly streamId: number;
  readonly edgePort: number;
  readonly clientAddr: string;
  /** `null` on the edge side, which does not know the target. */
  readonly target: string | null;
  /** How long a stream whose tunnel is gone waits for the addon's own `stream.closed` (with byte counts). */
  readonly closeGraceMs: number;
}

/** Events a stream consumes: the addon's `stream.*` events, and `policy.*` from the actor that owns the session. */
export type TcpStreamEvent =
  | { readonly type: "stream.opened"; readonly atMs: number; readonly target?: string | null }
  | { readonly type: "stream.halfClosed"; readonly atMs: number; readonly side: "client" | "target" }
  | {
      readonly type: "stream.closed";
      readonly atMs: number;
      readonly reason: StreamCloseReason;
      readonly message?: string;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly durationMs: number;
    }
  | { readonly type: "policy.tunnelLost"; readonly atMs: number }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

/** Lifecycle facts a stream emits, one per transition; the actor layer appends them to the log. */
export type TcpStreamFact =
  | {
      readonly type: "stream.opened";
      readonly atMs: number;
      readonly edgeId: string;
      readonly sessionId: string;
      readonly streamId: number;
      readonly edgePort: number;
      readonly clientAddr: string;
      readonly target: string | null;
    }
  | {
      readonly type: "stream.halfClosed";
      readonly atMs: number;
      readonly sessionId: string;
      readonly streamId: number;
      readonly side: "client" | "target";
    }
  | {
      readonly type: "stream.closed";
      readonly atMs: number;
      readonly edgeId: string;
      readonly sessionId: string;
      readonly streamId: number;
      readonly edgePort: number;
      readonly clientAddr: string;
      readonly target: string | null;
      readonly reason: StreamCloseReason;
      readonly message: string;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly durationMs: number;
      /** False when the stream was closed without the addon's final counts (tunnel lost, no close seen). */
      readonly bytesFinal: boolean;
    };

interface PendingClose {
  readonly reason: StreamCloseReason;
  readonly atMs: number;
}

export interface TcpStreamContext extends TcpStreamInput {
  readonly openedAtMs: number | null;
  readonly halfClosedBy: "client" | "target" | null;
  readonly pendingClose: PendingClose | null;
  readonly closed: Extract<TcpStreamFact, { type: "stream.closed" }> | null;
}

export type TcpStreamOutput = Extract<TcpStreamFact, { type: "stream.closed" }>;

type ClosedEvent = Extract<TcpStreamEvent, { type: "stream.closed" }>;

function closedFromAddon(context: TcpStreamContext, event: ClosedEvent): TcpStreamOutput {
  return {
    type: "stream.closed",
    atMs: event.atMs,
    edgeId: context.edgeId,
    sessionId: context.sessionId,
    streamId: context.streamId,
    edgePort: context.edgePort,
    clientAddr: context.clientAddr,
    target: context.target,
    reason: event.reason,
    message: event.message ?? "",
    bytesIn: event.bytesIn,
    bytesOut: event.bytesOut,
    durationMs: event.durationMs,
    bytesFinal: true,
  };
}

function closedWithoutAddon(context: TcpStreamContext): TcpStreamOutput {
  const pending = context.pendingClose ?? { reason: "tunnelLost" as const, atMs: context.openedAtMs ?? 0 };
  // The grace timer started at pending.atMs, so that plus the grace is when the stream was given up on.
  const atMs = pending.atMs + context.closeGraceMs;
  return {
    type: "stream.closed",
    atMs,
    edgeId: context.edgeId,
    sessionId: context.sessionId,
    streamId: context.streamId,
    edgePort: context.edgePort,
    clientAddr: context.clientAddr,
    target: context.target,
    reason: pending.reason,
    message: "the addon reported no close for this stream after its tunnel ended",
    bytesIn: 0,
    bytesOut: 0,
    durationMs: context.openedAtMs === null ? 0 : Math.max(0, atMs - context.openedAtMs),
    bytesFinal: false,
  };
}

export const tcpStreamMachine = setup({
  types: {
    input: {} as TcpStreamInput,
    context: {} as TcpStreamContext,
    events: {} as TcpStreamEvent,
    emitted: {} as TcpStreamFact,
    output: {} as TcpStreamOutput,
  },
  actions: {
    /** The one way a stream reports a lifecycle transition; tests replace it with `.provide()`. */
    emit: emit((_, fact: TcpStreamFact) => fact),
    recordOpened: assign(({ context, event }) =>
      event.type === "stream.opened"
        ? { openedAtMs: event.atMs, target: event.target === undefined ? context.target : event.target }
        : {},
    ),
    recordClosedByAddon: assign(({ context, event }) =>
      event.type === "stream.closed" ? { closed: closedFromAddon(context, event) } : {},
    ),
    recordTunnelLost: assign(({ event }) => ({ pendingClose: { reason: "tunnelLost" as const, atMs: event.atMs } })),
    recordShutdown: assign(({ event }) => ({ pendingClose: { reason: "hubShutdown" as const, atMs: event.atMs } })),
  },
  delays: {
    closeGrace: ({ context }) => context.closeGraceMs,
  },
}).createMachine({
  id: "tcpStream",
  initial: "opening",
  context: ({ input }) => ({
    ...input,
    openedAtMs: null,
    halfClosedBy: null,
    pendingClose: null,
    closed: null,
  }),
  output: ({ context }) => context.closed ?? closedWithoutAddon(context),
  states: {
    opening: {
      on: {
        "stream.opened": { target: "open", actions: "recordOpened" },
        "stream.closed": { target: "closed", actions: "recordClosedByAddon" },
        "policy.tunnelLost": { target: "closing", actions: "recordTunnelLost" },
        "policy.shutdown": { target: "closing", actions: "recordShutdown" },
      },
    },
    open: {
      entry: {
        type: "emit",
        params: ({ context }) => ({
          type: "stream.opened",
          atMs: context.openedAtMs ?? 0,
          edgeId: context.edgeId,
          sessionId: context.sessionId,
          streamId: context.streamId,
          edgePort: context.edgePort,
          clientAddr: context.clientAddr,
          target: context.target,
        }),
      },
      on: {
        "stream.halfClosed": {
          target: "halfClosed",
          actions: [
            assign({ halfClosedBy: ({ event }) => event.side }),
            {
              type: "emit",
              params: ({ context, event }) => ({
                type: "stream.halfClosed",
                atMs: event.atMs,
                sessionId: context.sessionId,
                streamId: context.streamId,
                side: event.side,
              }),
            },
          ],
        },
        "stream.closed": { target: "closed", actions: "recordClosedByAddon" },
        "policy.tunnelLost": { target: "closing", actions: "recordTunnelLost" },
        "policy.shutdown": { target: "closing", actions: "recordShutdown" },
      },
    },
    halfClosed: {
      on: {
        "stream.closed": { target: "closed", actions: "recordClosedByAddon" },
        "policy.tunnelLost": { target: "closing", actions: "recordTunnelLost" },
        "policy.shutdown": { target: "closing", actions: "recordShutdown" },
      },
    },
    closing: {
      // The tunnel is gone; the addon normally reports this stream's close with its byte counts, so wait a
      // little for that before closing on our own.
      on: {
        "stream.closed": { target: "closed", actions: "recordClosedByAddon" },
      },
      after: {
        closeGrace: {
          target: "closed",
          actions: assign({ closed: ({ context }) => closedWithoutAddon(context) }),
        },
      },
    },
    closed: {
      type: "final",
      entry: {
        type: "emit",
        params: ({ context }) => context.closed ?? closedWithoutAddon(context),
      },
    },
  },
});

export type TcpStreamMachine = typeof tcpStreamMachine;
