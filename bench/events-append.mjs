#!/usr/bin/env node
// Event log append throughput and lag against a real embedded nats-server (docs/adr/0004-event-append-batching.md).
//
//   node bench/events-append.mjs [--events 400000] [--modes serial,pipelined,batched,lag] [--json out.json]
//
// Needs the compiled library (`npm run build:ts` → dist/) and .tools/bin/nats-server (`npm run setup`).
// Measures, each time from the first append until every event is acknowledged by JetStream (file storage):
//   serial      one event per message, each publish awaited before the next (the naive baseline)
//   pipelined   one event per message, up to 64 publishes in flight
//   batched     the publisher as shipped: per-subject batches, 64 in flight
// and the publish→readable lag (append → delivered to an ordered consumer) p50/p99 at a steady 20k events/s.
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { arg, loadDist as load, pct, procCpu, selfCpu, tick } from "./common.mjs";

const TOTAL = Number(arg("events", "400000"));
const jsonOut = arg("json", undefined);
const MODES = new Set(arg("modes", "serial,pipelined,batched,lag").split(","));

const { Effect, Exit, Layer, ManagedRuntime, Scope } = await import("effect");
const { connect } = await import("@nats-io/transport-node");
const { jetstream, jetstreamManager } = await import("@nats-io/jetstream");
const { makeEvent } = await load("events/envelope.js");
const { startEmbeddedServer } = await load("nats/embedded-server.js");
const Conn = await load("nats/connection.js");
const { EventLog, layer: eventLogLayer } = await load("nats/event-log.js");
const { liveEventsIterable } = await load("nats/replay.js");

const log = (m) => process.stderr.write(`[bench:events] ${m}\n`);
const where = { edgePort: 443, clientAddr: "203.0.113.7:51234", target: "10.0.0.5:8443" };

const EDGES = Array.from({ length: 16 }, (_, i) => `e${i}`);

/** Events `from`…`from+count` of a run: stream.opened/closed pairs over 16 edges, fresh ids per `tag`. */
function chunk(tag, from, count) {
  const t = Date.now();
  const out = new Array(count);
  for (let k = 0; k < count; k += 2) {
    const i = (from + k) >> 1;
    const edgeId = EDGES[i & 15];
    const sessionId = `${tag}-${i & 15}`;
    const streamId = String(i);
    out[k] = makeEvent({ type: "stream.opened", hubId: "bench", edgeId, sessionId, streamId, seq: 1, time: t, data: where });
    out[k + 1] = makeEvent({
      type: "stream.closed",
      hubId: "bench",
      edgeId,
      sessionId,
      streamId,
      seq: 2,
      time: t,
      data: { edgePort: 443, clientAddr: where.clientAddr, target: where.target, bytesIn: i, bytesOut: 2 * i, durationMs: 3, reason: "clientClosed", message: "" },
    });
  }
  return out;
}
function* events(n, tag) {
  for (let from = 0; from < n; from += 5_000) yield* chunk(tag, from, Math.min(5_000, n - from));
}

const scope = Effect.runSync(Scope.make());
const dataDir = await mkdtemp(join(tmpdir(), "portway-bench-events-"));
const results = { machine: { cpus: (await import("node:os")).cpus().length, node: process.version }, events: TOTAL };
try {
  const server = await Effect.runPromise(startEmbeddedServer({ dataDir }).pipe(Scope.extend(scope)));
  log(`nats-server ${server.url} (store ${server.storeDir})`);

  const runWith = async (name, publisher, n) => {
    const rt = ManagedRuntime.make(
      eventLogLayer({ hubId: "bench", runId: name, dataDir: join(dataDir, name), stream: { name: `BENCH_${name.toUpperCase()}` }, publisher }).pipe(
        Layer.provideMerge(Conn.layer({ servers: [server.url] })),
      ),
    );
    const el = await rt.runPromise(EventLog);
    // Events are built as actors would (and then dropped), 5k at a time; building them is part of the figure.
    const c0 = selfCpu();
    const s0 = procCpu(server.pid);
    const t0 = performance.now();
    for (let from = 0; from < n; from += 5_000) {
      el.appendAll(chunk(name, from, Math.min(5_000, n - from)));
      await tick();
    }
    await rt.runPromise(el.whenIdle);
    const secs = (performance.now() - t0) / 1000;
    const nodeUs = ((selfCpu() - c0) * 1e6) / n;
    const serverUs = ((procCpu(server.pid) - s0) * 1e6) / n;
    const st = el.status();
    await rt.dispose();
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`BENCH_${name.toUpperCase()}`);
    await nc.close();
    const r = {
      events: n,
      seconds: Number(secs.toFixed(3)),
      eventsPerSec: Math.round(st.appendedEvents / secs),
      messages: st.publishedMessages,
      eventsPerMessage: Number((st.appendedEvents / st.publishedMessages).toFixed(1)),
      outboxedEvents: st.outboxedEvents,
      dropped: st.droppedEvents,
      // CPU per event: independent of what else runs on the machine. Node's event loop is one core, so
      // 1e6/nodeCpuUsPerEvent bounds the rate; both together must fit the machine's cores.
      nodeCpuUsPerEvent: Number(nodeUs.toFixed(2)),
      serverCpuUsPerEvent: Number(serverUs.toFixed(2)),
      cpuBoundEventsPerSec: Math.round(1e6 / Math.max(nodeUs, (nodeUs + serverUs) / (results.machine.cpus || 1))),
      loadAvg1m: (await import("node:os")).loadavg()[0],
    };
    log(`${name}: ${JSON.stringify(r)}`);
    return r;
  };

  // Serial baseline: one acked publish at a time.
  if (MODES.has("serial")) {
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: "BENCH_SERIAL", subjects: ["portway.ev.>"], storage: "file", duplicate_window: 120e9 });
    const js = jetstream(nc);
    const n = Math.min(20_000, TOTAL);
    const enc = new TextEncoder();
    const evs = [...events(n, "serial")];
    const t0 = performance.now();
    for (const e of evs) await js.publish(`portway.ev.bench.${e.edgeId}.stream.x`, enc.encode(JSON.stringify([e])), { msgID: e.id });
    const secs = (performance.now() - t0) / 1000;
    results.serial = { events: n, seconds: Number(secs.toFixed(3)), eventsPerSec: Math.round(n / secs), eventsPerMessage: 1 };
    log(`serial: ${JSON.stringify(results.serial)}`);
    await jsm.streams.delete("BENCH_SERIAL");
    await nc.close();
  }

  // What building the events costs alone (the actors' share, not the log's).
  {
    const n = Math.min(TOTAL, 200_000);
    const c0 = selfCpu();
    let k = 0;
    for (let from = 0; from < n; from += 5_000) for (const e of chunk("gen", from, Math.min(5_000, n - from))) k += e.seq;
    results.buildEvent = { events: n, nodeCpuUsPerEvent: Number((((selfCpu() - c0) * 1e6) / n).toFixed(2)) };
    log(`build only: ${JSON.stringify(results.buildEvent)} (${k})`);
  }

  if (MODES.has("pipelined")) results.pipelined = await runWith("pipelined", { maxBatchEvents: 1 }, Math.min(100_000, TOTAL));
  if (MODES.has("batched")) results.batched = await runWith("batched", {}, TOTAL);

  // Lag: steady 20k events/s for 3 s, one ordered consumer reading everything.
  if (MODES.has("lag")) {
    const rt = ManagedRuntime.make(
      eventLogLayer({ hubId: "bench", runId: "lag", dataDir: join(dataDir, "lag"), stream: { name: "BENCH_LAG" } }).pipe(
        Layer.provideMerge(Conn.layer({ servers: [server.url] })),
      ),
    );
    const el = await rt.runPromise(EventLog);
    const nc = await connect({ servers: server.url });
    const feed = liveEventsIterable(nc, { stream: "BENCH_LAG" });
    const lags = [];
    const target = 60_000;
    const reader = (async () => {
      for await (const e of feed) {
        lags.push(Date.now() - e.time);
        if (lags.length >= target) break;
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const perTick = 200; // every 10 ms → 20k/s
    for (let sent = 0, k = 0; sent < target; k++) {
      const t = Date.now();
      for (let i = 0; i < perTick / 2; i++) {
        const base = { hubId: "bench", edgeId: `e${i % 16}`, sessionId: `lag-${k}`, streamId: String(i) };
        el.append(makeEvent({ ...base, type: "stream.opened", seq: 1, time: t, data: where }));
        el.append(makeEvent({ ...base, type: "stream.closed", seq: 2, time: t, data: { ...where, bytesIn: 1, bytesOut: 1, durationMs: 1, reason: "clientClosed", message: "" } }));
      }
      sent += perTick;
      await new Promise((r) => setTimeout(r, 10));
    }
    await reader;
    await rt.dispose();
    await nc.close();
    results.lag = { ratePerSec: 20_000, samples: lags.length, p50Ms: pct(lags, 50), p99Ms: pct(lags, 99), maxMs: Math.max(...lags) };
    log(`lag: ${JSON.stringify(results.lag)}`);
  }
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  if (jsonOut) {
    await mkdir(dirname(resolve(jsonOut)), { recursive: true });
    await writeFile(jsonOut, JSON.stringify(results, null, 2));
  }
} finally {
  await Effect.runPromise(Scope.close(scope, Exit.void));
  await rm(dataDir, { recursive: true, force: true });
}
