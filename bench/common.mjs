// The shared start of the stand-alone benchmark scripts (cluster-events, events-append, failover): paths,
// `--name value` options, loading the compiled library from dist/, CPU counters, and the 3-node NATS cluster of
// infra/nats-cluster.mjs on free loopback ports.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The repository root. */
export const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The compiled library (`npm run build:ts`); `PORTWAY_DIST` points elsewhere, e.g. at an older build. */
export const dist = process.env.PORTWAY_DIST ?? join(root, "dist");

/** The value after `--name` on the command line, or `def`. */
export const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};

/** Imports `dist/<p>`; exits with a hint when the library is not built. */
export const loadDist = async (p) => {
  try {
    return await import(pathToFileURL(join(dist, p)).href);
  } catch (e) {
    process.stderr.write(`cannot load ${join(dist, p)} (${e.message}); run \`npm run build:ts\` first\n`);
    process.exit(1);
  }
};

/** Lets the event loop run (I/O callbacks included) before going on. */
export const tick = () => new Promise((r) => setImmediate(r));
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The `p`th percentile of `xs` (the element at index floor(p/100 · n)); null when empty. */
export const pct = (xs, p) => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

/** CPU seconds (user+sys) a process used so far, from /proc (Linux); NaN when it cannot be read. */
export const procCpu = (pid) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
};

/** CPU seconds (user+sys) this process used so far. */
export const selfCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

const portFree = (port) =>
  new Promise((res) => {
    const s = createServer();
    s.once("error", () => res(false));
    s.listen({ port, host: "127.0.0.1", exclusive: true }, () => s.close(() => res(true)));
  });

/** The kernel's range for ephemeral (connect) ports, e.g. [32768, 60999]. */
const ephemeralRange = () => {
  try {
    const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high)) return [low, high];
  } catch {
    // not Linux
  }
  return [32_768, 60_999];
};

/**
 * A base port P with P..P+2, P+100..P+102, P+200..P+202 free (the infra/nats-cluster.mjs layout). Below the
 * ephemeral range when there is room: the nodes' own route connections take ephemeral ports, and one of them once
 * took a later node's client port between this check and that node's bind.
 */
const freeClusterBase = async () => {
  const [low] = ephemeralRange();
  const [from, span] = low - 300 > 10_000 ? [10_000, low - 300 - 10_000] : [30_000, 25_000];
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = from + Math.floor(Math.random() * span);
    let ok = true;
    for (const d of [0, 1, 2, 100, 101, 102, 200, 201, 202]) if (!(await portFree(base + d))) ok = false;
    if (ok) return base;
  }
  throw new Error("no free port range for the cluster");
};

const clusterScript = join(root, "infra", "nats-cluster.mjs");

/**
 * Starts the 3-node JetStream cluster (store in `dir`) on free loopback ports; exits when it cannot. Returns its
 * state: `nodes[i].client` (port) and `nodes[i].pid`.
 */
export const startNatsCluster = async (dir) => {
  const base = await freeClusterBase();
  const started = spawnSync(process.execPath, [clusterScript, "start", "--dir", dir, "--base-port", String(base), "--name", "bench"], {
    encoding: "utf8",
  });
  if (started.status !== 0) {
    process.stderr.write(started.stderr);
    process.exit(1);
  }
  return JSON.parse(readFileSync(join(dir, "cluster.json"), "utf8"));
};

/** Stops the cluster started in `dir` (synchronous, so an 'exit' handler can call it). */
export const stopNatsCluster = (dir, options = {}) => spawnSync(process.execPath, [clusterScript, "stop", "--dir", dir], { encoding: "utf8", ...options });
