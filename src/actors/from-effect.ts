/**
 * The one place XState and Effect meet: an Effect run as an XState promise actor. When the actor is stopped
 * (its state is left, e.g. a drain timeout fired) XState aborts the signal and the Effect is interrupted,
 * so its finalizers run. A failure rejects with the Effect's own error (a tagged error stays one), not a
 * FiberFailure wrapper.
 */
import { Cause, Exit, Runtime, type Effect } from "effect";
import { fromPromise, type PromiseActorLogic } from "xstate";

export const fromEffect = <A, E, I = void, R = never>(
  make: (input: I) => Effect.Effect<A, E, R>,
  runtime: Runtime.Runtime<R>,
): PromiseActorLogic<A, I> =>
  fromPromise<A, I>(async ({ input, signal }) => {
    const exit = await Runtime.runPromiseExit(runtime, make(input), { signal });
    if (Exit.isSuccess(exit)) return exit.value;
    throw Cause.squash(exit.cause);
  });

/** `fromEffect` for Effects that need no services. */
export const fromPlainEffect = <A, E, I = void>(make: (input: I) => Effect.Effect<A, E>): PromiseActorLogic<A, I> =>
  fromEffect(make, Runtime.defaultRuntime);
