/**
 * A hub killed with SIGKILL and restarted, run as its own process through the CLI (`portway hub --config`),
 * with the real addon, an edge and real TCP clients:
 *  - NATS (external, a test server) down when the hub dies: the events it could not publish are in its disk
 *    outbox, and the restarted hub flushes them;
 *  - embedded nats-server, killed mid-traffic: the orphaned server is replaced at restart;
 * and in both, the streams and the session the dead hub had open are closed in the log with `hubRestarted`,
 * every stream that was opened has exactly one close, nothing is stored twice, and the edge reconnects.
 *
 * Runs bin/portway.js, i.e. dist/ (compiled by `npm test`'s setup; alone: `npm run build:ts`).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RemoteIngressEdge } from "../src/api/edge.js";
import type { DomainEvent } from "../src/events/envelope.js";
import { fingerprintOfPem, hubCertPaths } from "../src/hub/identity.js";
import { findRunningEmbeddedServer } from "../src/nats/embedded-server.js";
import { connectTcp, echoRoundTrip, readUntilEnd } from "./helpers/client.js";
import { countBy, outboxEvents, spawnCli, storedEvents, type CliProcess } from "./helpers/event-log.js";
import { startTestNats, type TestNats } from "./helpers/nats.js";
import { freePorts } from "./helpers/ports.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

interface CrashFixture {
  readonly dir: string;
  readonly dataDir: string;
  readonly config: string;
  readonly edgePort: number;
  readonly edge: RemoteIngressEdge;
  readonly target: string;
  /** The first hub process. */
  readonly hub: CliProcess;
  startHub(): Promise<CliProcess>;
}

/** A hub config file (one edge, one port to the echo target), the hub process, and the edge (in this process). */
async function crashFixture(opts: { nats?: string }): Promise<CrashFixture> {
  const target = teardown.track(await startEchoTarget("v1"));
  const dir = await mkdtemp(join(tmpdir(), "portway-crash-"));
  teardown.add(() => rm(dir, { recursive: true, force: true }));
  const [tunnelPort, edgePort] = (await freePorts(2)) as [number, number];
  const secret = randomBytes(18).toString("base64url");
  const dataDir = join(dir, "hub");
  const config = join(dir, "hub.json");
  teardown.add(() => stopOrphanedServer(dataDir));
  writeFileSync(
    config,
    JSON.stringify({
      hubId: "crash-hub",
      bindHost: "127.0.0.1",
      tunnelPort,
      dataDir,
      ...(opts.nats === undefined ? {} : { nats: opts.nats }),
      edges: [{ id: "e1", secret, listenPorts: [edgePort], targets: { [edgePort]: target.address } }],
    }),
  );
  const startHub = async (): Promise<CliProcess> => {
    const hub = spawnCli(["hub", "--config", config]);
    // A clean stop also stops the hub's embedded nats-server; one orphaned by a SIGKILL is stopped below.
    teardown.add(() => hub.kill("SIGTERM"));
    await hub.waitForOutput(/event log: recovered/);
    return hub;
  };
  const hub = await startHub();
  const fingerprint = fingerprintOfPem(readFileSync(hubCertPaths(dataDir).certPath, "utf8"));
  const edge = new RemoteIngressEdge();
  teardown.add(() => edge.stop());
  await edge.start({
    hubHost: "127.0.0.1",
    hubPort: tunnelPort,
    edgeId: "e1",
    secret,
    bindAddress: "127.0.0.1",
    hubCertFingerprint: fingerprint ?? null,
    reconnectInitialMs: 50,
    reconnectMaxMs: 300,
  });
  await waitForEdge(edge, edgePort);
  return { dir, dataDir, config, edgePort, edge, target: target.address, hub, startHub };
}

/** The embedded nats-server a SIGKILLed hub left running (its pid file names it). */
async function stopOrphanedServer(dataDir: string): Promise<void> {
  const server = await findRunningEmbeddedServer(dataDir);
  if (server === undefined) return;
  process.kill(server.pid, "SIGTERM");
  await waitFor(() => !existsSync(`/proc/${server.pid}`), { what: `nats-server ${server.pid} to exit` });
}

const waitForEdge = (edge: RemoteIngressEdge, port: number) =>
  waitFor(async () => {
    const s = await edge.getStatus();
    return s.connected && s.listenPorts.includes(port);
  }, { what: "the edge connected and listening", timeoutMs: 20_000 });

/** One complete echo exchange (64 bytes each way, then FIN); returns the client's address as the hub logs it. */
/** How long an ended stream may take, under CI load, to reach JetStream or the hub's disk outbox. */
const DURABLE_WITHIN_MS = 2_000;

async function echoOnce(port: number): Promise<string> {
  const socket = await connectTcp(port);
  const clientAddr = `127.0.0.1:${socket.localPort}`;
  try {
    await echoRoundTrip(socket);
    socket.end();
    await readUntilEnd(socket, 10_000);
    return clientAddr;
  } finally {
    socket.destroy();
  }
}

/** A stream that stays open (one echo exchange, no FIN). */
async function holdOpen(port: number): Promise<{ socket: Socket; clientAddr: string }> {
  const socket = await connectTcp(port);
  teardown.add(() => socket.destroy());
  await echoRoundTrip(socket);
  return { socket, clientAddr: `127.0.0.1:${socket.localPort}` };
}

const ofType = <T extends DomainEvent["type"]>(events: ReadonlyArray<DomainEvent>, type: T) =>
  events.filter((e): e is DomainEvent<T> => e.type === type);

/** The log's invariants after a crash and recovery: nothing twice, every opened stream closed exactly once. */
function expectCompleteHistory(stored: ReadonlyArray<DomainEvent>): Map<string, DomainEvent<"stream.closed">> {
  expect([...countBy(stored, (e) => e.id).values()].filter((n) => n > 1)).toEqual([]);
  const opened = ofType(stored, "stream.opened");
  const closed = ofType(stored, "stream.closed");
  const actor = (e: DomainEvent) => `${e.sessionId}/${e.streamId ?? ""}`;
  expect([...countBy(closed, actor).values()].filter((n) => n !== 1)).toEqual([]);
  expect(new Set(closed.map(actor))).toEqual(new Set(opened.map(actor)));
  return new Map(closed.map((e) => [e.data.clientAddr, e]));
}

describe("hub killed with SIGKILL and restarted", () => {
  let nats: TestNats;
  beforeAll(async () => {
    nats = await startTestNats();
  });
  afterAll(async () => {
    await nats?.close();
  });

  it("flushes the outbox the dead hub left (NATS was down), closes its open streams and session with hubRestarted, and the edge reconnects", async () => {
    const fx = await crashFixture({ nats: nats.url });
    const [runId] = [...ofType(await storedEvents(nats.url), "hub.started").map((e) => e.sessionId)];

    const before = await Promise.all(Array.from({ length: 20 }, () => echoOnce(fx.edgePort)));
    await waitFor(async () => ofType(await storedEvents(nats.url), "stream.closed").length === 20, { what: "20 closes stored" });

    // NATS goes away; the hub keeps relaying and keeps its events on disk.
    await nats.stop();
    const held = await Promise.all(Array.from({ length: 5 }, () => holdOpen(fx.edgePort)));
    const during = await Promise.all(Array.from({ length: 10 }, () => echoOnce(fx.edgePort)));
    const outbox = join(fx.dataDir, "outbox");
    await waitFor(
      () => {
        const onDisk = outboxEvents(outbox);
        const opened = new Set(ofType(onDisk, "stream.opened").map((e) => e.data.clientAddr));
        return held.every((h) => opened.has(h.clientAddr)) && ofType(onDisk, "stream.closed").length >= 10;
      },
      { what: "the outage's events in the hub's disk outbox", timeoutMs: 20_000 },
    );

    await fx.hub.kill("SIGKILL");
    await waitFor(async () => !(await fx.edge.getStatus()).connected, { what: "the edge seeing the hub die" });

    await nats.start();
    const hub2 = await fx.startHub();
    const recovered = await hub2.waitForOutput(/recovered: closed what run (\S+) left open with hubRestarted: (\d+) streams, (\d+) sessions/);
    expect(recovered.slice(1)).toEqual([runId, "5", "1"]);
    expect(hub2.output()).toMatch(/flushing \d+ batches .* the previous run left in the outbox/);

    // The edge is back, and new traffic is logged by the new run.
    await waitForEdge(fx.edge, fx.edgePort);
    const after = await echoOnce(fx.edgePort);

    await waitFor(async () => ofType(await storedEvents(nats.url), "stream.closed").some((e) => e.data.clientAddr === after), {
      what: "the new run's traffic in the log",
    });
    const stored = await storedEvents(nats.url);
    const closes = expectCompleteHistory(stored);
    for (const addr of [...before, ...during, after]) {
      expect(closes.get(addr)?.data).toMatchObject({ bytesIn: 64, bytesOut: 64 });
      expect(closes.get(addr)?.data.reason).toMatch(/^(clientClosed|targetClosed)$/);
    }
    for (const h of held) expect(closes.get(h.clientAddr)?.data).toMatchObject({ reason: "hubRestarted", bytesIn: 0, bytesOut: 0 });
    expect(closes.size).toBe(20 + 5 + 10 + 1);

    const disconnects = ofType(stored, "edge.disconnected");
    expect(disconnects.map((e) => e.data.reason)).toEqual(["hubRestarted"]);
    expect(ofType(stored, "edge.connected")).toHaveLength(2);
    expect(ofType(stored, "hub.stopped").map((e) => [e.sessionId, e.data.reason])).toEqual([[runId, "error"]]);
    const recoveredEvents = ofType(stored, "hub.recovered");
    expect(recoveredEvents.at(-1)?.data).toMatchObject({ previousRunId: runId, streamsClosed: 5, sessionsClosed: 1, udpClosed: 0 });

    // A clean stop is logged as such.
    await hub2.kill("SIGTERM");
    expect((await hub2.exited).code).toBe(0);
    await waitFor(async () => ofType(await storedEvents(nats.url), "hub.stopped").some((e) => e.data.reason === "signal"), {
      what: "hub.stopped(signal) of the second run",
    });
  });

  it("with the embedded nats-server, killed mid-traffic: the orphaned server is replaced, nothing is left open, the edge reconnects", async () => {
    const fx = await crashFixture({});
    const pidFile = join(fx.dataDir, "nats", "run", "nats-server.pid");
    const oldServer = Number(readFileSync(pidFile, "utf8"));
    const held = await Promise.all(Array.from({ length: 3 }, () => holdOpen(fx.edgePort)));

    // Traffic goes on while the hub is killed. Each finished exchange is kept with the time it ended.
    const finished: { clientAddr: string; at: number }[] = [];
    let stop = false;
    const traffic = Promise.all(
      Array.from({ length: 4 }, async () => {
        while (!stop) {
          try {
            const clientAddr = await echoOnce(fx.edgePort);
            finished.push({ clientAddr, at: Date.now() });
          } catch {
            // After the kill: refused or cut; the log is what is checked.
          }
        }
      }),
    );
    const trafficStarted = Date.now();
    await waitFor(() => finished.length >= 100 && Date.now() - trafficStarted >= DURABLE_WITHIN_MS + 1_000, {
      what: "100 exchanges and some seconds of traffic before the kill",
      timeoutMs: 20_000,
    });
    const killedAt = Date.now();
    await fx.hub.kill("SIGKILL");
    await waitFor(async () => !(await fx.edge.getStatus()).connected, { what: "the edge seeing the hub die" });
    stop = true;
    await traffic;
    // The embedded server outlived its hub (SIGKILL leaves no chance to stop it).
    expect(existsSync(`/proc/${oldServer}`)).toBe(true);

    const hub2 = await fx.startHub();
    const recovered = await hub2.waitForOutput(/recovered: closed what run \S+ left open with hubRestarted: (\d+) streams, (\d+) sessions/);
    expect(Number(recovered[1])).toBeGreaterThanOrEqual(held.length);
    expect(recovered[2]).toBe("1");
    await waitFor(() => !existsSync(`/proc/${oldServer}`), { what: "the orphaned nats-server stopped" });
    expect(Number(readFileSync(pidFile, "utf8"))).not.toBe(oldServer);

    await waitForEdge(fx.edge, fx.edgePort);
    const after = await echoOnce(fx.edgePort);
    const server = await findRunningEmbeddedServer(fx.dataDir);
    if (server === undefined) throw new Error("no embedded nats-server running for the restarted hub");
    await waitFor(async () => ofType(await storedEvents(server.url), "stream.closed").some((e) => e.data.clientAddr === after), {
      what: "the new run's traffic in the log",
    });
    const closes = expectCompleteHistory(await storedEvents(server.url));
    for (const h of held) expect(closes.get(h.clientAddr)?.data.reason).toBe("hubRestarted");
    // SIGKILL loses only what had not reached the outbox or JetStream yet: the last moments before the kill.
    // Every exchange that ended DURABLE_WITHIN_MS before the kill must be in the log, closed normally.
    const settled = finished.filter((f) => f.at <= killedAt - DURABLE_WITHIN_MS);
    expect(settled.length).toBeGreaterThanOrEqual(50);
    for (const f of settled) expect(closes.get(f.clientAddr)?.data.reason).toMatch(/^(clientClosed|targetClosed)$/);
  });
});
