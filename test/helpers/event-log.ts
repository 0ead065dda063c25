/**
 * Event-log test helpers: everything stored in a JetStream stream (duplicates included, to check
 * exactly-once), what an outbox directory holds on disk, and the compiled CLI (`bin/portway.js`, which
 * imports dist/: `npm test` compiles it in its setup step; alone, run `npm run build:ts` first).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type { DomainEvent } from "../../src/events/envelope.js";
import { decodeRecord } from "../../src/nats/outbox.js";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(root, "bin", "portway.js");

const requireBuild = (): void => {
  if (!existsSync(join(root, "dist", "cli", "main.js"))) {
    throw new Error("dist/cli/main.js is missing: run `npm run build:ts` (npm test does it in its setup step)");
  }
};

/** Every envelope stored in `stream`, in stream order, duplicates included. */
export async function storedEvents(url: string, stream = "PORTWAY_EVENTS"): Promise<DomainEvent[]> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    const lastSeq = (await jsm.streams.info(stream)).state.last_seq;
    if (lastSeq === 0) return [];
    const ci = await jsm.consumers.add(stream, { ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, mem_storage: true });
    const msgs = await (await jetstream(nc).consumers.get(stream, ci.name)).consume({ max_messages: 512 });
    const out: DomainEvent[] = [];
    for await (const m of msgs) {
      out.push(...(JSON.parse(new TextDecoder().decode(m.data)) as DomainEvent[]));
      if (m.seq >= lastSeq) break;
    }
    await msgs.close();
    await jsm.consumers.delete(stream, ci.name).catch(() => undefined);
    return out;
  } finally {
    await nc.close();
  }
}

/** The envelopes an outbox directory holds on disk (all segments, acknowledged or not). */
export function outboxEvents(dir: string): DomainEvent[] {
  if (!existsSync(dir)) return [];
  const out: DomainEvent[] = [];
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".log")).sort()) {
    const buf = readFileSync(join(dir, name));
    for (let off = 0; ; ) {
      const d = decodeRecord(buf, off);
      if (typeof d === "string") break;
      out.push(...(JSON.parse(Buffer.from(d.record.payload).toString("utf8")) as DomainEvent[]));
      off += d.size;
    }
  }
  return out;
}

export interface CliProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  output(): string;
  /** Resolves with the first match of `re` in the output; rejects if the process exits first or on timeout. */
  waitForOutput(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `portway <args>` as a child process, keeping its output. */
export function spawnCli(args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): CliProcess {
  requireBuild();
  const child = spawn(process.execPath, [CLI, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    output += chunk.toString();
    for (const l of listeners) l();
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      resolve({ code, signal });
      for (const l of listeners) l();
    }),
  );
  let done = false;
  void exited.then(() => {
    done = true;
  });
  return {
    child,
    pid: child.pid ?? -1,
    output: () => output,
    exited,
    waitForOutput: (re, timeoutMs = 20_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const m = output.match(re);
          if (m) {
            cleanup();
            resolve(m);
          } else if (done) {
            cleanup();
            reject(new Error(`portway ${args[0]} exited before printing ${re}:\n${output}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`portway ${args[0]}: no ${re} within ${timeoutMs} ms:\n${output}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      }),
    kill: async (signal = "SIGTERM") => {
      if (done) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Runs `portway <args>` to completion. */
export async function runCli(args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  requireBuild();
  const child = spawn(process.execPath, [CLI, ...args], { cwd: root, env: { ...process.env, NO_COLOR: "1", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  return { code, stdout, stderr };
}

/** Count of each key; handy for "exactly one of each" checks. */
export const countBy = <T>(items: Iterable<T>, key: (item: T) => string): Map<string, number> => {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
};
