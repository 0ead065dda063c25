/**
 * The event log end to end, with the real addon and real nats-servers: a hub started the library way (events
 * on by default, embedded nats-server under its data dir), 1,000 TCP connections through the tunnel, then the
 * log checked against what the clients saw — raw (exactly one opened and one closed per connection, none
 * stored twice), through the library (replay, history) and through the CLI (`events replay`, `history`,
 * `events tail`). Then the same under a NATS outage in the middle of tunnel traffic.
 *
 * The CLI parts run bin/portway.js, i.e. dist/ (compiled by `npm test`'s setup; alone: `npm run build:ts`).
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Exit, Scope } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RemoteIngressHub, type RemoteIngressHubStatus } from "../src/api/hub.js";
import { startEmbeddedServer } from "../src/nats/embedded-server.js";
import type { DomainEvent } from "../src/events/envelope.js";
import type { EdgeHistory } from "../src/nats/history.js";
import { hashExchange, tryConnect, type HashExchangeResult } from "./helpers/client.js";
import { freePort } from "./helpers/ports.js";
import { countBy, runCli, spawnCli, storedEvents } from "./helpers/event-log.js";
import { startTestNats, type TestNats } from "./helpers/nats.js";
import { startHashTarget, type Target } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { startTunnel, type TunnelFixture } from "./helpers/tunnel.js";
import { waitFor } from "./helpers/wait.js";

const CONNECTIONS = 1_000;
const CONCURRENCY = 50;

/** Runs `work` over `items` with at most `limit` at a time. */
async function pool<T, R>(items: ReadonlyArray<T>, limit: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      for (let i = next++; i < items.length; i = next++) out[i] = await work(items[i] as T, i);
    }),
  );
  return out;
}

/** What a client saw, in the log's terms: client address, client→target and target→client bytes. */
interface Seen {
  readonly clientAddr: string;
  readonly bytesIn: number;
  readonly bytesOut: number;
}
// The hash target protocol adds a 16-byte request header (up) and a 64-byte digest trailer (down).
const seenOf = (r: HashExchangeResult): Seen => ({ clientAddr: `127.0.0.1:${r.localPort}`, bytesIn: r.sent + 16, bytesOut: r.received + 64 });
const key = (s: Seen): string => `${s.clientAddr}|${s.bytesIn}|${s.bytesOut}`;
const sortedKeys = (items: Iterable<Seen>): string[] => [...items].map(key).sort();

const closedOf = (events: ReadonlyArray<DomainEvent>) =>
  events.filter((e): e is DomainEvent<"stream.closed"> => e.type === "stream.closed");
const openedOf = (events: ReadonlyArray<DomainEvent>) =>
  events.filter((e): e is DomainEvent<"stream.opened"> => e.type === "stream.opened");
const actor = (e: DomainEvent): string => `${e.sessionId}/${e.streamId ?? ""}`;

/** Waits until the hub's actors saw `n` closes, nothing is open, and every event is acknowledged by JetStream. */
async function settled(tunnel: TunnelFixture, closes: () => number, n: number): Promise<void> {
  await waitFor(() => closes() >= n, { what: `${n} streamClosed on the hub`, timeoutMs: 60_000 });
  const log = tunnel.hub.service?.eventLog;
  if (log === undefined) throw new Error("the hub has no event log");
  await waitFor(() => log.actors().streams.length === 0, { what: "no open stream actors" });
  await tunnel.hub.flushEvents();
}

describe("event log end to end: 1,000 TCP connections through the tunnel", () => {
  let target: Target;
  let tunnel: TunnelFixture;
  let seen: Seen[];
  let url: string;

  beforeAll(async () => {
    target = await startHashTarget("v1");
    tunnel = await startTunnel({ routes: [{ target: target.address }] });
    let closes = 0;
    tunnel.hub.on("streamClosed", () => void (closes += 1));
    const status = await tunnel.hub.getStatus();
    if (status.events?.enabled !== true) throw new Error(`events should be on by default: ${JSON.stringify(status.events)}`);
    url = status.events.servers[0] as string;

    const port = tunnel.listenPorts[0] as number;
    const plan = Array.from({ length: CONNECTIONS }, (_, i) => ({ send: (i * 37) % 3_000, receive: (i * 53) % 5_000 }));
    const results = await pool(plan, CONCURRENCY, (p) => hashExchange(port, p.send, p.receive));
    seen = results.map(seenOf);
    await settled(tunnel, () => closes, CONNECTIONS);
  }, 120_000);

  afterAll(async () => {
    await tunnel?.stop();
    await target?.close();
  });

  it("defaults to an embedded nats-server under the hub's data dir, and reports its health", async () => {
    const status: RemoteIngressHubStatus = await tunnel.hub.getStatus();
    expect(status.events).toMatchObject({
      enabled: true,
      nats: "embedded",
      connected: true,
      stream: "PORTWAY_EVENTS",
      mode: "direct",
      droppedEvents: 0,
      outbox: { records: 0 },
      recovery: { state: "done", streamsClosed: 0, sessionsClosed: 0 },
    });
    expect(status.events?.enabled === true && status.events.serverVersion).toBe("2.15.2");
  });

  it("stores exactly one stream.opened and one stream.closed per connection, with the bytes the clients moved", async () => {
    const stored = await storedEvents(url);
    // Nothing stored twice (every event id once), whatever the batching.
    expect([...countBy(stored, (e) => e.id).values()].filter((n) => n > 1)).toEqual([]);
    const opened = openedOf(stored);
    const closed = closedOf(stored);
    expect(opened).toHaveLength(CONNECTIONS);
    expect(closed).toHaveLength(CONNECTIONS);
    expect(new Set(opened.map(actor))).toEqual(new Set(closed.map(actor)));
    expect(new Set(opened.map((e) => e.seq))).toEqual(new Set([1]));
    expect(new Set(closed.map((e) => e.seq))).toEqual(new Set([2]));
    expect(sortedKeys(closed.map((e) => e.data))).toEqual(sortedKeys(seen));
    expect(closed.every((e) => e.edgeId === "edge-1" && e.hubId === "test-hub" && e.data.target === target.address)).toBe(true);
    expect(closed.every((e) => e.data.reason === "clientClosed" || e.data.reason === "targetClosed")).toBe(true);
    // The hub and its tunnel session are in the log too.
    expect(countBy(stored, (e) => e.type).get("hub.started")).toBe(1);
    expect(countBy(stored, (e) => e.type).get("hub.recovered")).toBe(1);
    expect(countBy(stored, (e) => e.type).get("edge.connected")).toBe(1);
  });

  it("replays the same through the library and the CLI (`events replay --kind stream.closed --json`)", async () => {
    const replayed: DomainEvent[] = [];
    for await (const e of tunnel.hub.replayHistory({ edgeId: "edge-1", kinds: ["stream"] })) replayed.push(e);
    expect(openedOf(replayed)).toHaveLength(CONNECTIONS);
    expect(sortedKeys(closedOf(replayed).map((e) => e.data))).toEqual(sortedKeys(seen));

    const cli = await runCli(["events", "replay", "--edge", "edge-1", "--kind", "stream.closed", "--json", "--data-dir", tunnel.dataDir]);
    expect(cli.stderr).toBe("");
    expect(cli.code).toBe(0);
    const lines = cli.stdout.trim().split("\n").map((l) => JSON.parse(l) as DomainEvent);
    expect(lines.every((e) => e.type === "stream.closed")).toBe(true);
    expect(sortedKeys(closedOf(lines).map((e) => e.data))).toEqual(sortedKeys(seen));

    // --since/--until select by event time: a window after everything is empty.
    const later = await runCli(["events", "replay", "--since", new Date(Date.now() + 60_000).toISOString(), "--data-dir", tunnel.dataDir]);
    expect(later.code).toBe(0);
    expect(later.stdout).toBe("");
    expect(later.stderr).toMatch(/no events match/);
  });

  it("projects the same history through the library and `portway history --json`, and prints it as text", async () => {
    const h = await tunnel.hub.history({ edgeId: "edge-1" });
    expect(h.totals).toMatchObject({ sessions: 1, connections: CONNECTIONS, tcp: CONNECTIONS, openConnections: 0 });
    expect(h.totals.bytesIn).toBe(seen.reduce((n, s) => n + s.bytesIn, 0));
    expect(h.totals.bytesOut).toBe(seen.reduce((n, s) => n + s.bytesOut, 0));
    expect(sortedKeys(h.connections.map((c) => ({ clientAddr: c.clientAddr ?? "", bytesIn: c.bytesIn, bytesOut: c.bytesOut })))).toEqual(sortedKeys(seen));
    expect(h.connections.every((c) => c.edgePort === tunnel.listenPorts[0] && c.target === target.address && c.closedAt !== null)).toBe(true);
    expect(h.sessions[0]).toMatchObject({ hubId: "test-hub", to: null, endReason: null });

    const cli = await runCli(["history", "--edge", "edge-1", "--json", "--data-dir", tunnel.dataDir]);
    expect(cli.code).toBe(0);
    expect(JSON.parse(cli.stdout) as EdgeHistory).toEqual(h);

    const text = await runCli(["history", "--edge", "edge-1", "--limit", "5", "--data-dir", tunnel.dataDir]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/Connections \(1000: 1000 TCP, 0 UDP, 0 open\)/);
    expect(text.stdout).toMatch(/995 earlier connections not shown/);
    expect(text.stdout.split("\n").filter((l) => /^\s+\d{4}-\d\d-\d\dT.*tcp\s+127\.0\.0\.1:\d+/.test(l))).toHaveLength(5);
  });

  it("`portway events tail` prints events as they are appended, readable or as JSON, and stops on SIGINT", async () => {
    const since = new Date().toISOString();
    const port = tunnel.listenPorts[0] as number;
    const results = await pool([0, 1, 2], 3, () => hashExchange(port, 100, 200));
    const text = spawnCli(["events", "tail", "--edge", "edge-1", "--kind", "stream.closed", "--since", since, "--data-dir", tunnel.dataDir]);
    const json = spawnCli(["events", "tail", "--edge", "edge-1", "--kind", "stream", "--since", since, "--json", "--data-dir", tunnel.dataDir]);
    try {
      for (const r of results) {
        // The readable line: time, hub, edge, type, session/stream, client → port → target, bytes, reason.
        const line = new RegExp(`test-hub edge-1 stream\\.closed +\\S+/\\d+ 127\\.0\\.0\\.1:${r.localPort} → :${port} → ${target.address.replace(/\./g, "\\.")}  in 116 B, out 264 B`);
        await text.waitForOutput(line);
      }
      await waitFor(() => json.output().trim().split("\n").filter((l) => l.startsWith("{")).length >= 6, { what: "6 JSON lines from tail" });
      const events = json.output().trim().split("\n").map((l) => JSON.parse(l) as DomainEvent);
      expect(countBy(events, (e) => e.type)).toEqual(new Map([["stream.opened", 3], ["stream.closed", 3]]));
    } finally {
      await text.kill("SIGINT");
      await json.kill("SIGINT");
    }
    expect(await text.exited).toEqual({ code: 0, signal: null });
    expect(text.output()).not.toMatch(/stream\.opened/);
  });

  it("says what is wrong instead of hanging: no hub on the data dir, bad --since, unknown --kind", async () => {
    const [none, badSince, badKind, noEdge] = await Promise.all([
      runCli(["history", "--edge", "edge-1", "--data-dir", `${tunnel.dataDir}-nope`]),
      runCli(["events", "replay", "--since", "yesterday-ish", "--data-dir", tunnel.dataDir]),
      runCli(["events", "tail", "--kind", "stream.exploded", "--data-dir", tunnel.dataDir]),
      runCli(["history", "--data-dir", tunnel.dataDir]),
    ]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no hub is running with data dir .*-nope/);
    expect(badSince.code).toBe(2);
    expect(badSince.stderr).toMatch(/--since must be a duration such as 1h/);
    expect(badKind.code).toBe(2);
    expect(badKind.stderr).toMatch(/--kind "stream.exploded" is neither a kind/);
    expect(noEdge.code).toBe(2);
    expect(noEdge.stderr).toMatch(/--edge ID is required/);
  });
});

describe("event log under a NATS outage in the middle of tunnel traffic", () => {
  const teardown = useTeardown();
  let nats: TestNats;
  beforeAll(async () => {
    nats = await startTestNats();
  });
  afterAll(async () => {
    await nats?.close();
  });

  it("misses no event and stores none twice: the outbox holds them while NATS is down and flushes them in order", async () => {
    const target = teardown.track(await startHashTarget("v1"));
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], hubExtra: { nats: nats.url } }));
    let closes = 0;
    tunnel.hub.on("streamClosed", () => void (closes += 1));
    const log = tunnel.hub.service?.eventLog;
    expect(log?.nats).toBe("external");
    const port = tunnel.listenPorts[0] as number;

    // Connections keep coming, 10 at a time, while NATS goes away and comes back.
    const results: HashExchangeResult[] = [];
    const failures: string[] = [];
    let stop = false;
    const traffic = pool(Array.from({ length: 10 }), 10, async () => {
      while (!stop) {
        try {
          results.push(await hashExchange(port, 500, 700));
        } catch (error) {
          failures.push(error instanceof Error ? error.message : String(error));
          stop = true;
        }
      }
    });
    await waitFor(() => results.length >= 50, { what: "traffic before the outage" });
    await nats.stop();
    const stoppedAt = Date.now();
    await waitFor(() => log?.status().mode === "outbox", { what: "the hub's event log in outbox mode" });
    const during = results.length;
    // Publishes in flight when NATS went away fail after their timeout; then everything goes to the disk outbox.
    // The outage lasts at least 3 s (the 30 s one with synthetic events is in outbox.int.test.ts).
    await waitFor(() => (log?.status().outbox.records ?? 0) > 0 && results.length >= during + 100 && Date.now() - stoppedAt >= 3_000, {
      what: "events in the disk outbox while traffic goes on for 3 s",
      timeoutMs: 20_000,
    });
    expect(failures).toEqual([]); // the data path does not wait for NATS
    await nats.start();
    await waitFor(() => log?.status().mode === "direct", { what: "the outbox drained", timeoutMs: 30_000 });
    const after = results.length;
    await waitFor(() => results.length >= after + 50, { what: "traffic after the outage" });
    stop = true;
    await traffic;
    expect(failures).toEqual([]);
    await settled(tunnel, () => closes, results.length);

    const stored = await storedEvents(nats.url);
    expect([...countBy(stored, (e) => e.id).values()].filter((n) => n > 1)).toEqual([]); // none stored twice
    const opened = openedOf(stored);
    const closed = closedOf(stored);
    expect(opened).toHaveLength(results.length); // none missing
    expect(closed).toHaveLength(results.length);
    expect(sortedKeys(closed.map((e) => e.data))).toEqual(sortedKeys(results.map(seenOf)));
    expect(log?.status()).toMatchObject({ droppedEvents: 0, mode: "direct" });
  });
});

const DEBIAN_NATS = "/usr/sbin/nats-server";

describe("a NATS server too old for the event log", () => {
  const teardown = useTeardown();

  it.skipIf(!existsSync(DEBIAN_NATS))("stops the hub from starting, with a clear error, before any port is bound", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portway-oldnats-hub-"));
    teardown.add(() => rm(dir, { recursive: true, force: true }));
    const scope = Effect.runSync(Scope.make());
    teardown.add(() => Effect.runPromise(Scope.close(scope, Exit.void)));
    const old = await Effect.runPromise(startEmbeddedServer({ dataDir: join(dir, "old"), binary: DEBIAN_NATS }).pipe(Scope.extend(scope)));
    const port = await freePort();

    const hub = new RemoteIngressHub();
    teardown.add(() => hub.stop());
    await expect(hub.start({ tunnelPort: port, bindHost: "127.0.0.1", dataDir: join(dir, "lib"), nats: old.url })).rejects.toMatchObject({
      _tag: "NatsServerTooOld",
      message: expect.stringMatching(/runs 2\.9\.10; Portway needs 2\.10\.0 or newer/),
    });
    expect(hub.running).toBe(false);

    const cli = await runCli(["hub", "--nats", old.url, "--tunnel-port", String(port), "--bind-host", "127.0.0.1", "--data-dir", join(dir, "cli")]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/runs 2\.9\.10; Portway needs 2\.10\.0 or newer/);
    expect(await tryConnect(port)).toBe("ECONNREFUSED");
  });
});
