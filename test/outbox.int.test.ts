/**
 * NATS outages with a real nats-server: stopped mid-publish and restarted → none missing, none doubled;
 * hub restart while NATS is down → the outbox is flushed by the next run; outbox full → loud.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Effect, Layer, ManagedRuntime } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DomainEvent } from "../src/events/envelope.js";
import * as Conn from "../src/nats/connection.js";
import { EventLog, layer as eventLogLayer, type EventLogOptions } from "../src/nats/event-log.js";
import { storedEvents as storedEventsOf } from "./helpers/event-log.js";
import { makeStreamEvents, startTestNats, waitFor, type TestNats } from "./helpers/nats.js";

let nats: TestNats;
beforeAll(async () => {
  nats = await startTestNats();
});
afterAll(async () => {
  await nats?.close();
});

type Runtime = ManagedRuntime.ManagedRuntime<EventLog | Conn.NatsClient, unknown>;

const openLog = (opts: Partial<EventLogOptions> & { dataDir: string; stream: string }): Runtime =>
  ManagedRuntime.make(
    eventLogLayer({
      hubId: "hub-1",
      runId: opts.runId ?? "run-1",
      dataDir: opts.dataDir,
      stream: { name: opts.stream },
      ...(opts.outbox ? { outbox: opts.outbox } : {}),
      ...(opts.log ? { log: opts.log } : {}),
      publisher: { publishTimeoutMs: 1_000 },
    }).pipe(Layer.provideMerge(Conn.layer({ servers: [nats.url], reconnectTimeWaitMs: 100, startupWaitMs: 2_000 }))),
  );

const logs = new WeakMap<Runtime, Effect.Effect.Success<typeof EventLog>>();
const logOf = (rt: Runtime) => {
  const l = logs.get(rt);
  if (!l) throw new Error("runtime not started: await start(rt) first");
  return l;
};
const start = async (rt: Runtime): Promise<Runtime> => {
  logs.set(rt, await rt.runPromise(EventLog));
  return rt;
};

/** Every event stored in the stream, duplicates included (no dedup here: that is what is checked). */
const storedEvents = (stream: string): Promise<DomainEvent[]> => storedEventsOf(nats.url, stream);

/** All streams capture portway.ev.>, so each test removes its stream for the next one. */
async function deleteStream(stream: string): Promise<void> {
  if (!nats.running()) await nats.start();
  const nc = await connect({ servers: nats.url });
  try {
    await (await jetstreamManager(nc)).streams.delete(stream).catch(() => undefined);
  } finally {
    await nc.close();
  }
}

const expectExactlyOnce = (stored: ReadonlyArray<{ id: string }>, sent: ReadonlyArray<DomainEvent>): void => {
  const ids = stored.map((e) => e.id);
  expect(new Set(ids).size).toBe(ids.length); // none doubled
  const have = new Set(ids);
  expect(sent.filter((e) => !have.has(e.id)).length).toBe(0); // none missing
  expect(ids.length).toBe(sent.length);
};

/** Appends `perTick` events every 5 ms while `fn` runs; returns what was appended. */
async function appendWhile(log: { append(e: DomainEvent): void }, perTick: number, prefix: string, fn: () => Promise<void>): Promise<DomainEvent[]> {
  const sent: DomainEvent[] = [];
  let stop = false;
  let tick = 0;
  const loop = (async () => {
    while (!stop) {
      const evs = makeStreamEvents({ streams: perTick / 2, edges: 3, sessionPrefix: `${prefix}-${tick++}` });
      for (const e of evs) log.append(e);
      sent.push(...evs);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  await fn();
  stop = true;
  await loop;
  return sent;
}

async function outageRun(outageMs: number, stream: string): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), "portway-outage-"));
  const rt = await start(openLog({ dataDir, stream }));
  try {
    const log = logOf(rt);
    const sent = await appendWhile(log, 100, stream, async () => {
      await new Promise((r) => setTimeout(r, 300));
      await nats.stop();
      await waitFor(() => log.status().mode === "outbox", "outbox mode after NATS stopped");
      await new Promise((r) => setTimeout(r, outageMs));
      expect(log.status().outbox.records).toBeGreaterThan(0);
      await nats.start();
      await waitFor(() => log.status().natsUp, "NATS up again", 20_000);
      await new Promise((r) => setTimeout(r, 300));
    });
    await waitFor(() => log.status().mode === "direct" && log.status().outbox.records === 0, "outbox drained", 30_000);
    await rt.runPromise(log.whenIdle);
    const status = log.status();
    expect(status.droppedEvents).toBe(0);
    expect(status.acceptedEvents).toBe(sent.length);
    expectExactlyOnce(await storedEvents(stream), sent);
  } finally {
    await rt.dispose();
    await rm(dataDir, { recursive: true, force: true });
    await deleteStream(stream);
  }
}

describe("NATS outage", () => {
  it("NATS down for 3 s mid-publish, then restarted: none missing, none doubled", async () => {
    await outageRun(3_000, "OUTAGE_SHORT");
  });

  it("NATS down for 30 s mid-publish, then restarted: none missing, none doubled", async () => {
    await outageRun(30_000, "OUTAGE_LONG");
  }, 120_000);

  it("a hub restart while NATS is down: the next run flushes what the outbox holds", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "portway-restart-"));
    try {
      const first = await start(openLog({ dataDir, stream: "RESTART" }));
      const warm = makeStreamEvents({ streams: 50, sessionPrefix: "warm" });
      logOf(first).appendAll(warm);
      await first.runPromise(logOf(first).whenIdle);
      await nats.stop();
      const lost = makeStreamEvents({ streams: 2_000, sessionPrefix: "down" });
      logOf(first).appendAll(lost);
      await first.runPromise(logOf(first).flush);
      expect(logOf(first).status().outbox.records).toBeGreaterThan(0);
      await first.dispose();

      await nats.start();
      const second = await start(openLog({ dataDir, stream: "RESTART", runId: "run-2" }));
      try {
        expect(logOf(second).status().recovered.events).toBe(lost.length);
        await waitFor(() => logOf(second).status().outbox.records === 0 && logOf(second).status().mode === "direct", "restart flush", 20_000);
        expectExactlyOnce(await storedEvents("RESTART"), [...warm, ...lost]);
      } finally {
        await second.dispose();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
      await deleteStream("RESTART");
    }
  });

  it("outbox full: drops are loud (log, status, metric) and leave a hub.eventsDropped event", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "portway-full-"));
    const lines: string[] = [];
    const rt = await start(
      openLog({
        dataDir,
        stream: "FULL",
        outbox: { maxBytes: 64 * 1024 },
        log: (level, msg) => lines.push(`${level}: ${msg}`),
      }),
    );
    try {
      const log = logOf(rt);
      await nats.stop();
      await waitFor(() => !log.status().natsUp, "NATS down");
      const evs = makeStreamEvents({ streams: 2_000, sessionPrefix: "full" });
      log.appendAll(evs);
      await rt.runPromise(log.flush);
      const s = log.status();
      expect(s.outbox.full).toBe(true);
      expect(s.droppedEvents).toBeGreaterThan(0);
      expect(s.lastError).toMatch(/dropped/);
      expect(log.metrics().portway_events_dropped_total).toBe(s.droppedEvents);
      expect(log.metrics().portway_events_outbox_full).toBe(1);
      expect(lines.some((l) => l.startsWith("error: EVENTS DROPPED"))).toBe(true);
      expect(s.droppedEvents + s.outboxedEvents).toBe(evs.length);

      await nats.start();
      await waitFor(() => log.status().mode === "direct" && log.status().outbox.records === 0, "drained", 20_000);
      // The next event after the episode finds room and records the gap in the log itself.
      log.appendAll(makeStreamEvents({ streams: 1, sessionPrefix: "after" }));
      await waitFor(() => log.status().outbox.records === 0 && log.status().mode === "direct", "settled", 20_000);
      await rt.runPromise(log.whenIdle);
      const stored = await storedEvents("FULL");
      const gap = stored.filter((e) => e.type === "hub.eventsDropped");
      expect(gap.length).toBe(1);
      expect((gap[0]?.data as { count: number }).count).toBe(s.droppedEvents);
    } finally {
      await rt.dispose();
      await rm(dataDir, { recursive: true, force: true });
      await deleteStream("FULL");
    }
  });
});
