// The `udp` bench section: UDP datagrams per second and loss at increasing send rates, through the tunnel over
// both transports (tcpTls: UDP frames on the TLS connection; quic: QUIC datagrams) against direct loopback, all in
// the same run with rounds interleaved. Hub and edge are the real CLI processes (bench/tunnel-cli.mjs); sender and
// sink are bench/udp-load.c (sendmmsg/recvmmsg), compiled on first use. Used by bench/run.mjs.
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { cpuSecondsOf, median, udpCounters } from "./measure.mjs";
import { root } from "./processes.mjs";
import { startTunnelCli } from "./tunnel-cli.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Compiles bench/udp-load.c with the system C compiler (Rust's toolchain needs one anyway) into a temp dir. */
export const buildUdpLoad = () => {
  const dir = mkdtempSync(join(tmpdir(), "portway-udp-load-"));
  const bin = join(dir, "udp-load");
  try {
    execFileSync("cc", ["-O2", "-o", bin, join(root, "bench", "udp-load.c")], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (error) {
    throw new Error(`cannot compile bench/udp-load.c with cc (apt-get install -y gcc): ${error.stderr?.toString() ?? error.message}`);
  }
  return { bin, dir, stop: async () => rmSync(dir, { recursive: true, force: true }) };
};

/** The counting sink: `zero()` before a run, `read()` → { received, bytes, reordered }. */
export const startUdpSink = async (bin) => {
  const child = spawn(bin, ["sink"], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  lines.on("line", (line) => waiting.shift()?.(line));
  const next = () => new Promise((resolve) => waiting.push(resolve));
  const first = await Promise.race([next(), once(child, "exit").then(() => "exited")]);
  const match = /^listening (\d+)$/.exec(first);
  if (!match) throw new Error(`udp-load sink did not start: ${first}`);
  const command = async (cmd) => {
    const reply = next();
    child.stdin.write(`${cmd}\n`);
    return reply;
  };
  return {
    port: Number(match[1]),
    pid: child.pid,
    zero: () => command("z"),
    read: async () => JSON.parse(await command("r")),
    /** Sends 3 warm-up datagrams from the sink's socket to 127.0.0.1:`port` (opens a session for replies). */
    warm: (port) => command(`w ${port}`),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = once(child, "exit");
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 2_000);
      await gone;
      clearTimeout(timer);
    },
  };
};

/** Runs `udp-load ARGS…` to its end; resolves with its JSON summary. `onLine` sees each stdout line as it comes. */
const runLoad = (bin, args, onLine = () => {}) =>
  new Promise((resolve, reject) => {
    const child = spawn(bin, args.map(String), { stdio: ["ignore", "pipe", "pipe"] });
    createInterface({ input: child.stdout }).on("line", onLine);
    let out = "";
    let err = "";
    child.stdout.on("data", (c) => (out += c));
    child.stderr.on("data", (c) => (err += c));
    child.once("error", reject);
    child.once("exit", (code) => {
      try {
        if (code !== 0) throw new Error(`exit ${code}`);
        resolve(JSON.parse(out.trim().split("\n").at(-1)));
      } catch (error) {
        reject(new Error(`udp-load ${args[0]} failed (${error.message}): ${err || out}`));
      }
    });
  });

const send = (bin, { port, rate, seconds, size }) => runLoad(bin, ["send", "127.0.0.1", port, rate, seconds, size]);

/**
 * The reply direction: `udp-load reflect` binds `port` (0 = any), the sink sends a warm-up datagram to `warmPort`
 * (the reflector itself, or an edge port whose tunnel target is the reflector) every 250 ms until the reflector has
 * one, and the reflector then sends to whoever reached it. Resolves like `send`.
 */
export const reflect = (bin, sink, { port, warmPort, rate, seconds, size }) =>
  new Promise((resolve, reject) => {
    let timer;
    const done = runLoad(bin, ["reflect", port, rate, seconds, size], (line) => {
      const m = /^listening (\d+)$/.exec(line);
      if (m) {
        const warm = () => sink.warm(warmPort ?? Number(m[1])).catch(reject);
        warm();
        timer = setInterval(warm, 250);
      } else if (line === "started") clearInterval(timer);
    });
    done.then(resolve, reject).finally(() => clearInterval(timer));
  });

/**
 * One run: zero the sink, send for `seconds` at `rate` (0 = as fast as possible) to `port` (or run `drive`), wait until the sink
 * stops counting, and return what arrived, with the CPU the hub and edge used per delivered datagram and the
 * kernel's system-wide UDP buffer-drop counters over the run.
 */
export const udpRun = async ({ bin, sink, port, rate, seconds, size, pids = {}, drive = () => send(bin, { port, rate, seconds, size }) }) => {
  await sink.zero();
  const cpuBefore = {};
  for (const [k, pid] of Object.entries(pids)) cpuBefore[k] = await cpuSecondsOf(pid);
  const snmpBefore = await udpCounters();
  const { sent, seconds: sendSeconds, cpuSeconds: senderCpu } = await drive();
  // Drain: done when the count has not moved for 300 ms (datagrams queued in the edge, tunnel and hub arrive late).
  let last = (await sink.read()).received;
  for (let i = 0; i < 50; i++) {
    await sleep(300);
    const now = (await sink.read()).received;
    if (now === last) break;
    last = now;
  }
  const got = await sink.read();
  const snmpAfter = await udpCounters();
  const cpuUsPerPacket = {};
  for (const [k, pid] of Object.entries(pids)) {
    cpuUsPerPacket[k] = got.received > 0 ? (((await cpuSecondsOf(pid)) - cpuBefore[k]) * 1e6) / got.received : undefined;
  }
  if (got.received > 0 && typeof senderCpu === "number") cpuUsPerPacket.sender = (senderCpu * 1e6) / got.received;
  // Every process on the path: what one delivered datagram costs the machine, whatever else it is doing.
  cpuUsPerPacket.all = Object.values(cpuUsPerPacket).reduce((a, b) => a + (b ?? 0), 0);
  return {
    sent,
    received: got.received,
    reordered: got.reordered,
    seconds: sendSeconds,
    offeredPps: sent / sendSeconds,
    deliveredPps: got.received / sendSeconds,
    lossPct: sent > 0 ? (100 * Math.max(0, sent - got.received)) / sent : undefined,
    cpuUsPerPacket,
    rcvbufErrors: (snmpAfter.RcvbufErrors ?? 0) - (snmpBefore.RcvbufErrors ?? 0),
    sndbufErrors: (snmpAfter.SndbufErrors ?? 0) - (snmpBefore.SndbufErrors ?? 0),
  };
};

const env = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback);
const list = (name, fallback) => (process.env[name] ? process.env[name].split(",").map(Number) : fallback);

export const UDP_TARGET = { share: 0.5, maxLossPct: 0.1 };
const TRANSPORTS = ["tcpTls", "quic"];

export const udpSection = {
  name: "udp",
  title: "UDP datagrams per second and loss",
  knobs: () => ({
    BENCH_ROUNDS: env("BENCH_ROUNDS", 3),
    BENCH_UDP_SECONDS: env("BENCH_UDP_SECONDS", 2),
    BENCH_UDP_RATES: list("BENCH_UDP_RATES", [10_000, 25_000, 50_000, 100_000]),
    BENCH_UDP_SIZES: list("BENCH_UDP_SIZES", [64, 1200]),
  }),
  run: async ({ knobs, attempt, track, log }) => {
    const { BENCH_ROUNDS: rounds, BENCH_UDP_SECONDS: seconds, BENCH_UDP_RATES: rates, BENCH_UDP_SIZES: sizes } = knobs;
    const { bin } = track(buildUdpLoad());
    const sink = track(await startUdpSink(bin));
    const tunnels = {};
    for (const transport of TRANSPORTS) {
      tunnels[transport] = track(await startTunnelCli({ udpRoutes: [{ target: `127.0.0.1:${sink.port}` }], transport }));
    }
    const paths = [
      { name: "direct", port: sink.port, pids: { sink: sink.pid } },
      ...TRANSPORTS.map((t) => ({ name: t, port: tunnels[t].listenPortsUdp[0], pids: { edge: tunnels[t].edgePid, hub: tunnels[t].hubPid, sink: sink.pid } })),
    ];
    const runs = [];
    const one = async (round, size, rate, kind, path) => {
      const label = `[${round}/${rounds}] UDP ${size} B, ${kind === "max" ? "max rate" : `${rate} pps${kind === "half" ? " (½ direct max)" : ""}`} via ${path.name}`;
      const r = await attempt(label, () => udpRun({ bin, sink, port: path.port, rate, seconds, size, pids: path.pids }));
      if (r) {
        log(`  ${r.deliveredPps.toFixed(0)} pps delivered, loss ${r.lossPct.toFixed(3)} %`);
        runs.push({ round, size, kind, rate, path: path.name, ...r });
      }
      return r;
    };
    // Rounds interleave the paths (and sizes), so load from elsewhere on the machine hits all of them alike.
    for (let round = 1; round <= rounds; round++) {
      for (const size of sizes) {
        const maxes = {};
        for (const path of paths) maxes[path.name] = await one(round, size, 0, "max", path);
        for (const rate of rates) for (const path of paths) await one(round, size, rate, "fixed", path);
        // The target itself: each tunnel at half of what direct loopback delivered in this round.
        const directMax = maxes.direct?.deliveredPps;
        if (directMax) {
          const half = Math.round(directMax * UDP_TARGET.share);
          for (const path of paths.slice(1)) await one(round, size, half, "half", path);
        }
      }
    }
    return { runs, transports: TRANSPORTS, paths: paths.map((p) => p.name) };
  },
  render: (result) => renderUdp(result),
  targets: (result) => udpTargets(result),
};

const fmt = (v, digits = 0) => (v === undefined || Number.isNaN(v) ? "n/a" : v.toFixed(digits));
const spread = (values, digits = 0) => {
  const ok = values.filter((v) => typeof v === "number" && !Number.isNaN(v));
  if (ok.length === 0) return "n/a";
  if (ok.length === 1) return fmt(ok[0], digits);
  return `${fmt(median(ok), digits)} (${fmt(Math.min(...ok), digits)}–${fmt(Math.max(...ok), digits)})`;
};

const select = (runs, where) => runs.filter((r) => Object.entries(where).every(([k, v]) => r[k] === v));

/** Per transport and size: loss at ½ direct max (median of rounds), and the verdict. */
const udpVerdicts = ({ figures }) => {
  const out = [];
  const runs = figures?.runs ?? [];
  const sizes = [...new Set(runs.map((r) => r.size))];
  for (const size of sizes) {
    const directMax = median(select(runs, { size, kind: "max", path: "direct" }).map((r) => r.deliveredPps));
    for (const transport of figures.transports) {
      const half = select(runs, { size, kind: "half", path: transport });
      const loss = median(half.map((r) => r.lossPct));
      const delivered = median(half.map((r) => r.deliveredPps));
      const tunnelMax = median(select(runs, { size, kind: "max", path: transport }).map((r) => r.deliveredPps));
      // The highest fixed rate the tunnel carried with < 0.1 % loss (median of rounds).
      const clean = [...new Set(select(runs, { size, kind: "fixed", path: transport }).map((r) => r.rate))]
        .filter((rate) => (median(select(runs, { size, kind: "fixed", path: transport, rate }).map((r) => r.lossPct)) ?? 100) < UDP_TARGET.maxLossPct)
        .sort((a, b) => b - a)[0];
      // Load-independent: CPU per delivered datagram of every process on the path, at the highest fixed rate that both
      // direct and this tunnel carried cleanly (median of rounds). On a machine where CPU is the limit, the tunnel
      // reaches (direct CPU / tunnel CPU) of direct loopback's rate.
      const cpuAt = (path, rate) => median(select(runs, { size, kind: "fixed", path, rate }).map((r) => r.cpuUsPerPacket?.all).filter((v) => typeof v === "number"));
      const cpuDirect = clean === undefined ? undefined : cpuAt("direct", clean);
      const cpuTunnel = clean === undefined ? undefined : cpuAt(transport, clean);
      const cpuShare = cpuDirect && cpuTunnel ? cpuDirect / cpuTunnel : undefined;
      // Met: < 0.1 % lost, and the rate really reached (a starved sender sends less than asked, which loses nothing).
      const halfRate = median(half.map((r) => r.rate));
      const ok = loss === undefined ? undefined : loss < UDP_TARGET.maxLossPct && delivered >= 0.97 * halfRate;
      out.push({ size, transport, directMax, tunnelMax, halfRate, delivered, loss, clean, cpuDirect, cpuTunnel, cpuShare, ok });
    }
  }
  return out;
};

const renderUdp = (result) => {
  const { figures, knobs } = result;
  const lines = [];
  lines.push(`One sender (\`bench/udp-load.c\`: paced \`sendmmsg\`, numbered datagrams) and one counting sink (\`recvmmsg\`, 4 MiB`);
  lines.push("receive buffer), each its own process; a new sender (so a new client address and a new tunnel session) per run,");
  lines.push("3 warm-up datagrams 100 ms apart open the session and are not counted. **direct** = sender → sink; **tcpTls** /");
  lines.push("**quic** = sender → edge UDP port → tunnel → hub → sink, CLI hub and edge processes (`--transport tcpTls|quic`),");
  lines.push("PROXY header off (`proxyProtocol.udp: none`), events on. On tcpTls a datagram is a frame on the TLS connection; on");
  lines.push("quic a QUIC datagram (RFC 9221). Loss = 1 − received / sent, after the sink has been quiet for 300 ms.");
  lines.push(`${knobs.BENCH_UDP_SECONDS} s per run, ${knobs.BENCH_ROUNDS} rounds, paths interleaved within a round; median of rounds, range in brackets.`, "");
  const runs = figures.runs;
  for (const size of [...new Set(runs.map((r) => r.size))]) {
    lines.push(`### ${size}-byte datagrams`, "");
    lines.push("| offered | path | delivered pps | vs direct | loss % | CPU µs/datagram: sender | edge | hub | sink | all | kernel buffer drops |");
    lines.push("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    const rates = [...new Set(select(runs, { size, kind: "fixed" }).map((r) => r.rate))].sort((a, b) => a - b);
    const rows = [...rates.map((rate) => ({ label: `${rate} pps`, where: { size, kind: "fixed", rate } })), { label: "max", where: { size, kind: "max" } }];
    for (const { label, where } of rows) {
      const directPps = median(select(runs, { ...where, path: "direct" }).map((r) => r.deliveredPps));
      for (const path of figures.paths) {
        const rs = select(runs, { ...where, path });
        if (rs.length === 0) continue;
        const pps = median(rs.map((r) => r.deliveredPps));
        const vs = path === "direct" || !directPps ? "" : `${fmt((100 * pps) / directPps, 0)} %`;
        const cpu = (k) => (path === "direct" && (k === "edge" || k === "hub") ? "-" : fmt(median(rs.map((r) => r.cpuUsPerPacket?.[k])), 1));
        const drops = rs.reduce((n, r) => n + (r.rcvbufErrors ?? 0), 0);
        lines.push(
          `| ${label} | ${path} | ${spread(rs.map((r) => r.deliveredPps))} | ${vs} | ${spread(rs.map((r) => r.lossPct), 3)} | ${cpu("sender")} | ${cpu("edge")} | ${cpu("hub")} | ${cpu("sink")} | ${cpu("all")} | ${drops} |`,
        );
      }
    }
    lines.push("");
  }
  lines.push("### The target: each tunnel at half of direct loopback's maximum", "");
  lines.push("In every round, after the max-rate probe, each tunnel is driven at 50 % of the rate direct loopback delivered in that");
  lines.push("round. Met when the median loss there is < 0.1 % and the median delivered rate is at least 97 % of the rate asked (a");
  lines.push("sender starved of CPU sends less than asked and loses nothing). \"Clean up to\" is the highest fixed rate above whose");
  lines.push("median loss stayed < 0.1 %.", "");
  lines.push("| size | transport | direct max pps | tunnel max pps | ½ direct max, pps | delivered pps | loss % | clean up to | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  const verdicts = udpVerdicts(result);
  for (const v of verdicts) {
    lines.push(
      `| ${v.size} B | ${v.transport} | ${fmt(v.directMax)} | ${fmt(v.tunnelMax)} (${v.directMax ? fmt((100 * v.tunnelMax) / v.directMax, 0) : "n/a"} %) | ${fmt(v.halfRate)} | ${fmt(v.delivered)} | ${fmt(v.loss, 3)} | ${v.clean === undefined ? "none" : `${v.clean} pps`} | ${v.ok === undefined ? "not measured" : v.ok ? "**met**" : "**missed**"} |`,
    );
  }
  lines.push("");
  lines.push("The same question without the noise of a shared machine: CPU per delivered datagram of every process on the path");
  lines.push("(sender, edge, hub, sink; /proc and the sender's getrusage) at the \"clean up to\" rate, where nothing was lost. On a");
  lines.push("machine where CPU is what runs out, the tunnel's rate is direct loopback's × direct CPU / tunnel CPU. An upper bound:");
  lines.push("the sender's pacing loop costs more per datagram at these rates than flat out, and it counts on both sides.", "");
  lines.push("| size | transport | at pps | direct µs/datagram | tunnel µs/datagram | CPU-bound share of direct |", "| --- | --- | --- | --- | --- | --- |");
  for (const v of verdicts) {
    lines.push(`| ${v.size} B | ${v.transport} | ${v.clean ?? "n/a"} | ${fmt(v.cpuDirect, 1)} | ${fmt(v.cpuTunnel, 1)} | ${v.cpuShare === undefined ? "n/a" : `${fmt(100 * v.cpuShare, 1)} %`} |`);
  }
  lines.push("");
  lines.push("CPU µs/datagram = (user + system CPU of the process over the run) / datagrams delivered; the sender's includes the");
  lines.push("kernel's loopback delivery into the next socket, and so does the hub's (into the sink). Kernel buffer drops =");
  lines.push("system-wide `RcvbufErrors` from /proc/net/snmp over the run, summed over rounds (a socket whose receive buffer was full:");
  lines.push("the edge's listener, the hub's upstream socket, the hub's QUIC socket or the sink).", "");
  return lines;
};

const udpTargets = (result) =>
  udpVerdicts(result).flatMap((v) => [
    {
      target: `(issue 4) UDP over ${v.transport}, ${v.size}-byte datagrams: ≥ 50 % of direct loopback pps with < 0.1 % loss`,
      measured: `${fmt(v.loss, 3)} % loss at ${fmt(v.halfRate)} pps (½ of direct ${fmt(v.directMax)}); tunnel max ${v.directMax ? fmt((100 * v.tunnelMax) / v.directMax, 0) : "n/a"} % of direct`,
      ok: v.ok,
    },
    {
      target: `(issue 4) the same, from CPU per datagram (load-independent)`,
      measured: v.cpuShare === undefined ? "n/a" : `${fmt(100 * v.cpuShare, 1)} % (${fmt(v.cpuDirect, 1)} vs ${fmt(v.cpuTunnel, 1)} µs/datagram at ${v.clean} pps)`,
      ok: v.cpuShare === undefined ? undefined : v.cpuShare >= UDP_TARGET.share,
    },
  ]);
