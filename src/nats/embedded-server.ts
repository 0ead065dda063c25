/**
 * The embedded default: a local `nats-server` with JetStream as a child process of the hub, its store
 * under the hub's data directory. Scoped: started on acquire, stopped (SIGTERM, then SIGKILL) on release.
 *
 * Ports default to -1 (the server picks free ones and writes them to a ports file), so there is no race
 * between choosing a port and binding it. Readiness = the ports file exists and the monitor's
 * `/healthz?js-enabled-only=true` answers 200.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Data, Effect, Scope } from "effect";

export class NatsServerBinaryMissing extends Data.TaggedError("NatsServerBinaryMissing")<{ readonly path: string }> {
  override get message(): string {
    return `nats-server not found at ${this.path}: run \`npm run setup\` (or \`node scripts/ensure-nats.mjs\`) to build it, pass --nats <url> to use an existing server, or turn the event log off (--no-events, \`events: false\`)`;
  }
}

export class NatsServerStartFailed extends Data.TaggedError("NatsServerStartFailed")<{
  readonly reason: string;
  readonly log: string;
}> {
  override get message(): string {
    return `embedded nats-server did not start: ${this.reason}${this.log ? `\n--- nats-server log (tail) ---\n${this.log}` : ""}`;
  }
}

export interface EmbeddedServerOptions {
  /** The store lives in `<dataDir>/nats`; the ports and pid files beside it. */
  readonly dataDir: string;
  readonly binary?: string;
  readonly host?: string;
  /** -1 (default): a free port chosen by the server. Tests pass a fixed port to restart on the same one. */
  readonly port?: number;
  readonly monitorPort?: number;
  readonly serverName?: string;
  readonly readyTimeoutMs?: number;
  /** Extra command-line arguments (e.g. `--max_file_store`). */
  readonly extraArgs?: ReadonlyArray<string>;
  /** Receives the server's log lines (stderr). Default: kept in a small tail buffer only. */
  readonly onLog?: (line: string) => void;
}

export interface EmbeddedServer {
  readonly url: string;
  readonly port: number;
  readonly monitorUrl: string;
  readonly monitorPort: number;
  readonly pid: number;
  readonly storeDir: string;
  /** Resolves when the process exits (for whatever reason). */
  readonly exited: Promise<number | null>;
  /** The last lines the server logged. */
  readonly logTail: () => string;
}

const here = dirname(fileURLToPath(import.meta.url));
/** `.tools/bin/nats-server` of this checkout: src/nats/ is two levels down, dist/src/nats/ three. */
export const defaultNatsServerBinary = (): string => {
  if (process.env.PORTWAY_NATS_SERVER) return process.env.PORTWAY_NATS_SERVER;
  const candidates = [resolve(here, "../../.tools/bin/nats-server"), resolve(here, "../../../.tools/bin/nats-server")];
  for (const c of candidates) if (existsSync(c)) return c;
  return candidates[0] as string;
};

const httpStatus = (url: string, timeoutMs: number): Promise<number> =>
  new Promise((res) => {
    const req = request(url, { timeout: timeoutMs }, (r) => {
      r.resume();
      res(r.statusCode ?? 0);
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => res(0));
    req.end();
  });

interface PortsFile {
  readonly nats?: ReadonlyArray<string>;
  readonly monitoring?: ReadonlyArray<string>;
}

const portOf = (url: string): number => Number(new URL(url).port);

/** A server left behind by a hub that was killed (-9) still holds the store: stop it first. */
const stopLeftover = async (pidFile: string): Promise<void> => {
  let pid: number;
  try {
    pid = Number((await readFile(pidFile, "utf8")).trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (!cmdline.includes("nats-server")) return;
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 50 && existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 100));
    if (existsSync(`/proc/${pid}`)) process.kill(pid, "SIGKILL");
  } catch {
    // not running (or not ours to read): nothing to stop
  }
};

const stopChild = (child: ChildProcess, exited: Promise<number | null>): Promise<void> =>
  new Promise((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res();
    const kill = setTimeout(() => child.kill("SIGKILL"), 5_000);
    void exited.then(() => {
      clearTimeout(kill);
      res();
    });
    child.kill("SIGTERM");
  });

/** Starts the server; the returned effect's scope owns the process. */
export const startEmbeddedServer = (
  opts: EmbeddedServerOptions,
): Effect.Effect<EmbeddedServer, NatsServerBinaryMissing | NatsServerStartFailed, Scope.Scope> =>
  Effect.gen(function* () {
    const binary = opts.binary ?? defaultNatsServerBinary();
    if (!existsSync(binary)) return yield* Effect.fail(new NatsServerBinaryMissing({ path: binary }));
    const baseDir = join(opts.dataDir, "nats");
    const storeDir = join(baseDir, "store");
    const portsDir = join(baseDir, "run");
    const pidFile = join(portsDir, "nats-server.pid");
    yield* Effect.promise(async () => {
      await mkdir(storeDir, { recursive: true });
      await stopLeftover(pidFile);
      await rm(portsDir, { recursive: true, force: true });
      await mkdir(portsDir, { recursive: true });
    });

    const tail: string[] = [];
    const logTail = (): string => tail.join("\n");
    const args = [
      "-js",
      "-sd", storeDir,
      "-a", opts.host ?? "127.0.0.1",
      "-p", String(opts.port ?? -1),
      "-m", String(opts.monitorPort ?? -1),
      "-n", opts.serverName ?? "portway-embedded",
      "--ports_file_dir", portsDir,
      ...(opts.extraArgs ?? []),
    ];

    const { child, exited } = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"] });
        const exited = new Promise<number | null>((res) => {
          child.once("exit", (code) => res(code));
          child.once("error", (err) => {
            tail.push(`spawn error: ${err.message}`);
            res(null);
          });
        });
        let partial = "";
        child.stderr?.setEncoding("utf8");
        child.stderr?.on("data", (chunk: string) => {
          const lines = (partial + chunk).split("\n");
          partial = lines.pop() ?? "";
          for (const line of lines) {
            tail.push(line);
            if (tail.length > 40) tail.shift();
            opts.onLog?.(line);
          }
        });
        return { child, exited };
      }),
      ({ child, exited }) => Effect.promise(() => stopChild(child, exited)),
    );
    const pid = child.pid;
    if (pid === undefined) {
      yield* Effect.promise(() => exited);
      return yield* Effect.fail(new NatsServerStartFailed({ reason: `could not spawn ${binary}`, log: logTail() }));
    }
    yield* Effect.promise(() => writeFile(pidFile, String(pid)));

    const deadline = Date.now() + (opts.readyTimeoutMs ?? 15_000);
    let exitCode: number | null | undefined;
    void exited.then((c) => {
      exitCode = c;
    });
    const ports = yield* Effect.promise(async (): Promise<PortsFile | string> => {
      for (;;) {
        if (exitCode !== undefined) return `exited with code ${exitCode} during start`;
        if (Date.now() > deadline) return "timed out waiting for readiness";
        const names = await readdir(portsDir).catch(() => [] as string[]);
        const file = names.find((n) => n.endsWith(".ports"));
        if (file) {
          try {
            const parsed = JSON.parse(await readFile(join(portsDir, file), "utf8")) as PortsFile;
            const mon = parsed.monitoring?.[0];
            if (parsed.nats?.[0] && mon && (await httpStatus(`${mon}/healthz?js-enabled-only=true`, 1_000)) === 200) {
              return parsed;
            }
          } catch {
            // partially written ports file: read it again
          }
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    });
    if (typeof ports === "string") {
      return yield* Effect.fail(new NatsServerStartFailed({ reason: ports, log: logTail() }));
    }
    const url = ports.nats?.[0] as string;
    const monitorUrl = ports.monitoring?.[0] as string;
    return { url, port: portOf(url), monitorUrl, monitorPort: portOf(monitorUrl), pid, storeDir, exited, logTail };
  });

/** A running embedded server found through a hub's data dir (for readers such as `portway events`). */
export interface RunningEmbeddedServer {
  readonly url: string;
  readonly pid: number;
}

/**
 * The embedded nats-server a hub with this data dir is running right now, if any: its pid file names a live
 * nats-server process and its ports file the client URL.
 */
export const findRunningEmbeddedServer = async (dataDir: string): Promise<RunningEmbeddedServer | undefined> => {
  const runDir = join(dataDir, "nats", "run");
  try {
    const pid = Number((await readFile(join(runDir, "nats-server.pid"), "utf8")).trim());
    if (!Number.isInteger(pid) || pid <= 0) return undefined;
    if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("nats-server")) return undefined;
    const file = (await readdir(runDir)).find((n) => n.endsWith(".ports"));
    if (file === undefined) return undefined;
    const url = (JSON.parse(await readFile(join(runDir, file), "utf8")) as PortsFile).nats?.[0];
    return url === undefined ? undefined : { url, pid };
  } catch {
    return undefined;
  }
};
