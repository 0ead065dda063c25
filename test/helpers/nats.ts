/**
 * A real nats-server per test file: free ports, a temp store, readiness waited for (embedded-server.ts),
 * and stop/start/restart on the same ports so reconnect and outage behaviour can be exercised.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Exit, Scope } from "effect";
import { makeEvent, type DomainEvent } from "../../src/events/envelope.js";
import { startEmbeddedServer, type EmbeddedServer } from "../../src/nats/embedded-server.js";

export interface TestNats {
  readonly url: string;
  readonly port: number;
  /** The hub-style data dir; the server store is in `<dataDir>/nats`. */
  readonly dataDir: string;
  readonly server: () => EmbeddedServer | undefined;
  readonly running: () => boolean;
  stop(): Promise<void>;
  start(): Promise<void>;
  restart(): Promise<void>;
  /** Stops the server and removes the temp directory. */
  close(): Promise<void>;
}

export async function startTestNats(opts: { dataDir?: string } = {}): Promise<TestNats> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "portway-nats-")));
  let scope: Scope.CloseableScope | undefined;
  let current: EmbeddedServer | undefined;
  let ports: { port: number; monitorPort: number } | undefined;

  const start = async (): Promise<void> => {
    if (scope) return;
    const s = Effect.runSync(Scope.make());
    const exit = await Effect.runPromiseExit(
      startEmbeddedServer({ dataDir, serverName: "portway-test", ...(ports ?? {}) }).pipe(Scope.extend(s)),
    );
    if (Exit.isFailure(exit)) {
      await Effect.runPromise(Scope.close(s, Exit.void));
      throw new Error(`test nats-server did not start: ${String(exit.cause)}`);
    }
    scope = s;
    current = exit.value;
    ports = { port: current.port, monitorPort: current.monitorPort };
  };
  const stop = async (): Promise<void> => {
    const s = scope;
    scope = undefined;
    current = undefined;
    if (s) await Effect.runPromise(Scope.close(s, Exit.void));
  };
  await start();
  const first = current as unknown as EmbeddedServer;
  return {
    url: first.url,
    port: first.port,
    dataDir,
    server: () => current,
    running: () => scope !== undefined,
    stop,
    start,
    restart: async () => {
      await stop();
      await start();
    },
    close: async () => {
      await stop();
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Polls `cond` every 10 ms until true or the timeout (then throws with `what`). */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * `streams` TCP streams spread over `edges` edges of one hub: each stream is opened then closed, so
 * 2 × streams events, per-actor seq 1 and 2. Times advance 1 ms per stream from `t0`.
 */
export function makeStreamEvents(opts: { hubId?: string; edges?: number; streams: number; t0?: number; sessionPrefix?: string }): DomainEvent[] {
  const hubId = opts.hubId ?? "hub-1";
  const edges = opts.edges ?? 4;
  const t0 = opts.t0 ?? Date.now();
  const out: DomainEvent[] = [];
  for (let i = 0; i < opts.streams; i++) {
    const edgeId = `e${i % edges}`;
    const sessionId = `${opts.sessionPrefix ?? "s"}-${edgeId}`;
    const streamId = String(i);
    const base = { hubId, edgeId, sessionId, streamId };
    const where = { edgePort: 8080, clientAddr: `198.51.100.${i % 250}:${40000 + (i % 20000)}`, target: "10.0.0.5:80" };
    out.push(makeEvent({ ...base, type: "stream.opened", seq: 1, time: t0 + i, data: where }));
    out.push(
      makeEvent({
        ...base,
        type: "stream.closed",
        seq: 2,
        time: t0 + i + 1,
        data: { ...where, bytesIn: i, bytesOut: 2 * i, durationMs: 1, reason: "clientClosed", message: "" },
      }),
    );
  }
  return out;
}
