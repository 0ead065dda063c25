// Event log measurements on a real tunnel (CLI hub + edge, embedded nats-server): how long after a stream closes
// its `stream.closed` event can be read from JetStream, and what recording events costs in new connections/s.
// Also runs bench/events-append.mjs (the append path alone) and returns its figures. Used by bench/run.mjs.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { root } from "./processes.mjs";

const dist = join(root, "dist");
const load = (p) => import(pathToFileURL(join(dist, p)).href);

/** CPU seconds (user + system) a process has used so far, from /proc (Linux); NaN when it is gone. */
export const cpuSeconds = async (pid) => {
  try {
    const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
};

/** The embedded nats-server's pid of a CLI tunnel's hub, if it runs one. */
export const natsServerPid = async (tunnel) => {
  try {
    return Number((await readFile(join(tunnel.dataDir, "nats", "run", "nats-server.pid"), "utf8")).trim());
  } catch {
    return undefined;
  }
};

/**
 * `connectionRate` plus what each connection cost in CPU, per process: hub, its nats-server, edge, echo target and
 * this (client) process. CPU per connection does not depend on what else runs on the machine, connections/s does.
 */
export const connectionCost = async ({ tunnel, echoPid, run }) => {
  const nats = await natsServerPid(tunnel);
  const pids = { hub: tunnel.hubPid, nats, edge: tunnel.edgePid, target: echoPid };
  const before = {};
  for (const [k, pid] of Object.entries(pids)) before[k] = pid === undefined ? 0 : await cpuSeconds(pid);
  const c0 = process.cpuUsage();
  const result = await run();
  const c = process.cpuUsage(c0);
  const n = result.total;
  const cpuUs = { client: (c.user + c.system) / n };
  for (const [k, pid] of Object.entries(pids)) cpuUs[k] = pid === undefined ? 0 : (((await cpuSeconds(pid)) - before[k]) * 1e6) / n;
  cpuUs.all = Object.values(cpuUs).reduce((a, b) => a + b, 0);
  return { ...result, cpuUs };
};

const percentile = (sorted, p) => (sorted.length === 0 ? undefined : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]);

/** One connection: 1-byte echo, then FIN; resolves with the client port and when the socket was fully closed. */
const oneStream = (port) =>
  new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let localPort;
    socket.once("connect", () => {
      localPort = socket.localPort;
      socket.write("x");
    });
    socket.once("data", () => socket.end());
    socket.on("end", () => undefined);
    socket.once("error", reject);
    socket.once("close", () => resolve({ localPort, closedAt: Date.now() }));
    socket.resume();
  });

/**
 * Close → readable lag: `rate` streams per second for `seconds` through the tunnel, an ordered consumer on the
 * hub's embedded nats-server reading `stream.closed`; lag = event delivered − client socket closed (ms).
 */
export const closeToReadableLag = async ({ tunnel, rate = 200, seconds = 5 }) => {
  const { findRunningEmbeddedServer } = await load("nats/embedded-server.js");
  const { liveEventsIterable } = await load("nats/replay.js");
  const { connect: natsConnect } = await import("@nats-io/transport-node");
  const server = await findRunningEmbeddedServer(tunnel.dataDir);
  if (!server) throw new Error(`no embedded nats-server for ${tunnel.dataDir}: is the hub running with events on?`);
  const nc = await natsConnect({ servers: server.url });
  const closedAt = new Map(); // client port → close time
  const seenAt = new Map(); // client port → event delivery time
  const ctl = new AbortController();
  const reader = (async () => {
    for await (const e of liveEventsIterable(nc, { types: ["stream.closed"], signal: ctl.signal })) {
      seenAt.set(Number(e.data.clientAddr.split(":").pop()), Date.now());
    }
  })().catch(() => undefined);
  // The consumer exists once a first event arrives: warm up until one does.
  for (let i = 0; i < 50 && seenAt.size === 0; i++) {
    await oneStream(tunnel.listenPorts[0]);
    await new Promise((r) => setTimeout(r, 20));
  }
  seenAt.clear();
  const total = rate * seconds;
  const started = Date.now();
  const pending = [];
  for (let i = 0; i < total; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(oneStream(tunnel.listenPorts[0]).then((r) => closedAt.set(r.localPort, r.closedAt), () => undefined));
  }
  await Promise.all(pending);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && [...closedAt.keys()].some((p) => !seenAt.has(p))) await new Promise((r) => setTimeout(r, 20));
  ctl.abort();
  await reader;
  await nc.close();
  const lags = [];
  for (const [port, closed] of closedAt) if (seenAt.has(port)) lags.push(Math.max(0, seenAt.get(port) - closed));
  lags.sort((a, b) => a - b);
  return {
    rate,
    streams: closedAt.size,
    samples: lags.length,
    missing: closedAt.size - lags.length,
    p50Ms: percentile(lags, 50),
    p99Ms: percentile(lags, 99),
    maxMs: lags.at(-1),
  };
};

/** Runs bench/events-append.mjs (append throughput and publish→readable lag of the event log alone). */
export const appendFigures = async ({ events = 400_000 } = {}) => {
  const dir = await mkdtemp(join(tmpdir(), "portway-bench-append-"));
  const out = join(dir, "append.json");
  try {
    await new Promise((resolve, reject) =>
      execFile(process.execPath, [join(root, "bench", "events-append.mjs"), "--events", String(events), "--json", out], { cwd: root, maxBuffer: 64 * 1024 * 1024 }, (error, _stdout, stderr) =>
        error ? reject(new Error(`events-append.mjs failed: ${error.message}\n${stderr.slice(-2000)}`)) : resolve(undefined),
      ),
    );
    return JSON.parse(await readFile(out, "utf8"));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};

/**
 * Standalone: only the events part of the bench — connections/s and CPU per connection with events on vs off
 * (two CLI tunnels side by side, rounds alternating which goes first), optionally the close → readable lag.
 *
 *   node bench/events.mjs [--rounds 7] [--connections 3000] [--lag] [--json out.json]
 *
 * Prints each round and the medians; "paired" figures compare the on and off runs of the same round (less
 * exposed to load drifting on a shared machine than the medians of each).
 */
const main = async () => {
  const { parseArgs } = await import("node:util");
  const { values } = parseArgs({
    options: { rounds: { type: "string", default: "7" }, connections: { type: "string", default: "3000" }, lag: { type: "boolean", default: false }, json: { type: "string" } },
  });
  const rounds = Number(values.rounds);
  const connections = Number(values.connections);
  const { connectionRate, median } = await import("./measure.mjs");
  const { startEchoServer } = await import("./processes.mjs");
  const { startTunnelCli } = await import("./tunnel-cli.mjs");
  const { writeFileSync } = await import("node:fs");
  const echo = await startEchoServer();
  const stops = [() => echo.stop()];
  try {
    const tunnels = {};
    tunnels.on = await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }] });
    stops.push(() => tunnels.on.stop());
    tunnels.off = await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }], hub: { events: false } });
    stops.push(() => tunnels.off.stop());
    // Warm-up (JIT, the hub's start-up recovery) before anything is measured.
    for (const t of Object.values(tunnels)) await connectionRate({ port: t.listenPorts[0], total: 1000, concurrency: 8 });
    const runs = { on: [], off: [] };
    for (let round = 1; round <= rounds; round++) {
      for (const mode of round % 2 === 1 ? ["on", "off"] : ["off", "on"]) {
        const t = tunnels[mode];
        const r = await connectionCost({ tunnel: t, echoPid: echo.pid, run: () => connectionRate({ port: t.listenPorts[0], total: connections, concurrency: 8 }) });
        runs[mode].push(r);
        const c = r.cpuUs;
        process.stderr.write(
          `[${round}/${rounds}] events ${mode.padEnd(3)} ${r.perSecond.toFixed(0).padStart(5)} conn/s, failed ${r.failed}; CPU µs/conn hub ${c.hub.toFixed(0)} nats ${c.nats.toFixed(0)} edge ${c.edge.toFixed(0)} target ${c.target.toFixed(0)} client ${c.client.toFixed(0)} all ${c.all.toFixed(0)}\n`,
        );
      }
    }
    const ok = (i) => runs.on[i].failed === 0 && runs.off[i].failed === 0;
    const paired = (f) => runs.on.map((_, i) => i).filter(ok).map(f);
    const result = {
      rounds,
      connections,
      onPerSec: median(runs.on.map((r) => r.perSecond)),
      offPerSec: median(runs.off.map((r) => r.perSecond)),
      hubOnUs: median(runs.on.map((r) => r.cpuUs.hub)),
      hubOffUs: median(runs.off.map((r) => r.cpuUs.hub)),
      natsUs: median(runs.on.map((r) => r.cpuUs.nats)),
      allOnUs: median(runs.on.map((r) => r.cpuUs.all)),
      allOffUs: median(runs.off.map((r) => r.cpuUs.all)),
      pairedRateCost: median(paired((i) => 1 - runs.on[i].perSecond / runs.off[i].perSecond)),
      pairedCpuCost: median(paired((i) => runs.on[i].cpuUs.all / runs.off[i].cpuUs.all - 1)),
      pairedHubExtraUs: median(paired((i) => runs.on[i].cpuUs.hub + runs.on[i].cpuUs.nats - runs.off[i].cpuUs.hub)),
      runs,
    };
    result.rateCost = 1 - result.onPerSec / result.offPerSec;
    if (values.lag) result.lag = await closeToReadableLag({ tunnel: tunnels.on, rate: 200, seconds: 5 });
    const pct = (x) => `${(100 * x).toFixed(1)} %`;
    console.log(
      `events on ${result.onPerSec.toFixed(0)} conn/s vs off ${result.offPerSec.toFixed(0)}: cost ${pct(result.rateCost)} (paired per round ${pct(result.pairedRateCost)}); ` +
        `CPU per connection +${pct(result.pairedCpuCost)} (hub ${result.hubOnUs.toFixed(0)} vs ${result.hubOffUs.toFixed(0)} µs, nats-server ${result.natsUs.toFixed(0)} µs; paired hub+nats extra ${result.pairedHubExtraUs.toFixed(0)} µs)` +
        (result.lag ? `; close→readable p50 ${result.lag.p50Ms} ms p99 ${result.lag.p99Ms} ms` : ""),
    );
    if (values.json) writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    while (stops.length > 0) await stops.pop()().catch(() => undefined);
  }
};

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exitCode = 1;
  });
}
