/**
 * `npm start`: a hub, an edge and a PROXY-aware target on loopback; a few clients connect through the tunnel,
 * an allowed-edge update opens one more port live, and everything stops. The hub records every lifecycle
 * event in its event log (an embedded nats-server in its data dir); the demo prints them as they are
 * appended, read back from JetStream, and ends with the edge's history. Exits 0 on success, 1 on failure.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { RemoteIngressEdge } from "../api/edge.js";
import { RemoteIngressHub } from "../api/hub.js";
import { describeEvent, formatHistory } from "../cli/event-format.js";
import { makeLineLog } from "../cli/log.js";
import type { DomainEvent } from "../events/envelope.js";
import { encodeConnectionToken } from "../token.js";
import { startEchoTarget, type EchoTarget } from "./target.js";

const DEADLINE_MS = 15_000;
const log = makeLineLog("text");
const say = (text: string) => log.line("info", "demo", text);

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });

/** Polls `check` until it holds; a readiness wait, bounded by `timeoutMs`. */
const until = async (what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

/** Connects to the edge's public port, sends one line, returns the target's answer. */
const ask = (port: number, message: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    let answer = "";
    socket.setTimeout(5000, () => socket.destroy(new Error(`no answer on port ${port}`)));
    socket.on("connect", () => socket.write(`${message}\n`));
    socket.on("data", (chunk: Buffer) => {
      answer += chunk.toString();
      if (answer.includes("\n")) socket.end();
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(answer.trim()));
  });

const run = async (): Promise<void> => {
  const dataDir = mkdtempSync(join(tmpdir(), "portway-demo-"));
  const hub = new RemoteIngressHub();
  const edge = new RemoteIngressEdge();
  let target: EchoTarget | undefined;
  const closed: Array<{ readonly bytesIn: number; readonly bytesOut: number }> = [];
  const logged: DomainEvent[] = [];
  let feed: Promise<void> | undefined;
  try {
    target = await startEchoTarget((header) =>
      typeof header === "string"
        ? log.line("warn", "target", header)
        : log.line("info", "target", `PROXY header: client ${header.clientAddr} reached ${header.serverAddr}`),
    );
    say(`target (PROXY v1 echo) listening on 127.0.0.1:${target.port}`);

    hub.on("streamClosed", (e) => closed.push(e));
    for (const name of ["tunnelConnected", "tunnelDisconnected", "tunnelRejected", "portsAssigned", "portsUpdated", "listenerError"] as const) {
      edge.on(name, (payload: object) => log.event("edge", { type: name, ...payload }));
    }

    const startedAt = Date.now();
    await hub.start({ tunnelPort: 0, bindHost: "127.0.0.1", dataDir, hubId: "demo-hub" });
    const hubStatus = await hub.getStatus();
    say(`hub listening on 127.0.0.1:${hubStatus.tunnelPort}, certificate ${hubStatus.hubFingerprint ?? "?"}`);
    if (hubStatus.events?.enabled === true) {
      say(`event log: embedded nats-server ${hubStatus.events.servers.join(",")}, stream ${hubStatus.events.stream}; events below are read back from it`);
    }
    // Read back from JetStream as they are appended (from the hub's start, so hub.started is included).
    feed = (async () => {
      for await (const event of hub.liveEvents({ since: startedAt })) {
        logged.push(event);
        log.line(event.type.endsWith("authFailed") ? "warn" : "info", "event log", `${event.edgeId ?? "~"} ${event.type} ${describeEvent(event)}`);
      }
    })().catch((error: unknown) => log.line("warn", "event log", `live feed ended: ${error instanceof Error ? error.message : String(error)}`));

    const [firstPort, secondPort] = [await freePort(), await freePort()];
    const secret = randomBytes(18).toString("base64url");
    const targets = { [firstPort]: `127.0.0.1:${target.port}`, [secondPort]: `127.0.0.1:${target.port}` };
    await hub.updateAllowedEdges([{ id: "demo-edge", secret, listenPorts: [firstPort], targets }]);
    const token = encodeConnectionToken({
      hubHost: "127.0.0.1",
      hubPort: hubStatus.tunnelPort,
      edgeId: "demo-edge",
      secret,
      hubCertFingerprint: hubStatus.hubFingerprint,
    });
    say(`token for demo-edge (pins the hub certificate): ${token.slice(0, 24)}…`);

    await edge.start({ token, bindAddress: "127.0.0.1" });
    const connected = await edge.waitConnected(5000);
    say(`edge connected to ${connected.hub ?? "?"} (pinned: ${String(connected.pinned)})`);
    await until(`edge port ${firstPort}`, async () => (await edge.getStatus()).listenPorts.includes(firstPort));

    const answers = await Promise.all([1, 2, 3].map((n) => ask(firstPort, `hello #${n}`)));
    for (const answer of answers) log.line("info", "client", `got back: ${answer}`);
    if (!answers.every((a) => a.startsWith("target saw client 127.0.0.1:"))) throw new Error("unexpected answers from the target");

    say(`allowing port ${secondPort} too (hot update, no reconnect)`);
    await hub.updateAllowedEdges([{ id: "demo-edge", secret, listenPorts: [firstPort, secondPort], targets }]);
    await until(`edge port ${secondPort}`, async () => (await edge.getStatus()).listenPorts.includes(secondPort));
    log.line("info", "client", `got back: ${await ask(secondPort, "hello via the new port")}`);

    await until("4 closed streams", async () => closed.length >= 4);
    const bytesIn = closed.reduce((sum, e) => sum + e.bytesIn, 0);
    const bytesOut = closed.reduce((sum, e) => sum + e.bytesOut, 0);
    say(`${closed.length} streams relayed: ${bytesIn} bytes client→target, ${bytesOut} bytes target→client`);

    await edge.stop();
    await until("the edge's disconnect in the event log", async () => logged.some((e) => e.type === "edge.disconnected"));
    const history = await hub.history({ edgeId: "demo-edge" });
    if (history.totals.connections !== closed.length || history.totals.openConnections !== 0) {
      throw new Error(`history shows ${history.totals.connections} connections (${history.totals.openConnections} open), expected ${closed.length} closed`);
    }
    process.stderr.write(`\n$ portway history --edge demo-edge\n${formatHistory(history, { limit: 10 })}\n`);
  } finally {
    await edge.stop();
    await hub.stop();
    await feed;
    await target?.close();
    rmSync(dataDir, { recursive: true, force: true });
    say("stopped edge, hub and target");
  }
};

const deadline = setTimeout(() => {
  log.line("error", "demo", `did not finish within ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS);

run().then(
  () => {
    clearTimeout(deadline);
    say("demo finished OK");
    process.exit(0);
  },
  (error: unknown) => {
    clearTimeout(deadline);
    log.line("error", "demo", error instanceof Error ? error.message : String(error));
    process.exit(1);
  },
);
