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
