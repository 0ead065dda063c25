import { assign, emit, fromPromise, setup } from "xstate";

/** The edge's view of its tunnel to a hub. The addon connects and retries on its own; this mirrors it. */
export interface EdgeTunnelInput {
  readonly edgeId: string;
  /** Backoff used when the addon does not say when it retries (`retryInMs` null): doubles per failure. */
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
  /** Upper bound for `stopEdge`; past it the tunnel is declared stopped and the stop is interrupted. */
  readonly stopTimeoutMs: number;
}

type PortList = ReadonlyArray<number>;

/** The addon's edge events (docs/architecture.md) and `policy.stop`. */
export type EdgeTunnelEvent =
  | { readonly type: "tunnel.connecting"; readonly atMs: number; readonly hub: string; readonly attempt: number }
  /** TLS is up and the hello is on its way. Not in the addon's event list yet; accepted so the state exists. */
  | { readonly type: "tunnel.handshaking"; readonly atMs: number; readonly hub: string }
  | {
      readonly type: "tunnel.connected";
      readonly atMs: number;
      readonly hub: string;
      readonly hubId: string;
      readonly sessionId: string;
      readonly hubFingerprint: string;
      readonly pinned: boolean;
    }
  | { readonly type: "tunnel.unpinned"; readonly atMs: number; readonly hub: string; readonly hubFingerprint: string }
  | {
      readonly type: "tunnel.disconnected" | "tunnel.rejected";
      readonly atMs: number;
      readonly hub: string;
      readonly reason: string;
      readonly message?: string | null;
      readonly retryInMs?: number | null;
    }
  | { readonly type: "ports.assigned"; readonly atMs: number; readonly listenPorts: PortList; readonly listenPortsUdp: PortList }
  | {
      readonly type: "ports.updated";
      readonly atMs: number;
      readonly listenPorts: PortList;
      readonly listenPortsUdp: PortList;
    }
  | {
      readonly type: "listener.error";
      readonly atMs: number;
      readonly port: number;
      readonly protocol: "tcp" | "udp";
      readonly code: string;
      readonly message?: string | null;
    }
  | { readonly type: "policy.stop"; readonly atMs: number };

interface TunnelFactOf<T extends string, D> {
  readonly type: T;
  /** Epoch ms; `null` when only the actor running the machine knows it (the stop finished). */
  readonly time: number | null;
  readonly data: D;
}

/**
 * Edge-side lifecycle facts. The JetStream catalog (src/events/catalog.ts) is the hub's log and has no edge
 * events, so these stay local: they feed the edge's logs and status.
 */
export type EdgeTunnelFact =
  | TunnelFactOf<"tunnel.connecting", { readonly hub: string; readonly attempt: number }>
  | TunnelFactOf<
      "tunnel.connected",
      {
        readonly hub: string;
        readonly hubId: string;
        readonly sessionId: string;
        readonly hubFingerprint: string;
        readonly pinned: boolean;
      }
    >
  | TunnelFactOf<
      "tunnel.disconnected" | "tunnel.rejected",
      {
        readonly hub: string;
        readonly reason: string;
        readonly message: string;
        readonly retryInMs: number;
        /** How long the tunnel had been up; null when it never connected. */
        readonly connectedMs: number | null;
      }
    >
  | TunnelFactOf<"tunnel.stopped", { readonly message: string | null }>;

export interface ListenerFailure {
  readonly port: number;
  readonly protocol: "tcp" | "udp";
  readonly code: string;
  readonly message: string;
}

export interface EdgeTunnelContext extends EdgeTunnelInput {
  readonly hub: string | null;
  readonly attempt: number;
  readonly connectingAtMs: number | null;
  readonly hubId: string | null;
  readonly sessionId: string | null;
  readonly hubFingerprint: string | null;
  readonly pinned: boolean;
  readonly connectedAtMs: number | null;
  /** Disconnects and rejections since the last successful connect. */
  readonly failures: number;
  readonly retryInMs: number;
  readonly lastError: { readonly kind: "disconnected" | "rejected"; readonly reason: string; readonly message: string } | null;
  readonly lostAtMs: number | null;
  /** How long the tunnel had been up when it was last lost; null when it never connected. */
  readonly lastUptimeMs: number | null;
  readonly listenPorts: PortList;
  readonly listenPortsUdp: PortList;
  readonly listenerErrors: ReadonlyArray<ListenerFailure>;
  readonly stopRequestedAtMs: number | null;
  readonly stopMessage: string | null;
  /** `null` until known; a stop that finished is stamped by the actor running the machine. */
  readonly stoppedAtMs: number | null;
}

/** Backoff when the addon does not tell: initial · 2^(failures−1), capped. */
export const fallbackBackoffMs = (context: Pick<EdgeTunnelContext, "reconnectInitialMs" | "reconnectMaxMs" | "failures">) =>
  Math.min(context.reconnectMaxMs, context.reconnectInitialMs * 2 ** Math.max(0, Math.min(30, context.failures - 1)));

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/** The fact for the loss just recorded by `recordLost`; reads only context, so it needs no event narrowing. */
const lostFact = (context: EdgeTunnelContext): EdgeTunnelFact => ({
  type: context.lastError?.kind === "rejected" ? "tunnel.rejected" : "tunnel.disconnected",
  time: context.lostAtMs,
  data: {
    hub: context.hub ?? "",
    reason: context.lastError?.reason ?? "",
    message: context.lastError?.message ?? "",
    retryInMs: context.retryInMs,
    connectedMs: context.lastUptimeMs,
  },
});

// Facts are built from context after the record* action of the same transition ran (xstate v5 applies
// actions in order), so they carry what was just decided (e.g. the backoff) without re-narrowing the event.
const emitLost = { type: "emit", params: ({ context }: { readonly context: EdgeTunnelContext }) => lostFact(context) } as const;
const emitConnecting = {
  type: "emit",
  params: ({ context }: { readonly context: EdgeTunnelContext }): EdgeTunnelFact => ({
    type: "tunnel.connecting",
    time: context.connectingAtMs,
    data: { hub: context.hub ?? "", attempt: context.attempt },
  }),
} as const;

const onLost = {
  "tunnel.disconnected": { target: "backingOff", actions: ["recordLost", emitLost] },
  "tunnel.rejected": { target: "backingOff", actions: ["recordLost", emitLost] },
} as const;

export const edgeTunnelMachine = setup({
  types: {
    input: {} as EdgeTunnelInput,
    context: {} as EdgeTunnelContext,
    events: {} as EdgeTunnelEvent,
    emitted: {} as EdgeTunnelFact,
  },
  actors: {
    /** Stops the addon's edge. The default does nothing so the machine stays pure; the actor system provides it. */
    stopEdge: fromPromise<void>(async () => undefined),
  },
  actions: {
    /** The one way the tunnel reports a lifecycle transition; tests replace it with `.provide()`. */
    emit: emit((_, f: EdgeTunnelFact) => f),
    recordConnecting: assign(({ event }) =>
      event.type === "tunnel.connecting" ? { hub: event.hub, attempt: event.attempt, connectingAtMs: event.atMs } : {},
    ),
    recordHandshaking: assign(({ event }) => (event.type === "tunnel.handshaking" ? { hub: event.hub } : {})),
    recordConnected: assign(({ event }) =>
      event.type === "tunnel.connected"
        ? {
            hub: event.hub,
            hubId: event.hubId,
            sessionId: event.sessionId,
            hubFingerprint: event.hubFingerprint,
            pinned: event.pinned,
            connectedAtMs: event.atMs,
            failures: 0,
            lastError: null,
          }
        : {},
    ),
    recordLost: assign(({ context, event }) => {
      if (event.type !== "tunnel.disconnected" && event.type !== "tunnel.rejected") return {};
      const failures = context.failures + 1;
      return {
        hub: event.hub,
        failures,
        retryInMs: event.retryInMs ?? fallbackBackoffMs({ ...context, failures }),
        lastError: {
          kind: event.type === "tunnel.rejected" ? ("rejected" as const) : ("disconnected" as const),
          reason: event.reason,
          message: event.message ?? "",
        },
        lostAtMs: event.atMs,
        lastUptimeMs: context.connectedAtMs === null ? null : Math.max(0, event.atMs - context.connectedAtMs),
        connectedAtMs: null,
        hubId: null,
        sessionId: null,
      };
    }),
    recordPorts: assign(({ event }) =>
      event.type === "ports.assigned" || event.type === "ports.updated"
        ? { listenPorts: event.listenPorts, listenPortsUdp: event.listenPortsUdp }
        : {},
    ),
    recordListenerError: assign(({ context, event }) => {
      if (event.type !== "listener.error") return {};
      const failure: ListenerFailure = {
        port: event.port,
        protocol: event.protocol,
        code: event.code,
        message: event.message ?? "",
      };
      const others = context.listenerErrors.filter((e) => e.port !== event.port || e.protocol !== event.protocol);
      return { listenerErrors: [...others, failure] };
    }),
    recordStopRequest: assign(({ event }) => ({ stopRequestedAtMs: event.atMs })),
    recordStopTimeout: assign(({ context }) => ({
      stopMessage: `stop did not finish within ${context.stopTimeoutMs} ms`,
      stoppedAtMs: (context.stopRequestedAtMs ?? 0) + context.stopTimeoutMs,
    })),
    recordStopFailure: assign(({ event }) =>
      "error" in event ? { stopMessage: `stop failed: ${errorMessage(event.error)}` } : {},
    ),
  },
  delays: {
    reconnectBackoff: ({ context }) => context.retryInMs,
    stopTimeout: ({ context }) => context.stopTimeoutMs,
  },
}).createMachine({
  id: "edgeTunnel",
  initial: "connecting",
  context: ({ input }) => ({
    ...input,
    hub: null,
    attempt: 0,
    connectingAtMs: null,
    hubId: null,
    sessionId: null,
    hubFingerprint: null,
    pinned: false,
    connectedAtMs: null,
    failures: 0,
    retryInMs: input.reconnectInitialMs,
    lastError: null,
    lostAtMs: null,
    lastUptimeMs: null,
    listenPorts: [],
    listenPortsUdp: [],
    listenerErrors: [],
    stopRequestedAtMs: null,
    stopMessage: null,
    stoppedAtMs: null,
  }),
  on: {
    "policy.stop": { target: ".stopping", actions: "recordStopRequest" },
    "ports.assigned": { actions: "recordPorts" },
    "ports.updated": { actions: "recordPorts" },
    "listener.error": { actions: "recordListenerError" },
  },
  states: {
    connecting: {
      on: {
        "tunnel.connecting": { actions: ["recordConnecting", emitConnecting] },
        "tunnel.handshaking": { target: "handshaking", actions: "recordHandshaking" },
        "tunnel.connected": { target: "connected", actions: "recordConnected" },
        ...onLost,
      },
    },
    handshaking: {
      on: {
        "tunnel.connected": { target: "connected", actions: "recordConnected" },
        ...onLost,
      },
    },
    connected: {
      entry: {
        type: "emit",
        params: ({ context }) => ({
          type: "tunnel.connected",
          time: context.connectedAtMs,
          data: {
            hub: context.hub ?? "",
            hubId: context.hubId ?? "",
            sessionId: context.sessionId ?? "",
            hubFingerprint: context.hubFingerprint ?? "",
            pinned: context.pinned,
          },
        }),
      },
      on: {
        "tunnel.unpinned": { actions: assign({ pinned: false }) },
        ...onLost,
      },
    },
    backingOff: {
      on: {
        "tunnel.connecting": {
          target: "connecting",
          actions: ["recordConnecting", emitConnecting],
        },
      },
      // The addon retries on its own after retryInMs; by then we expect it to be connecting again.
      after: { reconnectBackoff: "connecting" },
    },
    stopping: {
      // A second stop request must not restart the stop.
      on: { "policy.stop": {} },
      invoke: {
        src: "stopEdge",
        onDone: "stopped",
        onError: { target: "stopped", actions: "recordStopFailure" },
      },
      after: { stopTimeout: { target: "stopped", actions: "recordStopTimeout" } },
    },
    stopped: {
      type: "final",
      entry: {
        type: "emit",
        params: ({ context }) => ({ type: "tunnel.stopped", time: context.stoppedAtMs, data: { message: context.stopMessage } }),
      },
    },
  },
});

export type EdgeTunnelMachine = typeof edgeTunnelMachine;
