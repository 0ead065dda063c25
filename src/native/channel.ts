/**
 * Carries native event batches to any number of Effect consumers. The addon callback only decodes and offers
 * to an unbounded PubSub, so a slow consumer never blocks (or throws into) the addon.
 */
import { Effect, PubSub, Queue, Runtime, type Scope, Stream } from "effect";
import { makeBatchDecoder, type EventStreamProblem, type NativeEventsCallback } from "./addon.js";
import type { EventDecoder } from "./events.js";

const END: unique symbol = Symbol("portway/events-end");
type End = typeof END;

/** `T`: what `tap` listeners get (decoded events, without the stream problems subscribers also see). */
export interface EventChannel<E, T = E> {
  /** Hand this to `hubStart`/`edgeStart`. */
  readonly callback: NativeEventsCallback;
  /** Events from subscription on; ends once `end` has run (after the handle stopped). */
  readonly events: Stream.Stream<E>;
  /** A scoped subscription, for code that must not miss an event between checking state and waiting. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<E | End>, never, Scope.Scope>;
  /** Lets already-queued native callbacks run, then ends every subscriber's stream. */
  readonly end: Effect.Effect<void>;
  /**
   * Calls `listener` synchronously with every decoded batch (events only; problems go to subscribers), inside
   * the addon's callback, for as long as the scope is open. For consumers that must not pay a queue and a
   * fiber wake-up per batch (the hub's event actors, ADR 0007); the listener must not throw or block.
   */
  readonly tap: (listener: (events: ReadonlyArray<T>) => void) => Effect.Effect<void, never, Scope.Scope>;
}

export const isEnd = (value: unknown): value is End => value === END;

/** Yields to the event loop once so batches the addon queued before a stop promise settled are delivered. */
const settle = Effect.async<void>((resume) => {
  const timer = setImmediate(() => resume(Effect.void));
  return Effect.sync(() => clearImmediate(timer));
});

/**
 * Creates the channel; `label` names the source in warnings ("hub hub-1", "edge e1"). Stream problems (seq gaps,
 * undecodable events) are logged as warnings and also delivered as events so consumers can react.
 */
export const makeEventChannel = <E>(
  decode: EventDecoder<E>,
  label: string,
): Effect.Effect<EventChannel<E | EventStreamProblem, E>> =>
  Effect.gen(function* () {
    const runtime = yield* Effect.runtime<never>();
    const pubsub = yield* PubSub.unbounded<E | EventStreamProblem | End>();
    const listeners = new Set<(events: ReadonlyArray<E>) => void>();
    const callback = makeBatchDecoder(decode, {
      events: (events) => {
        for (const listener of listeners) {
          try {
            listener(events);
          } catch (error) {
            Runtime.runFork(runtime)(Effect.logWarning(`${label}: event listener failed: ${String(error)}`));
          }
        }
        for (const event of events) pubsub.unsafeOffer(event);
      },
      problem: (problem) => {
        pubsub.unsafeOffer(problem);
        Runtime.runFork(runtime)(Effect.logWarning(`${label}: ${problem.message}`));
      },
    });
    const events = Stream.fromPubSub(pubsub).pipe(
      Stream.takeWhile((event): event is E | EventStreamProblem => !isEnd(event)),
    );
    return {
      callback,
      events,
      subscribe: PubSub.subscribe(pubsub),
      end: settle.pipe(Effect.zipRight(PubSub.publish(pubsub, END)), Effect.asVoid),
      tap: (listener) =>
        Effect.acquireRelease(
          Effect.sync(() => {
            // A wrapper per registration, so the same function tapped twice is called twice and released once each.
            const registered = (events: ReadonlyArray<E>) => listener(events);
            listeners.add(registered);
            return registered;
          }),
          (registered) => Effect.sync(() => listeners.delete(registered)),
        ).pipe(Effect.asVoid),
    };
  });
