/**
 * Runs event loggers so they outlive the resource they watch: created before the hub/edge in the same scope,
 * its finalizer runs after the hub/edge has stopped and waits for the loggers to print the final events.
 */
import { Effect, Fiber, type Scope } from "effect";

const DRAIN_TIMEOUT = "2 seconds";

export const makeDrainingFork: Effect.Effect<
  <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<void>,
  never,
  Scope.Scope
> = Effect.gen(function* () {
  const fibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = [];
  yield* Effect.addFinalizer(() =>
    Effect.forEach(fibers, (fiber) =>
      Fiber.join(fiber).pipe(
        Effect.timeout(DRAIN_TIMEOUT),
        Effect.catchAllCause(() => Fiber.interrupt(fiber)),
      ),
    ),
  );
  return <A, E>(effect: Effect.Effect<A, E>) =>
    Effect.forkDaemon(effect).pipe(
      Effect.tap((fiber) => Effect.sync(() => fibers.push(fiber))),
      Effect.asVoid,
    );
});
