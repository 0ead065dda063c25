/**
 * The one envelope every JetStream-facing event travels in. `data` is typed by the catalog; identity and
 * ordering live here so subjects, ids and projections never look inside `data`.
 */
import { Schema } from "effect";
import {
  actorKindOf,
  type ActorKind,
  CURRENT_VERSIONS,
  EventDataSchemas,
  EventTypeSchema,
  type EventData,
  type EventType,
} from "./catalog.js";
import { actorKeyPrefix, eventId, eventIdOf } from "./ids.js";

/** Envelope as stored, before `data` is checked against a version: what upcasting starts from. */
export const RawEnvelope = Schema.Struct({
  /** Deterministic id (ids.ts): hash of actor identity + seq. */
  id: Schema.String,
  type: EventTypeSchema,
  /** Schema version of `data` for this type. */
  v: Schema.Int.pipe(Schema.positive()),
  /** Epoch milliseconds when the event happened (not when it was appended). */
  time: Schema.NonNegativeInt,
  hubId: Schema.String,
  /** null for hub.* events (and edge.authFailed without a claimed id). */
  edgeId: Schema.NullOr(Schema.String),
  /** Tunnel session id; for hub.* events the hub run id; for edge.authFailed the attempt id. */
  sessionId: Schema.String,
  /** TCP stream id or UDP session id; null for hub.* and edge.* events. */
  streamId: Schema.NullOr(Schema.String),
  /** Per-actor sequence, from 1, +1 per event of that actor. */
  seq: Schema.Int.pipe(Schema.positive()),
  data: Schema.Unknown,
});
export type RawEnvelope = typeof RawEnvelope.Type;

type EnvelopeOf<T extends EventType> = Omit<RawEnvelope, "type" | "data"> & {
  readonly type: T;
  readonly data: EventData<T>;
};

/** A domain event of type T at the current version. */
export type DomainEvent<T extends EventType = EventType> = T extends EventType ? EnvelopeOf<T> : never;

/** Fields a producer supplies; id and version are derived. */
export interface EventInput<T extends EventType> {
  readonly type: T;
  readonly hubId: string;
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly streamId: string | null;
  readonly seq: number;
  readonly time: number;
  readonly data: EventData<T>;
}

export const makeEvent = <T extends EventType>(input: EventInput<T>): DomainEvent<T> =>
  ({
    id: eventId(
      { hubId: input.hubId, kind: actorKindOf(input.type), sessionId: input.sessionId, streamId: input.streamId },
      input.seq,
    ),
    type: input.type,
    v: CURRENT_VERSIONS[input.type],
    time: input.time,
    hubId: input.hubId,
    edgeId: input.edgeId,
    sessionId: input.sessionId,
    streamId: input.streamId,
    seq: input.seq,
    data: input.data,
  }) as DomainEvent<T>;

/** Who emits a run of events: `makeEvent`'s identity fields. */
export interface EventIdentity {
  readonly hubId: string;
  readonly edgeId: string | null;
  readonly sessionId: string;
  readonly streamId: string | null;
}

/**
 * `makeEvent` for the events of one actor: the identity and the id's hash input are taken once, each event is
 * one object (same fields, same order, same id as `makeEvent` gives). The hot path of every logged actor.
 */
export const eventMaker = (identity: EventIdentity) => {
  const { hubId, edgeId, sessionId, streamId } = identity;
  // An actor's events all have its kind; the prefix is recomputed only if a type of another kind comes.
  let kind: ActorKind | undefined;
  let prefix = "";
  return <T extends EventType>(type: T, seq: number, time: number, data: EventData<T>): DomainEvent<T> => {
    const k = actorKindOf(type);
    if (k !== kind) {
      kind = k;
      prefix = actorKeyPrefix({ hubId, kind: k, sessionId, streamId });
    }
    return {
      id: eventIdOf(prefix, seq),
      type,
      v: CURRENT_VERSIONS[type],
      time,
      hubId,
      edgeId,
      sessionId,
      streamId,
      seq,
      data,
    } as DomainEvent<T>;
  };
};

/** Schema of a full current-version event of one type (envelope + data). */
export const eventSchemaOf = <T extends EventType>(type: T) =>
  Schema.Struct({
    ...RawEnvelope.fields,
    type: Schema.Literal(type),
    v: Schema.Literal(CURRENT_VERSIONS[type]),
    data: EventDataSchemas[type],
  });
