#!/usr/bin/env node
// Where the time goes when UDP runs through the tunnel: one CLI tunnel, one sender at a fixed rate, and per process
// (edge, hub) CPU per datagram, threads by CPU, the kernel's UDP drop counters and, when `perf` is installed, the
// hottest symbols (perf record -e cpu-clock, by self time). Not part of `npm run bench`; the udp section of
// docs/performance.md quotes its output.
//
//   node bench/udp-profile.mjs [--transport tcpTls|quic] [--rate PPS (0 = max)] [--size BYTES] [--seconds S] [--no-perf]
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { cpuSecondsOf } from "./measure.mjs";
import { buildUdpLoad, startUdpSink, udpRun } from "./udp.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";

const { values: opts } = parseArgs({
  options: {
    transport: { type: "string", default: "tcpTls" },
    rate: { type: "string", default: "100000" },
    size: { type: "string", default: "64" },
    seconds: { type: "string", default: "4" },
    "no-perf": { type: "boolean", default: false },
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

const perfAvailable = !opts["no-perf"] && existsSync("/usr/bin/perf");
const { bin } = buildUdpLoad();
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
}
