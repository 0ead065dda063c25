#!/usr/bin/env node
// Portway benchmark: the tunnel against direct loopback (and two chained socat relays), measured in the same run
// with rounds interleaved, compared with the targets of the issues, written to docs/performance.md. Not a test.
//
//   npm run bench                          every section
//   npm run bench -- --only udp,quic       only these sections (or BENCH_ONLY=udp,quic node bench/run.mjs)
//   node bench/run.mjs --list              the sections
//   node bench/run.mjs --render            rebuild docs/performance.md from bench/results/ without measuring
//
// Sections: tcp (bulk, connections/s, latency over TLS vs direct vs socat×2), idle (memory per idle stream),
// events (event log cost and lag), udp (datagrams/s and loss, tcpTls vs quic vs direct), quic (TCP over QUIC vs
// TLS vs direct), cluster (bench/cluster-events.mjs: R3 vs R1 appends), failover (bench/failover.mjs). Each
// section's figures are kept in bench/results/<section>.json (committed); the document is rebuilt from all of them,
// so a partial run keeps the other sections' last figures and the Targets table covers every section. A section
// whose setup fails keeps its previous figures (the failure is printed). A section without results keeps the block
// between its `<!-- section:NAME -->` markers in the current document.
//
// Environment knobs (defaults in brackets): BENCH_ROUNDS [3] (each measurement runs this many times, the paths
// interleaved, and the median is reported: the machine is usually shared), BENCH_SECONDS [5] per iperf3 run,
// BENCH_CONNECTIONS [2000] per connection-rate run, BENCH_IDLE_STREAMS [1000], BENCH_LATENCY_SECONDS [5],
// BENCH_EVENTS_APPEND [400000] events for bench/events-append.mjs, BENCH_LAG_RATE [200] streams/s and
// BENCH_LAG_SECONDS [5] for the close → readable lag, BENCH_EVENT_ROUNDS [5] rounds of events on/off,
// BENCH_UDP_SECONDS [2] per UDP run, BENCH_UDP_RATES [10000,25000,50000,100000], BENCH_UDP_SIZES [64,1200],
// BENCH_CLUSTER_EVENTS [200000], BENCH_CLUSTER_ROUNDS [3], BENCH_FAILOVER_KILLS [20], BENCH_FAILOVER_MODE [both],
// BENCH_OUT [docs/performance.md], BENCH_RESULTS [bench/results], BENCH_PORTWAY_ROOT [this checkout] (whose
// bin/portway.js runs hub and edge: point it at a built snapshot when others rebuild the working tree during a run).
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { appendFigures, closeToReadableLag, connectionCost } from "./events.mjs";
import { connectionRate, iperf3, latency, median, openIdle, rssKiB } from "./measure.mjs";
import { root, startEchoServer, startIperfServer, startSocatChain } from "./processes.mjs";
import { quicSection } from "./quic.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";
import { udpSection } from "./udp.mjs";

const env = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback);
const OUT = process.env.BENCH_OUT ?? join(root, "docs", "performance.md");
const RESULTS = process.env.BENCH_RESULTS ?? join(root, "bench", "results");
const LATENCY_RATE = 1000;

const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);

const machine = () => {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  const kernel = execFileSync("uname", ["-sr"], { encoding: "utf8" }).trim();
  return { nproc: availableParallelism(), cpu, kernel, memGiB: (totalmem() / 2 ** 30).toFixed(1), node: process.version };
};

/** Which code was measured: the checkout's commit, and the snapshot the CLI ran from if BENCH_PORTWAY_ROOT was set. */
const code = () => {
  let commit = "unknown";
  try {
    commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).trim();
  } catch {
    // not a git checkout
  }
  const snapshot = process.env.BENCH_PORTWAY_ROOT;
  if (!snapshot) return { commit };
  // A snapshot says what it was built from in its `.commit` file (one line), when it is not a git checkout itself.
  let snapshotOf = "unknown";
  try {
    snapshotOf = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: snapshot, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    if (existsSync(join(snapshot, ".commit"))) snapshotOf = readFileSync(join(snapshot, ".commit"), "utf8").trim();
  }
  return { commit: snapshotOf, benchCommit: commit, portwayRoot: snapshot };
};

const fmt = (value, digits = 2) => (value === undefined || value === null || Number.isNaN(value) ? "n/a" : value.toFixed(digits));

/** `median (min–max)` of the rounds, or just the value with one round. */
const spread = (values, digits) => {
  const ok = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  if (ok.length === 0) return "n/a";
  if (ok.length === 1) return fmt(ok[0], digits);
  return `${fmt(median(ok), digits)} (${fmt(Math.min(...ok), digits)}–${fmt(Math.max(...ok), digits)})`;
};

// ---------------------------------------------------------------------------------------------------------------
// Sections. Each: name, title, knobs() (recorded with the figures), run(ctx) → figures (plain JSON),
// render(result) → markdown lines, targets(result) → [{ target, measured, ok }]. `result` is what
// bench/results/<name>.json holds: { section, knobs, machine, date, loadBefore, loadAfter, errors, figures }.

const tcpSection = {
  name: "tcp",
  title: "TCP through the TLS tunnel: throughput, connections, latency",
  knobs: () => ({
    BENCH_ROUNDS: env("BENCH_ROUNDS", 3),
    BENCH_SECONDS: env("BENCH_SECONDS", 5),
    BENCH_CONNECTIONS: env("BENCH_CONNECTIONS", 2000),
    BENCH_LATENCY_SECONDS: env("BENCH_LATENCY_SECONDS", 5),
  }),
  run: async ({ knobs, attempt, track }) => {
    const { BENCH_ROUNDS: rounds, BENCH_SECONDS: seconds, BENCH_CONNECTIONS: connections, BENCH_LATENCY_SECONDS: latencySeconds } = knobs;
    const iperfServer = track(await startIperfServer());
    const echo = track(await startEchoServer());
    const socatIperf = track(await startSocatChain(iperfServer.port));
    const socatEcho = track(await startSocatChain(echo.port));
    const tunnel = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${iperfServer.port}` }, { target: `127.0.0.1:${echo.port}` }] }));
    const [tunnelIperf, tunnelEcho] = tunnel.listenPorts;
    const paths = [
      { name: "direct", iperf: iperfServer.port, echo: echo.port },
      { name: "tunnel", iperf: tunnelIperf, echo: tunnelEcho },
      { name: "socat×2", iperf: socatIperf.port, echo: socatEcho.port },
    ];
    const figures = { throughput: [], connections: [], latency: [] };
    // Rounds interleave the paths, so a burst of load from elsewhere on the machine hits all of them alike.
    for (let round = 1; round <= rounds; round++) {
      for (const parallel of [1, 4]) {
        for (const path of paths) {
          const gbps = await attempt(`[${round}/${rounds}] iperf3 -P ${parallel} via ${path.name}`, () => iperf3({ port: path.iperf, seconds, parallel }));
          figures.throughput.push({ path: path.name, parallel, gbps });
        }
      }
    }
    for (let round = 1; round <= rounds; round++) {
      for (const path of paths) {
        const rate = await attempt(`[${round}/${rounds}] connection rate via ${path.name}`, () => connectionRate({ port: path.echo, total: connections, concurrency: 8 }));
        figures.connections.push({ path: path.name, ...rate });
      }
    }
    for (let round = 1; round <= rounds; round++) {
      for (const path of paths) {
        const lat = await attempt(`[${round}/${rounds}] latency at ${LATENCY_RATE} req/s via ${path.name}`, () => latency({ port: path.echo, rate: LATENCY_RATE, seconds: latencySeconds }));
        figures.latency.push({ path: path.name, ...lat });
      }
    }
    return figures;
  },
  render: ({ figures: f, knobs }) => {
    const lines = [];
    const tpRuns = (path, parallel) => f.throughput.filter((r) => r.path === path && r.parallel === parallel).map((r) => r.gbps);
    const tp = (path, parallel) => median(tpRuns(path, parallel));
    lines.push("Paths: **direct** = client → target on loopback; **tunnel** = client → edge → TLS tunnel → hub → target, hub and");
    lines.push("edge as separate processes started with the CLI (`node bin/portway.js hub|edge`), PROXY protocol off, events on (default);");
    lines.push("**socat×2** = client → `socat TCP-LISTEN:a,fork,reuseaddr TCP:127.0.0.1:b` → a second socat → target.");
    lines.push(`Each figure is the median of ${knobs.BENCH_ROUNDS} rounds (paths interleaved within a round), with the range in brackets.`, "");
    lines.push("### Bulk TCP throughput (iperf3)", "");
    lines.push(`\`iperf3 -c 127.0.0.1 -p PORT -t ${knobs.BENCH_SECONDS} [-P 4]\`, receiver-side rate.`, "");
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
    lines.push("### New connections per second", "");
    lines.push(`${knobs.BENCH_CONNECTIONS} connections, 8 at a time; each connects, does one 1-byte echo and closes (Node client, Node echo server in its own process).`, "");
    lines.push("| path | connections/s | failed |", "| --- | --- | --- |");
    const pathNames = ["direct", "tunnel", "socat×2"];
    for (const path of pathNames) {
      const runs = f.connections.filter((r) => r.path === path);
      lines.push(`| ${path} | ${spread(runs.map((r) => r.perSecond), 0)} | ${runs.reduce((sum, r) => sum + (r.failed ?? 0), 0)} |`);
    }
    lines.push("");
    lines.push("### Request/response latency", "");
    lines.push(`One connection, a 64-byte request every 1 ms (${LATENCY_RATE} req/s, open loop) for ${knobs.BENCH_LATENCY_SECONDS} s; time from write to the full echo.`, "");
    lines.push("| path | p50 µs | p99 µs | max µs | answered |", "| --- | --- | --- | --- | --- |");
    for (const path of pathNames) {
      const runs = f.latency.filter((r) => r.path === path);
      const answered = runs.reduce((sum, r) => sum + (r.answered ?? 0), 0);
      const requests = runs.reduce((sum, r) => sum + (r.requests ?? 0), 0);
      const max = runs.length > 0 ? Math.max(...runs.map((r) => r.maxUs ?? Number.NaN)) : undefined;
      lines.push(`| ${path} | ${spread(runs.map((r) => r.p50Us), 0)} | ${spread(runs.map((r) => r.p99Us), 0)} | ${fmt(max, 0)} | ${answered}/${requests} |`);
    }
    const added = tcpAdded(f);
    lines.push("", `Added by the tunnel (median tunnel − median direct): p50 ${fmt(added.p50Us, 0)} µs, p99 ${fmt(added.p99Us, 0)} µs.`, "");
    return lines;
  },
  targets: ({ figures: f }) => {
    const tp = (path) => median(f.throughput.filter((r) => r.path === path && r.parallel === 1).map((r) => r.gbps));
    const ratio = tp("tunnel") && tp("direct") ? tp("tunnel") / tp("direct") : undefined;
    const pct = ratio === undefined ? "n/a" : `${fmt(100 * ratio, 1)} %`;
    const { p99Us } = tcpAdded(f);
    return [
      { target: "tunnel bulk throughput ≥ 20 % of direct loopback (1 stream)", measured: pct, ok: ratio === undefined ? undefined : ratio >= 0.2 },
      { target: "stretch: ≥ 30 %", measured: pct, ok: ratio === undefined ? undefined : ratio >= 0.3 },
      // Negative: direct loopback's own p99 was worse than the tunnel's (load from elsewhere hit its rounds).
      { target: "added p99 ≤ 1 ms at 1,000 req/s", measured: p99Us === undefined ? "n/a" : `${fmt(p99Us / 1000, 3)} ms`, ok: p99Us === undefined ? undefined : p99Us < 0 ? null : p99Us <= 1000 },
    ];
  },
};

const tcpAdded = (f) => {
  const med = (path, key) => median(f.latency.filter((r) => r.path === path).map((r) => r[key]));
  const diff = (key) => (med("direct", key) !== undefined && med("tunnel", key) !== undefined ? med("tunnel", key) - med("direct", key) : undefined);
  return { p50Us: diff("p50Us"), p99Us: diff("p99Us") };
};

const idleSection = {
  name: "idle",
  title: "Memory per idle stream",
  knobs: () => ({ BENCH_IDLE_STREAMS: env("BENCH_IDLE_STREAMS", 1000) }),
  run: async ({ knobs, track }) => {
    // A fresh hub/edge pair, so the baseline is not inflated by other runs.
    const echo = track(await startEchoServer());
    const fresh = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }] }));
    const before = { hub: await rssKiB(fresh.hubPid), edge: await rssKiB(fresh.edgePid) };
    const sockets = await openIdle({ port: fresh.listenPorts[0], count: knobs.BENCH_IDLE_STREAMS });
    const after = { hub: await rssKiB(fresh.hubPid), edge: await rssKiB(fresh.edgePid) };
    for (const s of sockets) s.destroy();
    return { streams: sockets.length, before, after };
  },
  render: ({ figures: idle }) => {
    const perStream = idlePerStream(idle);
    return [
      `VmRSS from /proc/<pid>/status of the hub and edge processes (CLI, TLS tunnel) before and after opening ${idle.streams} idle streams (each did one echo, then stays open).`,
      "",
      "| process | before KiB | after KiB | KiB per idle stream |",
      "| --- | --- | --- | --- |",
      `| hub | ${idle.before.hub} | ${idle.after.hub} | ${fmt(perStream.hub, 1)} |`,
      `| edge | ${idle.before.edge} | ${idle.after.edge} | ${fmt(perStream.edge, 1)} |`,
      "",
    ];
  },
  targets: ({ figures: idle }) => {
    const p = idlePerStream(idle);
    const worst = Math.max(p.hub, p.edge);
    return [{ target: "≤ 64 KiB per idle stream (each process)", measured: `hub ${fmt(p.hub, 1)} KiB, edge ${fmt(p.edge, 1)} KiB`, ok: Number.isNaN(worst) ? undefined : worst <= 64 }];
  },
};

const idlePerStream = (idle) => ({
  hub: (idle.after.hub - idle.before.hub) / idle.streams,
  edge: (idle.after.edge - idle.before.edge) / idle.streams,
});

const eventsSection = {
  name: "events",
  title: "Event log",
  knobs: () => ({
    BENCH_CONNECTIONS: env("BENCH_CONNECTIONS", 2000),
    BENCH_EVENT_ROUNDS: env("BENCH_EVENT_ROUNDS", 5),
    BENCH_LAG_RATE: env("BENCH_LAG_RATE", 200),
    BENCH_LAG_SECONDS: env("BENCH_LAG_SECONDS", 5),
    BENCH_EVENTS_APPEND: env("BENCH_EVENTS_APPEND", 400_000),
  }),
  run: async ({ knobs, attempt, track }) => {
    const figures = { connections: [], lag: undefined, append: undefined };
    const echo = track(await startEchoServer());
    // The same tunnel with events on (default: embedded nats-server) and off (`events: false`).
    const on = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }] }));
    const off = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${echo.port}` }], hub: { events: false } }));
    const rounds = knobs.BENCH_EVENT_ROUNDS;
    for (let round = 1; round <= rounds; round++) {
      // Alternate which goes first, so drift on the machine does not favour one.
      const order = round % 2 === 1 ? [["on", on], ["off", off]] : [["off", off], ["on", on]];
      for (const [mode, tunnelCli] of order) {
        const rate = await attempt(`[${round}/${rounds}] connection rate, events ${mode}`, () =>
          connectionCost({
            tunnel: tunnelCli,
            echoPid: echo.pid,
            run: () => connectionRate({ port: tunnelCli.listenPorts[0], total: knobs.BENCH_CONNECTIONS, concurrency: 8 }),
          }),
        );
        figures.connections.push({ mode, ...rate });
      }
    }
    figures.lag = await attempt(`stream close → event readable at ${knobs.BENCH_LAG_RATE} streams/s`, () =>
      closeToReadableLag({ tunnel: on, rate: knobs.BENCH_LAG_RATE, seconds: knobs.BENCH_LAG_SECONDS }),
    );
    await on.stop();
    await off.stop();
    figures.append = await attempt(`event log append path (bench/events-append.mjs, ${knobs.BENCH_EVENTS_APPEND} events)`, () =>
      appendFigures({ events: knobs.BENCH_EVENTS_APPEND }),
    );
    return figures;
  },
  render: ({ figures: f, knobs }) => {
    const lines = [];
    lines.push("The hub records every lifecycle transition in NATS JetStream (docs/events.md, ADR 0004); by default in an");
    lines.push("embedded nats-server under its data dir. The tunnels of the other sections run that way (the default).", "");
    lines.push("### New connections per second, events on vs off", "");
    lines.push(`Two CLI tunnels side by side, identical but for \`events: false\`; ${knobs.BENCH_CONNECTIONS} connections, 8 at a time, 1-byte echo each,`);
    lines.push(`${knobs.BENCH_EVENT_ROUNDS} rounds alternating which goes first. Each connection is 2 events (stream.opened, stream.closed) appended durably.`, "");
    lines.push("CPU per connection is read from /proc for every process involved (hub, its nats-server, edge, echo target, the");
    lines.push("client); unlike connections/s it does not depend on what else the machine is doing. When the machine is the");
    lines.push("bottleneck (here: everything on 2 cores), connections/s falls by the share of CPU that events add.", "");
    lines.push("| events | connections/s | failed | CPU µs/conn: hub | nats-server | edge | target | client | all |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    const c = eventCost(f);
    for (const [mode, label] of [["on", "on (embedded nats-server)"], ["off", "off (`--no-events`)"]]) {
      const runs = f.connections.filter((r) => r.mode === mode);
      const cpu = ["hub", "nats", "edge", "target", "client", "all"].map((k) => fmt(c.cpuMed(mode, k), 0)).join(" | ");
      lines.push(`| ${label} | ${spread(runs.map((r) => r.perSecond), 0)} | ${runs.reduce((n, r) => n + (r.failed ?? 0), 0)} | ${cpu} |`);
    }
    lines.push("");
    lines.push(`Cost of recording events: measured connections/s ${c.cost === undefined ? "n/a" : `${fmt(100 * c.cost, 1)} %`} fewer (1 − median on / median off);`);
    lines.push(`from CPU per connection ${c.cpuCost === undefined ? "n/a" : `${fmt(100 * c.cpuCost, 1)} %`} (1 − all off / all on: the rate a CPU-bound machine loses), of which the hub process`);
    lines.push(`adds ${fmt((c.cpuMed("on", "hub") ?? NaN) - (c.cpuMed("off", "hub") ?? NaN), 0)} µs and its nats-server ${fmt(c.cpuMed("on", "nats"), 0)} µs per connection.`, "");
    lines.push("### Stream close → event readable", "");
    const lag = f.lag;
    if (lag) {
      lines.push(`${lag.rate} streams/s for ${knobs.BENCH_LAG_SECONDS} s through the events-on tunnel; an ordered JetStream consumer on the hub's embedded`);
      lines.push("nats-server reads `stream.closed`; lag = the event's delivery − the client socket's close (addon batch ≤ 5 ms, actors,");
      lines.push("publisher linger ≥ 2 ms, adaptive: 25 ms per event/ms up to 100 ms, acked publish, consumer push).", "");
      lines.push("| p50 ms | p99 ms | max ms | streams | events not seen |", "| --- | --- | --- | --- | --- |");
      lines.push(`| ${fmt(lag.p50Ms, 0)} | ${fmt(lag.p99Ms, 0)} | ${fmt(lag.maxMs, 0)} | ${lag.streams} | ${lag.missing} |`, "");
    } else {
      lines.push("Not measured (see errors).", "");
    }
    lines.push("### Append path alone", "");
    const ap = f.append;
    if (ap) {
      lines.push(`\`bench/events-append.mjs\`: events built like the actors build them, appended to a fresh file-backed stream on an`);
      lines.push("embedded nats-server, timed from the first append to the last acknowledgement. CPU per event is independent of");
      lines.push("other load; 1e6 / node µs bounds one event loop.", "");
      lines.push("| approach | events | events/s | events/message | node CPU µs/event | server CPU µs/event |", "| --- | --- | --- | --- | --- | --- |");
      const row = (label, r) =>
        r &&
        lines.push(
          `| ${label} | ${r.events} | ${fmt(r.eventsPerSec, 0)} | ${r.eventsPerMessage ?? 1} | ${r.nodeCpuUsPerEvent === undefined ? "-" : fmt(r.nodeCpuUsPerEvent, 2)} | ${r.serverCpuUsPerEvent === undefined ? "-" : fmt(r.serverCpuUsPerEvent, 2)} |`,
        );
      row("one event per message, each publish awaited", ap.serial);
      row("one event per message, 64 in flight", ap.pipelined);
      row("**per-subject batches, 64 in flight (shipped)**", ap.batched);
      if (ap.lag) {
        lines.push("", `Publish → readable (append → delivered to an ordered consumer) at a steady ${ap.lag.ratePerSec} events/s: p50 ${fmt(ap.lag.p50Ms, 0)} ms, p99 ${fmt(ap.lag.p99Ms, 0)} ms, max ${fmt(ap.lag.maxMs, 0)} ms (${ap.lag.samples} events).`);
      }
      lines.push("");
    } else {
      lines.push("Not measured (see errors).", "");
    }
    return lines;
  },
  targets: ({ figures: f }) => {
    const c = eventCost(f);
    const appendRate = f.append?.batched?.eventsPerSec;
    return [
      { target: "(issue 3) ≥ 200k lifecycle events/s appended durably", measured: appendRate === undefined ? "n/a" : `${fmt(appendRate, 0)} events/s`, ok: appendRate === undefined ? undefined : appendRate >= 200_000 },
      // Negative: events on ran faster than off, i.e. the machine's load moved more than events cost.
      { target: "(issue 3) events on cost ≤ 10 % of new connections/s (measured rate)", measured: c.cost === undefined ? "n/a" : `${fmt(100 * c.cost, 1)} %`, ok: c.cost === undefined ? undefined : c.cost < 0 ? null : c.cost <= 0.1 },
      { target: "(issue 3) the same, from CPU per connection (load-independent)", measured: c.cpuCost === undefined ? "n/a" : `${fmt(100 * c.cpuCost, 1)} %`, ok: c.cpuCost === undefined ? undefined : c.cpuCost <= 0.1 },
    ];
  },
};

const eventCost = (f) => {
  const runs = (mode) => f.connections.filter((r) => r.mode === mode);
  const cpuMed = (mode, key) => median(runs(mode).map((r) => r.cpuUs?.[key]).filter((v) => typeof v === "number" && !Number.isNaN(v)));
  const onRate = median(runs("on").map((r) => r.perSecond));
  const offRate = median(runs("off").map((r) => r.perSecond));
  const cpuOn = cpuMed("on", "all");
  const cpuOff = cpuMed("off", "all");
  return {
    cpuMed,
    cost: onRate && offRate ? 1 - onRate / offRate : undefined,
    cpuCost: cpuOn && cpuOff ? 1 - cpuOff / cpuOn : undefined,
  };
};

/**
 * A section measured by a standalone script of bench/ that takes `--json FILE` and prints that JSON on stdout
 * followed by its own markdown (bench/cluster-events.mjs, bench/failover.mjs). The figures kept are the script's
 * JSON and its markdown; the markdown's first heading becomes a plain line, or goes if it repeats the section title.
 */
const scriptSection = ({ name, title, script, knobs, args, targets }) => ({
  name,
  title,
  knobs,
  run: async ({ knobs: k, log: say }) => {
    const dir = mkdtempSync(join(tmpdir(), `portway-bench-${name}-`));
    const jsonFile = join(dir, "out.json");
    try {
      // With a snapshot, its own copy of the script runs, so script, dist/, native/ and bin/ all come from it.
      const base = process.env.BENCH_PORTWAY_ROOT ?? root;
      const env = { ...process.env, PORTWAY_DIST: join(base, "dist") };
      say(`node ${join(base, "bench", script)} ${[...args(k), "--json", jsonFile].join(" ")}`);
      // In its own process group: if the script dies half-way, what it started (nats-servers, hubs) goes with it.
      const child = spawn(process.execPath, [join(base, "bench", script), ...args(k), "--json", jsonFile], { cwd: base, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.on("data", (c) => (out += c));
      child.stderr.on("data", (c) => (err += c));
      const closed = once(child, "close");
      const [code, signal] = await once(child, "exit");
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {
        // nothing left in the group
      }
      // All output read (bounded: a leftover that kept the pipes open has just been told to stop).
      await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
      if (code !== 0) throw new Error(`bench/${script} exited with ${code ?? signal}: ${err.trim().slice(-1500)}`);
      const stdout = out;
      const json = readFileSync(jsonFile, "utf8");
      const report = JSON.parse(json);
      const rest = stdout.startsWith(json) ? stdout.slice(json.length) : (report.markdown ?? "");
      return { report: { ...report, markdown: undefined }, markdown: rest.trim() };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
  render: ({ figures }) => [
    ...figures.markdown
      .replace(/^#+\s*(.*)\n?/, (_, heading) => (heading.trim() === title ? "" : `${heading}\n`))
      .trim()
      .split("\n"),
    "",
  ],
  targets: (result) => targets(result.figures.report),
});

const clusterSection = scriptSection({
  name: "cluster",
  title: "Event log on a 3-node NATS cluster: R3 vs R1",
  script: "cluster-events.mjs",
  knobs: () => ({ BENCH_CLUSTER_EVENTS: env("BENCH_CLUSTER_EVENTS", 200_000), BENCH_CLUSTER_ROUNDS: env("BENCH_CLUSTER_ROUNDS", 3) }),
  args: (k) => ["--events", String(k.BENCH_CLUSTER_EVENTS), "--rounds", String(k.BENCH_CLUSTER_ROUNDS)],
  // Issue 5 asks for the figures, not a bound.
  targets: () => [],
});

const failoverSection = scriptSection({
  name: "failover",
  title: "Failover between hubs",
  script: "failover.mjs",
  knobs: () => ({ BENCH_FAILOVER_KILLS: env("BENCH_FAILOVER_KILLS", 20), BENCH_FAILOVER_MODE: process.env.BENCH_FAILOVER_MODE ?? "both" }),
  args: (k) => ["--kills", String(k.BENCH_FAILOVER_KILLS), "--mode", k.BENCH_FAILOVER_MODE],
  targets: (report) =>
    Object.entries(report.summary ?? {}).flatMap(([mode, s]) => [
      {
        target: `(issue 5) detection ≤ 3 s after the owning hub fails (${mode === "kill" ? "SIGKILL" : "SIGSTOP"})`,
        measured: `${s.within3sDetection}/${s.kills} within 3 s; p99 ${s.detectionMs?.p99} ms, max ${s.detectionMs?.max} ms`,
        ok: s.kills > 0 ? s.within3sDetection === s.kills : undefined,
      },
      {
        target: `(issue 5) new connections accepted again ≤ 5 s after the hub's death (${mode === "kill" ? "SIGKILL" : "SIGSTOP"})`,
        measured: `${s.within5sService}/${s.kills} within 5 s; p99 ${s.firstSuccessMs?.p99} ms, max ${s.firstSuccessMs?.max} ms`,
        ok: s.kills > 0 ? s.within5sService === s.kills : undefined,
      },
    ]),
});

const SECTIONS = [tcpSection, idleSection, eventsSection, udpSection, quicSection, clusterSection, failoverSection];

// ---------------------------------------------------------------------------------------------------------------
// Running sections, storing their results, and rebuilding the document.

const selected = () => {
  const argv = process.argv.slice(2);
  if (argv.includes("--list")) {
    for (const s of SECTIONS) process.stdout.write(`${s.name}\t${s.title}\n`);
    process.exit(0);
  }
  let raw = process.env.BENCH_ONLY;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--only" && i + 1 < argv.length) raw = argv[++i];
    else if (argv[i].startsWith("--only=")) raw = argv[i].slice("--only=".length);
    else if (argv[i] === "--render") return [];
    else throw new Error(`unknown argument ${argv[i]} (use --only SECTION,… or --list)`);
  }
  if (!raw) return SECTIONS;
  const names = raw.split(",").map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !SECTIONS.some((s) => s.name === n));
  if (unknown.length > 0) throw new Error(`unknown section ${unknown.join(", ")}; sections: ${SECTIONS.map((s) => s.name).join(", ")}`);
  return SECTIONS.filter((s) => names.includes(s.name));
};

const resultPath = (name) => join(RESULTS, `${name}.json`);
const loadResult = (name) => {
  try {
    return JSON.parse(readFileSync(resultPath(name), "utf8"));
  } catch {
    return undefined;
  }
};

/** Runs one section; returns its result, or undefined when its setup failed (then the old result stays). */
const runSection = async (section) => {
  const knobs = section.knobs();
  const errors = [];
  const stack = [];
  const track = (thing) => {
    stack.push(() => thing.stop());
    return thing;
  };
  /** Runs one measurement; a failure is recorded in the report instead of aborting the section. */
  const attempt = async (label, fn) => {
    log(label);
    try {
      return await fn();
    } catch (error) {
      log(`${label} failed: ${error.message}`);
      errors.push(`${label}: ${error.message}`);
      return undefined;
    }
  };
  const date = new Date().toISOString();
  const loadBefore = loadavg()[0];
  log(`section ${section.name}: ${section.title} (${JSON.stringify(knobs)})`);
  try {
    const figures = await section.run({ knobs, attempt, track, log });
    return { section: section.name, date, loadBefore, loadAfter: loadavg()[0], machine: machine(), code: code(), knobs, errors, figures };
  } catch (error) {
    log(`section ${section.name} aborted, its previous figures stay: ${error.stack ?? error.message}`);
    return undefined;
  } finally {
    while (stack.length > 0) await stack.pop()().catch((e) => log(`cleanup: ${e.message}`));
  }
};

/**
 * From the current document: the blocks between `<!-- section:NAME -->` and `<!-- /section:NAME -->`, and the
 * Targets rows per section (`| target | section | measured | verdict |`), for sections that have no results file.
 */
const oldDocument = () => {
  const blocks = new Map();
  const rows = new Map();
  if (!existsSync(OUT)) return { blocks, rows };
  const text = readFileSync(OUT, "utf8");
  for (const m of text.matchAll(/<!-- section:([\w-]+) -->\n([\s\S]*?)<!-- \/section:\1 -->/g)) blocks.set(m[1], m[2]);
  const targets = text.split("\n## Targets")[1] ?? "";
  for (const line of targets.split("\n")) {
    const cells = line.split(" | ");
    if (cells.length === 4 && blocks.has(cells[1])) rows.set(cells[1], [...(rows.get(cells[1]) ?? []), line]);
  }
  return { blocks, rows };
};

/** ok: true met, false missed, null inconclusive (the baseline was noisier than the path), undefined not measured. */
const verdict = (ok) => (ok === undefined ? "not measured" : ok === null ? "inconclusive (the baseline was noisier than the difference; rerun)" : ok ? "**met**" : "**missed**");

/** A hand-written analysis kept next to the figures (bench/results/<name>.notes.md), included under the section. */
const notes = (name) => {
  const path = join(RESULTS, `${name}.notes.md`);
  return existsSync(path) ? readFileSync(path, "utf8").trimEnd().split("\n") : [];
};

const renderSection = (section, result) => {
  const lines = [];
  const at = result.code ? (result.code.portwayRoot ? `, hub and edge from a built snapshot of ${result.code.commit}` : ` at commit ${result.code.commit}`) : "";
  lines.push(`Measured ${result.date}${at} (section \`${section.name}\`); 1-minute load average ${fmt(result.loadBefore)} at its start, ${fmt(result.loadAfter)} at its end.`);
  lines.push(`Knobs: ${Object.entries(result.knobs).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`).join(", ")}. Rerun alone: \`npm run bench -- --only ${section.name}\`.`, "");
  lines.push(...section.render(result));
  const extra = notes(section.name);
  if (extra.length > 0) lines.push(...extra, "");
  if (result.errors.length > 0) {
    lines.push("Errors during this section's run:", "");
    for (const e of result.errors) lines.push(`- ${e.replaceAll("\n", " ")}`);
    lines.push("");
  }
  return lines;
};

const report = (m, ran) => {
  const { blocks, rows: oldRows } = oldDocument();
  const lines = [];
  lines.push("# Performance", "");
  lines.push("Written by `bench/run.mjs` (do not edit by hand; rerun it). Each section's figures come from its last run, kept in");
  lines.push("`bench/results/<section>.json`; a section's date and load average are given with it; the written analyses come from");
  lines.push("`bench/results/<section>.notes.md` (edit those, then `node bench/run.mjs --render`). Compare ratios within a");
  lines.push("section (every figure has its direct-loopback baseline measured in the same run, rounds interleaved) rather than");
  lines.push("absolute numbers across runs or machines.", "");
  lines.push("## Machine", "");
  lines.push(`- CPU: ${m.cpu}, nproc ${m.nproc}, memory ${m.memGiB} GiB`);
  lines.push(`- kernel: ${m.kernel}; Node ${m.node}`);
  lines.push("- a shared machine: other builds and tests run at the same time (see each section's load average)");
  lines.push("- everything on loopback: clients, hub, edge and targets share the same cores", "");
  lines.push("## Reproduce", "");
  lines.push("```sh");
  lines.push("npm run bench                          # every section (= node scripts/setup.mjs --with-peers && node bench/run.mjs)");
  lines.push("npm run bench -- --only udp,quic       # some sections; the others keep their last figures");
  lines.push("BENCH_ONLY=udp BENCH_ROUNDS=5 node bench/run.mjs");
  lines.push("node bench/run.mjs --list              # the sections");
  lines.push("node bench/run.mjs --render            # rebuild this file from bench/results/*.json, measuring nothing");
  lines.push("node bench/udp-profile.mjs --transport quic --rate 50000 --size 1200   # where UDP time goes (perf, per-thread CPU)");
  lines.push("node bench/udp-profile.mjs --counters --transport quic --rate 50000 --size 1200   # where datagrams are lost (addon counters)");
  lines.push("node bench/udp-replies.mjs --rates 100000,150000 --sizes 64,1200   # the reply direction (target → hub → edge → client)");
  lines.push("```", "");
  lines.push(`Sections: ${SECTIONS.map((s) => `\`${s.name}\``).join(", ")}. Knobs are environment variables, listed at the top of bench/run.mjs.`);
  lines.push("While other work rebuilds the tree, run hub and edge from a built copy: `BENCH_PORTWAY_ROOT=/path/to/copy` (its");
  lines.push("`bin/`, `dist/`, `native/index.node`; a `.commit` file there says what it was built from). The UDP section compiles");
  lines.push("`bench/udp-load.c` with `cc`.", "");
  const targets = [];
  for (const section of SECTIONS) {
    const result = ran.get(section.name) ?? loadResult(section.name);
    lines.push(`## ${section.title}`, "", `<!-- section:${section.name} -->`);
    if (result) {
      lines.push(...renderSection(section, result));
      for (const t of section.targets(result)) targets.push({ ...t, section: section.name });
    } else if (blocks.has(section.name)) {
      lines.push(blocks.get(section.name).trimEnd(), "");
      for (const row of oldRows.get(section.name) ?? []) targets.push({ row });
    } else {
      lines.push(`Not measured yet: \`npm run bench -- --only ${section.name}\`.`, "");
    }
    lines.push(`<!-- /section:${section.name} -->`, "");
  }
  lines.push("## Targets", "");
  lines.push("From every section's last figures (the section is named; its date is above).", "");
  lines.push("| target | section | measured | verdict |", "| --- | --- | --- | --- |");
  for (const t of targets) lines.push(t.row ?? `| ${t.target} | ${t.section} | ${t.measured} | ${verdict(t.ok)} |`);
  lines.push("");
  return lines.join("\n");
};

const main = async () => {
  const sections = selected();
  const m = machine();
  log(`machine: ${JSON.stringify(m)}; sections: ${sections.map((s) => s.name).join(", ")}`);
  mkdirSync(RESULTS, { recursive: true });
  const ran = new Map();
  for (const section of sections) {
    const result = await runSection(section);
    if (result) {
      ran.set(section.name, result);
      writeFileSync(resultPath(section.name), `${JSON.stringify(result, null, 1)}\n`);
      log(`wrote ${resultPath(section.name)}`);
    }
  }
  const text = report(m, ran);
  writeFileSync(OUT, text);
  process.stdout.write(`${text}\n`);
  log(`wrote ${OUT}`);
};

await main();
