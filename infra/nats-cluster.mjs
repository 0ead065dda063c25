#!/usr/bin/env node
// A NATS cluster with JetStream on one machine, for development and tests (infra/README.md).
// Node builtins only; uses `.tools/bin/nats-server` (scripts/ensure-nats.mjs builds it).
//
//   node infra/nats-cluster.mjs start  [--dir D] [--base-port P] [--nodes 3] [--host 127.0.0.1] [--name portway]
//   node infra/nats-cluster.mjs status [--dir D] [--json]
//   node infra/nats-cluster.mjs stop   [--dir D]
//
// Node i (0-based) listens for clients on P+i, for routes on P+100+i and serves monitoring on P+200+i.
// Each node has its own store under D/n<i+1>/ and its config, log and pid file beside it.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync, rmSync, openSync, closeSync } from "node:fs";
import { request } from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const TEMPLATE = join(root, "infra", "nats", "node.conf.tmpl");
const DEFAULTS = { dir: join(root, ".tools", "nats-cluster"), basePort: 14222, nodes: 3, host: "127.0.0.1", name: "portway" };

/** Ports of node `i` (0-based) for a base port. */
export const nodePorts = (basePort, i) => ({ client: basePort + i, route: basePort + 100 + i, monitor: basePort + 200 + i });

/** Renders infra/nats/node.conf.tmpl for one node. */
export function renderNodeConfig({ name, host, clientPort, routePort, monitorPort, storeDir, routePorts, cluster, maxFile = "4GB" }) {
  const routes = routePorts.map((p) => `    nats-route://${host}:${p}`).join("\n");
  const values = {
    NAME: name,
    HOST: host,
    CLIENT_PORT: String(clientPort),
    ROUTE_PORT: String(routePort),
    MONITOR_PORT: String(monitorPort),
    STORE_DIR: storeDir,
    ROUTES: routes,
    CLUSTER: cluster,
    MAX_FILE: maxFile,
  };
  return readFileSync(TEMPLATE, "utf8").replace(/\{\{([A-Z_]+)\}\}/g, (m, key) => values[key] ?? m);
}

const getJson = (url, timeoutMs = 1000) =>
  new Promise((res) => {
    const req = request(url, { timeout: timeoutMs }, (r) => {
      let body = "";
      r.setEncoding("utf8");
      r.on("data", (c) => (body += c));
      r.on("end", () => {
        try {
          res(r.statusCode === 200 ? JSON.parse(body) : undefined);
        } catch {
          res(undefined);
        }
      });
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => res(undefined));
    req.end();
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** True when `pid` is alive and is a nats-server (so a reused pid is never signalled). */
const isOurServer = (pid) => {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("nats-server");
  } catch {
    return true; // no /proc (macOS): trust the pid file
  }
};

const readState = (dir) => {
  const file = join(dir, "cluster.json");
  return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : undefined;
};

/** Node health: monitor answering, JetStream on, the meta leader it sees. */
export async function nodeStatus(host, monitorPort) {
  const [varz, jsz] = await Promise.all([getJson(`http://${host}:${monitorPort}/varz`), getJson(`http://${host}:${monitorPort}/jsz`)]);
  return {
    up: varz !== undefined,
    serverName: varz?.server_name ?? null,
    version: varz?.version ?? null,
    routes: varz?.routes ?? 0,
    metaLeader: jsz?.meta_cluster?.leader ?? null,
    metaClusterSize: jsz?.meta_cluster?.cluster_size ?? null,
    streams: jsz?.streams ?? null,
  };
}

async function start(o) {
  const prior = readState(o.dir);
  if (prior && prior.nodes.some((n) => isOurServer(n.pid))) {
    throw new Error(`a cluster from ${o.dir} is running (status: node infra/nats-cluster.mjs status --dir ${o.dir}); stop it first`);
  }
  const binary = join(root, ".tools", "bin", "nats-server");
  if (!existsSync(binary)) throw new Error(`nats-server not found at ${binary}: run \`node scripts/ensure-nats.mjs\``);
  mkdirSync(o.dir, { recursive: true });
  const nodes = [];
  const all = Array.from({ length: o.nodes }, (_, i) => nodePorts(o.basePort, i));
  for (let i = 0; i < o.nodes; i++) {
    const name = `n${i + 1}`;
    const ports = all[i];
    const storeDir = join(o.dir, name);
    mkdirSync(storeDir, { recursive: true });
    const conf = join(o.dir, `${name}.conf`);
    writeFileSync(
      conf,
      renderNodeConfig({
        name,
        host: o.host,
        clientPort: ports.client,
        routePort: ports.route,
        monitorPort: ports.monitor,
        storeDir,
        routePorts: all.map((p) => p.route),
        cluster: o.name,
      }),
    );
    const logFd = openSync(join(o.dir, `${name}.log`), "a");
    const child = spawn(binary, ["-c", conf], { detached: true, stdio: ["ignore", logFd, logFd] });
    closeSync(logFd);
    child.unref();
    nodes.push({ name, pid: child.pid, conf, ...ports });
  }
  writeFileSync(join(o.dir, "cluster.json"), JSON.stringify({ host: o.host, name: o.name, nodes }, null, 2));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const st = await Promise.all(nodes.map((n) => nodeStatus(o.host, n.monitor)));
    if (st.every((s) => s.up && s.metaLeader)) break;
    if (Date.now() > deadline) throw new Error(`cluster not ready within 30 s; see the logs in ${o.dir}/n*.log`);
    await sleep(100);
  }
  const urls = nodes.map((n) => `nats://${o.host}:${n.client}`).join(",");
  process.stdout.write(`NATS cluster "${o.name}" up (${o.nodes} nodes, store ${o.dir})\n${urls}\n`);
  process.stdout.write(`e.g. portway hub --cluster c1 --nats ${urls} --events-replicas 3\n`);
}

async function status(o) {
  const state = readState(o.dir);
  if (!state) throw new Error(`no cluster in ${o.dir} (start one: node infra/nats-cluster.mjs start --dir ${o.dir})`);
  const rows = [];
  for (const n of state.nodes) {
    rows.push({ name: n.name, pid: n.pid, running: isOurServer(n.pid), url: `nats://${state.host}:${n.client}`, ...(await nodeStatus(state.host, n.monitor)) });
  }
  if (o.json) process.stdout.write(`${JSON.stringify({ cluster: state.name, nodes: rows }, null, 2)}\n`);
  else {
    for (const r of rows) {
      process.stdout.write(
        `${r.name.padEnd(4)} pid ${String(r.pid).padEnd(8)} ${r.running ? "running" : "stopped"}  ${r.url.padEnd(24)} ` +
          `${r.up ? `up, ${r.routes} routes, meta leader ${r.metaLeader ?? "none"}` : "not answering"}\n`,
      );
    }
  }
}

async function stop(o) {
  const state = readState(o.dir);
  if (!state) return void process.stdout.write(`no cluster in ${o.dir}\n`);
  for (const n of state.nodes) if (isOurServer(n.pid)) process.kill(n.pid, "SIGTERM");
  const deadline = Date.now() + 10_000;
  while (state.nodes.some((n) => isOurServer(n.pid)) && Date.now() < deadline) await sleep(100);
  for (const n of state.nodes) if (isOurServer(n.pid)) process.kill(n.pid, "SIGKILL");
  rmSync(join(o.dir, "cluster.json"), { force: true });
  process.stdout.write(`stopped (stores kept in ${o.dir}; delete the directory for a fresh cluster)\n`);
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      dir: { type: "string" },
      "base-port": { type: "string" },
      nodes: { type: "string" },
      host: { type: "string" },
      name: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const o = {
    dir: resolve(values.dir ?? DEFAULTS.dir),
    basePort: Number(values["base-port"] ?? DEFAULTS.basePort),
    nodes: Number(values.nodes ?? DEFAULTS.nodes),
    host: values.host ?? DEFAULTS.host,
    name: values.name ?? DEFAULTS.name,
    json: values.json === true,
  };
  const run = { start, status, stop }[positionals[0] ?? ""];
  if (run === undefined || !Number.isInteger(o.basePort) || !Number.isInteger(o.nodes) || o.nodes < 1) {
    process.stderr.write("usage: node infra/nats-cluster.mjs start|status|stop [--dir D] [--base-port P] [--nodes 3] [--host H] [--name N] [--json]\n");
    process.exit(2);
  }
  run(o).catch((e) => {
    process.stderr.write(`nats-cluster: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
