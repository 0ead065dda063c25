// Issue 2, hostile input on the tunnel port: garbage over raw TCP and after a real TLS handshake. The hub must
// close such connections promptly, keep its tunnels and streams up, and still accept a good edge. Issue 4: the
// hub serves QUIC on the same port number over UDP, so junk datagrams (random, QUIC-looking Initial, unknown
// version, short header) are thrown at it too; every test runs with the edge's tunnel over each transport.
import { randomBytes } from "node:crypto";
import { createSocket } from "node:dgram";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { connect as connectRaw, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as connectTls } from "node:tls";
import { describe, expect, it } from "vitest";
import { RemoteIngressEdge, RemoteIngressHub } from "../src/index.js";
import { connectTcp, echoRoundTrip } from "./helpers/client.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { expectTransport, startTunnel, TRANSPORTS, waitForEdgeReady } from "./helpers/tunnel.js";

const teardown = useTeardown();

/** Frame header (type u8, stream id u32, length u32) announcing a payload far above the 256 KiB limit. */
const oversizedFrameHeader = Buffer.from([0x01, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);

const PAYLOADS: Record<string, Buffer> = {
  "random bytes": randomBytes(4096),
  "an HTTP request": Buffer.from("GET / HTTP/1.1\r\nHost: hub\r\nUser-Agent: curl/8\r\n\r\n"),
  "an oversized frame header": oversizedFrameHeader,
  "an oversized frame header followed by data": Buffer.concat([oversizedFrameHeader, randomBytes(300 * 1024)]),
  "a huge length prefix": Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
  "a few bytes, then silence": Buffer.from([0x00, 0x01]),
  nothing: Buffer.alloc(0),
};

/** The hub's handshake timeout in these tests: a client that sends too little is cut after this. */
const HANDSHAKE_TIMEOUT_MS = 1_000;
/** How long the hub may take to close a bad connection (handshake timeout plus slack for a busy machine). */
const CLOSE_WITHIN_MS = HANDSHAKE_TIMEOUT_MS + 4_000;

/** Resolves when the hub closed `socket` (FIN, reset or error), rejects if it is still open after `CLOSE_WITHIN_MS`. */
const closedByHub = (socket: Socket, label: string): Promise<void> =>
  new Promise((resolve, reject) => {
    if (socket.destroyed) {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`hub kept the connection open for ${CLOSE_WITHIN_MS} ms after ${label}`));
    }, CLOSE_WITHIN_MS);
    socket.on("error", () => undefined);
    socket.resume();
    socket.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });

const sendRaw = async (port: number, payload: Buffer, label: string): Promise<void> => {
  const socket = connectRaw({ port, host: "127.0.0.1" });
  socket.on("error", () => undefined);
  await once(socket, "connect");
  if (payload.length > 0) socket.write(payload, () => undefined);
  await closedByHub(socket, `raw TCP with ${label}`);
};

/** Completes a TLS handshake (no pinning, offering the Portway ALPN), then sends `payload`. */
const sendAfterTls = async (port: number, payload: Buffer, label: string, expectedFingerprint: string): Promise<void> => {
  const socket = connectTls({ port, host: "127.0.0.1", rejectUnauthorized: false, ALPNProtocols: ["portway/1"] });
  socket.on("error", () => undefined);
  await once(socket, "secureConnect");
  const fingerprint = socket.getPeerCertificate().fingerprint256.replaceAll(":", "").toLowerCase();
  expect(fingerprint, "the certificate the hub presents is the one its status reports").toBe(expectedFingerprint);
  if (payload.length > 0) socket.write(payload, () => undefined);
  await closedByHub(socket, `TLS + ${label}`);
};

/** A long-header QUIC packet of `version` with random connection ids and a random (undecryptable) body, 1200 bytes. */
const quicLongHeader = (version: number): Buffer => {
  const head = Buffer.concat([Buffer.from([0xc3]), Buffer.alloc(4), Buffer.from([8]), randomBytes(8), Buffer.from([8]), randomBytes(8), Buffer.from([0, 0x44, 0xa0])]);
  head.writeUInt32BE(version, 1);
  return Buffer.concat([head, randomBytes(1200 - head.length)]);
};

/** Junk for the hub's QUIC endpoint (the tunnel port number, over UDP). */
const DATAGRAMS: Buffer[] = [
  Buffer.alloc(0),
  randomBytes(1),
  randomBytes(100),
  randomBytes(1200),
  randomBytes(1472),
  quicLongHeader(0x00000001), // version 1 Initial whose body cannot be decrypted
  quicLongHeader(0x1a2a3a4a), // unknown version: at most a version negotiation reply
  Buffer.concat([Buffer.from([0x40]), randomBytes(40)]), // short header for a connection that does not exist
];

/** Sends every junk datagram `rounds` times from one socket to 127.0.0.1:`port` (UDP). */
const sendUdpJunk = async (port: number, rounds: number): Promise<void> => {
  const socket = createSocket("udp4");
  socket.on("error", () => undefined);
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  try {
    for (let i = 0; i < rounds; i++) {
      for (const datagram of DATAGRAMS) {
        await new Promise<void>((resolve) => socket.send(datagram, port, "127.0.0.1", () => resolve()));
      }
    }
  } finally {
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  }
};

describe.each(TRANSPORTS)("tunnel port under hostile input, tunnel over %s", (transport) => {
  it("closes garbage connections (raw TCP, after TLS, junk UDP) and keeps serving good edges and live streams", async () => {
    const target = teardown.track(await startEchoTarget());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], transport, hubExtra: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS } }));
    const port = tunnel.listenPorts[0] as number;
    const live = await connectTcp(port);
    teardown.add(() => live.destroy());
    await echoRoundTrip(live);

    const attacks = Object.entries(PAYLOADS).flatMap(([label, payload]) => [
      sendRaw(tunnel.tunnelPort, payload, label).then(() => `raw: ${label}`),
      sendAfterTls(tunnel.tunnelPort, payload, label, tunnel.fingerprint).then(() => `tls: ${label}`),
    ]);
    // A burst of simultaneous junk connections on top.
    for (let i = 0; i < 50; i++) attacks.push(sendRaw(tunnel.tunnelPort, randomBytes(512), "burst").then(() => "burst"));
    // And junk datagrams at the QUIC side of the same port number.
    for (let i = 0; i < 4; i++) attacks.push(sendUdpJunk(tunnel.tunnelPort, 25).then(() => "udp junk"));
    const outcomes = await Promise.allSettled(attacks);
    expect(outcomes.flatMap((o) => (o.status === "rejected" ? [(o.reason as Error).message] : []))).toEqual([]);

    // The hub is still up, the existing tunnel and its stream survived, and new streams work.
    expect((await tunnel.hub.getStatus()).running).toBe(true);
    expect((await tunnel.edge.getStatus()).connected).toBe(true);
    await echoRoundTrip(live, Buffer.from("after the storm"));
    const fresh = await connectTcp(port);
    teardown.add(() => fresh.destroy());
    await echoRoundTrip(fresh);

    // A second good edge (a new session for the same id) is accepted.
    await tunnel.edge.stop();
    const edge = new RemoteIngressEdge();
    teardown.add(() => edge.stop());
    await edge.start({ hubHost: "127.0.0.1", hubPort: tunnel.tunnelPort, edgeId: tunnel.edgeId, secret: tunnel.secret, bindAddress: "127.0.0.1", hubCertFingerprint: tunnel.fingerprint, transportMode: transport });
    await waitForEdgeReady(tunnel.hub, edge, tunnel.edgeId, [port]);
    await expectTransport(tunnel.hub, edge, tunnel.edgeId, transport);
    const again = await connectTcp(port);
    teardown.add(() => again.destroy());
    await echoRoundTrip(again);
    expect(target.errors).toEqual([]);
  });

  it("drops a TLS client that sends a valid-looking but unauthenticated stream of frames", async () => {
    const target = teardown.track(await startEchoTarget());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], transport, hubExtra: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS } }));
    // Well-formed DATA frame headers with small payloads, before any hello: must not be treated as a session.
    const frames = Buffer.concat(
      Array.from({ length: 1000 }, (_, i) => {
        const header = Buffer.alloc(9);
        header.writeUInt8(0x02, 0);
        header.writeUInt32BE(i + 1, 1);
        header.writeUInt32BE(16, 5);
        return Buffer.concat([header, randomBytes(16)]);
      }),
    );
    await sendAfterTls(tunnel.tunnelPort, frames, "unauthenticated frames", tunnel.fingerprint);
    // Nothing reached a target and no stream was opened.
    expect(target.connections).toEqual([]);
    expect((await tunnel.hub.getStatus()).connectedEdges.map((e) => e.activeStreams)).toEqual([0]);
    const client = await connectTcp(tunnel.listenPorts[0] as number);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
  });

  it("refuses to start a second hub on a port that is in use, with a clear error", async () => {
    const target = teardown.track(await startEchoTarget());
    const tunnel = teardown.track(await startTunnel({ routes: [{ target: target.address }], transport, hubExtra: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS } }));
    const dataDir = await mkdtemp(join(tmpdir(), "portway-hub-"));
    teardown.add(() => rm(dataDir, { recursive: true, force: true }));
    const second = new RemoteIngressHub();
    teardown.add(() => second.stop());
    await expect(second.start({ ...tunnel.hubFixture.startOptions, dataDir })).rejects.toThrow(/EADDRINUSE/);
    // The first hub is unaffected.
    const client = await connectTcp(tunnel.listenPorts[0] as number);
    teardown.add(() => client.destroy());
    await echoRoundTrip(client);
  });
});
