// The measurements: each function drives one workload against a host:port and returns plain numbers.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import { connect } from "node:net";

/**
 * Runs iperf3 against `port` and returns the receiver-side throughput in Gbit/s. Retried (twice, 1 s apart) when the
 * server is still busy with a previous client, e.g. the readiness probe of a tunnel started just before, which
 * connected through the edge to iperf3 -s and left at once.
 */
export const iperf3 = async (options) => {
  for (let attempt = 1; ; attempt++) {
    try {
      return await iperf3Once(options);
    } catch (error) {
      if (attempt >= 3 || !/control message|server is busy|Connection reset/i.test(error.message)) throw error;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
};

const iperf3Once = async ({ port, seconds, parallel }) => {
  const args = ["-c", "127.0.0.1", "-p", String(port), "-t", String(seconds), "-J"];
  if (parallel > 1) args.push("-P", String(parallel));
  const child = spawn("/usr/bin/iperf3", args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (err += c));
  const [code] = await once(child, "exit");
  let report;
  try {
    report = JSON.parse(out);
  } catch {
    throw new Error(`iperf3 exited with ${code} and no JSON: ${err || out.slice(0, 500)}`);
  }
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  return report.end.sum_received.bits_per_second / 1e9;
};

const connectOnce = (port) =>
  new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1", noDelay: true });
    socket.once("error", reject);
    socket.once("connect", () => resolve(socket));
  });

/** The first data on `socket`; rejects if it closes or errors first, or after `ms` (a stuck stream is a failure, not a hang). */
const firstReply = (socket, ms = 10_000) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reply within ${ms} ms`)), ms);
    const done = (fn) => (value) => {
      clearTimeout(timer);
      fn(value);
    };
    socket.once("data", done(resolve));
    socket.once("error", done(reject));
    socket.once("close", done(() => reject(new Error("closed without a reply"))));
  });

/** Opens `total` connections (at most `concurrency` at a time), each doing one 1-byte echo, then closing. */
export const connectionRate = async ({ port, total, concurrency }) => {
  let started = 0;
  let failed = 0;
  const worker = async () => {
    while (started < total) {
      started++;
      try {
        const socket = await connectOnce(port);
        try {
          const reply = firstReply(socket);
          socket.write("x");
          await reply;
        } finally {
          socket.destroy();
        }
      } catch {
        failed++;
      }
    }
  };
  const begin = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - begin) / 1e9;
  return { perSecond: (total - failed) / seconds, failed, total };
};

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

/**
 * Open-loop request/response: one connection, a 64-byte request every 1/rate s (catching up if a timer fires
 * late, so a slow response does not delay the next request), latency from write to the full echo.
 */
export const latency = async ({ port, rate, seconds }) => {
  const socket = await connectOnce(port);
  const size = 64;
  const request = Buffer.alloc(size, 0x61);
  const sentAt = [];
  const latenciesUs = [];
  let pending = 0;
  socket.on("data", (chunk) => {
    pending += chunk.length;
    const now = process.hrtime.bigint();
    while (pending >= size) {
      pending -= size;
      latenciesUs.push(Number(now - sentAt[latenciesUs.length]) / 1e3);
    }
  });
  const total = rate * seconds;
  const intervalNs = 1e9 / rate;
  const begin = process.hrtime.bigint();
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(Number(process.hrtime.bigint() - begin) / intervalNs) + 1);
      while (sentAt.length < due) {
        sentAt.push(process.hrtime.bigint());
        socket.write(request);
      }
      if (sentAt.length >= total) resolve();
      else setTimeout(tick, 0.5);
    };
    tick();
  });
  const deadline = Date.now() + 10_000;
  while (latenciesUs.length < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  socket.destroy();
  const sorted = [...latenciesUs].sort((a, b) => a - b);
  return {
    requests: total,
    answered: latenciesUs.length,
    p50Us: percentile(sorted, 50),
    p99Us: percentile(sorted, 99),
    maxUs: sorted[sorted.length - 1],
  };
};

/** VmRSS in KiB from /proc/<pid>/status. */
export const rssKiB = async (pid) => {
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(await readFile(`/proc/${pid}/status`, "utf8"));
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
};

/** Opens `count` connections to `port` and leaves them idle; returns them (close with `destroy`). One at a time by
 * default: this measures memory, not how fast streams open. */
export const openIdle = async ({ port, count, concurrency = 1 }) => {
  const sockets = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next++;
      const socket = await connectOnce(port);
      socket.on("error", () => undefined);
      // One echo round trip proves the stream reached the target before it is counted as open.
      const reply = firstReply(socket);
      socket.write("x");
      await reply;
      sockets.push(socket);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return sockets;
};

export const median = (values) => {
  const sorted = values.filter((v) => typeof v === "number" && !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat (Linux); NaN when it is gone. */
export const cpuSecondsOf = async (pid) => {
  try {
    const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1].split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
};

/** System-wide UDP counters from /proc/net/snmp (RcvbufErrors, SndbufErrors, InDatagrams, …). */
export const udpCounters = async () => {
  const lines = (await readFile("/proc/net/snmp", "utf8")).split("\n").filter((l) => l.startsWith("Udp:"));
  if (lines.length < 2) return {};
  const names = lines[0].split(/\s+/).slice(1);
  const values = lines[1].split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i]]));
};
