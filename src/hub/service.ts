/** The `Hub` service: a running native hub as a scoped resource, with its lifecycle events as a stream. */
import { Context, Layer, type Effect, type Scope, type Stream } from "effect";
import type { AllowedEdge, AllowedEdgeInput, HubConfig, HubOptions } from "../config/hub.js";
import type { HubActorsSnapshot } from "../actors/hub-actor-system.js";
import type { ClusterConnection, ClusterError } from "../cluster/connection.js";
import type { OwnershipStatus } from "../cluster/ownership.js";
import type { AddonLoadError, ConfigError, HubStartError, NativeCallError } from "../errors.js";
import type { EventStreamProblem } from "../native/addon.js";
import type { NativeHubEvent } from "../native/events.js";
import type { NativeHubStatus } from "../native/status.js";
import type { EventLogStartError, HubEventLogConnection, HubEventsStatus, HubEventsStatusOrOff, RecoveryStatus } from "./event-log.js";
import { makeHub } from "./make.js";

/** What the hub's event stream carries: native lifecycle events, and problems with the event stream itself. */
export type HubEvent = NativeHubEvent | EventStreamProblem;

/** The hub's JetStream event log (present unless events are off). */
export interface HubEventLog extends HubEventLogConnection {
  /** Event log health: connection, outbox, drops, recovery. */
  readonly status: () => HubEventsStatus;
  /** Waits for the start-up recovery (closing the previous run's leftovers) to finish or fail. */
  readonly recovery: Effect.Effect<RecoveryStatus>;
  /** The hub's actors: connected edges and open streams as the event log sees them. */
  readonly actors: () => HubActorsSnapshot;
}

export interface HubService {
  readonly hubId: string;
  /** This hub run's id: the `sessionId` of its `hub.*` events. */
  readonly runId: string;
  /** The port edges connect to (the actual one when `tunnelPort: 0` was asked for). */
  readonly tunnelPort: number;
  /** sha256 of the hub certificate (lowercase hex): what edges pin. */
  readonly fingerprint: string;
  /** Where the generated TLS identity is kept; undefined when a certificate was given. */
  readonly dataDir: string | undefined;
  /** The checked config the hub runs with (includes secrets: do not log it). */
  readonly config: HubConfig;
  /** The event log; undefined when events are off (`events: false`). */
  readonly eventLog: HubEventLog | undefined;
  /** Event log health, or `{ enabled: false }`. */
  readonly eventsStatus: Effect.Effect<HubEventsStatusOrOff>;
  /** A snapshot from the addon: sessions, streams, bytes. */
  readonly status: Effect.Effect<NativeHubStatus, NativeCallError>;
  /** Cluster mode (docs/cluster.md): the KV buckets and who this hub is; undefined for a single hub. */
  readonly cluster: ClusterConnection | undefined;
  /** Cluster mode with deferred admission: the edges this hub owns and its lease counters; undefined otherwise. */
  readonly ownership: (() => OwnershipStatus) | undefined;
  /** The allowed-edge list currently in force (in cluster mode: the registry's, with the verifier as `secret`). */
  readonly allowedEdges: Effect.Effect<ReadonlyArray<AllowedEdge>>;
  /**
   * Replaces the allowed-edge list; connected edges get their new ports, removed edges are disconnected.
   * In cluster mode it replaces the cluster's registry, which every hub applies from its watch.
   */
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
  ) => Effect.Effect<HubService, HubStartError | ConfigError | AddonLoadError | EventLogStartError | ClusterError, Scope.Scope> = makeHub;
  /** A layer providing a running `Hub`. */
  static readonly layer = (
    options?: HubOptions,
  ): Layer.Layer<Hub, HubStartError | ConfigError | AddonLoadError | EventLogStartError | ClusterError> =>
    Layer.scoped(Hub, makeHub(options));
}
