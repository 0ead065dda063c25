// The `quic` bench section: TCP through the tunnel over QUIC (one QUIC stream per TCP stream) against the same over
// TLS (frames on one TLS connection) and direct loopback: iperf3 bulk throughput and open-loop request/response
// latency, in the same run with rounds interleaved. Hub and edges are the real CLI processes. Used by bench/run.mjs.
import { iperf3, latency, median } from "./measure.mjs";
import { startEchoServer, startIperfServer } from "./processes.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";

const env = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback);
const TRANSPORTS = ["tcpTls", "quic"];
const LATENCY_RATE = 1000;

export const quicSection = {
  name: "quic",
  title: "TCP over QUIC vs TLS",
  knobs: () => ({
    BENCH_ROUNDS: env("BENCH_ROUNDS", 3),
    BENCH_SECONDS: env("BENCH_SECONDS", 5),
    BENCH_LATENCY_SECONDS: env("BENCH_LATENCY_SECONDS", 5),
  }),
  run: async ({ knobs, attempt, track }) => {
    const { BENCH_ROUNDS: rounds, BENCH_SECONDS: seconds, BENCH_LATENCY_SECONDS: latencySeconds } = knobs;
    const iperfServer = track(await startIperfServer());
    const echo = track(await startEchoServer());
    const paths = [{ name: "direct", iperf: iperfServer.port, echo: echo.port }];
    for (const transport of TRANSPORTS) {
      const t = track(await startTunnelCli({ routes: [{ target: `127.0.0.1:${iperfServer.port}` }, { target: `127.0.0.1:${echo.port}` }], transport }));
      paths.push({ name: transport, iperf: t.listenPorts[0], echo: t.listenPorts[1] });
    }
    const throughput = [];
    const lat = [];
    for (let round = 1; round <= rounds; round++) {
      for (const parallel of [1, 4]) {
        for (const path of paths) {
          const gbps = await attempt(`[${round}/${rounds}] iperf3 -P ${parallel} via ${path.name}`, () => iperf3({ port: path.iperf, seconds, parallel }));
          if (gbps !== undefined) throughput.push({ round, path: path.name, parallel, gbps });
        }
      }
    }
    for (let round = 1; round <= rounds; round++) {
      for (const path of paths) {
        const r = await attempt(`[${round}/${rounds}] latency at ${LATENCY_RATE} req/s via ${path.name}`, () => latency({ port: path.echo, rate: LATENCY_RATE, seconds: latencySeconds }));
        if (r) lat.push({ round, path: path.name, ...r });
      }
    }
    return { paths: paths.map((p) => p.name), throughput, latency: lat, latencyRate: LATENCY_RATE };
  },
  render: (result) => renderQuic(result),
  targets: (result) => quicTargets(result),
};

const fmt = (v, digits = 2) => (v === undefined || Number.isNaN(v) ? "n/a" : v.toFixed(digits));
const spread = (values, digits) => {
  const ok = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  if (ok.length === 0) return "n/a";
  if (ok.length === 1) return fmt(ok[0], digits);
  return `${fmt(median(ok), digits)} (${fmt(Math.min(...ok), digits)}–${fmt(Math.max(...ok), digits)})`;
};

const tpRuns = (f, path, parallel) => f.throughput.filter((r) => r.path === path && r.parallel === parallel).map((r) => r.gbps);
const latRuns = (f, path) => f.latency.filter((r) => r.path === path);
const added = (f, path, key) => {
  const d = median(latRuns(f, "direct").map((r) => r[key]));
  const t = median(latRuns(f, path).map((r) => r[key]));
  return d === undefined || t === undefined ? undefined : t - d;
};

const renderQuic = ({ figures: f, knobs }) => {
  const lines = [];
  lines.push("Two CLI tunnels side by side, identical but for the edge's `--transport`: **tcpTls** = every TCP stream is frames on one");
  lines.push("TLS 1.3 connection over TCP (the default); **quic** = every TCP stream is its own QUIC stream (quinn). PROXY protocol off,");
  lines.push(`events on. ${knobs.BENCH_ROUNDS} rounds, paths interleaved; median of rounds, range in brackets.`, "");
  lines.push(`Bulk: \`iperf3 -c 127.0.0.1 -p PORT -t ${knobs.BENCH_SECONDS} [-P 4]\`, receiver-side rate.`, "");
  lines.push("| streams | path | Gbit/s | vs direct |", "| --- | --- | --- | --- |");
  for (const parallel of [1, 4]) {
    const d = median(tpRuns(f, "direct", parallel));
    for (const path of f.paths) {
      const runs = tpRuns(f, path, parallel);
      const vs = path === "direct" || !d ? "" : `${fmt((100 * median(runs)) / d, 1)} %`;
      lines.push(`| ${parallel} | ${path} | ${spread(runs, 2)} | ${vs} |`);
    }
  }
  lines.push("");
  lines.push(`Latency: one connection, a 64-byte request every 1 ms (${f.latencyRate} req/s, open loop) for ${knobs.BENCH_LATENCY_SECONDS} s; write → full echo.`, "");
  lines.push("| path | p50 µs | p99 µs | max µs | answered | added p50 µs | added p99 µs |", "| --- | --- | --- | --- | --- | --- | --- |");
  for (const path of f.paths) {
    const runs = latRuns(f, path);
    const answered = runs.reduce((n, r) => n + (r.answered ?? 0), 0);
    const requests = runs.reduce((n, r) => n + (r.requests ?? 0), 0);
    const max = runs.length > 0 ? Math.max(...runs.map((r) => r.maxUs ?? Number.NaN)) : undefined;
    const a50 = path === "direct" ? "" : fmt(added(f, path, "p50Us"), 0);
    const a99 = path === "direct" ? "" : fmt(added(f, path, "p99Us"), 0);
    lines.push(`| ${path} | ${spread(runs.map((r) => r.p50Us), 0)} | ${spread(runs.map((r) => r.p99Us), 0)} | ${fmt(max, 0)} | ${answered}/${requests} | ${a50} | ${a99} |`);
  }
  lines.push("", "Added = median of the path − median of direct.", "");
  return lines;
};

const quicTargets = ({ figures: f }) => {
  const rows = [];
  const d = median(tpRuns(f, "direct", 1));
  for (const transport of ["quic"]) {
    const t = median(tpRuns(f, transport, 1));
    const ratio = t && d ? t / d : undefined;
    rows.push({
      target: `(issue 2 target applied to ${transport}) bulk throughput ≥ 20 % of direct loopback (1 stream)`,
      measured: ratio === undefined ? "n/a" : `${fmt(100 * ratio, 1)} % (tcpTls in the same run: ${d ? fmt((100 * median(tpRuns(f, "tcpTls", 1))) / d, 1) : "n/a"} %)`,
      ok: ratio === undefined ? undefined : ratio >= 0.2,
    });
    const a99 = added(f, transport, "p99Us");
    rows.push({
      target: `(issue 2 target applied to ${transport}) added p99 ≤ 1 ms at 1,000 req/s`,
      measured: a99 === undefined ? "n/a" : `${fmt(a99 / 1000, 3)} ms (tcpTls: ${fmt((added(f, "tcpTls", "p99Us") ?? Number.NaN) / 1000, 3)} ms)`,
      ok: a99 === undefined ? undefined : a99 < 0 ? null : a99 <= 1000,
    });
  }
  return rows;
};
