// What the publisher's linger costs in CPU: events appended at a fixed rate (stream.opened + stream.closed pairs,
// one edge, like new connections) through the real EventPublisher and js.publish to an embedded nats-server, once
// with the old adaptive linger (10 ms per event/ms, ≤ 40 ms) and once with the current default (25, ≤ 100 ms),
// alternating. Reports per connection (2 events): node CPU µs (this process: building events, publisher, nats.js,
// timers), nats-server CPU µs, and JetStream messages. CPU time: less exposed to other load than a rate.
//
//   node bench/events-linger.mjs [--rate 2000] [--seconds 5] [--rounds 2]     (rate = events/s)
//
// Needs the compiled library (`npm run build:ts` → dist/) and .tools/bin/nats-server (`npm run setup`).
import { mkdtemp, rm } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { arg, loadDist, procCpu, sleep } from "./common.mjs";

const rate = Number(arg("rate", "2000"));
const seconds = Number(arg("seconds", "5"));
const rounds = Number(arg("rounds", "2"));
const settings = {
  "10 ms per event/ms, ≤ 40 ms": { maxLingerMs: 40, lingerMsPerEventPerMs: 10 },
  "25 ms per event/ms, ≤ 100 ms (default)": {},
};

const { Effect, Scope } = await import("effect");
const { connect } = await import("@nats-io/transport-node");
const { jetstream, jetstreamManager } = await import("@nats-io/jetstream");
const { startEmbeddedServer } = await loadDist("nats/embedded-server.js");
const { EventPublisher } = await loadDist("nats/publisher.js");
const { makeEvent } = await loadDist("events/envelope.js");

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

const scope = Effect.runSync(Scope.make());
const dataDir = await mkdtemp(join(tmpdir(), "portway-bench-linger-"));
try {
  const server = await Effect.runPromise(startEmbeddedServer({ dataDir }).pipe(Scope.extend(scope)));
  const nc = await connect({ servers: server.url, noAsyncTraces: true });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: "LINGER", subjects: ["portway.>"], storage: "file", duplicate_window: 120e9 });
  const js = jetstream(nc);
  let stream = 0;

  const runOne = async (label) => {
    let messages = 0;
    const sink = {
      isUp: () => true,
      onUp: () => () => undefined,
      publish: async (subject, payload, msgID, timeout) => {
        messages++;
        const ack = await js.publish(subject, payload, { msgID, timeout });
        return { duplicate: ack.duplicate };
      },
    };
    const publisher = new EventPublisher({ hubId: "hub-bench", runId: `run-${Date.now()}-${stream}`, ...settings[label] }, sink, noOutbox);
    const pairsPerTick = Math.max(1, Math.round((rate * 5) / 1000 / 2)); // a tick every 5 ms
    const drive = async (ticks) => {
      const t0 = performance.now();
      for (let i = 0; i < ticks; i++) {
        for (let j = 0; j < pairsPerTick; j++) {
          const base = { hubId: "hub-bench", edgeId: "edge-bench", sessionId: "session-bench", streamId: String(++stream), time: Date.now() };
          const data = { edgePort: 8080, clientAddr: `127.0.0.1:${10_000 + (stream % 50_000)}`, target: "127.0.0.1:9000" };
          publisher.append(makeEvent({ ...base, type: "stream.opened", seq: 1, data }));
          publisher.append(makeEvent({ ...base, type: "stream.closed", seq: 2, data: { ...data, bytesIn: 1, bytesOut: 1, durationMs: 1, reason: "clientClosed", message: "" } }));
        }
        const wait = t0 + (i + 1) * 5 - performance.now();
        if (wait > 0) await sleep(wait);
      }
    };
    await drive(200); // 1 s: the adaptive linger settles
    await publisher.whenIdle();
    messages = 0;
    const ticks = (seconds * 1000) / 5;
    const c0 = process.cpuUsage();
    const s0 = procCpu(server.pid);
    await drive(ticks);
    await publisher.whenIdle();
    const c = process.cpuUsage(c0);
    const serverS = procCpu(server.pid) - s0;
    await publisher.close();
    const connections = ticks * pairsPerTick;
    return { label, nodeUs: (c.user + c.system) / connections, serverUs: (serverS * 1e6) / connections, messages: messages / connections };
  };

  const runs = [];
  for (let round = 1; round <= rounds; round++) {
    const labels = Object.keys(settings);
    for (const label of round % 2 === 1 ? labels : [...labels].reverse()) {
      const r = await runOne(label);
      runs.push(r);
      console.log(
        `[${round}/${rounds}] ${label.padEnd(38)} per connection: node ${r.nodeUs.toFixed(1)} µs, nats-server ${r.serverUs.toFixed(1)} µs, ${r.messages.toFixed(3)} messages`,
      );
    }
  }
  console.log(`rate ${rate} events/s, ${seconds} s per run; load ${loadavg()[0].toFixed(1)}`);
  await nc.close();
} finally {
  await Effect.runPromise(Scope.close(scope, (await import("effect")).Exit.void));
  await rm(dataDir, { recursive: true, force: true });
}
process.exit(0);
