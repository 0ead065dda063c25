import { assign, emit, fromPromise, setup } from "xstate";
import type { EventData, HubStopReason } from "../events/catalog.js";
import { fact, type Fact } from "./fact.js";

export type { HubStopReason };

export interface HubInput {
  readonly portwayVersion: string;
  readonly fingerprint: string | null;
  /** Upper bound for `drain`; past it the hub is declared stopped and the drain is interrupted. */
  readonly drainTimeoutMs: number;
}

export type HubRecoveredData = EventData<"hub.recovered">;

/** The addon's `hub.*` events, the start outcome, and `policy.stop` from whoever owns the process. */
export type HubEvent =
  | { readonly type: "hub.listening"; readonly atMs: number; readonly port: number }
  | { readonly type: "hub.startFailed"; readonly atMs: number; readonly message: string }
  /** The previous run's leftovers were closed while rebuilding state (see actors/recover.ts). */
  | { readonly type: "hub.recovered"; readonly atMs: number; readonly data: HubRecoveredData }
  | { readonly type: "hub.stopped"; readonly atMs: number }
  | { readonly type: "policy.stop"; readonly atMs: number; readonly reason: Exclude<HubStopReason, "error"> };

export type HubFact = Fact<"hub.started"> | Fact<"hub.recovered"> | Fact<"hub.stopped">;

export interface HubContext extends HubInput {
  readonly tunnelPort: number | null;
  readonly startedAtMs: number | null;
  readonly drainStartedAtMs: number | null;
  readonly stopReason: HubStopReason;
  readonly stopMessage: string | null;
  /** `null` when the stop time is only known to the actor running the machine (the drain finished). */
  readonly stoppedAtMs: number | null;
}

export interface HubOutput {
  readonly reason: HubStopReason;
  readonly message: string | null;
}

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));

export const hubMachine = setup({
  types: {
    input: {} as HubInput,
    context: {} as HubContext,
    events: {} as HubEvent,
    emitted: {} as HubFact,
    output: {} as HubOutput,
  },
  actors: {
    /**
     * Stops the addon's hub (GoAway to every edge, close listeners). The default does nothing so the
     * machine stays pure; the actor system provides the real one.
     */
    drain: fromPromise<void>(async () => undefined),
  },
  actions: {
    /** The one way the hub reports a lifecycle transition; tests replace it with `.provide()`. */
    emit: emit((_, f: HubFact) => f),
    /** Tells every session and stream that the hub is going away; provided by the actor system. */
    shutdownSessions: (_, _params: { readonly atMs: number }) => undefined,
    recordListening: assign(({ event }) =>
      event.type === "hub.listening" ? { tunnelPort: event.port, startedAtMs: event.atMs } : {},
    ),
    recordStopRequest: assign(({ event }) =>
      event.type === "policy.stop" ? { stopReason: event.reason, drainStartedAtMs: event.atMs } : {},
    ),
    recordStartFailure: assign(({ event }) =>
      event.type === "hub.startFailed"
        ? { stopReason: "error" as const, stopMessage: event.message, stoppedAtMs: event.atMs }
        : {},
    ),
    recordUnexpectedStop: assign(({ event }) => ({
      stopReason: "error" as const,
      stopMessage: "the addon stopped the hub without being asked",
      stoppedAtMs: event.atMs,
    })),
    recordStoppedByAddon: assign(({ event }) => ({ stoppedAtMs: event.atMs })),
    recordDrainTimeout: assign(({ context }) => ({
      stopMessage: `drain did not finish within ${context.drainTimeoutMs} ms`,
      stoppedAtMs: (context.drainStartedAtMs ?? 0) + context.drainTimeoutMs,
    })),
    recordDrainFailure: assign(({ event }) =>
      "error" in event ? { stopReason: "error" as const, stopMessage: `drain failed: ${errorMessage(event.error)}` } : {},
    ),
  },
  delays: {
    drainTimeout: ({ context }) => context.drainTimeoutMs,
  },
}).createMachine({
  id: "hub",
  initial: "starting",
  context: ({ input }) => ({
    ...input,
    tunnelPort: null,
    startedAtMs: null,
    drainStartedAtMs: null,
    stopReason: "shutdown",
    stopMessage: null,
    stoppedAtMs: null,
  }),
  output: ({ context }) => ({ reason: context.stopReason, message: context.stopMessage }),
  on: {
    "hub.recovered": {
      actions: { type: "emit", params: ({ event }) => fact("hub.recovered", event.atMs, event.data) },
    },
  },
  states: {
    starting: {
      on: {
        "hub.listening": {
          target: "running",
          actions: [
            "recordListening",
            {
              type: "emit",
              params: ({ context, event }) =>
                fact("hub.started", event.atMs, {
                  tunnelPort: event.port,
                  fingerprint: context.fingerprint,
                  portwayVersion: context.portwayVersion,
                }),
            },
          ],
        },
        "hub.startFailed": { target: "stopped", actions: "recordStartFailure" },
        "policy.stop": { target: "draining", actions: "recordStopRequest" },
      },
    },
    running: {
      on: {
        "policy.stop": { target: "draining", actions: "recordStopRequest" },
        "hub.stopped": { target: "stopped", actions: "recordUnexpectedStop" },
      },
    },
    draining: {
      entry: { type: "shutdownSessions", params: ({ context }) => ({ atMs: context.drainStartedAtMs ?? 0 }) },
      invoke: {
        src: "drain",
        onDone: { target: "stopped" },
        onError: { target: "stopped", actions: "recordDrainFailure" },
      },
      on: { "hub.stopped": { target: "stopped", actions: "recordStoppedByAddon" } },
      // Leaving the state stops the invoked drain, which aborts it (and interrupts an Effect behind it).
      after: { drainTimeout: { target: "stopped", actions: "recordDrainTimeout" } },
    },
    stopped: {
      type: "final",
      entry: {
        type: "emit",
        params: ({ context }) =>
          fact("hub.stopped", context.stoppedAtMs, { reason: context.stopReason, message: context.stopMessage }),
      },
    },
  },
});

export type HubMachine = typeof hubMachine;
