import type { EventData, EventType } from "../events/catalog.js";

/**
 * What a machine emits for a lifecycle transition: a catalog event type with its data and the time it
 * happened. Identity (hubId, edgeId, sessionId, streamId) and the per-actor `seq` are added by the actor
 * that runs the machine, which knows who it is; the machine only knows what happened.
 */
export type Fact<T extends EventType = EventType> = T extends EventType
  ? {
      readonly type: T;
      /** Epoch ms; `null` when the machine cannot know it (e.g. an invoked actor finished), stamped by the actor. */
      readonly time: number | null;
      readonly data: EventData<T>;
    }
  : never;

export const fact = <T extends EventType>(type: T, time: number | null, data: EventData<T>): Fact<T> =>
  ({ type, time, data }) as Fact<T>;
