// Starts a hub and an edge as two separate processes through the CLI (`node bin/portway.js hub|edge`), with a
// self-made TLS identity so the edge can pin the hub without parsing the hub's output.
import { X509Certificate, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canConnect, freePort, freeUdpPort, root, spawnProcess, udpPortFree, waitFor } from "./processes.mjs";

// BENCH_PORTWAY_ROOT runs the CLI of another checkout (e.g. a snapshot with its own dist/ and native/index.node),
// so a benchmark is not disturbed by rebuilds of the working tree while it runs.
const CLI = join(process.env.BENCH_PORTWAY_ROOT ?? root, "bin", "portway.js");
// BENCH_HUB_NODE_ARGS: extra Node options for the hub process only (Node refuses e.g. --cpu-prof in NODE_OPTIONS):
// BENCH_HUB_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" node bench/events.mjs --rounds 3

const makeIdentity = (dir) => {
  const keyPath = join(dir, "hub-key.pem");
  const certPath = join(dir, "hub-cert.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", "/CN=portway-bench",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], { stdio: "ignore" });
  const certPem = readFileSync(certPath, "utf8");
  const fingerprint = new X509Certificate(certPem).fingerprint256.replaceAll(":", "").toLowerCase();
  return { certPath, keyPath, certPem, fingerprint };
};

/**
 * `routes`: [{ target: "host:port" }] → one edge TCP listen port each; `udpRoutes` likewise → one edge UDP port
 * each (`listenPortsUdp`). PROXY protocol off for both (iperf3 and the UDP sink speak none).
 * `hub`: extra hub config (e.g. `{ events: false }`); by default the hub records events in its embedded
 * nats-server, under `dataDir` (returned, so readers can find that server).
 * `transport`: the edge's `--transport` (tcpTls | quic | quicWithFallback; default tcpTls).
 */
export const startTunnelCli = async ({ routes = [], udpRoutes = [], hub: hubExtra = {}, transport = "tcpTls" }) => {
  const dir = mkdtempSync(join(tmpdir(), "portway-bench-"));
  const identity = makeIdentity(dir);
  // The hub serves TLS on TCP and QUIC on UDP at the same port number: it must be free for both.
  const tunnelPort = await freePort({ udp: true });
  const listenPorts = [];
  for (const _ of routes) listenPorts.push(await freePort());
  const listenPortsUdp = [];
  for (const _ of udpRoutes) listenPortsUdp.push(await freeUdpPort());
  const edgeId = "bench-edge";
  const secret = randomBytes(24).toString("base64url");
  const targets = Object.fromEntries([
    ...routes.map((r, i) => [listenPorts[i], r.target]),
    ...udpRoutes.map((r, i) => [listenPortsUdp[i], r.target]),
  ]);

  const hubConfig = join(dir, "hub.json");
  writeFileSync(
    hubConfig,
    JSON.stringify({
      hubId: "bench-hub",
      bindHost: "127.0.0.1",
      tunnelPort,
      targetHost: "127.0.0.1",
      proxyProtocol: { tcp: "none", udp: "none" },
      dataDir: join(dir, "hub-data"),
      tls: { certFile: identity.certPath, keyFile: identity.keyPath },
      edges: [{ id: edgeId, secret, listenPorts, listenPortsUdp, targets }],
      ...hubExtra,
    }),
  );
  const hub = spawnProcess(process.execPath, [...(process.env.BENCH_HUB_NODE_ARGS?.split(" ").filter(Boolean) ?? []), CLI, "hub", "--config", hubConfig]);
  const stopAll = [];
  const stop = async () => {
    while (stopAll.length > 0) await stopAll.pop()();
    rmSync(dir, { recursive: true, force: true });
  };
  stopAll.push(() => hub.stop());
  try {
    // The hub logs "listening on …" once its tunnel port is bound (a probe connection would log a TLS error).
    await waitFor(async () => {
      if (hub.exited() !== undefined) throw new Error(`hub exited (${hub.exited()}): ${hub.output()}`);
      return /listening on \S+:(\d+)/.test(hub.output());
    }, `hub on tunnel port ${tunnelPort}`);

    const token = execFileSync(process.execPath, [
      CLI, "token", "--hub-host", "127.0.0.1", "--hub-port", String(tunnelPort), "--edge-id", edgeId, `--secret=${secret}`,
      "--fingerprint", identity.fingerprint,
    ], { encoding: "utf8", cwd: root }).trim().split("\n").pop();
    const edge = spawnProcess(process.execPath, [CLI, "edge", "--token", token, "--bind-address", "127.0.0.1", "--transport", transport]);
    stopAll.push(() => edge.stop());
    // Listening edge ports are the readiness signal; a probe connection opens (and closes) one stream.
    await waitFor(async () => {
      if (edge.exited() !== undefined) throw new Error(`edge exited (${edge.exited()}): ${edge.output()}`);
      const connected = /tunnel\.connected .*transport=(\w+)/.exec(edge.output());
      if (!connected) return false;
      if (connected[1] !== transport) throw new Error(`edge asked for ${transport} but connected over ${connected[1]}`);
      for (const port of listenPorts) if (!(await canConnect(port))) return false;
      // A UDP port cannot be probed without opening a session, but a bound port cannot be bound again (probed only
      // after the edge has logged its port assignment, so the probe does not race the edge's own bind).
      if (listenPortsUdp.length > 0 && !/ports\.assigned/.test(edge.output())) return false;
      for (const port of listenPortsUdp) if (await udpPortFree(port)) return false;
      return true;
    }, `edge listening on ${[...listenPorts, ...listenPortsUdp.map((p) => `${p}/udp`)].join(", ")}`);
    return {
      hubPid: hub.pid,
      edgePid: edge.pid,
      listenPorts,
      listenPortsUdp,
      tunnelPort,
      transport,
      dataDir: join(dir, "hub-data"),
      stop,
      output: () => `${hub.output()}\n${edge.output()}`,
    };
  } catch (error) {
    await stop();
    throw error;
  }
};
