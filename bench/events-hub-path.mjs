// The hub's own per-connection event work, in one process: native hub events (as the addon's channel hands them
// over, already decoded) → hub actor system → domain events → the batching publisher, with a JetStream sink that
// acks at once (no NATS, no sockets). CPU µs per TCP stream (2 events), from process.cpuUsage. This is the part of
// "hub CPU per connection, events on − off" (bench/events.mjs) that is Portway's own TypeScript; the rest is the
// NATS client, socket I/O and GC of the whole hub. CPU time, not wall time: much less exposed to other load.
//
//   node bench/events-hub-path.mjs [--streams 60000] [--rounds 5] [--json out.json]
//   PORTWAY_DIST=/other/checkout/dist node bench/events-hub-path.mjs   (an older build, for before/after)
//
// Needs the compiled library (`npm run build:ts` → dist/).
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { arg, loadDist, tick } from "./common.mjs";

const streams = Number(arg("streams", "60000"));
const rounds = Number(arg("rounds", "5"));
const jsonOut = arg("json", undefined);

const { createHubActorSystem } = await loadDist("actors/hub-actor-system.js");
const { EventPublisher } = await loadDist("nats/publisher.js");
const { Effect } = await import("effect");

const noOutbox = {
  isEmpty: () => true,
  append: () => true,
  stats: () => ({ bytes: 0, maxBytes: 0, records: 0, full: false }),
  flushed: async () => undefined,
  close: async () => undefined,
  rewind: () => undefined,
  readNext: async () => [],
  acknowledge: () => undefined,
  persistCursor: async () => undefined,
};

/** One hub actor system with one connected edge; `publish`: events go through an EventPublisher too. */
const makeHub = (publish) => {
  const counts = { events: 0, messages: 0 };
  const sink = { isUp: () => true, publish: async () => (counts.messages++, { duplicate: false }), onUp: () => () => undefined };
  const publisher = publish ? new EventPublisher({ hubId: "hub-bench", runId: "run-bench" }, sink, noOutbox) : undefined;
  const actors = createHubActorSystem({
    hubId: "hub-bench",
    runId: "run-bench",
    portwayVersion: "bench",
    fingerprint: null,
    sink: { append: (e) => (counts.events++, publisher?.append(e)) },
    drain: Effect.void,
  });
  let seq = 0;
  const at = Date.now();
  actors.ingest([
    { type: "hub.listening", seq: ++seq, atMs: at, port: 1 },
    { type: "edge.connected", seq: ++seq, atMs: at, edgeId: "edge-bench", sessionId: "session-bench", remoteAddr: "127.0.0.1:5000" },
  ]);
  let nextStream = 1;
  /** `n` streams, opened and closed 8 at a time (the bench's concurrency), one native batch each way. */
  const run = async (n) => {
    for (let done = 0; done < n; done += 8) {
      const opened = [];
      const closed = [];
      for (let j = 0; j < 8; j++) {
        const streamId = nextStream++;
        const common = { edgeId: "edge-bench", sessionId: "session-bench", streamId, edgePort: 8080, clientAddr: `127.0.0.1:${10_000 + (streamId % 50_000)}`, target: "127.0.0.1:9000" };
        opened.push({ type: "stream.opened", seq: ++seq, atMs: Date.now(), ...common });
        closed.push({ type: "stream.closed", seq: ++seq, atMs: Date.now(), ...common, bytesIn: 1, bytesOut: 1, durationMs: 1, reason: "clientClosed", message: "" });
      }
      actors.ingest(opened);
      actors.ingest(closed);
      // Let the publisher's linger timer and acks run, as the hub's event loop would.
      if (done % 512 === 0) await tick();
    }
    await publisher?.whenIdle();
  };
  return { run, counts };
};

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const measure = async (hub, n) => {
  const c0 = process.cpuUsage();
  await hub.run(n);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / n;
};

const hubs = { actors: makeHub(false), actorsAndPublisher: makeHub(true) };
// Warm-up (JIT) and past the 10,000 ended streams the actors remember, as a hub that has run a while.
for (const hub of Object.values(hubs)) await hub.run(20_000);
const runs = { actors: [], actorsAndPublisher: [] };
for (let round = 1; round <= rounds; round++) {
  for (const name of round % 2 === 1 ? ["actors", "actorsAndPublisher"] : ["actorsAndPublisher", "actors"]) {
    const us = await measure(hubs[name], streams);
    runs[name].push(us);
    process.stderr.write(`[${round}/${rounds}] ${name.padEnd(18)} ${us.toFixed(2)} CPU µs per stream\n`);
  }
}
const p = hubs.actorsAndPublisher.counts;
const result = {
  streams,
  rounds,
  actorsUsPerStream: median(runs.actors),
  actorsAndPublisherUsPerStream: median(runs.actorsAndPublisher),
  eventsPerMessage: p.messages === 0 ? null : p.events / p.messages,
  loadAvg1m: loadavg()[0],
  runs,
};
console.log(
  `hub event path: actors ${result.actorsUsPerStream.toFixed(2)} µs, actors + publisher ${result.actorsAndPublisherUsPerStream.toFixed(2)} µs CPU per stream (median of ${rounds}; load ${result.loadAvg1m.toFixed(1)})`,
);
if (jsonOut) writeFileSync(jsonOut, `${JSON.stringify(result, null, 2)}\n`);
process.exit(0);
