import { assign, emit, setup } from "xstate";
import type { EventData, StreamCloseReason } from "../events/catalog.js";
import { fact, type Fact } from "./fact.js";

export type { StreamCloseReason };

export interface TcpStreamInput {
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

/** The addon's `stream.*` events (docs/architecture.md) and `policy.*` from the actor that owns the session. */
export type TcpStreamEvent =
  | { readonly type: "stream.opened"; readonly atMs: number; readonly target?: string | null }
  /** One side sent FIN. Not in the addon's event list yet; accepted so the state exists when it is. */
  | { readonly type: "stream.halfClosed"; readonly atMs: number; readonly side: "client" | "target" }
  | {
      readonly type: "stream.closed";
      readonly atMs: number;
      readonly reason: StreamCloseReason;
      readonly message?: string | null;
      readonly bytesIn: number;
      readonly bytesOut: number;
      readonly durationMs: number;
    }
  | { readonly type: "policy.tunnelLost"; readonly atMs: number }
  | { readonly type: "policy.shutdown"; readonly atMs: number };

export type TcpStreamFact = Fact<"stream.opened"> | Fact<"stream.closed">;
export type StreamClosedData = EventData<"stream.closed">;

interface PendingClose {
  readonly reason: "tunnelLost" | "hubShutdown";
  readonly atMs: number;
}

export interface TcpStreamContext extends TcpStreamInput {
  readonly openedAtMs: number | null;
  readonly halfClosedBy: "client" | "target" | null;
  readonly pendingClose: PendingClose | null;
  readonly closedAtMs: number | null;
  readonly closed: StreamClosedData | null;
}

/** The stream's final `stream.closed` data and when it happened. */
export interface TcpStreamOutput {
  readonly atMs: number;
  readonly closed: StreamClosedData;
}

type ClosedEvent = Extract<TcpStreamEvent, { type: "stream.closed" }>;

type OpenedEvent = Extract<TcpStreamEvent, { type: "stream.opened" }>;

/** The state values of the machine below. */
export type TcpStreamState = "opening" | "open" | "halfClosed" | "closing" | "closed";

/** The machine's context before any event (its `context` factory). */
// Fields spelled out rather than spread: this runs once per TCP stream and spreading is several times slower.
export const initialTcpStreamContext = (input: TcpStreamInput): TcpStreamContext => ({
  edgeId: input.edgeId,
  sessionId: input.sessionId,
  streamId: input.streamId,
  edgePort: input.edgePort,
  clientAddr: input.clientAddr,
  target: input.target,
  closeGraceMs: input.closeGraceMs,
  openedAtMs: null,
  halfClosedBy: null,
  pendingClose: null,
  closedAtMs: null,
  closed: null,
});

/** `recordOpened`: what `stream.opened` changes in the context. */
const openedUpdate = (context: TcpStreamContext, event: OpenedEvent) => ({
  openedAtMs: event.atMs,
  target: event.target === undefined ? context.target : event.target,
});

const openedFact = (context: TcpStreamContext): TcpStreamFact =>
  fact("stream.opened", context.openedAtMs, {
    edgePort: context.edgePort,
    clientAddr: context.clientAddr,
    target: context.target,
  });

const closedByAddon = (context: TcpStreamContext, event: ClosedEvent): StreamClosedData => ({
  edgePort: context.edgePort,
  clientAddr: context.clientAddr,
  target: context.target,
  bytesIn: event.bytesIn,
  bytesOut: event.bytesOut,
  durationMs: event.durationMs,
  reason: event.reason,
  message: event.message ?? "",
});

/** When the grace timer ran out: it started when the tunnel was lost. */
const givenUpAt = (context: TcpStreamContext): number =>
  (context.pendingClose?.atMs ?? context.openedAtMs ?? 0) + context.closeGraceMs;

const closedWithoutAddon = (context: TcpStreamContext): StreamClosedData => {
  const atMs = givenUpAt(context);
  return {
    edgePort: context.edgePort,
    clientAddr: context.clientAddr,
    target: context.target,
    // The addon never reported this stream's counts; 0 is "unknown", the message says so.
    bytesIn: 0,
    bytesOut: 0,
    durationMs: context.openedAtMs === null ? 0 : Math.max(0, atMs - context.openedAtMs),
    reason: context.pendingClose?.reason ?? "tunnelLost",
    message: `no close from the addon within ${context.closeGraceMs} ms after the tunnel ended; byte counts unknown`,
  };
};

const closedFact = (context: TcpStreamContext): TcpStreamFact =>
  fact("stream.closed", context.closedAtMs ?? givenUpAt(context), context.closed ?? closedWithoutAddon(context));

/** `{ ...c, openedAtMs, target, closedAtMs, closed }`, spelled out (hot path; see initialTcpStreamContext). */
const withChanges = (
  c: TcpStreamContext,
  openedAtMs: number | null,
  target: string | null,
  closedAtMs: number | null,
  closed: StreamClosedData | null,
): TcpStreamContext => ({
  edgeId: c.edgeId,
  sessionId: c.sessionId,
  streamId: c.streamId,
  edgePort: c.edgePort,
  clientAddr: c.clientAddr,
  target,
  closeGraceMs: c.closeGraceMs,
  openedAtMs,
  halfClosedBy: c.halfClosedBy,
  pendingClose: c.pendingClose,
  closedAtMs,
  closed,
});

/** A state of the machine's common path, held without an interpreter (see `tcpStreamFastStep`). */
export interface TcpStreamFastState {
  readonly value: "opening" | "open" | "closed";
  readonly context: TcpStreamContext;
}

/**
 * The machine's common path, compiled by hand: opening --stream.opened--> open --stream.closed--> closed, and
 * opening --stream.closed--> closed (a refused target). Same context updates and facts as the machine's own
 * actions (the helpers above are shared); `undefined` for every other (state, event) pair, where the caller
 * must run the machine itself (src/actors/tcp-stream-runner.ts replays the events taken so far into a real
 * actor). test/machines/tcp-stream-fast.unit.test.ts drives both with the same event sequences and compares.
 * None of these states has a timer, so skipping the interpreter changes nothing about time.
 */
export const tcpStreamFastStep = (
  state: TcpStreamFastState,
  event: TcpStreamEvent,
): { readonly next: TcpStreamFastState; readonly fact: TcpStreamFact } | undefined => {
  const c = state.context;
  if (event.type === "stream.opened" && state.value === "opening") {
    const opened = openedUpdate(c, event);
    const context = withChanges(c, opened.openedAtMs, opened.target, c.closedAtMs, c.closed);
    return { next: { value: "open", context }, fact: openedFact(context) };
  }
  if (event.type === "stream.closed" && (state.value === "opening" || state.value === "open")) {
    const context = withChanges(c, c.openedAtMs, c.target, event.atMs, closedByAddon(c, event));
    return { next: { value: "closed", context }, fact: closedFact(context) };
  }
  return undefined;
};

const onTunnelGone = {
  "policy.tunnelLost": { target: "closing", actions: "recordTunnelLost" },
  "policy.shutdown": { target: "closing", actions: "recordShutdown" },
} as const;

const onAddonClose = { "stream.closed": { target: "closed", actions: "recordClosedByAddon" } } as const;

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
    emit: emit((_, f: TcpStreamFact) => f),
    recordOpened: assign(({ context, event }) => (event.type === "stream.opened" ? openedUpdate(context, event) : {})),
    recordHalfClose: assign(({ event }) => (event.type === "stream.halfClosed" ? { halfClosedBy: event.side } : {})),
    recordClosedByAddon: assign(({ context, event }) =>
      event.type === "stream.closed" ? { closed: closedByAddon(context, event), closedAtMs: event.atMs } : {},
    ),
    recordTunnelLost: assign(({ event }) => ({ pendingClose: { reason: "tunnelLost" as const, atMs: event.atMs } })),
    recordShutdown: assign(({ event }) => ({ pendingClose: { reason: "hubShutdown" as const, atMs: event.atMs } })),
    recordGivenUp: assign(({ context }) => ({ closed: closedWithoutAddon(context), closedAtMs: givenUpAt(context) })),
  },
  delays: {
    closeGrace: ({ context }) => context.closeGraceMs,
  },
}).createMachine({
  id: "tcpStream",
  initial: "opening",
  context: ({ input }) => initialTcpStreamContext(input),
  output: ({ context }) => ({
    atMs: context.closedAtMs ?? givenUpAt(context),
    closed: context.closed ?? closedWithoutAddon(context),
  }),
  states: {
    opening: {
      on: {
        "stream.opened": { target: "open", actions: "recordOpened" },
        ...onAddonClose,
        ...onTunnelGone,
      },
    },
    open: {
      entry: { type: "emit", params: ({ context }) => openedFact(context) },
      on: {
        // The catalog has no half-close event: a FIN is a detail of the stream, not a lifecycle fact to log.
        "stream.halfClosed": { target: "halfClosed", actions: "recordHalfClose" },
        ...onAddonClose,
        ...onTunnelGone,
      },
    },
    halfClosed: {
      on: { ...onAddonClose, ...onTunnelGone },
    },
    closing: {
      // The tunnel is gone. The addon normally still reports this stream's close with its byte counts, so
      // wait a little for that before closing on our own.
      on: onAddonClose,
      after: { closeGrace: { target: "closed", actions: "recordGivenUp" } },
    },
    closed: {
      type: "final",
      entry: { type: "emit", params: ({ context }) => closedFact(context) },
    },
  },
});

export type TcpStreamMachine = typeof tcpStreamMachine;
