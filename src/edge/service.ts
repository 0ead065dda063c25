/** The `Edge` service: a running native edge as a scoped resource, with its lifecycle events as a stream. */
import { Context, Layer, type Duration, type Effect, type Scope, type Stream } from "effect";
import type { EdgeConfig, EdgeOptions } from "../config/edge.js";
import type {
  AddonLoadError,
  ConfigError,
  EdgeConnectTimeoutError,
  EdgeStartError,
  NativeCallError,
} from "../errors.js";
import type { EventStreamProblem } from "../native/addon.js";
import type { NativeEdgeEvent } from "../native/events.js";
import type { NativeEdgeStatus } from "../native/status.js";
import { makeEdge } from "./make.js";

/** What the edge's event stream carries: native lifecycle events, and problems with the event stream itself. */
export type EdgeEvent = NativeEdgeEvent | EventStreamProblem;

export interface EdgeService {
  readonly edgeId: string;
  /** The checked config the edge runs with (includes the secret: do not log it). */
  readonly config: EdgeConfig;
  /** A snapshot from the addon: connection, listeners, streams. */
  readonly status: Effect.Effect<NativeEdgeStatus, NativeCallError>;
  /** Succeeds with the status once a tunnel is up (at once if it already is). */
  readonly waitConnected: (
    timeout: Duration.DurationInput,
  ) => Effect.Effect<NativeEdgeStatus, EdgeConnectTimeoutError | NativeCallError>;
  /** Lifecycle events from the moment of subscription; the stream ends after the edge has stopped. */
  readonly events: Stream.Stream<EdgeEvent>;
}

export class Edge extends Context.Tag("portway/Edge")<Edge, EdgeService>() {
  /** Starts an edge; it connects (and reconnects) in the background. Closing the scope stops it. */
  static readonly make: (
    options: EdgeOptions,
  ) => Effect.Effect<EdgeService, EdgeStartError | ConfigError | AddonLoadError, Scope.Scope> = makeEdge;
  /** A layer providing a running `Edge`. */
  static readonly layer = (options: EdgeOptions): Layer.Layer<Edge, EdgeStartError | ConfigError | AddonLoadError> =>
    Layer.scoped(Edge, makeEdge(options));
}
