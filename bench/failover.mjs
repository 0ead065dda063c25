#!/usr/bin/env node
// Failover time distribution (issue 5): two hubs of one cluster (CLI processes) on a 3-node NATS JetStream
// cluster, one edge (this process) given both hubs, an echo target, and a client that opens a new connection
// every 20 ms (one at a time, 1 s timeout). Repeatedly the hub that owns the edge is made to fail, then
// restarted; the next round fails whichever hub owns the edge then.
//
//   node bench/failover.mjs [--kills 20] [--mode kill|freeze|both] [--edge-idle-ms 2500] [--json out.json]
//
// Modes: `kill` = SIGKILL (the kernel closes the hub's sockets: the edge sees the end at once);
// `freeze` = SIGSTOP (a hung hub or a dead host: only the edge's idle timeout notices), then SIGKILL.
// Per failure, measured from the signal:
//   detection      the edge status no longer shows a tunnel to the failed hub,
//   reconnection   the edge status shows a tunnel to the other hub,
//   first success  a client connection opened after the failure completed its echo (service back).
// Edge: ping 1000 ms, idle 2500 ms (the multi-hub defaults; --edge-idle-ms changes the idle timeout, ping =
// min(1000, idle/2.5)); hubs: lease 2000 ms, ping/idle 1000/2500 (cluster defaults).
// Needs dist/ (`npm run build:ts`), native/index.node and .tools/bin/nats-server (`npm run setup`).
// Prints JSON on stdout, then a markdown section.
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { createRequire } from "node:module";
import { connect as netConnect, createServer } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { arg, loadDist as load, root, sleep, startNatsCluster, stopNatsCluster } from "./common.mjs";

const KILLS = Number(arg("kills", "20"));
const MODE = arg("mode", "both");
const jsonOut = arg("json", undefined);
const EDGE_IDLE_MS = Number(arg("edge-idle-ms", "2500"));
/** 1000 ms at the default idle 2500 (the multi-hub defaults), shorter for a shorter idle timeout. */
const EDGE_PING_MS = Math.min(1_000, Math.floor(EDGE_IDLE_MS / 2.5));
const modes = MODE === "both" ? ["kill", "freeze"] : [MODE];
if (!modes.every((m) => m === "kill" || m === "freeze") || !(KILLS > 0)) {
  process.stderr.write("usage: node bench/failover.mjs [--kills N] [--mode kill|freeze|both] [--json FILE]\n");
  process.exit(2);
}

const { RemoteIngressEdge } = await load("index.js");
const { connect } = await import("@nats-io/transport-node");
const { Kvm } = await import("@nats-io/kv");
const addon = createRequire(import.meta.url)(join(root, "native", "index.node"));

const log = (m) => process.stderr.write(`[bench:failover] ${m}\n`);
const pct = (xs, p) => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const stats = (xs) => ({ n: xs.length, p50: pct(xs, 50), p99: pct(xs, 99), max: xs.length ? Math.max(...xs) : null, min: xs.length ? Math.min(...xs) : null });
const waitFor = async (check, what, timeoutMs = 20_000, intervalMs = 10) => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
};
const freePort = () =>
  new Promise((res) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });

// ---- cleanup on every exit path ---------------------------------------------------------------------------
// Whatever ends this process (normal end, a thrown error or rejected await, process.exit, SIGINT/SIGTERM/SIGHUP),
// the hubs it spawned are killed, the 3 nats-servers stopped and the work dir removed. `hardCleanup` is
// synchronous so it can run in the 'exit' handler; `gracefulStop` (the normal end and the `finally` around the
// run) stops the edge and the hubs first.
const work = await mkdtemp(join(tmpdir(), "portway-bench-failover-"));
const natsDir = join(work, "nats");
/** Hub child processes still possibly running. */
const children = new Set();
let natsStarted = false;
let cleanedUp = false;
const hardCleanup = () => {
  if (cleanedUp) return;
  cleanedUp = true;
  for (const child of children) {
    try {
      child.kill("SIGKILL"); // also ends a SIGSTOPped hub
    } catch {
      // already gone
    }
  }
  children.clear();
  if (natsStarted) stopNatsCluster(natsDir, { timeout: 20_000 });
  try {
    rmSync(work, { recursive: true, force: true });
  } catch {
    // best effort
  }
};
process.on("exit", hardCleanup);
for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    hardCleanup();
    process.exit(code);
  });
}

// ---- NATS cluster, target, certificate ------------------------------------------------------------------
natsStarted = true; // a start that fails half-way may leave nodes: stop is always run
const state = await startNatsCluster(natsDir);
const servers = state.nodes.map((n) => `nats://127.0.0.1:${n.client}`).join(",");
log(`3-node cluster up: ${servers}`);

const target = createServer((s) => {
  s.on("error", () => undefined);
  s.pipe(s);
});
await new Promise((r) => target.listen(0, "127.0.0.1", r));
const targetAddr = `127.0.0.1:${target.address().port}`;

const certDir = join(work, "cert");
mkdirSync(certDir);
const { fingerprint } = JSON.parse(addon.tlsIdentity(join(certDir, "hub-cert.pem"), join(certDir, "hub-key.pem"), JSON.stringify(["127.0.0.1"])));

// ---- hubs -------------------------------------------------------------------------------------------------
const cluster = `bench${Date.now().toString(36)}`;
const edgePort = await freePort();
const secret = `bench-${Math.random().toString(36).slice(2)}`;
const hubIds = ["hub-a", "hub-b"];
const hubs = new Map();
for (const [i, hubId] of hubIds.entries()) {
  const dataDir = join(work, hubId);
  mkdirSync(dataDir);
  copyFileSync(join(certDir, "hub-cert.pem"), join(dataDir, "hub-cert.pem"));
  copyFileSync(join(certDir, "hub-key.pem"), join(dataDir, "hub-key.pem"));
  const config = join(dataDir, "hub.json");
  const tunnelPort = await freePort();
  writeFileSync(
    config,
    JSON.stringify({
      hubId,
      bindHost: "127.0.0.1",
      tunnelPort,
      dataDir,
      quic: false,
      nats: servers,
      cluster: { name: cluster, replicas: 3, leaseMs: 2_000 },
      events: { maxBytes: "256MiB" },
      proxyProtocol: { tcp: "none" },
      edges: i === 0 ? [{ id: "e1", secret, listenPorts: [edgePort], targets: { [edgePort]: targetAddr } }] : [],
    }),
  );
  hubs.set(hubId, { hubId, config, tunnelPort, proc: undefined });
}

const startHub = async (h) => {
  const child = spawn(process.execPath, [join(root, "bin", "portway.js"), "hub", "--config", h.config], {
    cwd: root,
    env: { ...process.env, NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let out = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (out += c));
  let exited = false;
  child.once("exit", () => {
    exited = true;
    children.delete(child);
  });
  h.proc = { child, output: () => out, exited: () => exited };
  await waitFor(() => {
    if (exited) throw new Error(`${h.hubId} exited:\n${out}`);
    return /event log: recovered/.test(out);
  }, `${h.hubId} ready`, 60_000, 20);
};
for (const h of hubs.values()) await startHub(h);
log(`hubs up: ${[...hubs.values()].map((h) => `${h.hubId}@${h.tunnelPort}`).join(", ")}`);

const nc = await connect({ servers: servers.split(",") });
const owners = await new Kvm(nc).open(`pw_${cluster}_owners`);
const ownerOf = async () => {
  const e = await owners.get("e1");
  return e === null || e.operation !== "PUT" ? null : e.json().hubId;
};

// ---- edge and client --------------------------------------------------------------------------------------
const edge = new RemoteIngressEdge();
let edgeStarted = false;
let probing = true;
let prober = Promise.resolve();
let stopped = false;
/** Stops the prober, the edge, the hubs (SIGTERM, then SIGKILL) and NATS; idempotent. */
const gracefulStop = async () => {
  if (stopped) return;
  stopped = true;
  probing = false;
  await prober.catch(() => undefined);
  if (edgeStarted) await edge.stop().catch((e) => log(`edge stop: ${e?.message ?? e}`));
  for (const h of hubs.values()) {
    if (h.proc === undefined || h.proc.exited()) continue;
    h.proc.child.kill("SIGCONT"); // a frozen hub cannot handle SIGTERM
    h.proc.child.kill("SIGTERM");
    await waitFor(() => h.proc.exited(), `${h.hubId} stopped`, 15_000, 20).catch(() => h.proc.child.kill("SIGKILL"));
  }
  await nc.close().catch(() => undefined);
  target.close();
  hardCleanup();
};
const results = [];
try {
  await edge.start({
    hubs: [...hubs.values()].map((h) => ({ host: "127.0.0.1", port: h.tunnelPort })),
    edgeId: "e1",
    secret,
    bindAddress: "127.0.0.1",
    hubCertFingerprint: fingerprint,
    pingIntervalMs: EDGE_PING_MS,
    idleTimeoutMs: EDGE_IDLE_MS,
    reconnectInitialMs: 50,
    reconnectMaxMs: 300,
  });
  edgeStarted = true;

  const echoOnce = (timeoutMs = 1_000) =>
    new Promise((res) => {
      const started = Date.now();
      const s = netConnect(edgePort, "127.0.0.1");
      const payload = Buffer.from(`ping-${started}-${Math.random()}`);
      let got = Buffer.alloc(0);
      const done = (ok) => {
        clearTimeout(timer);
        s.destroy();
        res({ at: started, done: Date.now(), ok });
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      s.on("connect", () => s.write(payload));
      s.on("data", (c) => {
        got = Buffer.concat([got, c]);
        if (got.length >= payload.length) done(got.equals(payload));
      });
      s.on("error", () => done(false));
      s.on("close", () => done(got.equals(payload)));
    });

  const attempts = [];
  prober = (async () => {
    while (probing) {
      attempts.push(await echoOnce());
      await sleep(20);
    }
  })();

  await waitFor(async () => (await ownerOf()) !== null && attempts.some((a) => a.ok), "the edge served through its owner", 30_000, 50);
  log(`edge up, owner ${await ownerOf()}`);

  // ---- rounds -----------------------------------------------------------------------------------------------
  for (const mode of modes) {
    for (let round = 1; round <= KILLS; round++) {
      // Steady state: an owner, the edge on it, the last probes succeeding, both hubs running.
      const owner = await waitFor(async () => {
        const o = await ownerOf();
        const s = await edge.getStatus();
        const recent = attempts.slice(-3);
        return o !== null && s.connected && s.hubId === o && recent.length === 3 && recent.every((a) => a.ok) ? o : null;
      }, "steady state", 30_000, 50);
      await sleep(300 + Math.random() * 500); // a random phase against the lease renewals and pings
      const victim = hubs.get(owner);
      const other = hubIds.find((id) => id !== owner);
      const t0 = Date.now();
      victim.proc.child.kill(mode === "kill" ? "SIGKILL" : "SIGSTOP");
      let detectedAt = null;
      let reconnectedAt = null;
      await waitFor(async () => {
        const s = await edge.getStatus();
        const now = Date.now();
        if (detectedAt === null && (!s.connected || s.hubId !== owner)) detectedAt = now;
        if (reconnectedAt === null && s.connected && s.hubId === other) reconnectedAt = now;
        return detectedAt !== null && reconnectedAt !== null;
      }, `round ${round}: failover to ${other}`, 30_000, 5);
      const back = await waitFor(() => attempts.find((a) => a.at >= t0 && a.ok), `round ${round}: service back`, 30_000, 5);
      const r = {
        mode,
        round,
        from: owner,
        to: other,
        detectionMs: detectedAt - t0,
        reconnectionMs: reconnectedAt - t0,
        firstSuccessMs: back.done - t0,
        failedAttempts: attempts.filter((a) => a.at >= t0 && a.done <= back.done && !a.ok).length,
      };
      results.push(r);
      log(`${mode} ${round}/${KILLS}: ${owner} → ${other}: detection ${r.detectionMs} ms, reconnection ${r.reconnectionMs} ms, first success ${r.firstSuccessMs} ms`);
      // Restart the failed hub (a frozen one is killed first).
      if (mode === "freeze") victim.proc.child.kill("SIGKILL");
      await waitFor(() => victim.proc.exited(), `${owner} gone`, 10_000, 10);
      await startHub(victim);
    }
  }

} finally {
  await gracefulStop();
}

// ---- report -----------------------------------------------------------------------------------------------
const summary = {};
for (const mode of modes) {
  const rs = results.filter((r) => r.mode === mode);
  summary[mode] = {
    kills: rs.length,
    detectionMs: stats(rs.map((r) => r.detectionMs)),
    reconnectionMs: stats(rs.map((r) => r.reconnectionMs)),
    firstSuccessMs: stats(rs.map((r) => r.firstSuccessMs)),
    within3sDetection: rs.filter((r) => r.detectionMs <= 3_000).length,
    within5sService: rs.filter((r) => r.firstSuccessMs <= 5_000).length,
  };
}
let commit = null;
try {
  commit = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: root, encoding: "utf8" }).stdout.trim() || null;
} catch {
  commit = null;
}
const report = {
  bench: "failover",
  date: new Date().toISOString(),
  commit,
  machine: { cpus: cpus().length, model: cpus()[0]?.model ?? null, loadavg: loadavg() },
  setup: { hubs: 2, natsNodes: 3, replicas: 3, leaseMs: 2_000, edgePingMs: EDGE_PING_MS, edgeIdleMs: EDGE_IDLE_MS, probeEveryMs: 20, probeTimeoutMs: 1_000 },
  summary,
  rounds: results,
};
const json = JSON.stringify(report, null, 2);
process.stdout.write(`${json}\n`);
if (jsonOut) writeFileSync(jsonOut, json);

const row = (name, s) => `| ${name} | ${s.p50} | ${s.p99} | ${s.max} |`;
const md = [
  "",
  `### Failover (bench/failover.mjs, ${KILLS} failures per mode, commit ${commit ?? "?"})`,
  "",
  `2 hubs (CLI) of one cluster on a 3-node NATS cluster (R3), lease 2000 ms; edge ping ${EDGE_PING_MS} / idle ${EDGE_IDLE_MS} ms; a client opens a`,
  `new connection every 20 ms (1 s timeout). Times in ms from the failure. ${cpus().length} CPUs, load ${loadavg().map((l) => l.toFixed(1)).join(" ")}.`,
  "",
];
for (const mode of modes) {
  const s = summary[mode];
  md.push(
    `**${mode === "kill" ? "SIGKILL (the kernel closes the hub's sockets)" : "SIGSTOP (hung hub / dead host: only timeouts notice)"}** — detection ≤ 3 s in ${s.within3sDetection}/${s.kills}, service back ≤ 5 s in ${s.within5sService}/${s.kills}`,
    "",
    "| | p50 | p99 | max |",
    "| --- | --- | --- | --- |",
    row("detection", s.detectionMs),
    row("reconnection (tunnel to the other hub)", s.reconnectionMs),
    row("first successful new connection", s.firstSuccessMs),
    "",
  );
}
process.stdout.write(`${md.join("\n")}\n`);
