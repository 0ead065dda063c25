/**
 * The batching appender: takes domain events and gets them into JetStream without ever making the caller
 * wait (docs/adr/0004-event-append-batching.md).
 *
 *   append(event) ── per-subject open batch ──(linger | full)──▶ sealed batch
 *        direct mode:  sealed → memory queue → pipelined publishes (≤ maxInFlight), acks counted
 *        outbox mode:  sealed → disk outbox → drained in order, pipelined, when NATS is back
 *
 * One JetStream message carries the events of one subject (a JSON array of envelopes), with a message id
 * derived from the event ids, so a batch re-published from the outbox is deduplicated by JetStream.
 *
 * Ordering: per subject, batches are published in the order they were sealed. When a publish fails, the
 * batches still in flight are waited for and the failed ones go to the outbox before anything newer, so
 * the order survives an outage too (except when the wait would overflow the memory bound; see the ADR).
 */
import type { DomainEvent } from "../events/envelope.js";
import { makeEvent } from "../events/envelope.js";
import { batchMessageId } from "../events/ids.js";
import { subjectOf } from "../events/subjects.js";
import type { Outbox, OutboxEntry, OutboxRecord } from "./outbox.js";

/** What the publisher needs from JetStream; connection.ts/event-log.ts provide the real one. */
export interface JetStreamSink {
  /** Connected and the stream is ready. */
  isUp(): boolean;
  publish(subject: string, payload: Uint8Array, msgId: string, timeoutMs: number): Promise<{ readonly duplicate: boolean }>;
  /** Called whenever the sink becomes up; returns an unsubscribe function. */
  onUp(listener: () => void): () => void;
}

export interface PublisherOptions {
  readonly hubId: string;
  /** The hub run id: identity of the publisher's own hub.eventsDropped events. */
  readonly runId: string;
  /**
   * Max time an event waits for its batch to fill, at low event rates. Default 2 ms. The linger grows with the
   * event rate (`lingerMsPerEventPerMs` × events/ms, up to `maxLingerMs`): fewer, larger messages when busy.
   */
  readonly lingerMs?: number;
  /** Upper bound of the rate-adaptive linger. Default 100 ms; equal to `lingerMs` turns adaptation off. */
  readonly maxLingerMs?: number;
  /** Linger per event/ms of recent append rate. Default 25 (≤ 80 events/s → 2 ms, 1,000 events/s → 25 ms, ≥ 4,000 → 100 ms). */
  readonly lingerMsPerEventPerMs?: number;
  readonly maxBatchEvents?: number;
  /** Batches whose JSON exceeds this are split. Default 512 KiB. */
  readonly maxBatchBytes?: number;
  /** Largest message the stream accepts (stream maxMsgSize). Default 4 MiB. */
  readonly maxMessageBytes?: number;
  /** Publishes awaiting their ack at once. Default 64. */
  readonly maxInFlight?: number;
  /** Memory bound for batches not yet acknowledged; beyond it batches go to the outbox. Default 64 MiB. */
  readonly maxQueueBytes?: number;
  readonly publishTimeoutMs?: number;
  readonly log?: (level: "info" | "warn" | "error", msg: string) => void;
  /** Clock for event times (tests). */
  readonly now?: () => number;
}

export type PublisherMode = "direct" | "outbox";

export interface PublisherStatus {
  readonly mode: PublisherMode;
  readonly natsUp: boolean;
  readonly openEvents: number;
  readonly queuedMessages: number;
  readonly queuedBytes: number;
  readonly inFlight: number;
  readonly outbox: { readonly bytes: number; readonly maxBytes: number; readonly records: number; readonly full: boolean };
  readonly acceptedEvents: number;
  readonly appendedEvents: number;
  readonly publishedMessages: number;
  readonly duplicateMessages: number;
  readonly droppedEvents: number;
  readonly outboxedEvents: number;
  readonly lastError: string | null;
}

/** Events kept as objects until sealed: one JSON.stringify per batch is cheaper than one per event. */
interface OpenBatch {
  events: DomainEvent[];
}

interface Sealed {
  readonly n: number;
  readonly record: OutboxRecord;
  readonly bytes: number;
}

const DEFAULTS = {
  lingerMs: 2,
  maxLingerMs: 100,
  lingerMsPerEventPerMs: 25,
  maxBatchEvents: 1024,
  maxBatchBytes: 512 * 1024,
  maxMessageBytes: 4 * 1024 * 1024,
  maxInFlight: 64,
  maxQueueBytes: 64 * 1024 * 1024,
  publishTimeoutMs: 5_000,
};

const errMsg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

export class EventPublisher {
  private readonly o: typeof DEFAULTS;
  private readonly log: NonNullable<PublisherOptions["log"]>;
  private readonly now: () => number;
  private open = new Map<string, OpenBatch>();
  private readonly subjects = new Map<string, Map<string, string>>();
  private openEvents = 0;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** Current linger (rate-adaptive, between lingerMs and maxLingerMs) and when the open window started. */
  private linger: number;
  /** When the previous linger window ended (its rate counts the quiet time since). */
  private lastWindowEnd = 0;
  /** Recent append rate, events per ms (EWMA over linger windows). */
  private eventRate = 0;
  private nextN = 1;
  private mode: PublisherMode = "direct";
  /** Direct mode: sealed, not yet sent. */
  private queue: Sealed[] = [];
  private queueHead = 0;
  /** Sent, no ack yet, and failed ones waiting to be outboxed in order. */
  private inFlight = 0;
  private readonly inFlightSet = new Set<Sealed>();
  private inFlightBytes = 0;
  private queuedBytes = 0;
  private spill: Sealed[] = [];
  private spillBytes = 0;
  private draining = false;
  private drainBackoffMs = 250;
  private drainTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly unsubscribe: () => void;
  private idleWaiters: Array<() => void> = [];
  private dropEpisode: { count: number; first: number; last: number } | undefined;
  private lastDropLog = 0;
  private selfSeq = 0;
  private readonly counters = {
    accepted: 0,
    appended: 0,
    published: 0,
    duplicates: 0,
    dropped: 0,
    outboxed: 0,
  };
  private lastError: string | null = null;

  constructor(
    private readonly opts: PublisherOptions,
    private readonly sink: JetStreamSink,
    private readonly outbox: Outbox,
  ) {
    this.o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => k in DEFAULTS && v !== undefined)) };
    this.log = opts.log ?? ((level, msg) => (level === "info" ? undefined : console.error(`[events] ${msg}`)));
    this.now = opts.now ?? Date.now;
    this.linger = this.o.lingerMs;
    this.unsubscribe = sink.onUp(() => this.scheduleDrain(0));
    if (!outbox.isEmpty()) {
      this.mode = "outbox";
      this.scheduleDrain(0);
    }
  }

  // ---------------------------------------------------------------- intake (synchronous, never waits)

  /** Accepts an event. Never blocks and never throws for a closed/slow NATS; see status() for trouble. */
  append(event: DomainEvent): void {
    if (this.closed) {
      this.recordDrop(1, event.time, "the publisher is closed");
      return;
    }
    const subject = this.subjectFor(event);
    let b = this.open.get(subject);
    if (!b) {
      b = { events: [] };
      this.open.set(subject, b);
    }
    b.events.push(event);
    this.openEvents++;
    this.counters.accepted++;
    if (b.events.length >= this.o.maxBatchEvents) {
      this.open.delete(subject);
      this.openEvents -= b.events.length;
      this.seal(subject, b.events);
      this.pump();
    } else if (!this.lingerTimer) {
      this.lingerTimer = setTimeout(() => this.sealAll(true), this.linger);
    }
  }

  /** subjectOf, memoised per (hub, edge, type): token encoding is most of an append's cost otherwise. */
  private subjectFor(e: DomainEvent): string {
    const key = `${e.edgeId ?? "\u0000"}\u0000${e.type}`;
    let byHub = this.subjects.get(e.hubId);
    if (!byHub) {
      byHub = new Map();
      this.subjects.set(e.hubId, byHub);
    }
    let subject = byHub.get(key);
    if (subject === undefined) {
      // Claimed edge ids of failed handshakes are attacker-chosen: keep the memo bounded.
      if (byHub.size >= 10_000) byHub.clear();
      subject = subjectOf(e);
      byHub.set(key, subject);
    }
    return subject;
  }

  appendAll(events: Iterable<DomainEvent>): void {
    for (const e of events) this.append(e);
  }

  private sealAll(lingerEnded = false): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (lingerEnded) this.adaptLinger(this.openEvents);
    const open = this.open;
    this.open = new Map();
    this.openEvents = 0;
    for (const [subject, b] of open) this.seal(subject, b.events);
    this.pump();
  }

  /**
   * Each publish costs the hub and the server far more than an event in it (ADR 0007): when events come fast,
   * wait longer so each message carries more of them. Rate = events of the window just ended over the time since
   * the previous window ended (quiet time included; the timer may fire late on a busy loop). It rises smoothly
   * and falls at once: one window after a burst ends, the linger is back at `lingerMs`.
   */
  private adaptLinger(events: number): void {
    if (this.o.maxLingerMs <= this.o.lingerMs) return;
    const now = performance.now();
    const rate = events / Math.max(now - this.lastWindowEnd, this.linger);
    this.lastWindowEnd = now;
    this.eventRate = rate < this.eventRate ? rate : 0.7 * this.eventRate + 0.3 * rate;
    this.linger = Math.min(this.o.maxLingerMs, Math.max(this.o.lingerMs, this.eventRate * this.o.lingerMsPerEventPerMs));
  }

  private seal(subject: string, events: DomainEvent[]): void {
    const json = JSON.stringify(events);
    if (json.length > this.o.maxBatchBytes) {
      // Large events: split until each message fits (a single event above the limit cannot be stored).
      if (events.length > 1) {
        const half = events.length >> 1;
        this.seal(subject, events.slice(0, half));
        this.seal(subject, events.slice(half));
        return;
      }
      const e = events[0] as DomainEvent;
      if (Buffer.byteLength(json) > this.o.maxMessageBytes) {
        this.recordDrop(1, e.time, `event ${e.id} (${e.type}) is ${Buffer.byteLength(json)} bytes, above the ${this.o.maxMessageBytes}-byte message limit`);
        return;
      }
    }
    // Buffer.from: half the cost of TextEncoder.encode for these payloads (a Buffer is a Uint8Array).
    const payload: Uint8Array = Buffer.from(json, "utf8");
    const s: Sealed = {
      n: this.nextN++,
      record: { subject, msgId: batchMessageId(events.map((e) => e.id)), count: events.length, payload },
      bytes: payload.length,
    };
    if (this.mode === "direct" && this.sink.isUp() && this.queuedBytes + this.inFlightBytes + s.bytes <= this.o.maxQueueBytes) {
      this.queue.push(s);
      this.queuedBytes += s.bytes;
      return;
    }
    if (this.mode === "direct") {
      this.enterOutboxMode(this.sink.isUp() ? "memory queue full" : "NATS unavailable");
    }
    this.spill.push(s);
    this.spillBytes += s.bytes;
    this.flushSpill();
  }

  // ---------------------------------------------------------------- direct mode

  private pump(): void {
    while (this.mode === "direct" && this.inFlight < this.o.maxInFlight && this.queueHead < this.queue.length) {
      const s = this.queue[this.queueHead++] as Sealed;
      this.queuedBytes -= s.bytes;
      this.sendDirect(s);
    }
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
    this.checkIdle();
  }

  private sendDirect(s: Sealed): void {
    this.inFlight++;
    this.inFlightBytes += s.bytes;
    this.inFlightSet.add(s);
    this.sink.publish(s.record.subject, s.record.payload, s.record.msgId, this.o.publishTimeoutMs).then(
      (ack) => {
        this.inFlight--;
        this.inFlightBytes -= s.bytes;
        this.inFlightSet.delete(s);
        if (this.closed) return;
        this.countAck(s.record.count, ack.duplicate);
        if (this.mode === "outbox") this.flushSpill();
        else this.pump();
      },
      (err: unknown) => {
        this.inFlight--;
        this.inFlightBytes -= s.bytes;
        this.inFlightSet.delete(s);
        // After close the batch was already written to the outbox by close().
        if (this.closed) return;
        this.lastError = `publish failed: ${errMsg(err)}`;
        if (this.mode === "direct") this.enterOutboxMode(this.lastError);
        this.spill.push(s);
        this.spillBytes += s.bytes;
        this.flushSpill();
      },
    );
  }

  private countAck(events: number, duplicate: boolean): void {
    this.counters.published++;
    if (duplicate) this.counters.duplicates++;
    else this.counters.appended += events;
  }

  private enterOutboxMode(why: string): void {
    this.mode = "outbox";
    this.log("warn", `event log: switching to the disk outbox (${why})`);
    // Queued-but-unsent batches keep their place ahead of anything sealed later.
    for (let i = this.queueHead; i < this.queue.length; i++) this.spill.push(this.queue[i] as Sealed);
    this.spillBytes += this.queuedBytes;
    this.queue = [];
    this.queueHead = 0;
    this.queuedBytes = 0;
  }

  /**
   * Moves spilled batches to the outbox in seal order once no direct publish is still in flight (one that
   * fails must land before later ones). If waiting would break the memory bound, write now.
   */
  private flushSpill(): void {
    if (this.spill.length === 0) return this.checkIdle();
    if (this.inFlight > 0 && this.spillBytes + this.inFlightBytes <= this.o.maxQueueBytes && !this.closed) return;
    const batch = this.spill.sort((a, b) => a.n - b.n);
    this.spill = [];
    this.spillBytes = 0;
    this.toOutbox(batch);
    this.scheduleDrain(0);
    this.checkIdle();
  }

  private toOutbox(batch: ReadonlyArray<Sealed>): void {
    if (batch.length === 0) return;
    if (this.outbox.append(batch.map((s) => s.record))) {
      this.counters.outboxed += batch.reduce((n, s) => n + s.record.count, 0);
      this.endDropEpisode();
      return;
    }
    // All or nothing did not fit: try one by one so as little as possible is lost.
    for (const s of batch) {
      if (this.outbox.append([s.record])) {
        this.counters.outboxed += s.record.count;
        this.endDropEpisode();
      } else {
        this.recordDrop(s.record.count, this.now(), this.outbox.stats().full ? "the outbox is full" : "the outbox cannot be written");
      }
    }
  }

  // ---------------------------------------------------------------- loud drops

  private recordDrop(count: number, at: number, why: string): void {
    this.counters.dropped += count;
    this.lastError = `events dropped: ${why}`;
    if (!this.dropEpisode) {
      this.dropEpisode = { count: 0, first: at, last: at };
      this.log("error", `EVENTS DROPPED: ${why} (outbox ${this.outbox.stats().bytes}/${this.outbox.stats().maxBytes} bytes); the audit log has a gap until NATS catches up`);
      this.lastDropLog = Date.now();
    }
    this.dropEpisode.count += count;
    this.dropEpisode.last = at;
    if (Date.now() - this.lastDropLog > 5_000) {
      this.lastDropLog = Date.now();
      this.log("error", `EVENTS DROPPED: ${this.counters.dropped} in total so far (${why})`);
    }
  }

  /** Room again: leave a hub.eventsDropped event in the log so the gap is part of the history. */
  private endDropEpisode(): void {
    const ep = this.dropEpisode;
    if (!ep) return;
    this.dropEpisode = undefined;
    this.log("error", `event log: ${ep.count} events were dropped between ${new Date(ep.first).toISOString()} and ${new Date(ep.last).toISOString()}`);
    this.append(
      makeEvent({
        type: "hub.eventsDropped",
        hubId: this.opts.hubId,
        edgeId: null,
        sessionId: `${this.opts.runId}.publisher`,
        streamId: null,
        seq: ++this.selfSeq,
        time: this.now(),
        data: { count: ep.count, firstTime: ep.first, lastTime: ep.last, reason: "outboxFull" },
      }),
    );
  }

  // ---------------------------------------------------------------- outbox mode: drain

  private scheduleDrain(delayMs: number): void {
    if (this.closed || this.draining || this.mode !== "outbox") return;
    if (this.drainTimer) {
      if (delayMs > 0) return;
      clearTimeout(this.drainTimer);
    }
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      void this.drain();
    }, delayMs);
  }

  private async drain(): Promise<void> {
    if (this.draining || this.closed || this.mode !== "outbox") return;
    if (!this.sink.isUp()) return; // onUp reschedules
    this.draining = true;
    try {
      const ok = await this.drainOnce();
      if (ok) {
        this.drainBackoffMs = 250;
        // Everything on disk is acknowledged and nothing waits to be written: back to direct.
        if (this.outbox.isEmpty() && this.spill.length === 0 && this.inFlight === 0 && !this.closed) {
          this.mode = "direct";
          this.lastError = null;
          this.endDropEpisode();
          this.log("info", "event log: outbox drained, publishing directly again");
          await this.outbox.persistCursor();
        }
      } else {
        this.drainBackoffMs = Math.min(this.drainBackoffMs * 2, 10_000);
      }
    } catch (e) {
      this.lastError = `outbox drain failed: ${errMsg(e)}`;
      this.log("error", this.lastError);
      this.drainBackoffMs = Math.min(this.drainBackoffMs * 2, 10_000);
    } finally {
      this.draining = false;
    }
    if (this.mode === "outbox") this.scheduleDrain(this.outbox.isEmpty() && this.spill.length > 0 ? 10 : this.drainBackoffMs);
    this.checkIdle();
  }

  /** Publishes outbox records in order with a window of maxInFlight; true when it reached the end. */
  private async drainOnce(): Promise<boolean> {
    this.outbox.rewind();
    for (;;) {
      if (this.closed || !this.sink.isUp()) return false;
      await this.outbox.flushed();
      const entries = await this.outbox.readNext(this.o.maxInFlight);
      if (entries.length === 0) return true;
      const results = await Promise.allSettled(
        entries.map((e) =>
          this.sink.publish(e.record.subject, e.record.payload, e.record.msgId, this.o.publishTimeoutMs),
        ),
      );
      // Acknowledge the longest fully successful prefix; retry from the first failure later.
      let okCount = 0;
      let bytes = 0;
      let last: OutboxEntry | undefined;
      for (let i = 0; i < results.length; i++) {
        const r = results[i] as PromiseSettledResult<{ readonly duplicate: boolean }>;
        const e = entries[i] as OutboxEntry;
        if (r.status === "rejected") {
          this.lastError = `outbox publish failed: ${errMsg(r.reason)}`;
          break;
        }
        this.countAck(e.record.count, r.value.duplicate);
        okCount++;
        bytes += e.size;
        last = e;
      }
      if (last) this.outbox.acknowledge(last.end, okCount, bytes);
      if (okCount < entries.length) {
        this.outbox.rewind();
        return false;
      }
    }
  }

  // ---------------------------------------------------------------- status, flush, close

  status(): PublisherStatus {
    const ob = this.outbox.stats();
    return {
      mode: this.mode,
      natsUp: this.sink.isUp(),
      openEvents: this.openEvents,
      queuedMessages: this.queue.length - this.queueHead + this.spill.length,
      queuedBytes: this.queuedBytes + this.spillBytes,
      inFlight: this.inFlight,
      outbox: { bytes: ob.bytes, maxBytes: ob.maxBytes, records: ob.records, full: ob.full },
      acceptedEvents: this.counters.accepted,
      appendedEvents: this.counters.appended,
      publishedMessages: this.counters.published,
      duplicateMessages: this.counters.duplicates,
      droppedEvents: this.counters.dropped,
      outboxedEvents: this.counters.outboxed,
      lastError: this.lastError,
    };
  }

  /** Prometheus-style counters and gauges. */
  metrics(): Record<string, number> {
    const s = this.status();
    return {
      portway_events_accepted_total: s.acceptedEvents,
      portway_events_appended_total: s.appendedEvents,
      portway_events_dropped_total: s.droppedEvents,
      portway_events_outboxed_total: s.outboxedEvents,
      portway_event_messages_published_total: s.publishedMessages,
      portway_event_messages_duplicate_total: s.duplicateMessages,
      portway_events_outbox_bytes: s.outbox.bytes,
      portway_events_outbox_full: s.outbox.full ? 1 : 0,
      portway_events_nats_up: s.natsUp ? 1 : 0,
      portway_events_in_flight: s.inFlight,
    };
  }

  private isIdle(): boolean {
    return (
      this.openEvents === 0 &&
      this.inFlight === 0 &&
      this.queueHead >= this.queue.length &&
      this.spill.length === 0 &&
      this.mode === "direct"
    );
  }

  private checkIdle(): void {
    if (this.idleWaiters.length === 0 || !this.isIdle()) return;
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** Seals open batches and resolves once every accepted event is acknowledged by JetStream. */
  whenIdle(): Promise<void> {
    this.sealAll();
    if (this.isIdle()) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.push(res));
  }

  /** Seals open batches and resolves once every accepted event is acknowledged or safely in the outbox. */
  async flush(): Promise<void> {
    this.sealAll();
    while (this.inFlight > 0 || this.queueHead < this.queue.length) {
      await new Promise((r) => setTimeout(r, 5));
    }
    this.flushSpill();
    await this.outbox.flushed();
  }

  /**
   * Stops accepting events, gives in-flight publishes up to `deadlineMs` to finish, writes whatever is left
   * to the outbox (flushed at the next start) and closes it.
   */
  async close(deadlineMs = 2_000): Promise<void> {
    if (this.closed) return;
    this.sealAll();
    const deadline = Date.now() + deadlineMs;
    while ((this.inFlight > 0 || this.queueHead < this.queue.length || this.draining) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
    this.closed = true;
    this.unsubscribe();
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    // Unacknowledged in-flight batches go to the outbox too: if they did land, JetStream drops the repeat.
    const rest = [...this.inFlightSet, ...this.queue.slice(this.queueHead), ...this.spill].sort((a, b) => a.n - b.n);
    this.inFlightSet.clear();
    this.queue = [];
    this.queueHead = 0;
    this.spill = [];
    this.toOutbox(rest);
    await this.outbox.close();
  }
}
