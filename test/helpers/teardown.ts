import { afterEach } from "vitest";

/**
 * A per-test stack of cleanup steps, run in reverse order after each test (also when it failed).
 * Every step runs even if an earlier one throws; the first error is rethrown.
 */
export const useTeardown = () => {
  const steps: Array<() => unknown> = [];
  afterEach(async () => {
    let first: unknown;
    while (steps.length > 0) {
      try {
        await steps.pop()?.();
      } catch (error) {
        first ??= error;
      }
    }
    if (first !== undefined) throw first;
  });
  return {
    add(step: () => unknown): void {
      steps.push(step);
    },
    /** Registers `thing.close()` / `thing.stop()` and returns `thing`. */
    track<T extends { close(): unknown } | { stop(): unknown }>(thing: T): T {
      steps.push(() => ("close" in thing ? thing.close() : thing.stop()));
      return thing;
    },
  };
};
