/** The `Hub` service: a running native hub as a scoped resource, with its lifecycle events as a stream. */
import { Context, Layer, type Effect, type Scope, type Stream } from "effect";
import type { AllowedEdge, AllowedEdgeInput, HubConfig, HubOptions } from "../config/hub.js";
import type { AddonLoadError, ConfigError, HubStartError, NativeCallError } from "../errors.js";
import type { EventStreamProblem } from "../native/addon.js";
import type { NativeHubEvent } from "../native/events.js";
import type { NativeHubStatus } from "../native/status.js";
import { makeHub } from "./make.js";

/** What the hub's event stream carries: native lifecycle events, and problems with the event stream itself. */
export type HubEvent = NativeHubEvent | EventStreamProblem;

export interface HubService {
  readonly hubId: string;
  /** The port edges connect to (the actual one when `tunnelPort: 0` was asked for). */
  readonly tunnelPort: number;
  /** sha256 of the hub certificate (lowercase hex): what edges pin. */
  readonly fingerprint: string;
  /** Where the generated TLS identity is kept; undefined when a certificate was given. */
  readonly dataDir: string | undefined;
  /** The checked config the hub runs with (includes secrets: do not log it). */
  readonly config: HubConfig;
  /** A snapshot from the addon: sessions, streams, bytes. */
  readonly status: Effect.Effect<NativeHubStatus, NativeCallError>;
  /** The allowed-edge list currently in force. */
  readonly allowedEdges: Effect.Effect<ReadonlyArray<AllowedEdge>>;
  /** Replaces the allowed-edge list; connected edges get their new ports, removed edges are disconnected. */
  readonly updateAllowedEdges: (
    edges: ReadonlyArray<AllowedEdgeInput>,
  ) => Effect.Effect<void, ConfigError | NativeCallError>;
  /** Lifecycle events from the moment of subscription; the stream ends after the hub has stopped. */
  readonly events: Stream.Stream<HubEvent>;
}

export class Hub extends Context.Tag("portway/Hub")<Hub, HubService>() {
  /** Starts a hub (resolves once listening); closing the scope stops it. */
  static readonly make: (
    options?: HubOptions,
  ) => Effect.Effect<HubService, HubStartError | ConfigError | AddonLoadError, Scope.Scope> = makeHub;
  /** A layer providing a running `Hub`. */
  static readonly layer = (options?: HubOptions): Layer.Layer<Hub, HubStartError | ConfigError | AddonLoadError> =>
    Layer.scoped(Hub, makeHub(options));
}
