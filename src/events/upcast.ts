/**
 * Reading stored events: check the envelope, lift old data versions to the current one, then check the
 * data against the catalog. The type name never changes; only `v` and `data` do.
 *
 * Old data schemas are kept here, frozen; fixtures of each version live in test/fixtures/events/.
 */
import { Data, Either, ParseResult, Schema } from "effect";
import { CURRENT_VERSIONS, EdgeDisconnectReason, EventDataSchemas, UdpCloseReason, type EventType } from "./catalog.js";
import { RawEnvelope, type DomainEvent } from "./envelope.js";

export class EventDecodeError extends Data.TaggedError("EventDecodeError")<{
  readonly reason: string;
  readonly eventId: string | null;
}> {
  override get message(): string {
    return `cannot decode event${this.eventId ? ` ${this.eventId}` : ""}: ${this.reason}`;
  }
}

export class UnsupportedEventVersion extends Data.TaggedError("UnsupportedEventVersion")<{
  readonly eventId: string;
  readonly type: EventType;
  readonly version: number;
  readonly current: number;
}> {
  override get message(): string {
    return `event ${this.eventId} is ${this.type} v${this.version}, newer than this build understands (v${this.current}); upgrade Portway to read it`;
  }
}

/** edge.disconnected v1: before the session length was recorded. */
export const EdgeDisconnectedV1 = Schema.Struct({
  reason: EdgeDisconnectReason,
  message: Schema.String,
});

/** edge.failedOver v1: reserved before HA existed, only the hub ids. */
export const EdgeFailedOverV1 = Schema.Struct({
  fromHubId: Schema.String,
  toHubId: Schema.String,
});

/** udp.closed v1: the packet counts were called datagramsIn/datagramsOut (the addon says packets). */
export const UdpClosedV1 = Schema.Struct({
  edgePort: Schema.Int.pipe(Schema.between(0, 65535)),
  clientAddr: Schema.String,
  target: Schema.NullOr(Schema.String),
  bytesIn: Schema.NonNegativeInt,
  bytesOut: Schema.NonNegativeInt,
  datagramsIn: Schema.NonNegativeInt,
  datagramsOut: Schema.NonNegativeInt,
  durationMs: Schema.NonNegativeInt,
  reason: UdpCloseReason,
  message: Schema.String,
  writtenBy: Schema.optional(Schema.String),
});

/** One step per (type, from-version): data at v → data at v+1. Checked against the old schema first. */
interface Upcaster {
  readonly from: Schema.Schema.AnyNoContext;
  readonly up: (data: unknown) => unknown;
}

const UPCASTERS: { readonly [T in EventType]?: { readonly [v: number]: Upcaster } } = {
  "edge.disconnected": {
    1: {
      from: EdgeDisconnectedV1,
      up: (d) => ({ ...(d as typeof EdgeDisconnectedV1.Type), durationMs: null }),
    },
  },
  "udp.closed": {
    1: {
      from: UdpClosedV1,
      up: (d) => {
        const { datagramsIn, datagramsOut, ...rest } = d as typeof UdpClosedV1.Type;
        return { ...rest, packetsIn: datagramsIn, packetsOut: datagramsOut };
      },
    },
  },
  "edge.failedOver": {
    1: {
      from: EdgeFailedOverV1,
      up: (d) => ({ ...(d as typeof EdgeFailedOverV1.Type), fromRunId: null, fromSessionId: null, toSessionId: null, gapMs: null }),
    },
  },
};

const decodeRawEnvelope = Schema.decodeUnknownEither(RawEnvelope);

/** Decodes one stored event of any known version into the current version. */
export const upcastEvent = (raw: unknown): Either.Either<DomainEvent, EventDecodeError | UnsupportedEventVersion> => {
  const env = decodeRawEnvelope(raw, { onExcessProperty: "ignore" });
  if (Either.isLeft(env)) {
    const id = typeof raw === "object" && raw !== null && typeof (raw as { id?: unknown }).id === "string" ? (raw as { id: string }).id : null;
    return Either.left(new EventDecodeError({ reason: ParseResult.TreeFormatter.formatErrorSync(env.left), eventId: id }));
  }
  const e = env.right;
  const current = CURRENT_VERSIONS[e.type];
  if (e.v > current) {
    return Either.left(new UnsupportedEventVersion({ eventId: e.id, type: e.type, version: e.v, current }));
  }
  let data = e.data;
  for (let v = e.v; v < current; v++) {
    const step = UPCASTERS[e.type]?.[v];
    if (step === undefined) {
      return Either.left(new EventDecodeError({ reason: `no upcaster for ${e.type} v${v} → v${v + 1}`, eventId: e.id }));
    }
    const old = Schema.decodeUnknownEither(step.from)(data);
    if (Either.isLeft(old)) {
      return Either.left(
        new EventDecodeError({ reason: `${e.type} v${v}: ${ParseResult.TreeFormatter.formatErrorSync(old.left)}`, eventId: e.id }),
      );
    }
    data = step.up(old.right);
  }
  const decoded = Schema.decodeUnknownEither(EventDataSchemas[e.type] as Schema.Schema.AnyNoContext)(data);
  if (Either.isLeft(decoded)) {
    return Either.left(
      new EventDecodeError({ reason: `${e.type} v${current}: ${ParseResult.TreeFormatter.formatErrorSync(decoded.left)}`, eventId: e.id }),
    );
  }
  return Either.right({ ...e, v: current, data: decoded.right } as DomainEvent);
};
