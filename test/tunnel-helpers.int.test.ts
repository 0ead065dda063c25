// Checks the test peers and targets directly, without the tunnel, so a failure in the tunnel tests can be
// told apart from a broken helper.
import { afterEach, describe, expect, it } from "vitest";
import { connectTcp, echoRoundTrip, hashExchange, readUntilEnd } from "./helpers/client.js";
import { httpGetOver, startHaproxy, startNginx, type ProxyPeer } from "./helpers/peers.js";
import { takeProxyHeader } from "./helpers/proxy-header.js";
import { startEchoTarget, startHashTarget, startReplyAfterEndTarget, type Target } from "./helpers/targets.js";

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});
const track = <T extends { close?: () => Promise<void>; stop?: () => Promise<void> }>(thing: T): T => {
  cleanups.push(async () => {
    await (thing.close ?? thing.stop)?.call(thing);
  });
  return thing;
};

describe("test helpers (no tunnel)", () => {
  it("parses PROXY v1 and v2 headers and rejects garbage", () => {
    const v1 = takeProxyHeader(Buffer.from("PROXY TCP4 10.0.0.1 10.0.0.2 1234 80\r\nrest"));
    expect(v1?.header).toMatchObject({ version: 1, sourceAddress: "10.0.0.1", sourcePort: 1234, destinationPort: 80 });
    expect(v1?.rest.toString()).toBe("rest");
    expect(takeProxyHeader(Buffer.from("PROXY TCP4 10.0"))).toBeUndefined();
    expect(() => takeProxyHeader(Buffer.from("GET / HTTP/1.1\r\n"))).toThrow(/does not start with a PROXY header/);
    const v2 = Buffer.concat([
      Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c]),
      Buffer.from([192, 0, 2, 1, 198, 51, 100, 2, 0x30, 0x39, 0x00, 0x50]),
    ]);
    expect(takeProxyHeader(v2)?.header).toMatchObject({ version: 2, protocol: "TCP4", sourceAddress: "192.0.2.1", sourcePort: 12345, destinationPort: 80 });
  });

  it("echo, hash and reply-after-end targets work over plain TCP with a PROXY v1 header", async () => {
    const echo: Target = track(await startEchoTarget("v1"));
    const socket = await connectTcp(echo.port);
    socket.write(`PROXY TCP4 127.0.0.1 127.0.0.1 ${socket.localPort} 9\r\n`);
    const clientPort = socket.localPort;
    await echoRoundTrip(socket, Buffer.from("ping"));
    socket.destroy();
    expect(echo.connections[0]?.header?.sourcePort).toBe(clientPort);

    const hash: Target = track(await startHashTarget("none"));
    await expect(hashExchange(hash.port, 3_000_000, 2_000_000)).resolves.toMatchObject({ sent: 3_000_000 });
    expect(hash.errors).toEqual([]);

    const after: Target = track(await startReplyAfterEndTarget("none"));
    const half = await connectTcp(after.port);
    half.end("abc");
    const reply = (await readUntilEnd(half)).toString();
    expect(reply).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
  });

  it.each([["haproxy", startHaproxy], ["nginx", startNginx]] as const)("%s reports the address from a PROXY v1 header", async (_, start) => {
    const peer: ProxyPeer = track(await start());
    const socket = await connectTcp(peer.port);
    socket.write("PROXY TCP4 203.0.113.7 127.0.0.1 40001 80\r\n");
    const response = await httpGetOver(socket, "example");
    expect(response).toEqual({ status: 200, body: "203.0.113.7:40001" });
  });
});
