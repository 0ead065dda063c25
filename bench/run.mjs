#!/usr/bin/env node
// Portway benchmark: tunnel vs direct loopback vs two chained socat relays. Not a test: it measures, compares
// against the targets of issue 2 and writes docs/performance.md. Run with `npm run bench`.
//
// Environment knobs (defaults in brackets): BENCH_ROUNDS [3] (each measurement runs this many times, the paths
// interleaved, and the median is reported: the machine is usually shared), BENCH_SECONDS [5] per iperf3 run,
// BENCH_CONNECTIONS [2000] per connection-rate run, BENCH_IDLE_STREAMS [1000], BENCH_LATENCY_SECONDS [5],
// BENCH_EVENTS_APPEND [400000] events for bench/events-append.mjs, BENCH_LAG_RATE [200] streams/s and
// BENCH_LAG_SECONDS [5] for the close → readable lag, BENCH_EVENT_ROUNDS [5] rounds of events on/off,
// BENCH_OUT [docs/performance.md].
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { appendFigures, closeToReadableLag, connectionCost } from "./events.mjs";
import { connectionRate, iperf3, latency, median, openIdle, rssKiB } from "./measure.mjs";
import { root, startEchoServer, startIperfServer, startSocatChain } from "./processes.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";

const env = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback);
const ROUNDS = env("BENCH_ROUNDS", 3);
const SECONDS = env("BENCH_SECONDS", 5);
const CONNECTIONS = env("BENCH_CONNECTIONS", 2000);
const IDLE_STREAMS = env("BENCH_IDLE_STREAMS", 1000);
const LATENCY_SECONDS = env("BENCH_LATENCY_SECONDS", 5);
const LATENCY_RATE = 1000;
const EVENTS_APPEND = env("BENCH_EVENTS_APPEND", 400_000);
const LAG_RATE = env("BENCH_LAG_RATE", 200);
const LAG_SECONDS = env("BENCH_LAG_SECONDS", 5);
const EVENT_ROUNDS = env("BENCH_EVENT_ROUNDS", 5);
const OUT = process.env.BENCH_OUT ?? join(root, "docs", "performance.md");

const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const stack = [];
const cleanup = async () => {
  while (stack.length > 0) await stack.pop()().catch((e) => log(`cleanup: ${e.message}`));
};
const track = (thing) => {
  stack.push(() => thing.stop());
  return thing;
};

const machine = () => {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  const kernel = execFileSync("uname", ["-sr"], { encoding: "utf8" }).trim();
  return {
    nproc: availableParallelism(),
    cpu,
    kernel,
    memGiB: (totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    date: new Date().toISOString(),
    loadBefore: loadavg()[0],
  };
};

const results = {
  machine: machine(),
  throughput: [],
  connections: [],
  latency: [],
  idle: undefined,
  eventsConnections: [],
  eventsLag: undefined,
  eventsAppend: undefined,
  errors: [],
};

/** Runs one measurement; a failure is recorded in the report instead of aborting the whole run. */
const attempt = async (label, fn) => {
  log(label);
  try {
    return await fn();
  } catch (error) {
    log(`${label} failed: ${error.message}`);
    results.errors.push(`${label}: ${error.message}`);
    return undefined;
  }
};

const main = async () => {
  log(`machine: ${JSON.stringify(results.machine)}`);
  const iperfServer = track(await startIperfServer());
  const echo = track(await startEchoServer());
  const socatIperf = track(await startSocatChain(iperfServer.port));
  const socatEcho = track(await startSocatChain(echo.port));
  const tunnel = track(
    await startTunnelCli({ routes: [{ target: `127.0.0.1:${iperfServer.port}` }, { target: `127.0.0.1:${echo.port}` }] }),
  );
  const [tunnelIperf, tunnelEcho] = tunnel.listenPorts;

  const paths = [
    { name: "direct", iperf: iperfServer.port, echo: echo.port },
    { name: "tunnel", iperf: tunnelIperf, echo: tunnelEcho },
    { name: "socat×2", iperf: socatIperf.port, echo: socatEcho.port },
  ];

  // Rounds interleave the paths, so a burst of load from elsewhere on the machine hits all of them alike.
  for (let round = 1; round <= ROUNDS; round++) {
    for (const parallel of [1, 4]) {
      for (const path of paths) {
        const gbps = await attempt(`[${round}/${ROUNDS}] iperf3 -P ${parallel} via ${path.name}`, () => iperf3({ port: path.iperf, seconds: SECONDS, parallel }));
        results.throughput.push({ path: path.name, parallel, gbps });
      }
    }
  }
  for (let round = 1; round <= ROUNDS; round++) {
    for (const path of paths) {
      const rate = await attempt(`[${round}/${ROUNDS}] connection rate via ${path.name}`, () => connectionRate({ port: path.echo, total: CONNECTIONS, concurrency: 8 }));
      results.connections.push({ path: path.name, ...rate });
    }
  }
  for (let round = 1; round <= ROUNDS; round++) {
    for (const path of paths) {
      const lat = await attempt(`[${round}/${ROUNDS}] latency at ${LATENCY_RATE} req/s via ${path.name}`, () => latency({ port: path.echo, rate: LATENCY_RATE, seconds: LATENCY_SECONDS }));
      results.latency.push({ path: path.name, ...lat });
    }
  }
  await tunnel.stop();

  // Idle streams on a fresh hub/edge pair, so the baseline is not inflated by the bulk runs.
  results.idle = await attempt(`RSS of hub and edge with ${IDLE_STREAMS} idle streams`, async () => {
    const fresh = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }] }));
    const before = { hub: await rssKiB(fresh.hubPid), edge: await rssKiB(fresh.edgePid) };
    const sockets = await openIdle({ port: fresh.listenPorts[0], count: IDLE_STREAMS });
    const after = { hub: await rssKiB(fresh.hubPid), edge: await rssKiB(fresh.edgePid) };
    for (const s of sockets) s.destroy();
    await fresh.stop();
    return { streams: sockets.length, before, after };
  });

  // Event log: the same tunnel with events on (default: embedded nats-server) and off (`events: false`).
  const on = await attempt("tunnel with events on", () => startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }] }));
  const off = await attempt("tunnel with events off", () =>
    startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }], hub: { events: false } }),
  );
  if (on && off) {
    track(on);
    track(off);
    for (let round = 1; round <= EVENT_ROUNDS; round++) {
      // Alternate which goes first, so drift on the machine does not favour one.
      const order = round % 2 === 1 ? [["on", on], ["off", off]] : [["off", off], ["on", on]];
      for (const [mode, tunnelCli] of order) {
        const rate = await attempt(`[${round}/${EVENT_ROUNDS}] connection rate, events ${mode}`, () =>
          connectionCost({
            tunnel: tunnelCli,
            echoPid: echo.pid,
            run: () => connectionRate({ port: tunnelCli.listenPorts[0], total: CONNECTIONS, concurrency: 8 }),
          }),
        );
        results.eventsConnections.push({ mode, ...rate });
      }
    }
    results.eventsLag = await attempt(`stream close → event readable at ${LAG_RATE} streams/s`, () =>
      closeToReadableLag({ tunnel: on, rate: LAG_RATE, seconds: LAG_SECONDS }),
    );
    await on.stop();
    await off.stop();
  }
  results.eventsAppend = await attempt(`event log append path (bench/events-append.mjs, ${EVENTS_APPEND} events)`, () =>
    appendFigures({ events: EVENTS_APPEND }),
  );
  results.machine.loadAfter = loadavg()[0];
};

const fmt = (value, digits = 2) => (value === undefined || Number.isNaN(value) ? "n/a" : value.toFixed(digits));
const verdict = (ok) => (ok === undefined ? "not measured" : ok ? "**met**" : "**missed**");

/** `median (min–max)` of the rounds, or just the value with one round. */
const spread = (values, digits) => {
  const ok = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  if (ok.length === 0) return "n/a";
  if (ok.length === 1) return fmt(ok[0], digits);
  return `${fmt(median(ok), digits)} (${fmt(Math.min(...ok), digits)}–${fmt(Math.max(...ok), digits)})`;
};

const report = () => {
  const m = results.machine;
  const tpRuns = (path, parallel) => results.throughput.filter((r) => r.path === path && r.parallel === parallel).map((r) => r.gbps);
  const tp = (path, parallel) => median(tpRuns(path, parallel));
  const lines = [];
  lines.push("# Performance", "");
  lines.push("Written by `bench/run.mjs` (do not edit by hand; rerun it). Figures are from one run on one machine;");
  lines.push("compare ratios within the run rather than absolute numbers across machines.", "");
  lines.push("## Machine", "");
  lines.push(`- date: ${m.date}`);
  lines.push(`- CPU: ${m.cpu}, nproc ${m.nproc}, memory ${m.memGiB} GiB`);
  lines.push(`- kernel: ${m.kernel}; Node ${m.node}`);
  lines.push(`- 1-minute load average: ${fmt(m.loadBefore)} at the start, ${fmt(m.loadAfter)} at the end (other work on the machine shows up here)`);
  lines.push("- everything on loopback: client, hub, edge and targets share the same cores", "");
  lines.push("## Reproduce", "");
  lines.push("```sh", "npm run bench   # = node scripts/setup.mjs --with-peers && node bench/run.mjs", "```", "");
  lines.push(`Knobs: BENCH_ROUNDS=${ROUNDS}, BENCH_SECONDS=${SECONDS}, BENCH_CONNECTIONS=${CONNECTIONS}, BENCH_IDLE_STREAMS=${IDLE_STREAMS}, BENCH_LATENCY_SECONDS=${LATENCY_SECONDS}, BENCH_EVENTS_APPEND=${EVENTS_APPEND}, BENCH_LAG_RATE=${LAG_RATE}, BENCH_LAG_SECONDS=${LAG_SECONDS}, BENCH_EVENT_ROUNDS=${EVENT_ROUNDS}.`, "");
  lines.push("Paths: **direct** = client → target on loopback; **tunnel** = client → edge → TLS tunnel → hub → target, hub and");
  lines.push("edge as separate processes started with the CLI (`node bin/portway.js hub|edge`), PROXY protocol off, events on (default);");
  lines.push("**socat×2** = client → `socat TCP-LISTEN:a,fork,reuseaddr TCP:127.0.0.1:b` → a second socat → target.");
  lines.push(`Each figure is the median of ${ROUNDS} rounds (paths interleaved within a round), with the range in brackets.`, "");

  lines.push("## Bulk TCP throughput (iperf3)", "");
  lines.push(`\`iperf3 -c 127.0.0.1 -p PORT -t ${SECONDS} [-P 4]\`, receiver-side rate.`, "");
  lines.push("| streams | direct Gbit/s | tunnel Gbit/s | tunnel / direct | socat×2 Gbit/s | socat×2 / direct |", "| --- | --- | --- | --- | --- | --- |");
  for (const parallel of [1, 4]) {
    const d = tp("direct", parallel);
    const t = tp("tunnel", parallel);
    const s = tp("socat×2", parallel);
    lines.push(
      `| ${parallel} | ${spread(tpRuns("direct", parallel), 2)} | ${spread(tpRuns("tunnel", parallel), 2)} | ${d && t ? `${fmt((100 * t) / d, 1)} %` : "n/a"} | ${spread(tpRuns("socat×2", parallel), 2)} | ${d && s ? `${fmt((100 * s) / d, 1)} %` : "n/a"} |`,
    );
  }
  lines.push("");

  lines.push("## New connections per second", "");
  lines.push(`${CONNECTIONS} connections, 8 at a time; each connects, does one 1-byte echo and closes (Node client, Node echo server in its own process).`, "");
  lines.push("| path | connections/s | failed |", "| --- | --- | --- |");
  const pathNames = ["direct", "tunnel", "socat×2"];
  const connRuns = (path) => results.connections.filter((r) => r.path === path);
  for (const path of pathNames) {
    const runs = connRuns(path);
    const failed = runs.reduce((sum, r) => sum + (r.failed ?? 0), 0);
    lines.push(`| ${path} | ${spread(runs.map((r) => r.perSecond), 0)} | ${failed} |`);
  }
  lines.push("");

  lines.push("## Request/response latency", "");
  lines.push(`One connection, a 64-byte request every 1 ms (${LATENCY_RATE} req/s, open loop) for ${LATENCY_SECONDS} s; time from write to the full echo.`, "");
  lines.push("| path | p50 µs | p99 µs | max µs | answered |", "| --- | --- | --- | --- | --- |");
  const latRuns = (path) => results.latency.filter((r) => r.path === path);
  for (const path of pathNames) {
    const runs = latRuns(path);
    const answered = runs.reduce((sum, r) => sum + (r.answered ?? 0), 0);
    const requests = runs.reduce((sum, r) => sum + (r.requests ?? 0), 0);
    const max = runs.length > 0 ? Math.max(...runs.map((r) => r.maxUs ?? Number.NaN)) : undefined;
    lines.push(`| ${path} | ${spread(runs.map((r) => r.p50Us), 0)} | ${spread(runs.map((r) => r.p99Us), 0)} | ${fmt(max, 0)} | ${answered}/${requests} |`);
  }
  const med = (path, key) => median(latRuns(path).map((r) => r[key]));
  const diff = (key) => (med("direct", key) !== undefined && med("tunnel", key) !== undefined ? med("tunnel", key) - med("direct", key) : undefined);
  const addedP99 = diff("p99Us");
  const addedP50 = diff("p50Us");
  lines.push("", `Added by the tunnel (median tunnel − median direct): p50 ${fmt(addedP50, 0)} µs, p99 ${fmt(addedP99, 0)} µs.`, "");

  lines.push("## Memory per idle stream", "");
  const idle = results.idle;
  let perStream;
  if (idle) {
    const delta = { hub: idle.after.hub - idle.before.hub, edge: idle.after.edge - idle.before.edge };
    perStream = { hub: delta.hub / idle.streams, edge: delta.edge / idle.streams };
    lines.push(`VmRSS from /proc/<pid>/status of the hub and edge processes before and after opening ${idle.streams} idle streams (each did one echo, then stays open).`, "");
    lines.push("| process | before KiB | after KiB | KiB per idle stream |", "| --- | --- | --- | --- |");
    lines.push(`| hub | ${idle.before.hub} | ${idle.after.hub} | ${fmt(perStream.hub, 1)} |`);
    lines.push(`| edge | ${idle.before.edge} | ${idle.after.edge} | ${fmt(perStream.edge, 1)} |`);
    lines.push("");
  } else {
    lines.push("Not measured (see errors below).", "");
  }

  lines.push("## Event log", "");
  lines.push("The hub records every lifecycle transition in NATS JetStream (docs/events.md, ADR 0004); by default in an");
  lines.push("embedded nats-server under its data dir. The **tunnel** path above runs that way (the default).", "");
  lines.push("### New connections per second, events on vs off", "");
  lines.push(`Two CLI tunnels side by side, identical but for \`events: false\`; ${CONNECTIONS} connections, 8 at a time, 1-byte echo each,`);
  lines.push(`${EVENT_ROUNDS} rounds alternating which goes first. Each connection is 2 events (stream.opened, stream.closed) appended durably.`, "");
  lines.push("CPU per connection is read from /proc for every process involved (hub, its nats-server, edge, echo target, the");
  lines.push("client); unlike connections/s it does not depend on what else the machine is doing. When the machine is the");
  lines.push("bottleneck (here: everything on 2 cores), connections/s falls by the share of CPU that events add.", "");
  lines.push("| events | connections/s | failed | CPU µs/conn: hub | nats-server | edge | target | client | all |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  const evRuns = (mode) => results.eventsConnections.filter((r) => r.mode === mode);
  const cpuMed = (mode, key) => median(evRuns(mode).map((r) => r.cpuUs?.[key]).filter((v) => typeof v === "number" && !Number.isNaN(v)));
  for (const [mode, label] of [["on", "on (embedded nats-server)"], ["off", "off (`--no-events`)"]]) {
    const runs = evRuns(mode);
    const cpu = ["hub", "nats", "edge", "target", "client", "all"].map((k) => fmt(cpuMed(mode, k), 0)).join(" | ");
    lines.push(`| ${label} | ${spread(runs.map((r) => r.perSecond), 0)} | ${runs.reduce((n, r) => n + (r.failed ?? 0), 0)} | ${cpu} |`);
  }
  const onRate = median(evRuns("on").map((r) => r.perSecond));
  const offRate = median(evRuns("off").map((r) => r.perSecond));
  const cost = onRate && offRate ? 1 - onRate / offRate : undefined;
  const cpuOn = cpuMed("on", "all");
  const cpuOff = cpuMed("off", "all");
  const cpuCost = cpuOn && cpuOff ? 1 - cpuOff / cpuOn : undefined;
  lines.push("");
  lines.push(`Cost of recording events: measured connections/s ${cost === undefined ? "n/a" : `${fmt(100 * cost, 1)} %`} fewer (1 − median on / median off);`);
  lines.push(`from CPU per connection ${cpuCost === undefined ? "n/a" : `${fmt(100 * cpuCost, 1)} %`} (1 − all off / all on: the rate a CPU-bound machine loses), of which the hub process`);
  lines.push(`adds ${fmt((cpuMed("on", "hub") ?? NaN) - (cpuMed("off", "hub") ?? NaN), 0)} µs and its nats-server ${fmt(cpuMed("on", "nats"), 0)} µs per connection.`, "");

  lines.push("### Stream close → event readable", "");
  const lag = results.eventsLag;
  if (lag) {
    lines.push(`${lag.rate} streams/s for ${LAG_SECONDS} s through the events-on tunnel; an ordered JetStream consumer on the hub's embedded`);
    lines.push("nats-server reads `stream.closed`; lag = the event's delivery − the client socket's close (addon batch ≤ 5 ms, actors,");
    lines.push("publisher linger 2 ms, acked publish, consumer push).", "");
    lines.push("| p50 ms | p99 ms | max ms | streams | events not seen |", "| --- | --- | --- | --- | --- |");
    lines.push(`| ${fmt(lag.p50Ms, 0)} | ${fmt(lag.p99Ms, 0)} | ${fmt(lag.maxMs, 0)} | ${lag.streams} | ${lag.missing} |`, "");
  } else {
    lines.push("Not measured (see errors below).", "");
  }

  lines.push("### Append path alone", "");
  const ap = results.eventsAppend;
  if (ap) {
    lines.push(`\`bench/events-append.mjs\`: events built like the actors build them, appended to a fresh file-backed stream on an`);
    lines.push("embedded nats-server, timed from the first append to the last acknowledgement. CPU per event is independent of");
    lines.push("other load; 1e6 / node µs bounds one event loop.", "");
    lines.push("| approach | events | events/s | events/message | node CPU µs/event | server CPU µs/event |", "| --- | --- | --- | --- | --- | --- |");
    const row = (label, r) =>
      r && lines.push(`| ${label} | ${r.events} | ${fmt(r.eventsPerSec, 0)} | ${r.eventsPerMessage ?? 1} | ${r.nodeCpuUsPerEvent === undefined ? "-" : fmt(r.nodeCpuUsPerEvent, 2)} | ${r.serverCpuUsPerEvent === undefined ? "-" : fmt(r.serverCpuUsPerEvent, 2)} |`);
    row("one event per message, each publish awaited", ap.serial);
    row("one event per message, 64 in flight", ap.pipelined);
    row("**per-subject batches, 64 in flight (shipped)**", ap.batched);
    if (ap.lag) {
      lines.push("", `Publish → readable (append → delivered to an ordered consumer) at a steady ${ap.lag.ratePerSec} events/s: p50 ${fmt(ap.lag.p50Ms, 0)} ms, p99 ${fmt(ap.lag.p99Ms, 0)} ms, max ${fmt(ap.lag.maxMs, 0)} ms (${ap.lag.samples} events).`);
    }
    lines.push("");
  } else {
    lines.push("Not measured (see errors below).", "");
  }

  lines.push("## Targets", "");
  const t1 = tp("tunnel", 1);
  const d1 = tp("direct", 1);
  const ratio = t1 && d1 ? t1 / d1 : undefined;
  lines.push("| target | measured | verdict |", "| --- | --- | --- |");
  lines.push(`| tunnel bulk throughput ≥ 20 % of direct loopback (1 stream) | ${ratio === undefined ? "n/a" : `${fmt(100 * ratio, 1)} %`} | ${verdict(ratio === undefined ? undefined : ratio >= 0.2)} |`);
  lines.push(`| stretch: ≥ 30 % | ${ratio === undefined ? "n/a" : `${fmt(100 * ratio, 1)} %`} | ${verdict(ratio === undefined ? undefined : ratio >= 0.3)} |`);
  lines.push(`| added p99 ≤ 1 ms at 1,000 req/s | ${addedP99 === undefined ? "n/a" : `${fmt(addedP99 / 1000, 3)} ms`} | ${verdict(addedP99 === undefined ? undefined : addedP99 <= 1000)} |`);
  const worst = perStream ? Math.max(perStream.hub, perStream.edge) : undefined;
  lines.push(`| ≤ 64 KiB per idle stream (each process) | ${worst === undefined ? "n/a" : `hub ${fmt(perStream.hub, 1)} KiB, edge ${fmt(perStream.edge, 1)} KiB`} | ${verdict(worst === undefined ? undefined : worst <= 64)} |`);
  const appendRate = results.eventsAppend?.batched?.eventsPerSec;
  lines.push(`| (issue 3) ≥ 200k lifecycle events/s appended durably | ${appendRate === undefined ? "n/a" : `${fmt(appendRate, 0)} events/s`} | ${verdict(appendRate === undefined ? undefined : appendRate >= 200_000)} |`);
  lines.push(`| (issue 3) events on cost ≤ 10 % of new connections/s (measured rate) | ${cost === undefined ? "n/a" : `${fmt(100 * cost, 1)} %`} | ${verdict(cost === undefined ? undefined : cost <= 0.1)} |`);
  lines.push(`| (issue 3) the same, from CPU per connection (load-independent) | ${cpuCost === undefined ? "n/a" : `${fmt(100 * cpuCost, 1)} %`} | ${verdict(cpuCost === undefined ? undefined : cpuCost <= 0.1)} |`);
  lines.push("");
  if (results.errors.length > 0) {
    lines.push("## Errors during this run", "");
    for (const e of results.errors) lines.push(`- ${e.replaceAll("\n", " ")}`);
    lines.push("");
  }
  return lines.join("\n");
};

try {
  await main();
} catch (error) {
  results.errors.push(`setup: ${error.message}`);
  log(`aborted: ${error.stack ?? error.message}`);
} finally {
  await cleanup();
}
const text = report();
writeFileSync(OUT, text);
process.stdout.write(`${text}\n`);
log(`wrote ${OUT}`);
