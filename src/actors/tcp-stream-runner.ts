/**
 * Runs one TCP stream's machine (src/machines/tcp-stream.ts) as cheaply as its path allows.
 *
 * Almost every stream goes opening → open → closed on two addon events. Interpreting that with XState costs
 * ~90 µs per stream (actor, system, snapshots, microsteps), most of what recording events costs a connection
 * (ADR 0007). So a stream starts on the machine's hand-compiled common path (`tcpStreamFastStep`, same helpers
 * as the machine's actions) and becomes a real XState actor the moment anything else happens (half-close,
 * tunnel lost, shutdown, an event out of order): the actor is created from the same machine and the events
 * taken so far are replayed into it, its facts up to that point dropped because they were already reported
 * (with the same seq). From then on the machine alone decides. test/machines/tcp-stream-fast.unit.test.ts
 * checks that a runner and a plain actor emit the same facts, seqs and states for every short event sequence.
 */
import { createActor, type Actor } from "xstate";
import {
  initialTcpStreamContext,
  tcpStreamFastStep,
  tcpStreamMachine,
  type TcpStreamContext,
  type TcpStreamEvent,
  type TcpStreamFact,
  type TcpStreamFastState,
  type TcpStreamInput,
  type TcpStreamMachine,
  type TcpStreamState,
} from "../machines/tcp-stream.js";
import type { Clock } from "./logged-actor.js";

export interface TcpStreamRunnerOptions {
  readonly input: TcpStreamInput;
  readonly clock: Clock | undefined;
  /** Called synchronously for every fact, with the stream's next seq (1, 2 …), exactly as a numbered actor. */
  readonly onFact: (fact: TcpStreamFact, seq: number) => void;
  /** Called once, after the last fact, when the stream reached its final state. */
  readonly onDone: () => void;
  /** The machine to run off the common path; tests pass a `.provide()`d one. */
  readonly machine?: TcpStreamMachine;
}

export interface TcpStreamView {
  readonly value: TcpStreamState;
  readonly context: TcpStreamContext;
  readonly done: boolean;
}

export class TcpStreamRunner {
  private fast: TcpStreamFastState | undefined;
  /** Events the fast path took, replayed into the actor if one is needed. */
  private taken: TcpStreamEvent[] = [];
  private actor: Actor<TcpStreamMachine> | undefined;
  private seq = 0;

  constructor(private readonly options: TcpStreamRunnerOptions) {
    this.fast = { value: "opening", context: initialTcpStreamContext(options.input) };
  }

  /** Whether a real XState actor runs this stream (it left the common path). */
  get interpreted(): boolean {
    return this.actor !== undefined;
  }

  send(event: TcpStreamEvent): void {
    if (this.actor !== undefined) {
      this.actor.send(event);
      return;
    }
    const fast = this.fast;
    // Ended on the common path: like a stopped actor, it ignores further events.
    if (fast === undefined || fast.value === "closed") return;
    const step = tcpStreamFastStep(fast, event);
    if (step === undefined) {
      this.interpret().send(event);
      return;
    }
    this.fast = step.next;
    this.taken.push(event);
    this.seq += 1;
    this.options.onFact(step.fact, this.seq);
    if (step.next.value === "closed") {
      this.taken = [];
      this.options.onDone();
    }
  }

  view(): TcpStreamView {
    if (this.actor !== undefined) {
      const s = this.actor.getSnapshot();
      return { value: s.value, context: s.context, done: s.status !== "active" };
    }
    const fast = this.fast as TcpStreamFastState;
    return { value: fast.value, context: fast.context, done: fast.value === "closed" };
  }

  /** Creates the actor and brings it to where the fast path is, without reporting its facts twice. */
  private interpret(): Actor<TcpStreamMachine> {
    const o = this.options;
    const actor = createActor(o.machine ?? tcpStreamMachine, {
      input: o.input,
      ...(o.clock === undefined ? {} : { clock: o.clock }),
    });
    let alreadyReported = this.seq;
    actor.on("*", (fact: TcpStreamFact) => {
      if (alreadyReported > 0) {
        alreadyReported -= 1;
        return;
      }
      this.seq += 1;
      o.onFact(fact, this.seq);
    });
    actor.subscribe({ complete: o.onDone, error: o.onDone });
    actor.start();
    for (const event of this.taken) actor.send(event);
    this.taken = [];
    this.fast = undefined;
    this.actor = actor;
    return actor;
  }
}
