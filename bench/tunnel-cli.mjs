// Starts a hub and an edge as two separate processes through the CLI (`node bin/portway.js hub|edge`), with a
// self-made TLS identity so the edge can pin the hub without parsing the hub's output.
import { X509Certificate, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canConnect, freePort, root, spawnProcess, waitFor } from "./processes.mjs";

const CLI = join(root, "bin", "portway.js");

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
 * `routes`: [{ target: "host:port" }] → one edge listen port each. PROXY protocol off (iperf3 speaks none).
 * `hub`: extra hub config (e.g. `{ events: false }`); by default the hub records events in its embedded
 * nats-server, under `dataDir` (returned, so readers can find that server).
 */
export const startTunnelCli = async ({ routes, hub: hubExtra = {} }) => {
  const dir = mkdtempSync(join(tmpdir(), "portway-bench-"));
  const identity = makeIdentity(dir);
  const tunnelPort = await freePort();
  const listenPorts = [];
  for (const _ of routes) listenPorts.push(await freePort());
  const edgeId = "bench-edge";
  const secret = randomBytes(24).toString("base64url");
  const targets = Object.fromEntries(routes.map((r, i) => [listenPorts[i], r.target]));

  const hubConfig = join(dir, "hub.json");
  writeFileSync(
    hubConfig,
    JSON.stringify({
      hubId: "bench-hub",
      bindHost: "127.0.0.1",
      tunnelPort,
      targetHost: "127.0.0.1",
      proxyProtocol: { tcp: "none" },
      dataDir: join(dir, "hub-data"),
      tls: { certFile: identity.certPath, keyFile: identity.keyPath },
      edges: [{ id: edgeId, secret, listenPorts, targets }],
      ...hubExtra,
    }),
  );
  const hub = spawnProcess(process.execPath, [CLI, "hub", "--config", hubConfig]);
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
      CLI, "token", "--hub-host", "127.0.0.1", "--hub-port", String(tunnelPort), "--edge-id", edgeId, "--secret", secret,
      "--fingerprint", identity.fingerprint,
    ], { encoding: "utf8", cwd: root }).trim().split("\n").pop();
    const edge = spawnProcess(process.execPath, [CLI, "edge", "--token", token, "--bind-address", "127.0.0.1"]);
    stopAll.push(() => edge.stop());
    // Listening edge ports are the readiness signal; a probe connection opens (and closes) one stream.
    await waitFor(async () => {
      if (edge.exited() !== undefined) throw new Error(`edge exited (${edge.exited()}): ${edge.output()}`);
      for (const port of listenPorts) if (!(await canConnect(port))) return false;
      return true;
    }, `edge listening on ${listenPorts.join(", ")}`);
    return {
      hubPid: hub.pid,
      edgePid: edge.pid,
      listenPorts,
      tunnelPort,
      dataDir: join(dir, "hub-data"),
      stop,
      output: () => `${hub.output()}\n${edge.output()}`,
    };
  } catch (error) {
    await stop();
    throw error;
  }
};
