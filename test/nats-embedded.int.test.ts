/**
 * The embedded default with the real pinned binary: started under the data dir, ready, usable by the
 * event log, restarted if it dies, stopped when the scope closes; a clear error when the binary is missing.
 */
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Exit, Layer, ManagedRuntime, Scope } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NatsClient } from "../src/nats/connection.js";
import { startEmbeddedServer } from "../src/nats/embedded-server.js";
import { EventLog, layer as eventLogLayer } from "../src/nats/event-log.js";
import { layer as natsLayer } from "../src/nats/provision.js";
import { edgeHistory } from "../src/nats/replay.js";
import { makeStreamEvents, waitFor } from "./helpers/nats.js";

let dataDir: string;
beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "portway-embedded-"));
});
afterAll(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`);

describe("embedded nats-server", () => {
  it("runs under the data dir, serves the event log, restarts after a crash, stops with the scope", async () => {
    const logs: string[] = [];
    const rt = ManagedRuntime.make(
      eventLogLayer({ hubId: "hub-e", runId: "r1", dataDir }).pipe(
        Layer.provideMerge(natsLayer({ dataDir, log: (l, m) => logs.push(`${l}: ${m}`) })),
      ),
    );
    const client = await rt.runPromise(NatsClient);
    const log = await rt.runPromise(EventLog);
    const nc = client.current();
    if (!nc) throw new Error("no connection");
    expect(existsSync(join(dataDir, "nats", "store", "jetstream"))).toBe(true);
    expect(nc.info?.version).toBe("2.15.2");
    const pidFile = join(dataDir, "nats", "run", "nats-server.pid");
    const pid = Number(readFileSync(pidFile, "utf8"));
    expect(alive(pid)).toBe(true);

    const evs = makeStreamEvents({ streams: 500, edges: 2, hubId: "hub-e" });
    log.appendAll(evs);
    await rt.runPromise(log.whenIdle);

    // The server dies: it is restarted on the same port, the client reconnects, events keep flowing.
    process.kill(pid, "SIGKILL");
    await waitFor(() => logs.some((l) => l.includes("restarted")), "embedded server restart", 20_000);
    const more = makeStreamEvents({ streams: 500, edges: 2, hubId: "hub-e", sessionPrefix: "after" });
    log.appendAll(more);
    await rt.runPromise(log.whenIdle);
    const h = await rt.runPromise(edgeHistory({ edgeId: "e0" }));
    expect(h.totals.connections).toBe(500);
    expect(h.totals.openConnections).toBe(0);

    const newPid = Number(readFileSync(pidFile, "utf8"));
    expect(newPid).not.toBe(pid);
    await rt.dispose();
    await waitFor(() => !alive(newPid), "embedded server stopped on dispose", 10_000);
  });

  it("says how to get the binary when it is missing", async () => {
    const exit = await Effect.runPromiseExit(
      Effect.scoped(startEmbeddedServer({ dataDir, binary: join(dataDir, "no-such-nats-server") })),
    );
    expect(Exit.isFailure(exit)).toBe(true);
    const msg = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error.message : "";
    expect(msg).toMatch(/nats-server not found at .*no-such-nats-server: run `npm run setup`/);
  });

  it("reports a server that exits during start with its log", async () => {
    const scope = Effect.runSync(Scope.make());
    const exit = await Effect.runPromiseExit(
      startEmbeddedServer({ dataDir, extraArgs: ["--this-flag-does-not-exist"] }).pipe(Scope.extend(scope)),
    );
    await Effect.runPromise(Scope.close(scope, Exit.void));
    expect(Exit.isFailure(exit)).toBe(true);
    const err = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined;
    expect(err?._tag).toBe("NatsServerStartFailed");
    expect(err?.message).toMatch(/exited with code/);
  });
});
