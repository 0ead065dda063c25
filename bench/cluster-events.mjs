#!/usr/bin/env node
// Event append throughput on a 3-node NATS JetStream cluster: the same publisher (as shipped, batched, 64 in
// flight, file storage) into an R1 stream and an R3 stream, alternating in the same run (docs/cluster.md).
//
//   node bench/cluster-events.mjs [--events 200000] [--rounds 3] [--json out.json]
//
// Needs the compiled library (`npm run build:ts` → dist/) and .tools/bin/nats-server (`npm run setup`).
// The cluster is started with infra/nats-cluster.mjs on free loopback ports and stopped at the end.
// Reports per replica count: events/s (first append → every event acknowledged by JetStream; with R3 an ack
// means a quorum of 2 of 3 nodes stored it), median and best of the rounds, node CPU and the three servers'
// CPU per event, and the append → readable lag p50/p99 at a steady 10k events/s.
// Prints JSON on stdout, then a markdown section.
import { mkdtemp, mkdir, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { arg, loadDist as load, pct, procCpu, selfCpu, sleep, startNatsCluster, stopNatsCluster, tick } from "./common.mjs";

const TOTAL = Number(arg("events", "200000"));
const ROUNDS = Number(arg("rounds", "3"));
const jsonOut = arg("json", undefined);

const { Layer, ManagedRuntime } = await import("effect");
const { connect } = await import("@nats-io/transport-node");
const { jetstreamManager } = await import("@nats-io/jetstream");
const { makeEvent } = await load("events/envelope.js");
const Conn = await load("nats/connection.js");
const { EventLog, layer: eventLogLayer } = await load("nats/event-log.js");
const { liveEventsIterable } = await load("nats/replay.js");

const log = (m) => process.stderr.write(`[bench:cluster-events] ${m}\n`);
const where = { edgePort: 443, clientAddr: "203.0.113.7:51234", target: "10.0.0.5:8443" };
const median = (xs) => pct(xs, 50);

/** stream.opened/closed pairs over 16 edges (as a hub's actors append them). */
function chunk(tag, from, count) {
  const t = Date.now();
  const out = new Array(count);
  for (let k = 0; k < count; k += 2) {
    const i = (from + k) >> 1;
    const base = { hubId: "bench", edgeId: `e${i & 15}`, sessionId: `${tag}-${i & 15}`, streamId: String(i) };
    out[k] = makeEvent({ ...base, type: "stream.opened", seq: 1, time: t, data: where });
    out[k + 1] = makeEvent({
      ...base,
      type: "stream.closed",
      seq: 2,
      time: t,
      data: { ...where, bytesIn: i, bytesOut: 2 * i, durationMs: 3, reason: "clientClosed", message: "" },
    });
  }
  return out;
}

const dir = await mkdtemp(join(tmpdir(), "portway-bench-cluster-"));
const state = await startNatsCluster(dir);
const servers = state.nodes.map((n) => `nats://127.0.0.1:${n.client}`);
const pids = state.nodes.map((n) => n.pid);
const serversCpu = () => pids.reduce((sum, pid) => sum + procCpu(pid), 0);
log(`3-node cluster up: ${servers.join(",")} (store ${dir})`);

const results = {
  machine: { cpus: cpus().length, node: process.version },
  cluster: { nodes: 3, servers: servers.length },
  events: TOTAL,
  rounds: ROUNDS,
  R1: { runs: [] },
  R3: { runs: [] },
};
try {
  // The meta leader knows every peer a moment after `start` returns; an R3 stream before that finds no placement.
  {
    const nc = await connect({ servers });
    const jsm = await jetstreamManager(nc);
    for (let i = 0; ; i++) {
      try {
        await jsm.streams.add({ name: "BENCH_PROBE", subjects: ["bench.probe"], num_replicas: 3, storage: "memory" });
        await jsm.streams.delete("BENCH_PROBE");
        break;
      } catch (e) {
        if (i > 100) throw e;
        await sleep(100);
      }
    }
    await nc.close();
  }

  const runOnce = async (replicas, round) => {
    const name = `BENCH_R${replicas}_${round}`;
    const rt = ManagedRuntime.make(
      eventLogLayer({
        hubId: "bench",
        runId: `r${replicas}-${round}`,
        dataDir: join(dir, "outbox", name),
        stream: { name, replicas, maxBytes: 512 * 1024 ** 2 },
      }).pipe(Layer.provideMerge(Conn.layer({ servers }))),
    );
    const el = await rt.runPromise(EventLog);
    const c0 = selfCpu();
    const s0 = serversCpu();
    const t0 = performance.now();
    for (let from = 0; from < TOTAL; from += 5_000) {
      el.appendAll(chunk(name, from, Math.min(5_000, TOTAL - from)));
      await tick();
    }
    await rt.runPromise(el.whenIdle);
    const secs = (performance.now() - t0) / 1000;
    const st = el.status();
    const r = {
      round,
      seconds: Number(secs.toFixed(3)),
      eventsPerSec: Math.round(st.appendedEvents / secs),
      messages: st.publishedMessages,
      outboxedEvents: st.outboxedEvents,
      dropped: st.droppedEvents,
      nodeCpuUsPerEvent: Number((((selfCpu() - c0) * 1e6) / TOTAL).toFixed(2)),
      serversCpuUsPerEvent: Number((((serversCpu() - s0) * 1e6) / TOTAL).toFixed(2)),
      loadAvg1m: Number(loadavg()[0].toFixed(2)),
    };
    await rt.dispose();
    const nc = await connect({ servers });
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(name);
    // Messages carry batches of events: every published (acknowledged) message must be stored once.
    r.storedMessages = info.state.messages;
    await jsm.streams.delete(name);
    await nc.close();
    log(`R${replicas} round ${round}: ${JSON.stringify(r)}`);
    return r;
  };

  const lagOnce = async (replicas) => {
    const name = `BENCH_LAG_R${replicas}`;
    const rt = ManagedRuntime.make(
      eventLogLayer({ hubId: "bench", runId: `lag${replicas}`, dataDir: join(dir, "outbox", name), stream: { name, replicas, maxBytes: 256 * 1024 ** 2 } }).pipe(
        Layer.provideMerge(Conn.layer({ servers })),
      ),
    );
    const el = await rt.runPromise(EventLog);
    const nc = await connect({ servers });
    const feed = liveEventsIterable(nc, { stream: name });
    const lags = [];
    const target = 20_000;
    const reader = (async () => {
      for await (const e of feed) {
        lags.push(Date.now() - e.time);
        if (lags.length >= target) break;
      }
    })();
    await sleep(300);
    const perTick = 100; // every 10 ms → 10k/s
    for (let sent = 0, k = 0; sent < target; k++) {
      const t = Date.now();
      for (let i = 0; i < perTick / 2; i++) {
        const b = { hubId: "bench", edgeId: `e${i % 16}`, sessionId: `lag-${k}`, streamId: String(i) };
        el.append(makeEvent({ ...b, type: "stream.opened", seq: 1, time: t, data: where }));
        el.append(makeEvent({ ...b, type: "stream.closed", seq: 2, time: t, data: { ...where, bytesIn: 1, bytesOut: 1, durationMs: 1, reason: "clientClosed", message: "" } }));
      }
      sent += perTick;
      await sleep(10);
    }
    await reader;
    await rt.dispose();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(name);
    await nc.close();
    const r = { ratePerSec: 10_000, samples: lags.length, p50Ms: pct(lags, 50), p99Ms: pct(lags, 99), maxMs: Math.max(...lags) };
    log(`lag R${replicas}: ${JSON.stringify(r)}`);
    return r;
  };

  for (let round = 1; round <= ROUNDS; round++) {
    // Alternate the order so a slow phase of the machine does not favour one side.
    const order = round % 2 === 1 ? [1, 3] : [3, 1];
    for (const replicas of order) results[`R${replicas}`].runs.push(await runOnce(replicas, round));
  }
  for (const replicas of [1, 3]) {
    const runs = results[`R${replicas}`].runs;
    const rates = runs.map((r) => r.eventsPerSec);
    Object.assign(results[`R${replicas}`], {
      medianEventsPerSec: median(rates),
      bestEventsPerSec: Math.max(...rates),
      medianServersCpuUsPerEvent: median(runs.map((r) => r.serversCpuUsPerEvent)),
      medianNodeCpuUsPerEvent: median(runs.map((r) => r.nodeCpuUsPerEvent)),
      missingMessages: runs.reduce((n, r) => n + (r.messages - r.storedMessages), 0),
    });
    results[`R${replicas}`].lag = await lagOnce(replicas);
  }
  results.r3OverR1 = Number((results.R3.medianEventsPerSec / results.R1.medianEventsPerSec).toFixed(2));

  const R1 = results.R1;
  const R3 = results.R3;
  const md = [
    "## Event log on a 3-node NATS cluster: R3 vs R1",
    "",
    `\`node bench/cluster-events.mjs --events ${TOTAL} --rounds ${ROUNDS}\` — 3 nats-servers on loopback (infra/nats-cluster.mjs), ` +
      `the event publisher as shipped (batched, 64 in flight, file storage), ${TOTAL} events per round, R1 and R3 alternating; ` +
      `${results.machine.cpus} CPUs shared by the three servers and the publisher.`,
    "",
    "| stream | events/s (median) | best | servers CPU µs/event | publisher CPU µs/event | lag p50 / p99 at 10k/s | messages stored = acked |",
    "|---|---:|---:|---:|---:|---:|---|",
    ...[
      ["R1", R1],
      ["R3", R3],
    ].map(
      ([n, r]) =>
        `| ${n} | ${r.medianEventsPerSec} | ${r.bestEventsPerSec} | ${r.medianServersCpuUsPerEvent} | ${r.medianNodeCpuUsPerEvent} | ${r.lag.p50Ms} / ${r.lag.p99Ms} ms | ${r.missingMessages === 0 ? "yes" : `no (${r.missingMessages} missing)`} |`,
    ),
    "",
    `R3 appends at ${Math.round(results.r3OverR1 * 100)} % of R1's rate here: each acknowledged batch is on two of three nodes' disks ` +
      "(the stream leader waits for one follower), and all three servers share the machine's cores with the publisher.",
  ].join("\n");
  results.markdown = md;
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n\n${md}\n`);
  if (jsonOut) {
    await mkdir(dirname(resolve(jsonOut)), { recursive: true });
    await writeFile(jsonOut, JSON.stringify(results, null, 2));
  }
} finally {
  stopNatsCluster(dir);
  await rm(dir, { recursive: true, force: true });
}
