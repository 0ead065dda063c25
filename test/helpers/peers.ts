import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.js";
import { readUntilEnd, tryConnect } from "./client.js";
import type { Socket } from "node:net";
import { waitFor } from "./wait.js";

export const HAPROXY_BIN = "/usr/sbin/haproxy";
export const NGINX_BIN = "/usr/sbin/nginx";

/** A Debian server that understands the PROXY protocol and answers HTTP with the client address it was told. */
export interface ProxyPeer {
  readonly name: "haproxy" | "nginx";
  readonly host: string;
  readonly port: number;
  readonly address: string;
  /** What the peer printed (kept for failure messages). */
  output(): string;
  stop(): Promise<void>;
}

const requireBinary = (path: string, apt: string): void => {
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: install it with 'apt-get install -y ${apt}' (npm run setup -- --with-peers does this)`);
  }
};

const runPeer = async (name: ProxyPeer["name"], bin: string, args: string[], dir: string, port: number): Promise<ProxyPeer> => {
  const child: ChildProcess = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
  let exited: string | undefined;
  child.once("exit", (code, signal) => {
    exited = `exited with ${signal ?? code}`;
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = once(child, "exit");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 3_000);
      await gone;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`${name} ${exited}: ${output}`);
        return (await tryConnect(port)) === "connected";
      },
      { timeoutMs: 10_000, what: `${name} accepting on 127.0.0.1:${port}` },
    );
  } catch (error) {
    await stop();
    throw new Error(`${name} did not start: ${(error as Error).message}\n${output}`);
  }
  return { name, host: "127.0.0.1", port, address: `127.0.0.1:${port}`, output: () => output, stop };
};

/** haproxy with `accept-proxy` (v1 and v2), replying `<src>:<src_port>` as seen through the PROXY header. */
export const startHaproxy = async (): Promise<ProxyPeer> => {
  requireBinary(HAPROXY_BIN, "haproxy");
  const dir = await mkdtemp(join(tmpdir(), "portway-haproxy-"));
  const port = await freePort();
  const config = [
    "global",
    "  maxconn 256",
    "defaults",
    "  mode http",
    "  timeout connect 5s",
    "  timeout client 30s",
    "  timeout server 30s",
    "frontend echo_client_address",
    `  bind 127.0.0.1:${port} accept-proxy`,
    '  http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]"',
    "",
  ].join("\n");
  const file = join(dir, "haproxy.cfg");
  await writeFile(file, config);
  return runPeer("haproxy", HAPROXY_BIN, ["-db", "-f", file], dir, port);
};

/** nginx with `listen … proxy_protocol`, replying `$proxy_protocol_addr:$proxy_protocol_port`. */
export const startNginx = async (): Promise<ProxyPeer> => {
  requireBinary(NGINX_BIN, "nginx");
  const dir = await mkdtemp(join(tmpdir(), "portway-nginx-"));
  const port = await freePort();
  const config = [
    "worker_processes 1;",
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    "events { worker_connections 256; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${join(dir, "body")};`,
    `  proxy_temp_path ${join(dir, "proxy")};`,
    `  fastcgi_temp_path ${join(dir, "fastcgi")};`,
    `  uwsgi_temp_path ${join(dir, "uwsgi")};`,
    `  scgi_temp_path ${join(dir, "scgi")};`,
    "  server {",
    `    listen 127.0.0.1:${port} proxy_protocol;`,
    '    location / { default_type text/plain; return 200 "$proxy_protocol_addr:$proxy_protocol_port"; }',
    "  }",
    "}",
    "",
  ].join("\n");
  const file = join(dir, "nginx.conf");
  await writeFile(file, config);
  return runPeer("nginx", NGINX_BIN, ["-p", dir, "-e", "stderr", "-c", file, "-g", "daemon off;"], dir, port);
};

/** Plain HTTP/1.0 GET over an already-connected socket; returns status code and body. */
export const httpGetOver = async (socket: Socket, host: string): Promise<{ status: number; body: string }> => {
  const response = readUntilEnd(socket, 10_000);
  socket.write(`GET / HTTP/1.0\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const text = (await response).toString("latin1");
  const match = /^HTTP\/1\.[01] (\d{3})[^\r\n]*\r\n[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(text);
  if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(text.slice(0, 200))}`);
  return { status: Number(match[1]), body: match[2] ?? "" };
};
