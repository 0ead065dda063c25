import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Chunk, Effect, Layer, ManagedRuntime, Stream } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DomainEvent } from "../src/events/envelope.js";
import * as Conn from "../src/nats/connection.js";
import { EventLog, layer as eventLogLayer } from "../src/nats/event-log.js";
import { ensureEventStream } from "../src/nats/event-stream.js";
import { edgeHistory, liveEvents, liveEventsIterable, replayHistory, replayHistoryIterable } from "../src/nats/replay.js";
import { checkServerInfo } from "../src/nats/server-version.js";
import { makeStreamEvents, startTestNats, type TestNats } from "./helpers/nats.js";

let nats: TestNats;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startTestNats();
  nc = await connect({ servers: nats.url });
});
afterAll(async () => {
  await nc?.close();
  await nats?.close();
});

const actorOrderOk = (events: ReadonlyArray<DomainEvent>): boolean => {
  const last = new Map<string, number>();
  for (const e of events) {
    const k = `${e.sessionId}/${e.streamId}`;
    if ((last.get(k) ?? 0) + 1 !== e.seq) return false;
    last.set(k, e.seq);
  }
  return true;
};

describe("event stream setup", () => {
  it("creates the stream once, leaves it alone when unchanged, updates changed limits", async () => {
    const jsm = await jetstreamManager(nc);
    const opts = { name: "SETUP_TEST", maxAgeMs: 3_600_000, duplicateWindowMs: 60_000 };
    const first = await Effect.runPromise(ensureEventStream(jsm, opts));
    const second = await Effect.runPromise(ensureEventStream(jsm, opts));
    const third = await Effect.runPromise(ensureEventStream(jsm, { ...opts, maxAgeMs: 7_200_000 }));
    expect([first.action, second.action, third.action]).toEqual(["created", "unchanged", "updated"]);
    expect(third.drift).toEqual(["max_age"]);
    expect(third.info.config.max_age).toBe(7_200_000 * 1_000_000);
    expect(first.info.config.storage).toBe("file");
    expect(first.info.config.duplicate_window).toBe(60_000 * 1_000_000);
    expect(first.info.config.num_replicas).toBe(1);
    await jsm.streams.delete("SETUP_TEST");
  });

  it("passes the server check on the pinned nats-server", async () => {
    expect(nc.info?.version).toMatch(/^2\.1[0-9]\./);
    await Effect.runPromise(checkServerInfo(nc.info));
  });
});

describe("append and replay", () => {
  let runtime: ManagedRuntime.ManagedRuntime<EventLog | Conn.NatsClient, unknown>;
  let dataDir: string;
  const t0 = Date.UTC(2026, 0, 1);
  const events = makeStreamEvents({ streams: 10_000, edges: 4, t0 });

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "portway-evlog-"));
    const client = Conn.layer({ servers: [nats.url] });
    runtime = ManagedRuntime.make(
      eventLogLayer({ hubId: "hub-1", runId: "run-1", dataDir, stream: { name: "APPEND_TEST" } }).pipe(Layer.provideMerge(client)),
    );
    await runtime.runPromise(
      Effect.gen(function* () {
        const log = yield* EventLog;
        log.appendAll(events);
        yield* log.whenIdle;
      }),
    );
  });
  afterAll(async () => {
    await runtime?.dispose();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("stores exactly the events appended, each actor's in order", async () => {
    const status = await runtime.runPromise(Effect.map(EventLog, (l) => l.status()));
    expect(status.appendedEvents).toBe(events.length);
    expect(status.droppedEvents).toBe(0);
    expect(status.publishedMessages).toBeLessThan(events.length / 10);
    const back = Chunk.toReadonlyArray(await runtime.runPromise(Stream.runCollect(replayHistory({ stream: "APPEND_TEST" }))));
    expect(back.length).toBe(events.length);
    expect(new Set(back.map((e) => e.id)).size).toBe(events.length);
    expect(actorOrderOk(back)).toBe(true);
    expect(back.find((e) => e.id === events[123]?.id)).toEqual(events[123]);
  });

  it("filters by edge and kind on the server, and by time", async () => {
    const edge2 = [];
    for await (const e of replayHistoryIterable(nc, { stream: "APPEND_TEST", edgeId: "e2", kinds: ["stream"] })) edge2.push(e);
    expect(edge2.length).toBe(events.filter((e) => e.edgeId === "e2").length);
    expect(edge2.every((e) => e.edgeId === "e2")).toBe(true);

    const closes = Chunk.toReadonlyArray(
      await runtime.runPromise(Stream.runCollect(replayHistory({ stream: "APPEND_TEST", types: ["stream.closed"] }))),
    );
    expect(closes.length).toBe(10_000);
    expect(closes.every((e) => e.type === "stream.closed")).toBe(true);

    const window = Chunk.toReadonlyArray(
      await runtime.runPromise(
        Stream.runCollect(replayHistory({ stream: "APPEND_TEST", edgeId: "e1", since: t0 + 1000, until: t0 + 2000 })),
      ),
    );
    const expected = events.filter((e) => e.edgeId === "e1" && e.time >= t0 + 1000 && e.time < t0 + 2000);
    expect(window.map((e) => e.id).sort()).toEqual(expected.map((e) => e.id).sort());
    expect(window.length).toBeGreaterThan(0);
  });

  it("feeds live events filtered by edge and kind, as a Stream and as an async iterable", async () => {
    const live = runtime.runPromise(
      Stream.runCollect(liveEvents({ stream: "APPEND_TEST", edgeId: "e3", kinds: ["stream"] }).pipe(Stream.take(4))),
    );
    const iter = liveEventsIterable(nc, { stream: "APPEND_TEST", types: ["stream.closed"] });
    const firstClosed = iter.next();
    // Let both consumers be created before publishing (live = only new events).
    await new Promise((r) => setTimeout(r, 300));
    const fresh = makeStreamEvents({ streams: 8, edges: 4, t0: t0 + 100_000, sessionPrefix: "live" });
    await runtime.runPromise(
      Effect.gen(function* () {
        const log = yield* EventLog;
        log.appendAll(fresh);
        yield* log.whenIdle;
      }),
    );
    const got = Chunk.toReadonlyArray(await live);
    // Batches are per subject, so order holds per actor (opened before closed), not across subjects.
    expect(got.map((e) => e.id).sort()).toEqual(fresh.filter((e) => e.edgeId === "e3").map((e) => e.id).sort());
    expect(actorOrderOk(got)).toBe(true);
    const closed = await firstClosed;
    expect(closed.value?.type).toBe("stream.closed");
    expect(closed.value?.sessionId).toMatch(/^live-/);
    await iter.return(undefined);
  });

  it("projects an edge's history from the log", async () => {
    const h = await runtime.runPromise(edgeHistory({ stream: "APPEND_TEST", edgeId: "e0", until: t0 + 100_000 }));
    expect(h.totals.connections).toBe(2_500);
    expect(h.totals.openConnections).toBe(0);
    expect(h.totals.closeReasons).toEqual({ clientClosed: 2_500 });
    expect(h.connections[0]).toMatchObject({ protocol: "tcp", edgePort: 8080, target: "10.0.0.5:80", bytesIn: 0, bytesOut: 0 });
  });

  it("returns nothing (and ends) for a filter that matches nothing", async () => {
    const none = Chunk.toReadonlyArray(
      await runtime.runPromise(Stream.runCollect(replayHistory({ stream: "APPEND_TEST", edgeId: "no-such-edge" }))),
    );
    expect(none).toEqual([]);
  });
});
