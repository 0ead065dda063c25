/** Runs Effects for the Promise-based classes: failures reject with the tagged error itself, not a wrapper. */
import { Cause, Effect, Exit } from "effect";

export const runToPromise = async <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect);
  if (Exit.isSuccess(exit)) return exit.value;
  throw Cause.squash(exit.cause);
};
