/**
 * Edge failover through the TS API: two in-process hubs (no event log) sharing one certificate, an edge started
 * from a token that lists both. The first hub stops → the edge moves to the second and a client retrying
 * connections gets service back within 5 s. Connections made while no tunnel is up are relayed once one returns or
 * reset after `gapHoldMs` — never left hanging.
 */
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { hubCertPaths } from "../src/hub/identity.js";
import { encodeConnectionToken, RemoteIngressEdge } from "../src/index.js";
import { connectTcp, echoRoundTrip } from "./helpers/client.js";
import { freePort } from "./helpers/ports.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { startHub, waitForEdgeReady, type AllowedEdge } from "./helpers/tunnel.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();

type Outcome = "echoed" | "reset" | "closed";

/** One client exchange, bounded by `timeoutMs`: echoed, reset, or closed — a hang fails the test. */
const exchange = async (port: number, timeoutMs: number): Promise<Outcome> => {
  let socket: Socket | undefined;
  const attempt = (async (): Promise<Outcome> => {
    try {
      socket = await connectTcp(port, "127.0.0.1", timeoutMs);
      await echoRoundTrip(socket, randomBytes(256));
      return "echoed";
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      return code === "ECONNRESET" || /ECONNRESET/.test(String(error)) ? "reset" : "closed";
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`client on port ${port} still waiting after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([attempt, hung]);
  } finally {
    clearTimeout(timer);
    socket?.destroy();
  }
};

describe("edge failover between two hubs", () => {
  it("moves to the second hub when the first stops; gap clients are relayed or reset, never hang", async () => {
    const target = teardown.track(await startEchoTarget("v1"));
    const listenPort = await freePort();
    const edgeEntry: AllowedEdge = {
      id: "edge-ha",
      secret: randomBytes(16).toString("hex"),
      listenPorts: [listenPort],
      targets: { [listenPort]: target.address },
    };
    const hubA = await startHub({ edges: [edgeEntry], extra: { hubId: "hub-a" } });
    teardown.add(() => hubA.stop());
    // Hub B serves the same certificate, so the token's one pin fits both.
    const { certPath, keyPath } = hubCertPaths(hubA.dataDir);
    const hubB = await startHub({ edges: [edgeEntry], extra: { hubId: "hub-b", tls: { certFile: certPath, keyFile: keyPath } } });
    teardown.add(() => hubB.stop());
    expect(hubB.fingerprint).toBe(hubA.fingerprint);

    const token = encodeConnectionToken({
      hubs: [
        { host: "127.0.0.1", port: hubA.tunnelPort },
        { host: "127.0.0.1", port: hubB.tunnelPort },
      ],
      edgeId: edgeEntry.id,
      secret: edgeEntry.secret,
      hubCertFingerprint: hubA.fingerprint,
    });
    const edge = new RemoteIngressEdge();
    const connected: Array<{ hubId: string; failover?: boolean }> = [];
    edge.on("tunnelConnected", (e) => connected.push(e));
    await edge.start({ token, bindAddress: "127.0.0.1" });
    teardown.add(() => edge.stop());
    await waitForEdgeReady(hubA.hub, edge, edgeEntry.id, [listenPort]);
    expect((await edge.getStatus()).hubId).toBe("hub-a");
    expect(await exchange(listenPort, 5_000)).toBe("echoed");

    // Hub A goes away; a client connecting right then is relayed, reset or closed — but answered.
    const stoppedAt = Date.now();
    const stopping = hubA.stop();
    const gapClient = exchange(listenPort, 8_000);
    await stopping;
    // A client retrying connections gets service back within 5 s.
    await waitFor(async () => (await exchange(listenPort, 1_000)) === "echoed", {
      timeoutMs: 5_000,
      intervalMs: 50,
      what: "service back through hub B",
    });
    const backAfterMs = Date.now() - stoppedAt;
    expect(backAfterMs).toBeLessThan(5_000);
    expect(["echoed", "reset", "closed"]).toContain(await gapClient);
    const status = await edge.getStatus();
    expect(status).toMatchObject({ connected: true, hubId: "hub-b" });
    expect(connected.map((c) => [c.hubId, c.failover])).toEqual([
      ["hub-a", false],
      ["hub-b", true],
    ]);

    // No hub at all: a client is held for gapHoldMs (default 3000) and then reset, not left waiting.
    await hubB.stop();
    await waitFor(async () => !(await edge.getStatus()).connected, { what: "edge disconnected" });
    const heldFrom = Date.now();
    expect(await exchange(listenPort, 8_000)).toBe("reset");
    expect(Date.now() - heldFrom).toBeGreaterThanOrEqual(2_500);
    await waitFor(async () => ((await edge.getStatus()).gapRefused ?? 0) >= 1, { what: "gapRefused counted" });
  }, 30_000);
});
