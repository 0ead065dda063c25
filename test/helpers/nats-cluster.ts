/**
 * A real 3-node NATS cluster with JetStream for one test file (the same node config as
 * `infra/nats-cluster.mjs`, infra/nats/node.conf.tmpl): free loopback ports, one temp store per node,
 * ready once every node answers and sees the same JetStream meta leader. One node can be SIGKILLed and
 * restarted on the same ports and store.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultNatsServerBinary } from "../../src/nats/embedded-server.js";
import { freePorts } from "./ports.js";
import { waitFor } from "./wait.js";

const TEMPLATE = join(import.meta.dirname, "..", "..", "infra", "nats", "node.conf.tmpl");

interface NodeSpec {
  readonly name: string;
  readonly client: number;
  readonly route: number;
  readonly monitor: number;
  readonly conf: string;
}

export interface TestNatsCluster {
  /** nats://127.0.0.1:P for each node, in node order. */
  readonly urls: ReadonlyArray<string>;
  /** The urls joined with commas (what `--nats` takes). */
  readonly servers: string;
  readonly nodes: ReadonlyArray<{ readonly name: string; readonly url: string; readonly monitorUrl: string }>;
  readonly dir: string;
  /** SIGKILLs node `i` (0-based) and waits for the process to exit. */
  kill(i: number): Promise<void>;
  /** Starts node `i` again on its ports and store, and waits until it answers and sees a meta leader. */
  restart(i: number): Promise<void>;
  running(i: number): boolean;
  /** `/jsz` of node `i` (with stream details when `streams`). */
  jsz(i: number, streams?: boolean): Promise<JszReply | undefined>;
  /** Waits until every running node sees the same meta leader. */
  waitReady(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface JszReply {
  readonly server_name?: string;
  readonly meta_cluster?: {
    readonly leader?: string;
    readonly cluster_size?: number;
    readonly replicas?: ReadonlyArray<{ readonly name: string; readonly current: boolean; readonly offline?: boolean }>;
  };
  readonly account_details?: ReadonlyArray<{
    readonly stream_detail?: ReadonlyArray<{
      readonly name: string;
      readonly cluster?: { readonly leader?: string; readonly replicas?: ReadonlyArray<{ readonly name: string; readonly current: boolean; readonly offline?: boolean; readonly lag?: number }> };
      readonly state?: { readonly messages: number; readonly last_seq: number };
    }>;
  }>;
}

const getJson = <T>(url: string): Promise<T | undefined> =>
  new Promise((resolve) => {
    const req = request(url, { timeout: 1000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => {
        try {
          resolve(res.statusCode === 200 ? (JSON.parse(body) as T) : undefined);
        } catch {
          resolve(undefined);
        }
      });
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
    req.end();
  });

export async function startNatsCluster(opts: { size?: number; clusterName?: string } = {}): Promise<TestNatsCluster> {
  const size = opts.size ?? 3;
  const dir = await mkdtemp(join(tmpdir(), "portway-nats-cluster-"));
  const ports = await freePorts(size * 3);
  const template = readFileSync(TEMPLATE, "utf8");
  const specs: NodeSpec[] = [];
  for (let i = 0; i < size; i++) {
    specs.push({
      name: `n${i + 1}`,
      client: ports[i] as number,
      route: ports[size + i] as number,
      monitor: ports[2 * size + i] as number,
      conf: join(dir, `n${i + 1}.conf`),
    });
  }
  for (const s of specs) {
    const storeDir = join(dir, s.name);
    mkdirSync(storeDir, { recursive: true });
    const values: Record<string, string> = {
      NAME: s.name,
      HOST: "127.0.0.1",
      CLIENT_PORT: String(s.client),
      ROUTE_PORT: String(s.route),
      MONITOR_PORT: String(s.monitor),
      STORE_DIR: storeDir,
      ROUTES: specs.map((o) => `    nats-route://127.0.0.1:${o.route}`).join("\n"),
      CLUSTER: opts.clusterName ?? "portway-test",
      MAX_FILE: "1GB",
    };
    writeFileSync(s.conf, template.replace(/\{\{([A-Z_]+)\}\}/g, (m, key: string) => values[key] ?? m));
  }

  const binary = defaultNatsServerBinary();
  const children: Array<ChildProcess | undefined> = specs.map(() => undefined);
  const logs: string[][] = specs.map(() => []);
  const spawnNode = (i: number): void => {
    const s = specs[i] as NodeSpec;
    const child = spawn(binary, ["-c", s.conf], { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      const log = logs[i] as string[];
      log.push(chunk);
      if (log.length > 50) log.shift();
    });
    children[i] = child;
    child.once("exit", () => {
      if (children[i] === child) children[i] = undefined;
    });
  };
  const monitorUrl = (i: number) => `http://127.0.0.1:${(specs[i] as NodeSpec).monitor}`;
  const jsz = (i: number, streams = false) =>
    getJson<JszReply>(`${monitorUrl(i)}/jsz${streams ? "?streams=true&config=false&consumers=false" : ""}`);
  const waitReady = async (timeoutMs = 30_000): Promise<void> => {
    await waitFor(
      async () => {
        const up = specs.map((_, i) => i).filter((i) => children[i] !== undefined);
        const views = await Promise.all(up.map(async (i) => ({ name: (specs[i] as NodeSpec).name, meta: (await jsz(i))?.meta_cluster })));
        const leader = views[0]?.meta?.leader ?? "";
        if (leader === "" || !views.every((v) => v.meta?.leader === leader)) return false;
        // The leader knows every running peer as current (else an R3 stream may find no placement yet).
        const own = views.find((v) => v.name === leader)?.meta;
        if (own === undefined) return true; // the leader is not among the running nodes we asked
        const current = (own.replicas ?? []).filter((r) => r.current && r.offline !== true).length;
        return current >= up.length - 1;
      },
      { timeoutMs, intervalMs: 50, what: `NATS cluster meta leader (logs: ${logs.map((l) => l.join("").slice(-300)).join(" | ")})` },
    );
  };

  for (let i = 0; i < size; i++) spawnNode(i);
  const kill = async (i: number): Promise<void> => {
    const child = children[i];
    if (child === undefined) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    await exited;
  };
  const close = async (): Promise<void> => {
    await Promise.all(specs.map((_, i) => kill(i)));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitReady();
  } catch (error) {
    await close();
    throw error;
  }
  const urls = specs.map((s) => `nats://127.0.0.1:${s.client}`);
  return {
    urls,
    servers: urls.join(","),
    nodes: specs.map((s, i) => ({ name: s.name, url: urls[i] as string, monitorUrl: monitorUrl(i) })),
    dir,
    kill,
    restart: async (i) => {
      if (children[i] !== undefined) return;
      spawnNode(i);
      await waitReady();
    },
    running: (i) => children[i] !== undefined,
    jsz,
    waitReady,
    close,
  };
}
