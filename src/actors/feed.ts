/**
 * Drives the actor systems from the Hub/Edge services' event streams: one synchronous `ingest` per chunk.
 * The streams end after their handle stopped, and so do these Effects.
 */
import { Chunk, Effect, Stream } from "effect";
import type { EventStreamProblem } from "../native/addon.js";
import type { NativeEdgeEvent, NativeHubEvent } from "../native/events.js";
import type { EdgeActorSystem } from "./edge-actor-system.js";
import type { HubActorSystem } from "./hub-actor-system.js";

const isStreamProblem = (event: { readonly type: string }): event is EventStreamProblem =>
  event.type === "events.gap" || event.type === "events.invalid";

const feed = <E extends { readonly type: string }>(
  events: Stream.Stream<E | EventStreamProblem>,
  ingest: (events: Iterable<E>) => void,
  onProblem: (problem: EventStreamProblem) => void,
): Effect.Effect<void> =>
  Stream.runForEachChunk(events, (chunk) =>
    Effect.sync(() => {
      const batch: E[] = [];
      for (const event of Chunk.toReadonlyArray(chunk)) {
        if (isStreamProblem(event)) onProblem(event);
        else batch.push(event as E);
      }
      if (batch.length > 0) ingest(batch);
    }),
  );

/** Seq gaps and undecodable events are already logged by the channel; `onProblem` is for counting them. */
export const feedHubActors = (
  actors: HubActorSystem,
  events: Stream.Stream<NativeHubEvent | EventStreamProblem>,
  onProblem: (problem: EventStreamProblem) => void = () => undefined,
): Effect.Effect<void> => feed(events, actors.ingest, onProblem);

export const feedEdgeActors = (
  actors: EdgeActorSystem,
  events: Stream.Stream<NativeEdgeEvent | EventStreamProblem>,
  onProblem: (problem: EventStreamProblem) => void = () => undefined,
): Effect.Effect<void> => feed(events, actors.ingest, onProblem);

/**
 * Native batches handed to the actors synchronously, in the addon's callback (`EventChannel.tap`): one `ingest`
 * per native batch, no queue and no fiber wake-up in between — those cost more per connection than the actors
 * themselves (ADR 0007). Batches that arrive before the actors exist (the addon's `hub.listening` during
 * hubStart) are held and handed over on `attach`; after `detach` batches are dropped (the actors have ended).
 */
export interface SyncFeed<E> {
  /** Give to `EventChannel.tap`. */
  readonly push: (events: ReadonlyArray<E>) => void;
  readonly attach: (ingest: (events: Iterable<E>) => void) => void;
  readonly detach: () => void;
}

export const makeSyncFeed = <E>(): SyncFeed<E> => {
  let held: E[] | undefined = [];
  let ingest: ((events: Iterable<E>) => void) | undefined;
  return {
    push: (events) => {
      if (ingest !== undefined) ingest(events);
      else if (held !== undefined) for (const e of events) held.push(e);
    },
    attach: (to) => {
      const before = held ?? [];
      held = undefined;
      ingest = to;
      if (before.length > 0) to(before);
    },
    detach: () => {
      held = undefined;
      ingest = undefined;
    },
  };
};
