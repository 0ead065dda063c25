#!/usr/bin/env node
// Where the time goes when UDP runs through the tunnel: one CLI tunnel, one sender at a fixed rate, and per process
// (edge, hub) CPU per datagram, threads by CPU, the kernel's UDP drop counters and, when `perf` is installed, the
// hottest symbols (perf record -e cpu-clock, by self time). Not part of `npm run bench`; the udp section of
// docs/performance.md quotes its output.
//
//   node bench/udp-profile.mjs [--transport tcpTls|quic] [--rate PPS (0 = max)] [--size BYTES] [--seconds S] [--no-perf]
//   node bench/udp-profile.mjs --counters [--transport …] [--rate …] [--size …] [--seconds …]
//
// --counters runs hub and edge in this process through the library (RemoteIngressHub/RemoteIngressEdge, events off,
// one addon runtime like native/examples/measure) instead of CLI processes, to read the addon's own counters from
// getStatus() before and after the run: which side dropped how many datagrams (udpDropped: a full queue or socket
// buffer inside the tunnel; udpOversized; udpRefused), next to the kernel's RcvbufErrors. Uses the dist/ of
// BENCH_PORTWAY_ROOT when set.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { cpuSecondsOf } from "./measure.mjs";
import { freePort, freeUdpPort, root } from "./processes.mjs";
import { buildUdpLoad, startUdpSink, udpRun } from "./udp.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";

const { values: opts } = parseArgs({
  options: {
    transport: { type: "string", default: "tcpTls" },
    rate: { type: "string", default: "100000" },
    size: { type: "string", default: "64" },
    seconds: { type: "string", default: "4" },
    "no-perf": { type: "boolean", default: false },
    counters: { type: "boolean", default: false },
  },
});
const rate = Number(opts.rate);
const size = Number(opts.size);
const seconds = Number(opts.seconds);

/** CPU seconds per thread (name → seconds) of a process, from /proc/<pid>/task/<tid>/stat. */
const threadCpu = (pid) => {
  const out = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const f = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
      out[name] = (out[name] ?? 0) + (Number(f[11]) + Number(f[12])) / 100;
    } catch {
      // thread ended
    }
  }
  return out;
};

/** Hub and edge in this process, events off; returns the UDP port, and their counters on demand. */
const startInProcess = async (sinkPort) => {
  const dist = join(process.env.BENCH_PORTWAY_ROOT ?? root, "dist", "index.js");
  const { RemoteIngressHub, RemoteIngressEdge } = await import(pathToFileURL(dist).href);
  const dataDir = mkdtempSync(join(tmpdir(), "portway-udp-profile-"));
  const port = await freeUdpPort();
  const hub = new RemoteIngressHub();
  await hub.start({ tunnelPort: await freePort({ udp: true }), bindHost: "127.0.0.1", events: false, dataDir, proxyProtocol: { tcp: "none", udp: "none" } });
  await hub.updateAllowedEdges([{ id: "e1", secret: "s", listenPortsUdp: [port], targets: { [port]: `127.0.0.1:${sinkPort}` } }]);
  const hs = await hub.getStatus();
  const edge = new RemoteIngressEdge();
  await edge.start({ hubHost: "127.0.0.1", hubPort: hs.tunnelPort, edgeId: "e1", secret: "s", hubCertFingerprint: hs.hubFingerprint, bindAddress: "127.0.0.1", transportMode: opts.transport });
  const deadline = Date.now() + 15_000;
  while (!((await edge.getStatus()).listenPortsUdp ?? []).includes(port)) {
    if (Date.now() > deadline) throw new Error("edge did not open its UDP port");
    await new Promise((r) => setTimeout(r, 50));
  }
  const counters = async () => {
    const e = await edge.getStatus();
    const h = (await hub.getStatus()).connectedEdges.find((c) => c.edgeId === "e1") ?? {};
    return { edgeDropped: e.udpDropped ?? 0, edgeOversized: e.udpOversized ?? 0, hubDropped: h.udpDropped ?? 0, hubOversized: h.udpOversized ?? 0, hubRefused: h.udpRefused ?? 0 };
  };
  return {
    port,
    transport: (await edge.getStatus()).transport,
    counters,
    stop: async () => {
      await edge.stop();
      await hub.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
};

if (opts.counters) {
  const load = buildUdpLoad();
  const { bin } = load;
  const sink = await startUdpSink(bin);
  const tunnel = await startInProcess(sink.port);
  try {
    await udpRun({ bin, sink, port: tunnel.port, rate: 10_000, seconds: 1, size });
    const before = await tunnel.counters();
    const r = await udpRun({ bin, sink, port: tunnel.port, rate, seconds, size, pids: { "hub+edge": process.pid } });
    const after = await tunnel.counters();
    const delta = Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
    const lost = r.sent - r.received;
    console.log(`${tunnel.transport} (hub and edge in one process), ${size}-byte datagrams, offered ${rate || "max"} pps for ${seconds} s:`);
    console.log(`  sent ${r.sent}, received ${r.received} (${r.deliveredPps.toFixed(0)} pps), lost ${lost} (${r.lossPct.toFixed(3)} %)`);
    console.log(`  counted by the addon: edge udpDropped ${delta.edgeDropped}, hub udpDropped ${delta.hubDropped}, oversized ${delta.edgeOversized + delta.hubOversized}, refused ${delta.hubRefused}`);
    console.log(`  kernel RcvbufErrors +${r.rcvbufErrors} (system-wide: the edge listener, the tunnel's QUIC sockets, the hub upstream socket, the sink)`);
    console.log(`  not counted by either: ${lost - delta.edgeDropped - delta.hubDropped - r.rcvbufErrors}`);
    console.log(`  hub+edge: ${r.cpuUsPerPacket["hub+edge"]?.toFixed(2)} µs CPU per delivered datagram (includes this process's polling)`);
  } finally {
    await tunnel.stop();
    await sink.stop();
    await load.stop();
  }
  process.exit(0);
}

const perfAvailable = !opts["no-perf"] && existsSync("/usr/bin/perf");
const load = buildUdpLoad();
const { bin } = load;
const sink = await startUdpSink(bin);
const tunnel = await startTunnelCli({ udpRoutes: [{ target: `127.0.0.1:${sink.port}` }], transport: opts.transport });
try {
  const pids = { edge: tunnel.edgePid, hub: tunnel.hubPid };
  // Warm the session and the tunnel once, so the profile sees the steady state.
  await udpRun({ bin, sink, port: tunnel.listenPortsUdp[0], rate: 10_000, seconds: 1, size });
  const threadsBefore = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, threadCpu(pid)]));
  const perfs = [];
  if (perfAvailable) {
    for (const [name, pid] of Object.entries(pids)) {
      const data = `/tmp/portway-udp-profile-${name}.data`;
      const child = spawn("perf", ["record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p", String(pid), "-o", data, "--", "sleep", String(seconds + 1)], { stdio: "ignore" });
      perfs.push({ name, data, done: new Promise((r) => child.once("exit", r)) });
    }
  }
  const r = await udpRun({ bin, sink, port: tunnel.listenPortsUdp[0], rate, seconds, size, pids });
  await Promise.all(perfs.map((p) => p.done));
  const threadsAfter = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, threadCpu(pid)]));
  console.log(`${opts.transport}, ${size}-byte datagrams, offered ${rate || "max"} pps for ${seconds} s:`);
  console.log(`  sent ${r.sent}, received ${r.received} (${r.deliveredPps.toFixed(0)} pps), loss ${r.lossPct.toFixed(3)} %, kernel RcvbufErrors +${r.rcvbufErrors}, SndbufErrors +${r.sndbufErrors}`);
  for (const [k, us] of Object.entries(r.cpuUsPerPacket)) console.log(`  ${k}: ${us?.toFixed(2)} µs CPU per delivered datagram`);
  for (const k of Object.keys(pids)) {
    const busy = Object.entries(threadsAfter[k])
      .map(([name, s]) => [name, s - (threadsBefore[k][name] ?? 0)])
      .filter(([, s]) => s > 0.02)
      .sort((a, b) => b[1] - a[1])
      .map(([name, s]) => `${name} ${((100 * s) / seconds).toFixed(0)} %`);
    console.log(`  ${k} threads (% of one core): ${busy.join(", ")}`);
  }
  for (const p of perfs) {
    if (!existsSync(p.data)) continue;
    const report = execFileSync("perf", ["report", "-i", p.data, "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "1.5"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      maxBuffer: 64 * 1024 * 1024,
    });
    console.log(`  ${p.name}, perf top symbols by self time:`);
    for (const line of report.split("\n").filter((l) => /^\s+\d+\.\d+%/.test(l))) console.log(`    ${line.trim().replace(/\s+/g, " ")}`);
  }
  console.log(`  (cpu ${JSON.stringify(Object.fromEntries(await Promise.all(Object.entries(pids).map(async ([k, pid]) => [k, await cpuSecondsOf(pid)]))))} s total)`);
} finally {
  await tunnel.stop();
  await sink.stop();
  await load.stop();
}
