import type { EventEmitter } from "node:events";

export interface WaitOptions {
  readonly timeoutMs?: number;
  readonly intervalMs?: number;
  /** Said in the timeout error, e.g. "edge connected". */
  readonly what?: string;
}

/**
 * Polls `predicate` until it returns a truthy value (which is returned) or the timeout passes.
 * Errors thrown by the predicate count as "not yet"; the last one is quoted in the timeout error.
 */
export const waitFor = async <T>(
  predicate: () => T | Promise<T>,
  { timeoutMs = 10_000, intervalMs = 20, what = "condition" }: WaitOptions = {},
): Promise<NonNullable<T>> => {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value as NonNullable<T>;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : "";
      throw new Error(`waitFor: timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
};

/** Resolves with the first `event` payload that passes `filter`, or rejects after `timeoutMs`. */
export const nextEvent = <T = unknown>(
  emitter: EventEmitter,
  event: string,
  { timeoutMs = 10_000, filter }: { timeoutMs?: number; filter?: (payload: T) => boolean } = {},
): Promise<T> =>
  new Promise((resolve, reject) => {
    const onEvent = (payload: T) => {
      if (filter && !filter(payload)) return;
      cleanup();
      resolve(payload);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`nextEvent: no '${event}' within ${timeoutMs} ms`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
    };
    emitter.on(event, onEvent);
  });

/** Collects every payload of `event` from now on; `stop()` detaches. */
export const recordEvents = <T = unknown>(emitter: EventEmitter, event: string) => {
  const seen: T[] = [];
  const onEvent = (payload: T) => {
    seen.push(payload);
  };
  emitter.on(event, onEvent);
  return { seen, stop: () => emitter.off(event, onEvent) };
};
