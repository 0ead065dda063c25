/**
 * The start/stop lifecycle that `RemoteIngressHub` and `RemoteIngressEdge` share: one start or stop at a time,
 * the service held in its own scope, and a fiber that hands each of the service's events to the class.
 */
import { Effect, Exit, Fiber, Scope, Stream } from "effect";
import { AlreadyRunningError, NotRunningError } from "../errors.js";
import { runToPromise } from "./run.js";

/** How long `stop()` waits for the last events to be emitted after the service stopped. */
const DRAIN_TIMEOUT_MS = 2000;

interface Running<S> {
  readonly scope: Scope.CloseableScope;
  readonly service: S;
  readonly consumer: Fiber.RuntimeFiber<void>;
}

export class Lifecycle<S extends { readonly events: Stream.Stream<Ev> }, Ev> {
  readonly #name: string;
  #running: Running<S> | undefined;
  #transition: Promise<void> | undefined;

  /** `name` ("hub", "edge") words the errors. */
  constructor(name: string) {
    this.#name = name;
  }

  /** The running service; undefined before `start()` has resolved and after `stop()`. */
  get service(): S | undefined {
    return this.#running?.service;
  }

  /** The running service; rejects with `NotRunningError` when there is none. */
  require(): S {
    const running = this.#running;
    if (running === undefined) throw new NotRunningError({ message: `${this.#name} is not running; call start() first` });
    return running.service;
  }

  /**
   * Builds the service in a new scope and starts handing its events to `emit`. Rejects with the tagged error of
   * `make`, or `AlreadyRunningError` while running, starting or stopping.
   */
  async start<E>(make: Effect.Effect<S, E, Scope.Scope>, emit: (event: Ev) => void): Promise<void> {
    if (this.#running !== undefined || this.#transition !== undefined) {
      throw new AlreadyRunningError({ message: `${this.#name} is already running (or starting/stopping); call stop() first` });
    }
    const starting = (async () => {
      const scope = Effect.runSync(Scope.make());
      try {
        const service = await runToPromise(Scope.extend(make, scope));
        const consumer = Effect.runFork(Stream.runForEach(service.events, (event) => Effect.sync(() => emit(event))));
        this.#running = { scope, service, consumer };
      } catch (error) {
        await Effect.runPromise(Scope.close(scope, Exit.void));
        throw error;
      }
    })();
    this.#transition = starting.catch(() => undefined);
    try {
      await starting;
    } finally {
      this.#transition = undefined;
    }
  }

  /** Closes the service's scope, then waits (bounded) for its last events to be emitted. Idempotent. */
  async stop(): Promise<void> {
    if (this.#transition !== undefined) await this.#transition;
    const running = this.#running;
    if (running === undefined) return;
    this.#running = undefined;
    const stopping = (async () => {
      await Effect.runPromise(Scope.close(running.scope, Exit.void));
      await Effect.runPromise(
        Fiber.join(running.consumer).pipe(
          Effect.timeout(DRAIN_TIMEOUT_MS),
          Effect.catchAll(() => Fiber.interrupt(running.consumer)),
          Effect.asVoid,
        ),
      );
    })();
    this.#transition = stopping;
    try {
      await stopping;
    } finally {
      this.#transition = undefined;
    }
  }
}
