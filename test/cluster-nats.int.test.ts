// Issue 5: one NATS node of three dies under traffic through a cluster hub with R3 streams and buckets.
// No event is lost or duplicated (stored stream.opened/closed counted against what the clients and the
// target saw), the hub keeps appending while the node is down, and the node rejoins and catches up (its
// replicas current).
//
// The node killed is the one leading the owners bucket (the hardest case for leases): lease renewals fail
// until JetStream elects a new leader (4-9 s), and the hub keeps its edge meanwhile under the election grace
// (cluster.electionGraceMs, ADR 0009) instead of fencing it (leaseLost). So the edge is never dropped, and
// client connections do not fail beyond a small bound (MAX_CLIENT_FAILURES: the relay does not depend on NATS,
// so the expected count is 0; the bound tolerates a stray failure of the loopback client on a loaded machine,
// far below the 125-283 failures seen when the hub fenced). Every stream that reached the target is in the log
// exactly once, opened and closed.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Effect } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bucketNames } from "../src/cluster/buckets.js";
import type { DomainEvent } from "../src/events/envelope.js";
import { RemoteIngressEdge, RemoteIngressHub } from "../src/index.js";
import { connectTcp, echoRoundTrip } from "./helpers/client.js";
import { storedEvents } from "./helpers/event-log.js";
import { startNatsCluster, type TestNatsCluster } from "./helpers/nats-cluster.js";
import { freePort, freePorts } from "./helpers/ports.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();
const MAX_CLIENT_FAILURES = 3;

describe("cluster hub on a 3-node NATS cluster", () => {
  let nats: TestNatsCluster;
  beforeAll(async () => {
    nats = await startNatsCluster();
  });
  afterAll(async () => {
    await nats?.close();
  });

  it("a NATS node killed under traffic (R3): no event lost or duplicated, appends go on, the node rejoins and catches up", async () => {
    const cluster = `kill${randomBytes(3).toString("hex")}`;
    const target = teardown.track(await startEchoTarget("v1"));
    const [listenPort] = (await freePorts(1)) as [number];
    const secret = randomBytes(16).toString("hex");
    const dataDir = await mkdtemp(join(tmpdir(), "portway-hub-nats-kill-"));
    const hub = new RemoteIngressHub();
    teardown.add(async () => {
      await hub.stop();
      await rm(dataDir, { recursive: true, force: true });
    });
    await hub.start({
      hubId: "hub-k",
      tunnelPort: await freePort(),
      bindHost: "127.0.0.1",
      proxyProtocol: { tcp: "v1" },
      dataDir,
      nats: nats.servers,
      cluster: { name: cluster, replicas: 3 },
      events: { maxBytes: "256MiB" },
      edges: [{ id: "edge-k", secret, listenPorts: [listenPort], targets: { [listenPort]: target.address } }],
    });
    const hubStatus = await hub.getStatus();
    const edge = new RemoteIngressEdge();
    teardown.add(() => edge.stop());
    await edge.start({ hubHost: "127.0.0.1", hubPort: hubStatus.tunnelPort, edgeId: "edge-k", secret, bindAddress: "127.0.0.1", hubCertFingerprint: hubStatus.hubFingerprint ?? "" });
    await waitFor(async () => (await edge.getStatus()).connected && (await edge.getStatus()).listenPorts.includes(listenPort), { what: "edge-k ready" });

    const nc = await connect({ servers: [...nats.urls] });
    teardown.add(() => nc.close());
    const jsm = await jetstreamManager(nc);
    const streams = ["PORTWAY_EVENTS", ...Object.values(bucketNames(cluster)).map((b) => `KV_${b}`)];
    for (const s of streams) expect((await jsm.streams.info(s)).config.num_replicas).toBe(3);

    // Clients: one loop of connect → echo → close, counted. (One at a time: concurrent opens on one tunnel can
    // currently reach the hub out of id order — a native mux race, see the issue 5 report — which is not what
    // this test is about.)
    let done = 0;
    let failed = 0;
    let running = true;
    let lastOkAt = Date.now();
    let longestGapMs = 0;
    /** Client address (`127.0.0.1:port`, as the PROXY header and the events carry it) → successful exchanges. */
    const succeeded = new Map<string, number>();
    const loop = async () => {
      while (running) {
        try {
          const socket = await connectTcp(listenPort);
          const local = `127.0.0.1:${socket.localPort ?? 0}`;
          await echoRoundTrip(socket, randomBytes(256));
          socket.end();
          socket.destroy();
          done += 1;
          succeeded.set(local, (succeeded.get(local) ?? 0) + 1);
          longestGapMs = Math.max(longestGapMs, Date.now() - lastOkAt);
          lastOkAt = Date.now();
        } catch {
          failed += 1;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    };
    const loops = [loop()];
    const appended = async () => {
      const st = await Effect.runPromise(hub.service?.eventsStatus ?? Effect.succeed({ enabled: false as const }));
      return st.enabled ? st : undefined;
    };

    await waitFor(() => done >= 50, { what: "50 client connections before the kill", timeoutMs: 30_000 });
    // Kill the node that leads the owners bucket: no lease can be renewed until a new leader is elected. (If
    // it is also the node the hub is connected to, the hub reconnects elsewhere meanwhile.)
    const ownersStream = `KV_${bucketNames(cluster).owners}`;
    const ownersLeader = (await jsm.streams.info(ownersStream)).cluster?.leader ?? "";
    const victim = nats.nodes.findIndex((n) => n.name === ownersLeader);
    expect(victim, `leader of ${ownersStream}: ${ownersLeader}`).toBeGreaterThanOrEqual(0);
    const hubServer = hub.service?.eventLog?.client.current()?.getServer() ?? "";
    const ownershipBefore = hub.service?.ownership?.();
    expect(ownershipBefore?.owned.map((o) => o.edgeId)).toEqual(["edge-k"]);
    await nats.kill(victim);
    const killedAt = { done, appended: (await appended())?.appendedEvents ?? 0 };
    // While the node is down: more traffic, and the hub keeps appending (a new leader is elected).
    await waitFor(async () => done >= killedAt.done + 100 && ((await appended())?.appendedEvents ?? 0) > killedAt.appended + 150, {
      what: "traffic and appends with one NATS node down",
      timeoutMs: 30_000,
    });
    await nats.restart(victim);
    const restartedAt = done;
    await waitFor(() => done >= restartedAt + 50, { what: "traffic after the node came back", timeoutMs: 30_000 });
    running = false;
    await Promise.all(loops);

    // Every stream that reached the target is in the log exactly once, opened and closed; every successful
    // client exchange among them.
    await hub.flushEvents();
    const mine = (events: DomainEvent[], type: string) => events.filter((e) => e.type === type && e.edgeId === "edge-k");
    let stored: DomainEvent[] = [];
    await waitFor(
      async () => {
        await hub.flushEvents();
        stored = await storedEvents(nats.servers);
        return mine(stored, "stream.closed").length >= target.connections.length;
      },
      { what: `${target.connections.length} stream.closed events stored`, timeoutMs: 30_000 },
    );
    const opened = mine(stored, "stream.opened");
    const closed = mine(stored, "stream.closed");
    const ids = (es: DomainEvent[]) => new Set(es.map((e) => `${e.sessionId}/${e.streamId}`));
    const streamsAtTarget = target.connections.length;
    expect(streamsAtTarget).toBeGreaterThanOrEqual(done);
    expect(opened.length).toBe(streamsAtTarget);
    expect(closed.length).toBe(streamsAtTarget);
    expect(ids(opened).size).toBe(streamsAtTarget);
    expect(ids(closed)).toEqual(ids(opened));
    const loggedClients = new Map<string, number>();
    for (const e of opened) {
      const addr = String((e.data as { clientAddr?: unknown }).clientAddr);
      loggedClients.set(addr, (loggedClients.get(addr) ?? 0) + 1);
    }
    const missing = [...succeeded].filter(([addr, n]) => (loggedClients.get(addr) ?? 0) < n);
    expect(missing).toEqual([]);
    console.info(
      `[cluster-nats] ${done} exchanges ok, ${failed} client attempts failed, longest gap between successes ${longestGapMs} ms, ` +
        `${streamsAtTarget} streams at the target = ${opened.length} opened = ${closed.length} closed in the log`,
    );
    const status = await appended();
    expect(status?.droppedEvents).toBe(0);
    // The election did not fence the edge: no leaseLost, the edge still owned, no client failure beyond the bound.
    const ownership = hub.service?.ownership?.();
    console.info(
      `[cluster-nats] killed ${nats.nodes[victim]?.name} (owners leader; hub was on ${hubServer}): ` +
        `${ownership?.renewFailures ?? 0} failed renewals, ${ownership?.bucketUnavailable ?? 0} of them without a leader, ${ownership?.electionGraces ?? 0} election graces, ` +
        `${ownership?.leaseLost ?? 0} leaseLost, ${failed} client failures`,
    );
    expect(ownership?.leaseLost).toBe(0);
    expect(ownership?.owned.map((o) => o.edgeId)).toEqual(["edge-k"]);
    expect(mine(stored, "edge.disconnected")).toEqual([]);
    expect(failed).toBeLessThanOrEqual(MAX_CLIENT_FAILURES);

    // The restarted node caught up: every replica of the event stream and the buckets is current again.
    await waitFor(
      async () => {
        for (const s of streams) {
          const info = await jsm.streams.info(s);
          const replicas = info.cluster?.replicas ?? [];
          if (info.cluster?.leader === undefined || replicas.length !== 2 || !replicas.every((r) => r.current && r.offline !== true)) return false;
        }
        return true;
      },
      { what: `the restarted node ${nats.nodes[victim]?.name} current on ${streams.join(", ")}`, timeoutMs: 30_000, intervalMs: 200 },
    );
    // Its own copy holds the full stream.
    const last = (await jsm.streams.info("PORTWAY_EVENTS")).state.last_seq;
    await waitFor(
      async () => {
        const jsz = await nats.jsz(victim, true);
        const detail = jsz?.account_details?.flatMap((a) => a.stream_detail ?? []).find((d) => d.name === "PORTWAY_EVENTS");
        return (detail?.state?.last_seq ?? 0) >= last;
      },
      { what: "the restarted node's PORTWAY_EVENTS copy up to the last sequence", timeoutMs: 30_000, intervalMs: 200 },
    );

    // The registry watch survived the node loss: a change still reaches the edge.
    const [extraPort] = (await freePorts(1)) as [number];
    await hub.updateAllowedEdges([{ id: "edge-k", secret, listenPorts: [listenPort, extraPort], targets: { [listenPort]: target.address, [extraPort]: target.address } }]);
    await waitFor(async () => (await edge.getStatus()).listenPorts.includes(extraPort), { what: "the edge listening on the added port", timeoutMs: 5000 });
  });
});
