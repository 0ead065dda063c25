// Child processes the benchmark runs: echo server, iperf3 server, socat relays, and the tunnel (hub + edge
// via the CLI). Each start function resolves once the process accepts connections; `stop()` ends it.
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");

const freeTcpPort = () =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

/** Whether `port` can be bound for UDP on 127.0.0.1 right now (the socket is closed again at once). */
export const udpPortFree = (port) =>
  new Promise((resolve) => {
    const socket = createSocket("udp4");
    socket.once("error", () => {
      socket.close();
      resolve(false);
    });
    socket.bind(port, "127.0.0.1", () => socket.close(() => resolve(true)));
  });

/** A free TCP port on 127.0.0.1; with `udp: true`, one that is free for UDP as well (e.g. the hub's TLS + QUIC port). */
export const freePort = async ({ udp = false } = {}) => {
  for (let i = 0; i < 50; i++) {
    const port = await freeTcpPort();
    if (!udp || (await udpPortFree(port))) return port;
  }
  throw new Error("no port free for both TCP and UDP");
};

/** A free UDP port on 127.0.0.1. */
export const freeUdpPort = () =>
  new Promise((resolve, reject) => {
    const socket = createSocket("udp4");
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const canConnect = (port) =>
  new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });

/** Polls `check` every 20 ms until it is truthy or `timeoutMs` passes. */
export const waitFor = async (check, what, timeoutMs = 15_000) => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
};

export const requireBinary = (path, apt) => {
  if (!existsSync(path)) throw new Error(`${path} is missing: apt-get install -y ${apt} (npm run bench runs setup --with-peers)`);
};

/** Spawns a long-running process, keeping its output for error messages. */
export const spawnProcess = (command, args, options = {}) => {
  const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"], cwd: root, ...options });
  let output = "";
  child.stdout.on("data", (c) => (output += c));
  child.stderr.on("data", (c) => (output += c));
  let exit;
  child.once("exit", (code, signal) => (exit = signal ?? code));
  return {
    child,
    pid: child.pid,
    output: () => output,
    exited: () => exit,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = once(child, "exit");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await gone;
      clearTimeout(timer);
    },
  };
};

/** Waits until `proc` accepts on `port`, failing early (with its output) if it exits. */
export const waitListening = async (proc, port, name) => {
  await waitFor(async () => {
    if (proc.exited() !== undefined) throw new Error(`${name} exited (${proc.exited()}): ${proc.output()}`);
    return canConnect(port);
  }, `${name} on port ${port}`);
};

export const startEchoServer = async () => {
  const proc = spawnProcess(process.execPath, [join(root, "bench", "echo-server.mjs")]);
  const port = await waitFor(() => {
    if (proc.exited() !== undefined) throw new Error(`echo server exited: ${proc.output()}`);
    const match = /listening (\d+)/.exec(proc.output());
    return match ? Number(match[1]) : undefined;
  }, "echo server");
  return { ...proc, port };
};

export const startIperfServer = async () => {
  requireBinary("/usr/bin/iperf3", "iperf3");
  const port = await freePort();
  const proc = spawnProcess("/usr/bin/iperf3", ["-s", "-p", String(port), "-B", "127.0.0.1"]);
  await waitListening(proc, port, "iperf3 -s");
  return { ...proc, port };
};

/** Two socat relays in a row: client → a → b → `targetPort`. Returns the port of the first. */
export const startSocatChain = async (targetPort) => {
  requireBinary("/usr/bin/socat", "socat");
  const b = await freePort();
  const second = spawnProcess("/usr/bin/socat", [`TCP-LISTEN:${b},bind=127.0.0.1,fork,reuseaddr`, `TCP:127.0.0.1:${targetPort}`]);
  await waitListening(second, b, "socat (second)");
  const a = await freePort();
  const first = spawnProcess("/usr/bin/socat", [`TCP-LISTEN:${a},bind=127.0.0.1,fork,reuseaddr`, `TCP:127.0.0.1:${b}`]);
  await waitListening(first, a, "socat (first)");
  return {
    port: a,
    stop: async () => {
      await first.stop();
      await second.stop();
    },
  };
};
