/**
 * Ownership against a real nats-server (JetStream KV owners/hubs buckets, the event stream): several
 * `startOwnership` instances play hubs of one cluster. The addon's side of the seam (`hubAdmitEdge`,
 * `hubDropEdge`) is recorded, so what is asserted is the decision each hub makes and when; the process-level
 * failover (real hubs, edges, SIGKILL) is in cluster-failover.int.test.ts.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Effect, Exit, Scope } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startOwnership, type Ownership, type OwnershipCluster, type TakeoverRecord } from "../src/cluster/ownership.js";
import { closeDeadSession } from "../src/cluster/takeover.js";
import { makeEvent, type DomainEvent } from "../src/events/envelope.js";
import { subjectOf } from "../src/events/subjects.js";
import { makeNatsClient, type NatsClientService } from "../src/nats/connection.js";
import { ensureEventStream } from "../src/nats/event-stream.js";
import { storedEvents } from "./helpers/event-log.js";
import { startTestNats, type TestNats } from "./helpers/nats.js";
import { useTeardown } from "./helpers/teardown.js";
import { waitFor } from "./helpers/wait.js";

const teardown = useTeardown();
const LEASE_MS = 1_000;

let nats: TestNats;
let nc: NatsConnection;
let client: NatsClientService;
let clientScope: Scope.CloseableScope;

beforeAll(async () => {
  nats = await startTestNats();
  nc = await connect({ servers: nats.url });
  await Effect.runPromise(ensureEventStream(await jetstreamManager(nc)));
  clientScope = Effect.runSync(Scope.make());
  client = await Effect.runPromise(makeNatsClient({ servers: [nats.url] }).pipe(Scope.extend(clientScope)));
  await Effect.runPromise(client.connection);
}, 30_000);

afterAll(async () => {
  await Effect.runPromise(Scope.close(clientScope, Exit.void));
  await nc?.close();
  await nats?.close();
});

let clusters = 0;
/** Fresh buckets per test (one cluster name each). */
async function buckets(): Promise<{ owners: KV; hubs: KV; name: string }> {
  const name = `t${++clusters}`;
  const kvm = new Kvm(nc);
  return { name, owners: await kvm.create(`pw_${name}_owners`, { history: 5 }), hubs: await kvm.create(`pw_${name}_hubs`, { history: 1 }) };
}

/**
 * A KV whose every call can be made to hang (a hub cut from NATS), or to fail at once the way a JetStream
 * bucket without a leader does (no responders: @nats-io/jetstream reports "jetstream is not enabled", 503).
 */
function cuttable(kv: KV): { kv: KV; cut: (on: boolean) => void; noLeader: (on: boolean) => void } {
  let isCut = false;
  let leaderless = false;
  const kvCut = new Proxy(kv, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return (...args: unknown[]) =>
        isCut
          ? new Promise(() => undefined)
          : leaderless
            ? Promise.reject(Object.assign(new Error("jetstream is not enabled"), { code: 503 }))
            : (v as (...a: unknown[]) => unknown).apply(target, args);
    },
  });
  return { kv: kvCut, cut: (on) => (isCut = on), noLeader: (on) => (leaderless = on) };
}

interface FakeHub {
  readonly hubId: string;
  readonly runId: string;
  readonly own: Ownership;
  /** hubAdmitEdge calls: sessionId → [ok, reason, at]. */
  readonly admits: Map<string, { ok: boolean; reason: string; message: string; at: number }>;
  readonly drops: Array<{ edgeId: string; reason: string; at: number }>;
  readonly takeovers: TakeoverRecord[];
  readonly appended: DomainEvent[];
  readonly cut: (on: boolean) => void;
  /** The owners bucket has no leader (the connection stays up). */
  readonly noLeader: (on: boolean) => void;
  readonly stop: () => Promise<void>;
  admitting(edgeId: string, sessionId: string): Promise<{ ok: boolean; reason: string; message: string; at: number }>;
  disconnected(edgeId: string, sessionId: string, reason: string): void;
}

async function fakeHub(b: { owners: KV; hubs: KV; name: string }, hubId: string, opts: { electionGraceMs?: number } = {}): Promise<FakeHub> {
  const owners = cuttable(b.owners);
  const hubs = cuttable(b.hubs);
  const runId = `run-${hubId}-${Date.now().toString(36)}`;
  await b.hubs.put(hubId, new TextEncoder().encode(JSON.stringify({ v: 1, hubId, runId, heartbeatAt: Date.now() })));
  const admits = new Map<string, { ok: boolean; reason: string; message: string; at: number }>();
  const drops: FakeHub["drops"] = [];
  const takeovers: TakeoverRecord[] = [];
  const appended: DomainEvent[] = [];
  const cluster: OwnershipCluster = { name: b.name, kv: { owners: owners.kv, hubs: hubs.kv }, config: { leaseMs: LEASE_MS, hubTimeoutMs: 2_000, electionGraceMs: opts.electionGraceMs ?? 0 } };
  const scope = Effect.runSync(Scope.make());
  const own = await Effect.runPromise(
    startOwnership({
      cluster,
      hubId,
      runId,
      admit: (sessionId, ok, reason, message) => {
        admits.set(sessionId, { ok, reason, message, at: Date.now() });
        return true;
      },
      drop: (edgeId, reason) => {
        drops.push({ edgeId, reason, at: Date.now() });
        return true;
      },
      append: (e) => appended.push(e),
      log: { stream: "PORTWAY_EVENTS", client },
      admissionTimeoutMs: 5_000,
      onTakeover: (t) => takeovers.push(t),
    }).pipe(Scope.extend(scope)),
  );
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    owners.cut(false);
    owners.noLeader(false);
    await Effect.runPromise(Scope.close(scope, Exit.void));
  };
  teardown.add(stop);
  return {
    hubId,
    runId,
    own,
    admits,
    drops,
    takeovers,
    appended,
    cut: (on) => {
      owners.cut(on);
      hubs.cut(on);
    },
    noLeader: (on) => owners.noLeader(on),
    stop,
    admitting: async (edgeId, sessionId) => {
      own.onNativeEvent({ type: "edge.admitting", edgeId, sessionId });
      return waitFor(() => admits.get(sessionId), { what: `${hubId} deciding on ${sessionId}`, timeoutMs: 10_000 });
    },
    disconnected: (edgeId, sessionId, reason) => own.onNativeEvent({ type: "edge.disconnected", edgeId, sessionId, reason }),
  };
}

const ownerOf = async (kv: KV, edgeId: string) => {
  const e = await kv.get(edgeId);
  return e === null || e.operation !== "PUT" ? null : (e.json() as { hubId: string; sessionId: string });
};

describe("ownership leases (real JetStream KV)", () => {
  it("first hub creates, a second hub waits out the live lease, sees it renewed and refuses notOwner", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    const c = await fakeHub(b, "hub-b");
    expect(await a.admitting("e1", "sa1")).toMatchObject({ ok: true });
    expect(await ownerOf(b.owners, "e1")).toMatchObject({ hubId: "hub-a", sessionId: "sa1" });

    const t0 = Date.now();
    const refused = await c.admitting("e1", "sb1");
    expect(refused).toMatchObject({ ok: false, reason: "notOwner" });
    // It waited for the lease (≈ LEASE_MS), not for the whole admission timeout.
    expect(refused.at - t0).toBeLessThan(4_500);
    expect(a.own.status().owned.map((o) => o.edgeId)).toEqual(["e1"]);
    expect(c.own.status().owned).toEqual([]);
    expect(a.drops).toEqual([]);
    // The lease keeps being renewed.
    await waitFor(() => a.own.status().owned[0]!.revision >= 4, { what: "renewals", timeoutMs: 5_000 });
    expect(a.own.status().owned[0]!.leaseAgeMs).toBeLessThan(LEASE_MS);
  });

  it("a normal end of the session releases the entry: another hub takes the edge at once (no wait)", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    const c = await fakeHub(b, "hub-b");
    await a.admitting("e1", "sa1");
    a.disconnected("e1", "sa1", "edgeClosed");
    await waitFor(async () => (await ownerOf(b.owners, "e1")) === null, { what: "release" });
    const t0 = Date.now();
    expect(await c.admitting("e1", "sb1")).toMatchObject({ ok: true });
    expect(Date.now() - t0).toBeLessThan(LEASE_MS);
    expect(c.takeovers).toEqual([]);
    expect(a.own.status().released).toBe(1);
  });

  it("a hub waiting out a live lease gets the edge as soon as the owner releases it", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    const c = await fakeHub(b, "hub-b");
    await a.admitting("e1", "sa1");
    const t0 = Date.now();
    c.own.onNativeEvent({ type: "edge.admitting", edgeId: "e1", sessionId: "sb1" });
    await new Promise((r) => setTimeout(r, 100));
    a.disconnected("e1", "sa1", "hubShutdown");
    const got = await waitFor(() => c.admits.get("sb1"), { what: "hub-b deciding" });
    expect(got).toMatchObject({ ok: true });
    expect(got.at - t0).toBeLessThan(LEASE_MS);
    expect(c.takeovers).toEqual([]);
  });

  it("the same hub reclaims its edge for a new session; the old session's end releases nothing", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    await a.admitting("e1", "s1");
    await a.admitting("e1", "s2");
    a.disconnected("e1", "s1", "superseded");
    await new Promise((r) => setTimeout(r, 300));
    expect(await ownerOf(b.owners, "e1")).toMatchObject({ hubId: "hub-a", sessionId: "s2" });
    expect(a.own.status().owned).toMatchObject([{ edgeId: "e1", sessionId: "s2" }]);
  });

  it("a hub cut from NATS refuses new edges (ownershipUnavailable) and fences its own before anyone takes them", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    const c = await fakeHub(b, "hub-b");
    await a.admitting("e1", "sa1");
    a.cut(true);
    const cutAt = Date.now();
    expect(await a.admitting("e2", "sa2")).toMatchObject({ ok: false, reason: "ownershipUnavailable" });
    // The edge tries the other hub: it waits for A's lease to run out, then takes over.
    const taken = await c.admitting("e1", "sb1");
    expect(taken).toMatchObject({ ok: true });
    const drop = await waitFor(() => a.drops.find((d) => d.edgeId === "e1"), { what: "A fencing e1" });
    expect(drop.reason).toBe("leaseLost");
    // Never two owners: A stopped serving before B was told to serve.
    expect(drop.at).toBeLessThanOrEqual(taken.at);
    expect(drop.at - cutAt).toBeLessThan(LEASE_MS + 500);
    expect(a.own.status().owned).toEqual([]);
    await waitFor(() => c.takeovers.length === 1, { what: "takeover record" });
    expect(c.takeovers[0]).toMatchObject({ edgeId: "e1", fromHubId: "hub-a", fromSessionId: "sa1", toSessionId: "sb1" });
    // Healed: A's stale revision cannot write; it does not own e1 and refuses it (B renews).
    a.cut(false);
    expect(await a.admitting("e1", "sa3")).toMatchObject({ ok: false, reason: "notOwner" });
    expect(await ownerOf(b.owners, "e1")).toMatchObject({ hubId: "hub-b", sessionId: "sb1" });
  });

  it("a hub whose run changed (restarted) loses its edges at once; a CAS race has exactly one winner", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a");
    await a.admitting("e1", "sa1");
    // hub-a restarts under a new run id: its hub entry says so; its old run's lease is not waited for.
    await a.stop();
    await b.owners.put("e1", new TextEncoder().encode(JSON.stringify({ v: 1, edgeId: "e1", hubId: "hub-a", runId: a.runId, sessionId: "sa1", since: Date.now(), renewedAt: Date.now(), leaseMs: LEASE_MS })));
    await b.hubs.put("hub-a", new TextEncoder().encode(JSON.stringify({ v: 1, hubId: "hub-a", runId: "run-new", heartbeatAt: Date.now() })));
    const hubs = await Promise.all(["hub-b", "hub-c", "hub-d"].map((id) => fakeHub(b, id)));
    const t0 = Date.now();
    const results = await Promise.all(hubs.map((h, i) => h.admitting("e1", `s${i}`)));
    expect(Date.now() - t0).toBeLessThan(LEASE_MS);
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    expect(results.filter((r) => !r.ok).every((r) => r.reason === "notOwner")).toBe(true);
    expect(hubs.flatMap((h) => h.own.status().owned)).toHaveLength(1);
  });
});

describe("takeover closes the dead hub's session in the log", () => {
  it("streams and UDP sessions left open get hubLost, the session gets edge.failedOver + edge.disconnected(hubLost); repeated, nothing is stored twice", async () => {
    const js = (await import("@nats-io/jetstream")).jetstream(nc);
    const t = Date.now() - 1_000;
    const base = { hubId: "dead-hub", edgeId: "ex", sessionId: "dead-sess" };
    const where = { edgePort: 9000, clientAddr: "127.0.0.1:5000", target: "127.0.0.1:80" };
    const history: DomainEvent[] = [
      makeEvent({ ...base, streamId: null, type: "edge.connected", seq: 1, time: t, data: { remoteAddr: "127.0.0.1:1" } }),
      makeEvent({ ...base, streamId: null, type: "edge.configPushed", seq: 2, time: t, data: { listenPorts: [9000], listenPortsUdp: [] } }),
      ...[1, 2, 3].map((i) => makeEvent({ ...base, streamId: String(i), type: "stream.opened", seq: 1, time: t + i, data: where })),
      makeEvent({
        ...base,
        streamId: "2",
        type: "stream.closed",
        seq: 2,
        time: t + 10,
        data: { ...where, bytesIn: 1, bytesOut: 1, durationMs: 8, reason: "clientClosed", message: "" },
      }),
      makeEvent({ ...base, streamId: "u1", type: "udp.opened", seq: 1, time: t + 11, data: where }),
      // Another session of the same edge on the dead hub: left alone.
      makeEvent({ ...base, sessionId: "other", streamId: "9", type: "stream.opened", seq: 1, time: t + 12, data: where }),
    ];
    for (const e of history) await js.publish(subjectOf(e), JSON.stringify([e]), { msgID: e.id });
    const previous = { v: 1 as const, edgeId: "ex", hubId: "dead-hub", runId: "dead-run", sessionId: "dead-sess", since: t, renewedAt: t + 500, leaseMs: 2_000 };

    const first = await closeDeadSession({ previous, toHubId: "hub-b", toSessionId: "new-sess", atMs: Date.now(), nc, stream: "PORTWAY_EVENTS" });
    expect(first).toMatchObject({ streamsClosed: 2, udpClosed: 1, sessionClosed: true });
    expect(first.gapMs).toBeGreaterThanOrEqual(500);
    // A second hub doing the same takeover (e.g. both raced): same ids, deduplicated by JetStream.
    await closeDeadSession({ previous, toHubId: "hub-c", toSessionId: "other-new", atMs: Date.now(), nc, stream: "PORTWAY_EVENTS" });

    const stored = (await storedEvents(nats.url)).filter((e) => e.hubId === "dead-hub");
    const ids = stored.map((e) => e.id);
    expect(new Set(ids).size).toBe(ids.length);
    const closes = stored.filter((e) => e.type === "stream.closed" || e.type === "udp.closed");
    expect(closes.map((e) => `${e.sessionId}/${e.streamId}:${(e.data as { reason: string }).reason}`).sort()).toEqual([
      "dead-sess/1:hubLost",
      "dead-sess/2:clientClosed",
      "dead-sess/3:hubLost",
      "dead-sess/u1:hubLost",
    ]);
    const lost = closes.find((e) => e.streamId === "1")!;
    expect(lost).toMatchObject({ hubId: "dead-hub", seq: 2, data: { writtenBy: "hub-b", bytesIn: 0 } });
    const session = stored.filter((e) => e.sessionId === "dead-sess" && e.streamId === null).sort((a, b) => a.seq - b.seq);
    expect(session.map((e) => `${e.seq}:${e.type}`)).toEqual(["1:edge.connected", "2:edge.configPushed", "3:edge.failedOver", "4:edge.disconnected"]);
    expect(session[2]!.data).toMatchObject({ fromHubId: "dead-hub", fromRunId: "dead-run", fromSessionId: "dead-sess", toHubId: "hub-b", toSessionId: "new-sess", writtenBy: "hub-b" });
    expect(session[3]!.data).toMatchObject({ reason: "hubLost", writtenBy: "hub-b" });
    expect(stored.some((e) => e.sessionId === "other" && e.type === "stream.closed")).toBe(false);
  });

  it("the owners bucket without a leader (NATS connected): the owner keeps its edge past the lease, nobody takes it or a new edge, and it renews once a leader is back", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a", { electionGraceMs: 10_000 });
    const c = await fakeHub(b, "hub-b", { electionGraceMs: 10_000 });
    await a.admitting("e1", "sa1");
    a.noLeader(true);
    c.noLeader(true);
    expect(await a.admitting("e2", "sa2")).toMatchObject({ ok: false, reason: "ownershipUnavailable" });
    // Past the lease: A keeps e1 under the grace; B cannot write a takeover either.
    await waitFor(() => a.own.status().inGrace === 1, { what: "A keeping e1 under the election grace" });
    expect(await c.admitting("e1", "sb1")).toMatchObject({ ok: false, reason: "ownershipUnavailable" });
    expect(a.drops).toEqual([]);
    a.noLeader(false);
    c.noLeader(false);
    await waitFor(() => a.own.status().inGrace === 0 && (a.own.status().owned[0]?.leaseAgeMs ?? Infinity) < LEASE_MS, { what: "A renewing e1 again" });
    expect(a.drops).toEqual([]);
    expect(a.own.status()).toMatchObject({ leaseLost: 0, electionGraces: 1, owned: [{ edgeId: "e1", sessionId: "sa1" }] });
    expect(await ownerOf(b.owners, "e1")).toMatchObject({ hubId: "hub-a", sessionId: "sa1" });
    // With the bucket back, B sees a live lease and refuses.
    expect(await c.admitting("e1", "sb2")).toMatchObject({ ok: false, reason: "notOwner" });
  });

  it("the election grace is bounded: a bucket without a leader for longer fences the edge (leaseLost)", async () => {
    const b = await buckets();
    const a = await fakeHub(b, "hub-a", { electionGraceMs: 500 });
    await a.admitting("e1", "sa1");
    const t0 = Date.now();
    a.noLeader(true);
    const drop = await waitFor(() => a.drops.find((d) => d.edgeId === "e1"), { what: "A fencing e1 after the grace" });
    expect(drop.reason).toBe("leaseLost");
    // Not before lease - fence margin (250 ms at a 1000 ms lease) + grace, from the last renewal.
    expect(drop.at - t0).toBeGreaterThanOrEqual(LEASE_MS + 500 - 250 - 250 - 50); // the last renewal was up to 250 ms before t0
    expect(a.own.status()).toMatchObject({ leaseLost: 1, electionGraces: 1, owned: [] });
  });
});
