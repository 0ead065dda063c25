#!/usr/bin/env node
// The reply direction of UDP: target → hub → edge → client, which the `udp` section does not measure (it sends
// client → target). One reflector (`udp-load reflect`: waits for a datagram, then sends numbered datagrams back to
// its source at a paced rate) and one counting sink as the client, against direct loopback (reflector → sink) in
// the same run; CLI hub and edge per transport, PROXY header off, events on. Not part of `npm run bench`; the udp
// section of docs/performance.md quotes its output.
//
//   node bench/udp-replies.mjs [--rates 50000,100000,150000] [--sizes 64,1200] [--seconds 2] [--rounds 2]
//                              [--transports tcpTls,quic]
import { parseArgs } from "node:util";
import { median } from "./measure.mjs";
import { freeUdpPort } from "./processes.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";
import { buildUdpLoad, reflect, startUdpSink, udpRun } from "./udp.mjs";

const { values: opts } = parseArgs({
  options: {
    rates: { type: "string", default: "50000,100000,150000" },
    sizes: { type: "string", default: "64,1200" },
    seconds: { type: "string", default: "2" },
    rounds: { type: "string", default: "2" },
    transports: { type: "string", default: "tcpTls,quic" },
  },
});
const numbers = (s) => s.split(",").map(Number);
const seconds = Number(opts.seconds);

const load = buildUdpLoad();
const { bin } = load;
const sink = await startUdpSink(bin);
const paths = [{ name: "direct", port: 0, warmPort: undefined, pids: {} }];
const tunnels = [];
try {
  for (const transport of opts.transports.split(",")) {
    const port = await freeUdpPort();
    const tunnel = await startTunnelCli({ udpRoutes: [{ target: `127.0.0.1:${port}` }], transport });
    tunnels.push(tunnel);
    paths.push({ name: transport, port, warmPort: tunnel.listenPortsUdp[0], pids: { edge: tunnel.edgePid, hub: tunnel.hubPid } });
  }
  const results = [];
  for (let round = 1; round <= Number(opts.rounds); round++) {
    for (const size of numbers(opts.sizes)) {
      for (const rate of numbers(opts.rates)) {
        for (const path of paths) {
          const r = await udpRun({
            bin,
            sink,
            pids: { ...path.pids, sink: sink.pid },
            drive: () => reflect(bin, sink, { port: path.port, warmPort: path.warmPort, rate, seconds, size }),
          });
          process.stderr.write(`[${round}] ${size} B ${rate} pps ${path.name}: ${r.deliveredPps.toFixed(0)} pps, loss ${r.lossPct.toFixed(3)} %\n`);
          results.push({ size, rate, path: path.name, ...r });
        }
      }
    }
  }
  console.log(`Replies (target → hub → edge → client), ${opts.rounds} rounds of ${seconds} s, median (range):\n`);
  console.log("| size | offered | path | delivered pps | loss % | CPU µs/datagram: sender | edge | hub | sink | all |");
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  const fmt = (xs, d) => `${median(xs).toFixed(d)} (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;
  const cpu = (rs, k) => (rs.every((r) => typeof r.cpuUsPerPacket[k] === "number") ? median(rs.map((r) => r.cpuUsPerPacket[k])).toFixed(1) : "-");
  for (const size of numbers(opts.sizes)) {
    for (const rate of numbers(opts.rates)) {
      for (const path of paths) {
        const rs = results.filter((r) => r.size === size && r.rate === rate && r.path === path.name);
        const cells = [`${size} B`, `${rate} pps`, path.name, fmt(rs.map((r) => r.deliveredPps), 0), fmt(rs.map((r) => r.lossPct), 3)];
        cells.push(...["sender", "edge", "hub", "sink", "all"].map((k) => cpu(rs, k)));
        console.log(`| ${cells.join(" | ")} |`);
      }
    }
  }
} finally {
  for (const t of tunnels) await t.stop();
  await sink.stop();
  await load.stop();
}
