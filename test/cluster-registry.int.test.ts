// Issue 5, cluster registry: verifiers, config, and the shared allowed-edge registry in JetStream KV across
// two hubs on a real 3-node NATS cluster (edges, targets and hubs are real processes/sockets).
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Effect, Either } from "effect";
import { connect } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bucketNames } from "../src/cluster/buckets.js";
import { isAlive } from "../src/cluster/hubs.js";
import { isSecretVerifier, makeSecretVerifier, verifySecret } from "../src/cluster/verifier.js";
import { loadHubConfig, resolveHubOptions } from "../src/config/hub.js";
import { RemoteIngressEdge, RemoteIngressHub } from "../src/index.js";
import { echoRoundTrip, connectTcp, tryConnect } from "./helpers/client.js";
import { startNatsCluster, type TestNatsCluster } from "./helpers/nats-cluster.js";
import { freePort, freePorts } from "./helpers/ports.js";
import { startEchoTarget } from "./helpers/targets.js";
import { useTeardown } from "./helpers/teardown.js";
import { waitFor } from "./helpers/wait.js";

const run = promisify(execFile);
const teardown = useTeardown();

// The shared test vector of the verifier contract (native/src/protocol/credential.rs has the same literal).
const VECTOR_SALT = "000102030405060708090a0b0c0d0e0f";
const VECTOR_VERIFIER = "v1:000102030405060708090a0b0c0d0e0f:db9d9b81ba204c066b3a124ca7e56a999b63d1885072ff2f115b7a4b8a5daed9";

describe("secret verifiers", () => {
  it("match the shared test vector and check secrets", () => {
    expect(makeSecretVerifier("s3cret", VECTOR_SALT)).toBe(VECTOR_VERIFIER);
    expect(isSecretVerifier(VECTOR_VERIFIER)).toBe(true);
    expect(verifySecret(VECTOR_VERIFIER, "s3cret")).toBe(true);
    expect(verifySecret(VECTOR_VERIFIER, "s3cret ")).toBe(false);
    const fresh = makeSecretVerifier("s3cret");
    expect(fresh).toMatch(/^v1:[0-9a-f]{32}:[0-9a-f]{64}$/);
    expect(fresh).not.toBe(makeSecretVerifier("s3cret")); // random salt
    for (const bad of ["", "v1:00:11", `v2${VECTOR_VERIFIER.slice(2)}`, VECTOR_VERIFIER.toUpperCase()]) expect(isSecretVerifier(bad)).toBe(false);
  });

  it("hub liveness: alive while the heartbeat is younger than hubTimeoutMs", () => {
    expect(isAlive({ heartbeatAt: 1000 }, 2999, 2000)).toBe(true);
    expect(isAlive({ heartbeatAt: 1000 }, 3000, 2000)).toBe(false);
  });
});

describe("cluster config", () => {
  it("needs external NATS servers, checks the name, and changes the ping/idle and replica defaults", async () => {
    const noNats = await Effect.runPromise(Effect.either(loadHubConfig({ flags: { cluster: "c1" } })));
    expect(Either.isLeft(noNats) && noNats.left.message).toMatch(/^nats: is required in cluster mode.*--nats nats:\/\/.*\(from --cluster\)$/);
    const badName = await Effect.runPromise(Effect.either(resolveHubOptions({ cluster: { name: "a.b" }, nats: "nats://127.0.0.1:4222" })));
    expect(Either.isLeft(badName) && badName.left.message).toMatch(/^cluster\.name: /);

    const config = await Effect.runPromise(
      loadHubConfig({ env: { PORTWAY_CLUSTER: "c1", PORTWAY_NATS: "nats://a:4222,nats://b:4222" }, flags: { "cluster-replicas": "3" } }),
    );
    expect(config.cluster).toEqual({ name: "c1", replicas: 3, heartbeatMs: 500, hubTimeoutMs: 2000, leaseMs: 2000, electionGraceMs: 10000 });
    expect([config.pingIntervalMs, config.idleTimeoutMs, config.events.replicas]).toEqual([1000, 2500, 3]);
    const explicit = await Effect.runPromise(
      resolveHubOptions({ cluster: { name: "c1", replicas: 3 }, nats: "nats://a:4222", pingIntervalMs: 2000, idleTimeoutMs: 9000, events: { replicas: 1 } }),
    );
    expect([explicit.pingIntervalMs, explicit.idleTimeoutMs, explicit.events.replicas]).toEqual([2000, 9000, 1]);
    const single = await Effect.runPromise(resolveHubOptions({}));
    expect([single.pingIntervalMs, single.idleTimeoutMs, single.cluster]).toEqual([5000, 15_000, undefined]);
  });
});

describe("infra/nats-cluster.mjs", () => {
  it("starts a 3-node JetStream cluster on one machine, reports it, and stops it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "portway-infra-"));
    teardown.add(() => rm(dir, { recursive: true, force: true }));
    const script = join(import.meta.dirname, "..", "infra", "nats-cluster.mjs");
    // A base port whose 9 ports (P+0..2, P+100..102, P+200..202) are free.
    let base = 0;
    for (let attempt = 0; attempt < 20 && base === 0; attempt++) {
      const candidate = 20_000 + Math.floor(Math.random() * 30_000);
      const probes = await Promise.all(
        [0, 1, 2, 100, 101, 102, 200, 201, 202].map(
          (d) =>
            new Promise<boolean>((resolve) => {
              const server = createServer();
              server.once("error", () => resolve(false));
              server.listen({ port: candidate + d, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
            }),
        ),
      );
      if (probes.every(Boolean)) base = candidate;
    }
    teardown.add(() => run(process.execPath, [script, "stop", "--dir", dir]).catch(() => undefined));
    const started = await run(process.execPath, [script, "start", "--dir", dir, "--base-port", String(base)]);
    expect(started.stdout).toContain(`nats://127.0.0.1:${base},nats://127.0.0.1:${base + 1},nats://127.0.0.1:${base + 2}`);
    const status = JSON.parse((await run(process.execPath, [script, "status", "--dir", dir, "--json"])).stdout) as {
      nodes: Array<{ name: string; running: boolean; up: boolean; metaLeader: string | null }>;
    };
    expect(status.nodes.map((n) => [n.name, n.running, n.up])).toEqual([
      ["n1", true, true],
      ["n2", true, true],
      ["n3", true, true],
    ]);
    expect(new Set(status.nodes.map((n) => n.metaLeader)).size).toBe(1);
    await run(process.execPath, [script, "stop", "--dir", dir]);
    expect(await tryConnect(base)).toBe("ECONNREFUSED");
  });
});

describe("cluster registry on a 3-node NATS cluster", () => {
  let nats: TestNatsCluster;
  beforeAll(async () => {
    nats = await startNatsCluster();
  });
  afterAll(async () => {
    await nats?.close();
  });

  const startClusterHub = async (hubId: string, cluster: string, edges: Parameters<RemoteIngressHub["updateAllowedEdges"]>[0] = []) => {
    const dataDir = await mkdtemp(join(tmpdir(), `portway-${hubId}-`));
    const hub = new RemoteIngressHub();
    teardown.add(async () => {
      await hub.stop();
      await rm(dataDir, { recursive: true, force: true });
    });
    const tunnelPort = await freePort();
    await hub.start({
      hubId,
      tunnelPort,
      bindHost: "127.0.0.1",
      targetHost: "127.0.0.1",
      proxyProtocol: { tcp: "none" },
      dataDir,
      nats: nats.servers,
      cluster: { name: cluster, replicas: 3 },
      // The test nodes have 1 GB of file store each; the default 10 GiB stream would not be placed.
      events: { maxBytes: "256MiB" },
      edges,
    });
    const status = await hub.getStatus();
    return { hub, tunnelPort, fingerprint: status.hubFingerprint ?? "", dataDir };
  };

  it("a registry change on hub A reaches an edge connected to hub B within 1 s (port opened, then closed); KV holds no secret", async () => {
    const cluster = `reg${randomBytes(3).toString("hex")}`;
    const target = teardown.track(await startEchoTarget("none"));
    const [portA, portB] = (await freePorts(2)) as [number, number];
    const secret = `sec-${randomBytes(16).toString("hex")}`;
    const base = { id: "edge-1", secret, listenPorts: [portA], targets: { [portA]: target.address, [portB]: target.address } };

    const a = await startClusterHub("hub-a", cluster, [base]);
    const b = await startClusterHub("hub-b", cluster);
    // Hub B took edge-1 from the registry (A seeded it from its config).
    await waitFor(async () => (await Effect.runPromise(b.hub.service?.allowedEdges ?? Effect.succeed([]))).some((e) => e.id === "edge-1"), { what: "hub B sees edge-1" });

    const edge = new RemoteIngressEdge();
    teardown.add(() => edge.stop());
    await edge.start({ hubHost: "127.0.0.1", hubPort: b.tunnelPort, edgeId: "edge-1", secret, bindAddress: "127.0.0.1", hubCertFingerprint: b.fingerprint });
    await waitFor(async () => (await edge.getStatus()).connected && (await tryConnect(portA)) === "connected", { what: "edge-1 on hub B serving portA" });
    const sA = await connectTcp(portA);
    await echoRoundTrip(sA);
    sA.destroy();

    // Add portB on hub A: the edge on hub B listens on it within 1 s.
    let t0 = Date.now();
    const adding = a.hub.updateAllowedEdges([{ ...base, listenPorts: [portA, portB] }]);
    await waitFor(async () => (await tryConnect(portB)) === "connected", { what: "portB open on the edge", timeoutMs: 5000, intervalMs: 10 });
    const openedMs = Date.now() - t0;
    await adding;
    const sB = await connectTcp(portB);
    await echoRoundTrip(sB);
    sB.destroy();

    // Remove portB on hub A: closed on the edge within 1 s.
    t0 = Date.now();
    const removing = a.hub.updateAllowedEdges([base]);
    await waitFor(async () => (await tryConnect(portB)) === "ECONNREFUSED", { what: "portB closed on the edge", timeoutMs: 5000, intervalMs: 10 });
    const closedMs = Date.now() - t0;
    await removing;
    console.info(`[cluster-registry] registry change on hub A → edge on hub B: port opened after ${openedMs} ms, closed after ${closedMs} ms`);
    expect(openedMs).toBeLessThan(1000);
    expect(closedMs).toBeLessThan(1000);
    expect((await edge.getStatus()).connected).toBe(true);

    // No clear secret anywhere in the cluster's buckets (raw values, all revisions kept).
    const nc = await connect({ servers: [...nats.urls] });
    teardown.add(() => nc.close());
    const kvm = new Kvm(nc);
    for (const name of Object.values(bucketNames(cluster))) {
      const kv = await kvm.open(name);
      for await (const entry of await kv.history()) {
        expect(Buffer.from(entry.value).toString("utf8")).not.toContain(secret);
      }
    }
    const raw = await (await kvm.open(bucketNames(cluster).edges)).get("edge-1");
    const stored = JSON.parse(Buffer.from(raw?.value ?? new Uint8Array()).toString("utf8")) as { secretVerifier: string; listenPorts: number[] };
    expect(verifySecret(stored.secretVerifier, secret)).toBe(true);
    expect(stored.listenPorts).toEqual([portA]);

    // `portway cluster status --json`: both hubs alive, the registry's edge, replication of R3 streams.
    const cli = (...args: string[]) => run(process.execPath, [join(import.meta.dirname, "..", "bin", "portway.js"), "cluster", ...args, "--nats", nats.servers, "--cluster", cluster]);
    const { stdout } = await cli("status", "--json");
    const status = JSON.parse(stdout) as {
      hubs: Array<{ hubId: string; alive: boolean; heartbeatAgeMs: number; tunnel: string }>;
      edges: Array<{ id: string; listenPorts: number[]; owner: { hubId: string; hubAlive: boolean; expired: boolean; leaseAgeMs: number } | null }>;
      replication: Array<{ stream: string; replicas: number; exists: boolean; leader: string | null; members: Array<{ state: string }> }>;
    };
    expect(status.hubs.map((h) => [h.hubId, h.alive, h.tunnel])).toEqual([
      ["hub-a", true, `127.0.0.1:${a.tunnelPort}`],
      ["hub-b", true, `127.0.0.1:${b.tunnelPort}`],
    ]);
    expect(status.edges.map((e) => [e.id, e.listenPorts])).toEqual([["edge-1", [portA]]]);
    // edge-1 is served by hub B: its owner entry (written by ownership) names hub B, with a fresh lease.
    expect(status.edges[0]?.owner).toMatchObject({ hubId: "hub-b", hubAlive: true, expired: false });
    expect(stdout).not.toContain(secret);
    const kvStreams = status.replication.filter((r) => r.stream.startsWith(`KV_pw_${cluster}_`));
    expect(kvStreams.map((r) => [r.exists, r.replicas, r.members.length])).toEqual([
      [true, 3, 3],
      [true, 3, 3],
      [true, 3, 3],
    ]);
    const text = (await cli("status")).stdout;
    expect(text).toMatch(/hub-a\s+alive/);
    expect(text).toMatch(/edge-1\s+tcp \d+\s+owner hub-b, lease \d+ ms old/);

    // `portway cluster edges set|remove` change the registry as updateAllowedEdges does: hub B applies them.
    await cli("edges", "set", "--id", "edge-2", "--secret", "other-secret", "--ports", `${portB}`);
    await waitFor(async () => (await Effect.runPromise(b.hub.service?.allowedEdges ?? Effect.succeed([]))).some((e) => e.id === "edge-2"), { what: "hub B sees edge-2" });
    expect(JSON.parse((await cli("edges", "remove", "--id", "edge-2", "--json")).stdout)).toEqual({ cluster, id: "edge-2", removed: true });
    await waitFor(async () => !(await Effect.runPromise(b.hub.service?.allowedEdges ?? Effect.succeed([]))).some((e) => e.id === "edge-2"), { what: "hub B drops edge-2" });
    // The registry's list as allowedEdges returns it (verifiers in place of secrets) writes back unchanged.
    const edgesKv = await kvm.open(bucketNames(cluster).edges);
    const revision = (await edgesKv.get("edge-1"))?.revision;
    await a.hub.updateAllowedEdges([...(await Effect.runPromise(a.hub.service?.allowedEdges ?? Effect.succeed([])))]);
    expect((await edgesKv.get("edge-1"))?.revision).toBe(revision);
    expect((await edge.getStatus()).connected).toBe(true);
    // An unknown cluster is a clear error (exit 1).
    const missing = await run(process.execPath, [join(import.meta.dirname, "..", "bin", "portway.js"), "cluster", "status", "--nats", nats.servers, "--cluster", "nosuch"]).catch((e: { code: number; stderr: string }) => e);
    expect(missing).toMatchObject({ code: 1, stderr: expect.stringMatching(/no cluster "nosuch"/) });
  });
});
