import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { freeUdpPort } from "./helpers/ports.js";
import { startDnsmasq, startUdpProxyEcho, startUdpTunnel, udpClient, udpRequest } from "./helpers/udp.js";
import { waitFor } from "./helpers/wait.js";

const run = promisify(execFile);
const TRANSPORTS = ["tcpTls", "quic"] as const;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

describe("UDP through the tunnel", () => {
  it.each(TRANSPORTS)("answers a real DNS query (dig → edge → %s → dnsmasq)", async (transportMode) => {
    const dns = await startDnsmasq();
    cleanups.push(() => dns.stop());
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${dns.port}`,
      proxyUdp: "none",
      edgeExtra: { transportMode },
    });
    cleanups.push(() => tunnel.stop());
    expect((await tunnel.edge.getStatus()).transport).toBe(transportMode);

    const { stdout } = await run("dig", [
      "@127.0.0.1",
      "-p",
      String(tunnel.udpPort),
      "portway.test",
      "+short",
      "+time=2",
      "+tries=2",
    ]);
    expect(stdout.trim()).toBe("10.1.2.3");
    await waitFor(async () => ((await tunnel.edge.getStatus()).udpSessions ?? 0) >= 1, {
      timeoutMs: 5000,
      what: "edge status counting the UDP session",
    });
  });

  it.each(TRANSPORTS)("sends a PROXY v2 DGRAM header with the client's address first (%s)", async (transportMode) => {
    const echo = await startUdpProxyEcho();
    cleanups.push(() => echo.close());
    const edgeOpened: Array<{ clientAddr: string }> = [];
    const hubOpened: Array<{ clientAddr: string; target: string }> = [];
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${echo.port}`,
      proxyUdp: "v2",
      edgeExtra: { transportMode },
      beforeEdgeStart: (edge, hub) => {
        edge.on("udpSessionOpened", (e) => edgeOpened.push(e));
        hub.on("udpSessionOpened", (e) => hubOpened.push(e));
      },
    });
    cleanups.push(() => tunnel.stop());
    expect((await tunnel.edge.getStatus()).transport).toBe(transportMode);

    const clients = [await udpClient(), await udpClient()];
    for (const c of clients) cleanups.push(() => void c.close());
    for (const [i, client] of clients.entries()) {
      const payload = Buffer.from(`hello ${transportMode} ${i}`);
      const reply = await udpRequest(client, tunnel.udpPort, payload);
      expect(reply.toString()).toBe(payload.toString());
    }

    expect(echo.errors).toEqual([]);
    expect(echo.headers).toHaveLength(2);
    for (const [i, client] of clients.entries()) {
      const header = echo.headers[i];
      expect(header?.version).toBe(2);
      expect(header?.protocol).toBe("UDP4");
      expect(header?.sourceAddress).toBe("127.0.0.1");
      expect(header?.sourcePort).toBe(client.address().port);
      expect(header?.destinationPort).toBe(tunnel.udpPort);
    }
    const clientAddrs = clients.map((c) => `127.0.0.1:${c.address().port}`).sort();
    await waitFor(() => edgeOpened.length >= 2 && hubOpened.length >= 2, { timeoutMs: 5000, what: "udpSessionOpened events" });
    expect(edgeOpened.map((e) => e.clientAddr).sort()).toEqual(clientAddrs);
    expect(hubOpened.map((e) => e.clientAddr).sort()).toEqual(clientAddrs);
    expect(hubOpened[0]?.target).toBe(`127.0.0.1:${echo.port}`);
  });

  it("quicWithFallback against a hub without QUIC ends up on tcpTls and carries traffic", async () => {
    const echo = await startUdpProxyEcho();
    cleanups.push(() => echo.close());
    const fallbacks: unknown[] = [];
    const natives: string[] = [];
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${echo.port}`,
      proxyUdp: "v2",
      hubExtra: { quic: false },
      edgeExtra: { transportMode: "quicWithFallback", quicFallbackTimeoutMs: 1000 },
      beforeEdgeStart: (edge) => {
        edge.on("transportFallback", (e) => fallbacks.push(e));
        edge.on("nativeEvent", (e) => natives.push(e.type));
        edge.on("eventStreamProblem", (e) => natives.push(JSON.stringify(e)));
      },
    });
    cleanups.push(() => tunnel.stop());

    expect((await tunnel.edge.getStatus()).transport).toBe("tcpTls");
    const hubStatus = await tunnel.hub.getStatus();
    expect(hubStatus.quic).toBe(false);
    expect(hubStatus.connectedEdges[0]?.transport).toBe("tcpTls");
    // Events arrive in batches, possibly just after status already shows the tunnel up.
    await waitFor(() => fallbacks.length >= 1, { timeoutMs: 5000, what: "a transportFallback event" });
    expect(natives).toContain("tunnel.fallback");
    expect(natives.filter((t) => t.startsWith("{"))).toEqual([]);
    expect(fallbacks[0]).toMatchObject({ from: "quic", to: "tcpTls" });

    const client = await udpClient();
    cleanups.push(() => void client.close());
    const reply = await udpRequest(client, tunnel.udpPort, Buffer.from("after fallback"));
    expect(reply.toString()).toBe("after fallback");
    expect(echo.headers[0]?.sourcePort).toBe(client.address().port);
  });

  it("hub udpIdleTimeoutMs and maxUdpSessionsPerEdge reach the addon: idle sessions expire, the cap refuses", async () => {
    const echo = await startUdpProxyEcho();
    cleanups.push(() => echo.close());
    const closed: Array<{ reason: string; packetsIn: number }> = [];
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${echo.port}`,
      proxyUdp: "v2",
      hubExtra: { udpIdleTimeoutMs: 2000, maxUdpSessionsPerEdge: 1 },
      beforeEdgeStart: (_edge, hub) => hub.on("udpSessionClosed", (e) => closed.push(e)),
    });
    cleanups.push(() => tunnel.stop());

    const first = await udpClient();
    const second = await udpClient();
    cleanups.push(() => void first.close(), () => void second.close());
    expect((await udpRequest(first, tunnel.udpPort, Buffer.from("one"))).toString()).toBe("one");
    // The only session slot is taken: the second client gets no answer and is counted as refused.
    await expect(udpRequest(second, tunnel.udpPort, Buffer.from("two"), 600, 200)).rejects.toThrow(/no UDP reply/);
    await waitFor(
      async () => {
        const hub = (await tunnel.hub.getStatus()).connectedEdges[0];
        const edge = await tunnel.edge.getStatus();
        return (hub?.udpRefused ?? 0) + (edge.udpRefused ?? 0) >= 1;
      },
      { timeoutMs: 5000, what: "a refused UDP session in status" },
    );

    await waitFor(() => closed.length >= 1, { timeoutMs: 5000, what: "the idle UDP session to expire" });
    expect(closed[0]).toMatchObject({ reason: "idle" });
    expect(closed[0]?.packetsIn).toBeGreaterThanOrEqual(1);
    // With the slot free again, the second client gets through.
    expect((await udpRequest(second, tunnel.udpPort, Buffer.from("two again"))).toString()).toBe("two again");
  });
  it.each(TRANSPORTS)("hot reload of UDP ports keeps a live session on a kept port (%s)", async (transportMode) => {
    const echo = await startUdpProxyEcho();
    cleanups.push(() => echo.close());
    const hubOpened: Array<{ clientAddr: string; edgePort: number }> = [];
    const tunnel = await startUdpTunnel({
      target: `127.0.0.1:${echo.port}`,
      proxyUdp: "v2",
      edgeExtra: { transportMode },
      beforeEdgeStart: (_edge, hub) => hub.on("udpSessionOpened", (e) => hubOpened.push(e)),
    });
    cleanups.push(() => tunnel.stop());
    expect((await tunnel.edge.getStatus()).transport).toBe(transportMode);
    const kept = tunnel.udpPort;
    const client = await udpClient();
    cleanups.push(() => void client.close());
    expect((await udpRequest(client, kept, Buffer.from("before"))).toString()).toBe("before");

    // Add a port, then remove it again, while the session on the kept port lives on.
    const added = await freeUdpPort();
    const edge = { id: tunnel.edgeId, secret: tunnel.secret, listenPorts: [], targets: { [kept]: `127.0.0.1:${echo.port}`, [added]: `127.0.0.1:${echo.port}` } };
    await tunnel.hub.updateAllowedEdges([{ ...edge, listenPortsUdp: [kept, added] }]);
    await waitFor(async () => ((await tunnel.edge.getStatus()).listenPortsUdp ?? []).includes(added), { what: `edge listening on udp ${added}` });
    const other = await udpClient();
    cleanups.push(() => void other.close());
    expect((await udpRequest(other, added, Buffer.from("on the new port"))).toString()).toBe("on the new port");
    expect((await udpRequest(client, kept, Buffer.from("during"))).toString()).toBe("during");

    await tunnel.hub.updateAllowedEdges([{ ...edge, listenPortsUdp: [kept] }]);
    await waitFor(async () => !((await tunnel.edge.getStatus()).listenPortsUdp ?? []).includes(added), { what: `edge no longer on udp ${added}` });
    await expect(udpRequest(other, added, Buffer.from("gone"), 600, 200)).rejects.toThrow(/no UDP reply/);
    expect((await udpRequest(client, kept, Buffer.from("after"))).toString()).toBe("after");

    // The kept client's session was never reopened: one session (one PROXY header) for it throughout.
    const keptAddr = `127.0.0.1:${client.address().port}`;
    await waitFor(() => hubOpened.length >= 2, { timeoutMs: 5000, what: "udpSessionOpened events" });
    expect(hubOpened.filter((e) => e.clientAddr === keptAddr)).toHaveLength(1);
    expect(echo.headers.filter((h) => h.sourcePort === client.address().port)).toHaveLength(1);
    expect(echo.errors).toEqual([]);
  });
});
