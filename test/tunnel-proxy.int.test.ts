// Issue 2, PROXY protocol: the target learns the real client address, checked by our own parser and by
// real haproxy / nginx. The address travels in the stream's Open (a frame on TLS, the head of the QUIC stream
// on QUIC), so our own parser checks it over both transports; the real peers run over the default transport.
import { describe, expect, it } from "vitest";
import { connectTcp, echoRoundTrip } from "./helpers/client.js";
import { httpGetOver, startHaproxy, startNginx } from "./helpers/peers.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { startTunnel, TRANSPORTS } from "./helpers/tunnel.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

describe.each(TRANSPORTS)("PROXY protocol through the tunnel over %s", (transport) => {
  it("puts a v1 header naming the client's address and ports first on every target connection", async () => {
    const target = teardown.track(await startEchoTarget("v1"));
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], proxyTcp: "v1", transport }));
    const port = tunnel.listenPorts[0] as number;

    const clients = await Promise.all(Array.from({ length: 5 }, () => connectTcp(port)));
    for (const client of clients) teardown.add(() => client.destroy());
    // The echo of the first bytes proves the header was stripped off by the target's parser, not echoed.
    await Promise.all(clients.map((client) => echoRoundTrip(client)));
    await waitFor(() => target.connections.length === clients.length, { what: "target connections" });

    const seen = target.connections.map((c) => c.header);
    for (const client of clients) {
      const header = seen.find((h) => h?.sourcePort === client.localPort);
      expect(header, `no PROXY header with source port ${client.localPort}`).toBeDefined();
      expect(header).toMatchObject({
        version: 1,
        protocol: "TCP4",
        sourceAddress: client.localAddress,
        sourcePort: client.localPort,
        destinationAddress: client.remoteAddress,
        destinationPort: port,
      });
      expect(header?.raw.toString("latin1")).toBe(`PROXY TCP4 ${client.localAddress} ${client.remoteAddress} ${client.localPort} ${port}\r\n`);
    }
    expect(target.errors).toEqual([]);
  });

  it("sends no header with proxyProtocol tcp 'none'", async () => {
    const target = teardown.track(await startEchoTarget("none"));
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], proxyTcp: "none", transport }));
    const client = await connectTcp(tunnel.listenPorts[0] as number);
    teardown.add(() => client.destroy());
    const payload = Buffer.from("PLAIN BYTES, NO HEADER\r\n");
    await echoRoundTrip(client, payload);
    expect(target.connections[0]?.bytesReceived).toBe(payload.length);
  });
});

describe("PROXY protocol through the tunnel, real peers", () => {

  const peers = [
    ["haproxy", "v1", startHaproxy],
    ["haproxy", "v2", startHaproxy],
    ["nginx", "v1", startNginx],
    ["nginx", "v2", startNginx],
  ] as const;
  it.each(peers)("%s accepts the %s header and reports the real client address", async (_, proxyTcp, startPeer) => {
    const peer = teardown.track(await startPeer());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: peer.address }], proxyTcp }));
    for (let i = 0; i < 3; i++) {
      const client = await connectTcp(tunnel.listenPorts[0] as number);
      teardown.add(() => client.destroy());
      const expected = `${client.localAddress}:${client.localPort}`;
      const response = await httpGetOver(client, "portway.test");
      expect(response, peer.output()).toEqual({ status: 200, body: expected });
    }
  });
});
