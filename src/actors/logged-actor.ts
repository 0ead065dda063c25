/**
 * Runs one machine as an actor and numbers what it emits: every fact gets the actor's own `seq` (1, 2, 3 …).
 * `startLoggedActor` additionally turns the facts into catalog domain events for a non-blocking sink.
 */
import {
  createActor,
  type Actor,
  type ActorOptions,
  type AnyActorLogic,
  type AnyStateMachine,
  type EmittedFrom,
  type InputFrom,
} from "xstate";
import type { EventType } from "../events/catalog.js";
import { eventMaker, type DomainEvent } from "../events/envelope.js";
import type { Fact } from "../machines/fact.js";

/** XState's scheduler clock: real timers in production, `SimulatedClock` in tests. */
export type Clock = NonNullable<ActorOptions<AnyActorLogic>["clock"]>;

/** Where lifecycle events go. `append` must not block and must not wait for I/O (the event log's `append`). */
export interface EventSink {
  readonly append: (event: DomainEvent) => void;
}

/** Who an actor is in the event log (with the hub's id, `makeEvent`'s identity fields). */
export interface ActorIdentity {
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly streamId: string | null;
}

export interface NumberedActorOptions<M extends AnyStateMachine> {
  readonly machine: M;
  readonly input: InputFrom<M>;
  readonly clock: Clock | undefined;
  /** Called synchronously for every emitted fact, with the actor's next seq. */
  readonly onFact: (fact: EmittedFrom<M>, seq: number) => void;
  /** Called once the actor reached a final state (after its last fact). */
  readonly onDone: () => void;
}

export const startNumberedActor = <M extends AnyStateMachine>(options: NumberedActorOptions<M>): Actor<M> => {
  const actor = createActor(options.machine, {
    input: options.input,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  let seq = 0;
  // Subscribed before start: a machine may emit from its initial entry actions.
  actor.on("*", (fact: EmittedFrom<M>) => {
    seq += 1;
    options.onFact(fact, seq);
  });
  actor.subscribe({ complete: options.onDone, error: options.onDone });
  actor.start();
  return actor;
};

export const toEpochMs = (time: number): number => Math.max(0, Math.round(time));

export interface LoggedActorOptions<M extends AnyStateMachine> {
  readonly machine: M;
  readonly input: InputFrom<M>;
  readonly identity: ActorIdentity;
  readonly hubId: string;
  readonly sink: EventSink;
  /** Stamps facts the machine could not time itself (`time: null`). */
  readonly now: () => number;
  readonly clock: Clock | undefined;
  readonly onDone: () => void;
  /** Called when the sink throws; the event is lost but the actor carries on. */
  readonly onSinkError: (error: unknown, event: DomainEvent) => void;
}

export interface FactLoggerOptions {
  readonly identity: ActorIdentity;
  readonly hubId: string;
  readonly sink: EventSink;
  /** Stamps facts the machine could not time itself (`time: null`). */
  readonly now: () => number;
  /** Called when the sink throws; the event is lost but the actor carries on. */
  readonly onSinkError: (error: unknown, event: DomainEvent) => void;
}

/**
 * Turns an actor's numbered facts into catalog domain events for a non-blocking sink. One event object per
 * fact, built by the actor's `eventMaker` (identity and id hash input taken once per actor).
 */
export const factLogger = (options: FactLoggerOptions): ((f: Fact<EventType>, seq: number) => void) => {
  const make = eventMaker({
    hubId: options.hubId,
    edgeId: options.identity.edgeId,
    sessionId: options.identity.sessionId,
    streamId: options.identity.streamId,
  });
  const { sink, now, onSinkError } = options;
  return (f, seq) => {
    const event = make(f.type, seq, toEpochMs(f.time ?? now()), f.data) as DomainEvent;
    try {
      sink.append(event);
    } catch (error) {
      onSinkError(error, event);
    }
  };
};

/** For machines whose facts are catalog events (`Fact`): each fact becomes a `DomainEvent`. */
export const startLoggedActor = <M extends AnyStateMachine>(options: LoggedActorOptions<M>): Actor<M> => {
  const log = factLogger(options);
  return startNumberedActor({
    machine: options.machine,
    input: options.input,
    clock: options.clock,
    onDone: options.onDone,
    onFact: (emitted, seq) => log(emitted as Fact<EventType>, seq),
  });
};
