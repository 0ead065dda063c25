/**
 * The batching publisher's logic against a scripted JetStream sink (a test double: the real-server paths
 * are in nats-event-log.int / outbox.int). Real outbox on a temp dir.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { makeEvent, type DomainEvent } from "../src/events/envelope.js";
import { batchMessageId } from "../src/events/ids.js";
import { Outbox } from "../src/nats/outbox.js";
import { EventPublisher, type JetStreamSink } from "../src/nats/publisher.js";
import { makeStreamEvents, waitFor } from "./helpers/nats.js";

interface Sent {
  subject: string;
  msgId: string;
  events: DomainEvent[];
}

class ScriptedSink implements JetStreamSink {
  up = true;
  failNext = 0;
  sent: Sent[] = [];
  private readonly seen = new Set<string>();
  private listeners = new Set<() => void>();
  isUp(): boolean {
    return this.up;
  }
  async publish(subject: string, payload: Uint8Array, msgId: string): Promise<{ duplicate: boolean }> {
    await Promise.resolve();
    if (!this.up || this.failNext > 0) {
      this.failNext = Math.max(0, this.failNext - 1);
      throw new Error("503 no responders");
    }
    if (this.seen.has(msgId)) return { duplicate: true };
    this.seen.add(msgId);
    this.sent.push({ subject, msgId, events: JSON.parse(new TextDecoder().decode(payload)) as DomainEvent[] });
    return { duplicate: false };
  }
  onUp(l: () => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  comeBack(): void {
    this.up = true;
    for (const l of this.listeners) l();
  }
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "portway-pub-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const make = async (sink: ScriptedSink, extra: Partial<ConstructorParameters<typeof EventPublisher>[0]> = {}, outboxMax?: number) => {
  const { outbox } = await Outbox.open({ dir, fsync: "never", ...(outboxMax ? { maxBytes: outboxMax } : {}) });
  const logs: string[] = [];
  const p = new EventPublisher({ hubId: "hub-1", runId: "r", log: (l, m) => logs.push(`${l}: ${m}`), ...extra }, sink, outbox);
  return { p, logs };
};

describe("batching publisher", () => {
  it("sends one message per subject with all its events, in order, with a derived message id", async () => {
    const sink = new ScriptedSink();
    const { p } = await make(sink);
    const evs = makeStreamEvents({ streams: 100, edges: 2 });
    p.appendAll(evs);
    await p.whenIdle();
    expect(sink.sent.length).toBe(4); // 2 edges × {opened, closed}
    for (const m of sink.sent) {
      expect(new Set(m.events.map((e) => `portway.ev.${e.hubId}.${e.edgeId}.${e.type}`))).toEqual(new Set([m.subject]));
      expect(m.msgId).toBe(batchMessageId(m.events.map((e) => e.id)));
      const order = evs.filter((e) => m.events.some((x) => x.id === e.id)).map((e) => e.id);
      expect(m.events.map((e) => e.id)).toEqual(order);
    }
    expect(p.status().appendedEvents).toBe(200);
    await p.close();
  });

  it("caps batches by event count and by bytes (splitting large ones)", async () => {
    const sink = new ScriptedSink();
    const { p } = await make(sink, { maxBatchEvents: 10, maxBatchBytes: 2_000 });
    p.appendAll(makeStreamEvents({ streams: 50, edges: 1 }));
    await p.whenIdle();
    expect(Math.max(...sink.sent.map((m) => m.events.length))).toBeLessThanOrEqual(10);
    for (const m of sink.sent) expect(JSON.stringify(m.events).length <= 2_000 || m.events.length === 1).toBe(true);
    expect(sink.sent.reduce((n, m) => n + m.events.length, 0)).toBe(100);
    await p.close();
  });

  it("drops an event larger than a message can be, loudly", async () => {
    const sink = new ScriptedSink();
    const { p, logs } = await make(sink, { maxBatchBytes: 1_000, maxMessageBytes: 4_000 });
    const huge = makeEvent({
      type: "hub.stopped", hubId: "hub-1", edgeId: null, sessionId: "r", streamId: null, seq: 1, time: 1,
      data: { reason: "error", message: "x".repeat(10_000) },
    });
    p.append(huge);
    await p.flush();
    expect(p.status().droppedEvents).toBe(1);
    expect(logs.some((l) => /EVENTS DROPPED: event .* is \d+ bytes, above the 4000-byte message limit/.test(l))).toBe(true);
    await p.close();
  });

  it("on a failed publish goes to the outbox, keeps per-subject order, and drains when NATS is back", async () => {
    const sink = new ScriptedSink();
    const { p } = await make(sink, { maxBatchEvents: 5 });
    // NATS answers but every publish fails (e.g. stream missing), then it goes away entirely.
    sink.failNext = 1_000_000;
    const first = makeStreamEvents({ streams: 20, edges: 1, sessionPrefix: "a" });
    p.appendAll(first);
    await waitFor(() => p.status().mode === "outbox", "outbox mode");
    sink.up = false;
    sink.failNext = 0;
    const second = makeStreamEvents({ streams: 20, edges: 1, sessionPrefix: "b" });
    p.appendAll(second);
    await p.flush();
    expect(p.status().outbox.records).toBeGreaterThan(0);
    sink.comeBack();
    await waitFor(() => p.status().mode === "direct", "back to direct", 5_000);
    const stored = sink.sent.flatMap((m) => m.events.map((e) => e.id));
    expect(new Set(stored).size).toBe(80);
    // Per subject, the order is the append order.
    for (const type of ["stream.opened", "stream.closed"]) {
      const want = [...first, ...second].filter((e) => e.type === type).map((e) => e.id);
      const got = sink.sent.filter((m) => m.subject.endsWith(type)).flatMap((m) => m.events.map((e) => e.id));
      expect(got).toEqual(want);
    }
    await p.close();
  });

  it("on close writes what is not acknowledged to the outbox for the next run", async () => {
    const sink = new ScriptedSink();
    sink.up = false;
    const { p } = await make(sink);
    p.appendAll(makeStreamEvents({ streams: 10 }));
    await p.close();
    p.append(makeStreamEvents({ streams: 1, sessionPrefix: "late" })[0] as DomainEvent);
    expect(p.status().droppedEvents).toBe(1); // after close: counted, not silently lost
    const { outbox, recovery } = await Outbox.open({ dir });
    expect(recovery.events).toBe(20);
    await outbox.close();
  });
});
