// Issue 2, control plane: authentication, pinning, hub restart, hot port changes, listener errors. Issue 4: the
// transport-relevant tests run over every tunnel transport (TLS over TCP and QUIC), each checking that the
// tunnel really uses the transport under test; the listener test does not depend on it and runs once.
import { createSocket } from "node:dgram";
import { once } from "node:events";
import { createServer, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { RemoteIngressEdge, RemoteIngressHub, encodeConnectionToken, type TunnelConnectedEvent } from "../src/index.js";
import type { TransportFallbackEvent } from "../src/api/edge.js";
import { connectTcp, echoRoundTrip, tryConnect } from "./helpers/client.js";
import { freePort, freePorts } from "./helpers/ports.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { expectTransport, startHub, startTunnel, TRANSPORTS, waitForEdgeReady } from "./helpers/tunnel.js";
import { nextEvent, recordEvents, waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

/** An edge that must be stopped after the test. */
const newEdge = (): RemoteIngressEdge => {
  const edge = new RemoteIngressEdge();
  teardown.add(() => edge.stop());
  return edge;
};

/** Waits until the edge reports a failed connection attempt, and returns its status then. */
const waitForRejection = async (edge: RemoteIngressEdge, what: string) =>
  waitFor(
    async () => {
      const status = await edge.getStatus();
      return !status.connected && status.lastError ? status : undefined;
    },
    { what, timeoutMs: 10_000 },
  );

describe.each(TRANSPORTS)("tunnel control plane over %s", (transport) => {
  it("rejects an edge with a wrong secret: it never connects, its status says why, the hub emits no edgeConnected", async () => {
    const target = teardown.track(await startEchoTarget());
    const [listenPort] = (await freePorts(1)) as [number];
    const allowed = { id: "edge-1", secret: "the-right-secret", listenPorts: [listenPort], targets: { [listenPort]: target.address } };
    const hub = teardown.track(await startHub({ edges: [allowed] }));
    const connected = recordEvents(hub.hub, "edgeConnected");
    teardown.add(connected.stop);

    const edge = newEdge();
    const edgeConnected = recordEvents(edge, "tunnelConnected");
    await edge.start({ hubHost: "127.0.0.1", hubPort: hub.tunnelPort, edgeId: "edge-1", secret: "a-wrong-secret", bindAddress: "127.0.0.1", hubCertFingerprint: hub.fingerprint, transportMode: transport });

    const status = await waitForRejection(edge, "edge reporting the auth failure");
    expect(String(status.lastError)).toMatch(/auth/i);
    expect((await edge.getStatus()).connected).toBe(false);
    expect(edgeConnected.seen).toEqual([]);
    expect(connected.seen).toEqual([]);
    expect((await hub.hub.getStatus()).connectedEdges).toEqual([]);
    expect(await tryConnect(listenPort)).toBe("ECONNREFUSED");

    // Correcting the secret on the hub lets the retrying edge in without restarting it.
    await hub.hub.updateAllowedEdges([{ ...allowed, secret: "a-wrong-secret" }]);
    await waitForEdgeReady(hub.hub, edge, "edge-1", [listenPort], 40_000);
    await expectTransport(hub.hub, edge, "edge-1", transport);
    await waitFor(() => connected.seen.length === 1, { what: "edgeConnected after the secret was corrected" });
  });

  it("an edge started from a token pins the hub: right fingerprint connects, wrong fingerprint is rejected", async () => {
    const target = teardown.track(await startEchoTarget());
    const [goodPort, badPort] = (await freePorts(2)) as [number, number];
    const hub = teardown.track(
      await startHub({
        edges: [
          { id: "good", secret: "s-good", listenPorts: [goodPort], targets: { [goodPort]: target.address } },
          { id: "bad", secret: "s-bad", listenPorts: [badPort], targets: { [badPort]: target.address } },
        ],
      }),
    );
    expect(hub.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    const connected = recordEvents<{ edgeId: string }>(hub.hub, "edgeConnected");
    teardown.add(connected.stop);

    const wrongFingerprint = hub.fingerprint.replace(/^./, (c) => (c === "0" ? "1" : "0"));
    const bad = newEdge();
    await bad.start({ token: encodeConnectionToken({ hubHost: "127.0.0.1", hubPort: hub.tunnelPort, edgeId: "bad", secret: "s-bad", hubCertFingerprint: wrongFingerprint }), transportMode: transport });
    const status = await waitForRejection(bad, "edge rejecting the hub's certificate");
    expect(String(status.lastError)).toMatch(/fingerprint|certificate|pin/i);

    const good = newEdge();
    await good.start({ token: encodeConnectionToken({ hubHost: "127.0.0.1", hubPort: hub.tunnelPort, edgeId: "good", secret: "s-good", hubCertFingerprint: hub.fingerprint }), transportMode: transport });
    await waitForEdgeReady(hub.hub, good, "good", [goodPort]);
    await expectTransport(hub.hub, good, "good", transport);
    expect((await good.getStatus()).hubFingerprint).toBe(hub.fingerprint);
    const client = await connectTcp(goodPort);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);

    expect((await bad.getStatus()).connected).toBe(false);
    // The hub lists a session in its status before its edgeConnected event reaches JS: events are delivered in
    // batches (up to 5 ms after the first one, more on a loaded machine), so a status poll, a connect and an echo
    // can all finish before it arrives. Wait for the event itself, then check that it is the only one.
    await waitFor(() => connected.seen.length >= 1, { what: "edgeConnected of the good edge" });
    expect(connected.seen.map((e) => e.edgeId)).toEqual(["good"]);
  });

  it("the edge reconnects by itself to a hub restarted on the same port and data dir", async () => {
    const target = teardown.track(await startEchoTarget());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], transport }));
    const port = tunnel.listenPorts[0] as number;
    const before = await connectTcp(port);
    teardown.add(() => before.destroy());
    await echoRoundTrip(before);

    const disconnected = nextEvent(tunnel.edge, "tunnelDisconnected");
    const beforeClosed = new Promise((resolve) => before.once("close", resolve));
    await tunnel.hub.stop();
    await disconnected;
    // The stream that was open on the old tunnel is closed for the client, not left hanging.
    await beforeClosed;
    await waitFor(async () => !(await tunnel.edge.getStatus()).connected, { what: "edge noticing the hub is gone" });

    const hub = new RemoteIngressHub();
    teardown.add(() => hub.stop());
    await hub.start(tunnel.hubFixture.startOptions);
    await hub.updateAllowedEdges([tunnel.allowedEdge]);
    // The certificate lives in the data dir, so the pinned edge accepts the new hub.
    expect((await hub.getStatus()).hubFingerprint).toBe(tunnel.fingerprint);

    await waitForEdgeReady(hub, tunnel.edge, tunnel.edgeId, [port], 40_000);
    await expectTransport(hub, tunnel.edge, tunnel.edgeId, transport);
    const after = await connectTcp(port);
    teardown.add(() => after.destroy());
    await echoRoundTrip(after);
    expect(target.errors).toEqual([]);
  });

  it("adds and removes listen ports at runtime while a stream on a kept port stays up", async () => {
    const target = teardown.track(await startEchoTarget());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }, { target: target.address }], transport }));
    const [kept, removed] = tunnel.listenPorts as [number, number];
    const added = await freePort();

    const longLived = await connectTcp(kept);
    teardown.add(() => longLived.destroy());
    await echoRoundTrip(longLived);

    const updated = nextEvent<{ listenPorts: number[]; added: number[]; removed: number[] }>(tunnel.edge, "portsUpdated");
    await tunnel.hub.updateAllowedEdges([{ ...tunnel.allowedEdge, listenPorts: [kept, added], targets: { [kept]: target.address, [added]: target.address } }]);
    const event = await updated;
    expect([...event.listenPorts].sort()).toEqual([kept, added].sort());
    expect(event.added).toEqual([added]);
    expect(event.removed).toEqual([removed]);
    await waitFor(async () => {
      const ports = (await tunnel.edge.getStatus()).listenPorts;
      return ports.includes(added) && !ports.includes(removed);
    }, { what: "edge status with the new port set" });

    const fresh = await connectTcp(added);
    teardown.add(() => fresh.destroy());
    await echoRoundTrip(fresh);
    await waitFor(async () => (await tryConnect(removed)) === "ECONNREFUSED", { what: `port ${removed} refusing connections` });

    await echoRoundTrip(longLived, Buffer.from("still here"));
    expect(longLived.destroyed).toBe(false);
    expect(target.errors).toEqual([]);
  });
});

describe("tunnel control plane: edge listeners", () => {
  it("reports a listen port that is already in use and serves the other ports", async () => {
    const target = teardown.track(await startEchoTarget());
    const blocker = createServer();
    blocker.listen(0, "127.0.0.1");
    await once(blocker, "listening");
    teardown.add(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
    const busyPort = (blocker.address() as { port: number }).port;

    const errors: Array<{ port: number; code: string }> = [];
    const tunnel = teardown.track(
      await startTunnel({
        routes: [{ target: target.address, listenPort: busyPort }, { target: target.address }],
        readyPorts: [],
        beforeEdgeStart: (edge) => edge.on("listenerError", (e: { port: number; code: string }) => errors.push(e)),
      }),
    );
    const freeListenPort = tunnel.listenPorts[1] as number;
    await waitFor(() => errors.length > 0, { what: "listenerError event" });
    expect(errors[0]).toMatchObject({ port: busyPort, code: "EADDRINUSE" });
    const status = await waitFor(async () => {
      const s = await tunnel.edge.getStatus();
      return s.listenPorts.includes(freeListenPort) ? s : undefined;
    }, { what: `edge listening on ${freeListenPort}` });
    expect(status.listenerErrors).toEqual([expect.objectContaining({ port: busyPort, code: "EADDRINUSE" })]);
    // The busy port still belongs to its owner: a client reaches the blocker, not the tunnel.
    const accepted = once(blocker, "connection");
    const stray = await connectTcp(busyPort);
    teardown.add(() => stray.destroy());
    const [blockerSide] = (await accepted) as [Socket];
    blockerSide.destroy();

    const client = await connectTcp(freeListenPort);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
  });
});

describe("transport choice: quicWithFallback", () => {
  it("uses QUIC when the hub serves it, without a fallback", async () => {
    const target = teardown.track(await startEchoTarget());
    const fallbacks: TransportFallbackEvent[] = [];
    const connectedEvents: TunnelConnectedEvent[] = [];
    const tunnel = teardown.track(
      await startTunnel({
        routes: [{ target: target.address }],
        edgeExtra: { transportMode: "quicWithFallback", quicFallbackTimeoutMs: 5_000 },
        beforeEdgeStart: (edge) => {
          edge.on("transportFallback", (e) => fallbacks.push(e));
          edge.on("tunnelConnected", (e) => connectedEvents.push(e));
        },
      }),
    );
    await expectTransport(tunnel.hub, tunnel.edge, tunnel.edgeId, "quic");
    const client = await connectTcp(tunnel.listenPorts[0] as number);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
    // A fallback would be reported before the tunnel connects, and events arrive in order.
    await waitFor(() => connectedEvents.length >= 1, { what: "tunnelConnected event" });
    expect(connectedEvents[0]?.transport).toBe("quic");
    expect(fallbacks).toEqual([]);
  });

  it("falls back to TLS when UDP to the hub is dropped, says why, and carries TCP streams", async () => {
    const target = teardown.track(await startEchoTarget());
    const [listenPort] = (await freePorts(1)) as [number];
    const allowed = { id: "edge-1", secret: "s-1", listenPorts: [listenPort], targets: { [listenPort]: target.address } };
    const hub = teardown.track(await startHub({ edges: [allowed], extra: { quic: false } }));
    // The hub's QUIC side is off and a socket on its port swallows every datagram: like a firewall dropping
    // UDP, the edge hears nothing back (no ICMP error either) and must give up on QUIC after its timeout.
    const blackhole = createSocket("udp4");
    let swallowed = 0;
    blackhole.on("message", () => {
      swallowed += 1;
    });
    await new Promise<void>((resolve) => blackhole.bind(hub.tunnelPort, "127.0.0.1", resolve));
    teardown.add(() => new Promise<void>((resolve) => blackhole.close(() => resolve())));

    const edge = newEdge();
    const fallbacks: TransportFallbackEvent[] = [];
    const connectedEvents: TunnelConnectedEvent[] = [];
    edge.on("transportFallback", (e) => fallbacks.push(e));
    edge.on("tunnelConnected", (e) => connectedEvents.push(e));
    await edge.start({
      hubHost: "127.0.0.1",
      hubPort: hub.tunnelPort,
      edgeId: "edge-1",
      secret: "s-1",
      bindAddress: "127.0.0.1",
      hubCertFingerprint: hub.fingerprint,
      transportMode: "quicWithFallback",
      quicFallbackTimeoutMs: 1_000,
    });
    await waitForEdgeReady(hub.hub, edge, "edge-1", [listenPort], 20_000);
    await expectTransport(hub.hub, edge, "edge-1", "tcpTls");
    expect(swallowed, "QUIC packets the edge sent before falling back").toBeGreaterThan(0);

    await waitFor(() => fallbacks.length >= 1 && connectedEvents.length >= 1, { what: "transportFallback and tunnelConnected events" });
    expect(fallbacks[0]).toMatchObject({ hub: `127.0.0.1:${hub.tunnelPort}`, from: "quic", to: "tcpTls", reason: "timeout" });
    expect(connectedEvents[0]?.transport).toBe("tcpTls");

    const client = await connectTcp(listenPort);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
    await echoRoundTrip(client, Buffer.alloc(256 * 1024, 7));
    expect(target.errors).toEqual([]);
  });
});
