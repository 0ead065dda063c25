import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Either, Schema } from "effect";
import { describe, expect, it } from "vitest";
import { actorKindOf, CURRENT_VERSIONS, EVENT_TYPES, type EventType } from "../src/events/catalog.js";
import { eventMaker, eventSchemaOf, makeEvent, type DomainEvent } from "../src/events/envelope.js";
import { batchMessageId, eventId } from "../src/events/ids.js";
import {
  decodeToken,
  encodeToken,
  filterSubjects,
  InvalidSubject,
  parseSubject,
  subjectOf,
} from "../src/events/subjects.js";
import { upcastEvent } from "../src/events/upcast.js";

const dir = join(import.meta.dirname, "fixtures", "events");
const fixtures = readdirSync(dir)
  .filter((f) => f.endsWith(".json"))
  .map((f) => ({ file: f, raw: JSON.parse(readFileSync(join(dir, f), "utf8")) as Record<string, unknown> }));

describe("frozen event fixtures", () => {
  it("cover every type at its current version", () => {
    const have = new Set(fixtures.map((f) => f.file));
    const missing = EVENT_TYPES.filter((t) => !have.has(`${t}.v${CURRENT_VERSIONS[t]}.json`));
    expect(missing).toEqual([]);
  });

  it.each(fixtures.map((f) => [f.file, f.raw] as const))("%s decodes to the current version", (file, raw) => {
    const r = upcastEvent(raw);
    if (Either.isLeft(r)) throw new Error(`${file}: ${r.left.message}`);
    const e = r.right;
    expect(e.v).toBe(CURRENT_VERSIONS[e.type]);
    expect(file.startsWith(`${e.type}.v${raw.v}.`)).toBe(true);
    // Still valid against the full current schema (envelope + data).
    expect(Either.isRight(Schema.decodeUnknownEither(eventSchemaOf(e.type))(e))).toBe(true);
    // The id derivation never changes: dedup across versions depends on it.
    expect(eventId({ hubId: e.hubId, kind: actorKindOf(e.type), sessionId: e.sessionId, streamId: e.streamId }, e.seq)).toBe(e.id);
  });

  it("upcasts edge.disconnected v1 (no durationMs) to v2 with durationMs null", () => {
    const v1 = fixtures.find((f) => f.file === "edge.disconnected.v1.json")?.raw;
    const r = upcastEvent(v1);
    expect(Either.isRight(r) && r.right).toMatchObject({
      type: "edge.disconnected",
      v: 2,
      data: { reason: "timeout", message: "no ping for 15000 ms", durationMs: null },
    });
  });

  it("upcasts udp.closed v1 (datagramsIn/Out) to v2 with the addon's names packetsIn/Out", () => {
    const v1 = fixtures.find((f) => f.file === "udp.closed.v1.json")?.raw as { data: Record<string, unknown> };
    const r = upcastEvent(v1);
    expect(Either.isRight(r)).toBe(true);
    if (Either.isLeft(r) || r.right.type !== "udp.closed") return;
    const { datagramsIn, datagramsOut, ...rest } = v1.data;
    expect(r.right.v).toBe(2);
    expect(r.right.data).toEqual({ ...rest, packetsIn: datagramsIn, packetsOut: datagramsOut });
    expect(r.right.data).not.toHaveProperty("datagramsIn");
    // A v1 event that already uses the new names is not a v1 event.
    expect(Either.isLeft(upcastEvent({ ...v1, data: { ...rest, packetsIn: 1, packetsOut: 1 } }))).toBe(true);
  });

  it("current-version fixtures decode unchanged", () => {
    const f = fixtures.find((x) => x.file === "stream.closed.v1.json")?.raw;
    const r = upcastEvent(f);
    expect(Either.isRight(r) && r.right).toEqual(f);
  });
});

describe("decoding bad events", () => {
  const good = fixtures.find((f) => f.file === "stream.closed.v1.json")?.raw as Record<string, unknown>;

  it("rejects a version newer than this build with a clear error", () => {
    const r = upcastEvent({ ...good, v: 9 });
    expect(Either.isLeft(r) && r.left._tag).toBe("UnsupportedEventVersion");
    expect(Either.isLeft(r) && r.left.message).toMatch(/stream\.closed v9, newer than this build understands \(v1\)/);
  });

  it("rejects unknown types, bad data and non-objects without throwing", () => {
    for (const bad of [
      { ...good, type: "stream.exploded" },
      { ...good, data: { ...(good.data as object), bytesIn: -1 } },
      { ...good, data: { ...(good.data as object), reason: "gremlins" } },
      { ...good, seq: 0 },
      null,
      "text",
      42,
    ]) {
      const r = upcastEvent(bad);
      expect(Either.isLeft(r) && r.left._tag).toBe("EventDecodeError");
    }
  });

  it("rejects a v1 edge.disconnected whose old data is itself invalid", () => {
    const v1 = fixtures.find((f) => f.file === "edge.disconnected.v1.json")?.raw as Record<string, unknown>;
    const r = upcastEvent({ ...v1, data: { reason: "timeout" } });
    expect(Either.isLeft(r) && r.left.message).toMatch(/edge\.disconnected v1/);
  });
});

describe("subjects", () => {
  const ev = (type: EventType, edgeId: string | null, hubId = "hub-1") => ({ type, edgeId, hubId });

  it("puts hub, edge, kind and action in fixed positions", () => {
    expect(subjectOf(ev("stream.closed", "e1"))).toBe("portway.ev.hub-1.e1.stream.closed");
    expect(subjectOf(ev("hub.started", null))).toBe("portway.ev.hub-1.~.hub.started");
    expect(subjectOf(ev("udp.expired", "edge_2"))).toBe("portway.ev.hub-1.edge_2.udp.expired");
  });

  it("encodes ids so no id can split or widen a subject, and decodes them back", () => {
    for (const id of ["a.b", "*", ">", "a b", "~", "ü-ñ", "x~2E", "tab\tnew\nline"]) {
      const tok = encodeToken(id);
      expect(tok).toMatch(/^[A-Za-z0-9_~-]+$/);
      expect(decodeToken(tok)).toBe(id);
    }
    expect(encodeToken("a.b")).toBe("a~2Eb");
    expect(() => encodeToken("")).toThrow(/empty/);
  });

  it("parses what it builds and rejects everything else with a reason", () => {
    for (const [type, edge] of [["stream.opened", "e.1"], ["hub.stopped", null], ["edge.authFailed", "*"]] as const) {
      const s = subjectOf(ev(type, edge, "h.1"));
      expect(parseSubject(s)).toEqual({ hubId: "h.1", edgeId: edge, type });
    }
    for (const bad of ["portway.ev.h.e.stream", "other.ev.h.e.stream.closed", "portway.ev.h.e.stream.exploded", "portway.ev.h~ZZ.e.stream.closed"]) {
      expect(parseSubject(bad)).toBeInstanceOf(InvalidSubject);
    }
  });

  it("builds one filter per question", () => {
    expect(filterSubjects()).toEqual(["portway.ev.>"]);
    expect(filterSubjects({ edgeId: "X" })).toEqual(["portway.ev.*.X.>"]);
    expect(filterSubjects({ edgeId: "X", kinds: ["stream"] })).toEqual(["portway.ev.*.X.stream.*"]);
    expect(filterSubjects({ types: ["stream.closed"] })).toEqual(["portway.ev.*.*.stream.closed"]);
    expect(filterSubjects({ hubId: "h", edgeId: null })).toEqual(["portway.ev.h.~.>"]);
    // No overlapping filters (JetStream refuses them): types covered by a kind are dropped.
    expect(filterSubjects({ kinds: ["udp", "udp"], types: ["udp.closed", "stream.closed"] })).toEqual([
      "portway.ev.*.*.udp.*",
      "portway.ev.*.*.stream.closed",
    ]);
  });
});

describe("ids", () => {
  const actor = { hubId: "hub-1", kind: "stream" as const, sessionId: "s1", streamId: "7" };

  it("are deterministic per actor and seq, and differ otherwise", () => {
    expect(eventId(actor, 1)).toBe(eventId({ ...actor }, 1));
    expect(eventId(actor, 1)).toMatch(/^[0-9a-f]{32}$/);
    const others = [eventId(actor, 2), eventId({ ...actor, streamId: "8" }, 1), eventId({ ...actor, kind: "udp" }, 1), eventId({ ...actor, hubId: "hub-2" }, 1)];
    expect(new Set([eventId(actor, 1), ...others]).size).toBe(5);
  });

  it("makeEvent fills id and current version", () => {
    const e = makeEvent({ type: "udp.expired", hubId: "hub-1", edgeId: "e1", sessionId: "s1", streamId: "u1", seq: 2, time: 5, data: { idleMs: 30_000 } });
    expect(e.v).toBe(CURRENT_VERSIONS["udp.expired"]);
    expect(e.id).toBe(eventId({ hubId: "hub-1", kind: "udp", sessionId: "s1", streamId: "u1" }, 2));
  });

  it("batch message ids depend on exactly the events in the batch", () => {
    expect(batchMessageId(["a"])).toBe("a");
    expect(batchMessageId(["a", "b"])).toBe(batchMessageId(["a", "b"]));
    expect(batchMessageId(["a", "b"])).not.toBe(batchMessageId(["b", "a"]));
    expect(batchMessageId(["a", "b"])).not.toBe(batchMessageId(["a", "b", "c"]));
  });
});

describe("eventMaker (one actor's events, the logged actors' hot path)", () => {
  it("builds exactly what makeEvent builds: same fields in the same order, same ids as the frozen fixtures", () => {
    for (const { raw } of fixtures) {
      const e = raw as unknown as DomainEvent;
      const make = eventMaker({ hubId: e.hubId, edgeId: e.edgeId, sessionId: e.sessionId, streamId: e.streamId });
      const made = make(e.type, e.seq, e.time, e.data);
      const viaMakeEvent = makeEvent({ ...e } as Parameters<typeof makeEvent>[0]);
      expect(JSON.stringify(made)).toBe(JSON.stringify(viaMakeEvent));
      expect(made.id).toBe(e.id);
    }
  });

  it("numbers one actor's events, and an actor of another kind with the same ids gets other ids", () => {
    const identity = { hubId: "hub-1", edgeId: "e1", sessionId: "s1", streamId: "7" };
    const make = eventMaker(identity);
    const data = { edgePort: 80, clientAddr: "203.0.113.9:1", target: "10.0.0.5:80" };
    const a = make("stream.opened", 1, 5, data);
    const b = make("stream.opened", 2, 5, data);
    const u = make("udp.opened", 1, 5, { ...data, udpId: "7" } as never);
    expect(a.id).toBe(eventId({ hubId: "hub-1", kind: "stream", sessionId: "s1", streamId: "7" }, 1));
    expect(b.id).toBe(eventId({ hubId: "hub-1", kind: "stream", sessionId: "s1", streamId: "7" }, 2));
    expect(u.id).toBe(eventId({ hubId: "hub-1", kind: "udp", sessionId: "s1", streamId: "7" }, 1));
    // Back to the first kind after another: the id input follows the type, not the first call.
    expect(make("stream.closed", 3, 6, data as never).id).toBe(eventId({ hubId: "hub-1", kind: "stream", sessionId: "s1", streamId: "7" }, 3));
  });
});
