import { describe, expect, it } from "vitest";
import {
  decideAdmission,
  decideAfterRenewalConflict,
  decideAfterWait,
  classifyRenewalFailure,
  fenceDecision,
  fenceMarginMs,
  isBucketUnavailableError,
  leaseExpired,
  mustFence,
  parseOwnerEntry,
  type OwnerEntry,
} from "../src/cluster/lease.js";
import { takeoverEvents } from "../src/cluster/takeover.js";
import { makeEvent } from "../src/events/envelope.js";

const me = { hubId: "hub-a", runId: "run-a" };
const entry = (over: Partial<OwnerEntry> = {}): OwnerEntry => ({
  v: 1,
  edgeId: "e1",
  hubId: "hub-b",
  runId: "run-b",
  sessionId: "s-b",
  since: 1_000,
  renewedAt: 10_000,
  leaseMs: 2_000,
  ...over,
});

describe("decideAdmission", () => {
  it("creates when there is no owner", () => {
    expect(decideAdmission({ me, owner: null, ownerHub: null, nowMs: 5, mayWaitUntilMs: 100 })).toEqual({ kind: "create" });
  });

  it("claims its own entry (any run or session of this hub) with an update at the read revision", () => {
    const own = entry({ hubId: "hub-a", runId: "older-run", sessionId: "s-old" });
    expect(decideAdmission({ me, owner: { entry: own, revision: 7 }, ownerHub: null, nowMs: 10_100, mayWaitUntilMs: null })).toEqual({
      kind: "claim",
      revision: 7,
    });
  });

  it("takes over an expired lease, not one that is merely at its limit", () => {
    const owner = { entry: entry(), revision: 3 };
    expect(decideAdmission({ me, owner, ownerHub: null, nowMs: 12_000, mayWaitUntilMs: null }).kind).toBe("refuse");
    const d = decideAdmission({ me, owner, ownerHub: null, nowMs: 12_001, mayWaitUntilMs: null });
    expect(d).toMatchObject({ kind: "takeover", revision: 3, cause: "leaseExpired", previous: { hubId: "hub-b" } });
  });

  it("takes over at once when the owner hub runs under another run id (it restarted)", () => {
    const d = decideAdmission({
      me,
      owner: { entry: entry(), revision: 3 },
      ownerHub: { hubId: "hub-b", runId: "run-b2", heartbeatAt: 10_400 },
      nowMs: 10_500,
      mayWaitUntilMs: null,
    });
    expect(d).toMatchObject({ kind: "takeover", cause: "hubRestarted" });
  });

  it("does not take over a live lease because the owner's heartbeat is stale (it may be partitioned)", () => {
    const d = decideAdmission({
      me,
      owner: { entry: entry(), revision: 3 },
      ownerHub: { hubId: "hub-b", runId: "run-b", heartbeatAt: 1 },
      nowMs: 11_000,
      mayWaitUntilMs: null,
    });
    expect(d).toMatchObject({ kind: "refuse", reason: "notOwner" });
  });

  it("waits for a live lease to run out when the wait fits, else refuses", () => {
    const owner = { entry: entry(), revision: 3 };
    expect(decideAdmission({ me, owner, ownerHub: null, nowMs: 10_500, mayWaitUntilMs: 15_000 })).toEqual({
      kind: "wait",
      untilMs: 12_050,
      revision: 3,
    });
    expect(decideAdmission({ me, owner, ownerHub: null, nowMs: 10_500, mayWaitUntilMs: 12_000 }).kind).toBe("refuse");
  });

  it("after the wait: a renewed lease refuses, an unchanged one is taken over, a deleted one is created", () => {
    const renewed = { entry: entry({ renewedAt: 11_800 }), revision: 4 };
    expect(decideAfterWait({ me, owner: renewed, ownerHub: null, nowMs: 12_050 })).toMatchObject({ kind: "refuse" });
    expect(decideAfterWait({ me, owner: { entry: entry(), revision: 3 }, ownerHub: null, nowMs: 12_050 })).toMatchObject({
      kind: "takeover",
      revision: 3,
    });
    expect(decideAfterWait({ me, owner: null, ownerHub: null, nowMs: 12_050 })).toEqual({ kind: "create" });
  });
});

describe("fencing", () => {
  it("the owner fences a margin before anyone may take over", () => {
    expect(fenceMarginMs(2_000)).toBe(250);
    expect(fenceMarginMs(400)).toBe(100);
    for (const leaseMs of [400, 1_000, 2_000, 10_000]) {
      const renewedAt = 50_000;
      // The first instant another hub may take over…
      let t = renewedAt;
      while (!leaseExpired({ renewedAt, leaseMs }, t)) t += 1;
      // …comes strictly after the owner has fenced itself.
      expect(mustFence(renewedAt, leaseMs, t - fenceMarginMs(leaseMs))).toBe(true);
      expect(mustFence(renewedAt, leaseMs, renewedAt + leaseMs / 2)).toBe(false);
    }
  });
});

describe("decideAfterRenewalConflict", () => {
  const mine = { hubId: "hub-a", runId: "run-a", sessionId: "s1" };
  it("adopts a newer revision of its own entry (a renewal whose ack was lost)", () => {
    const own = entry({ hubId: "hub-a", runId: "run-a", sessionId: "s1", renewedAt: 123 });
    expect(decideAfterRenewalConflict(mine, { entry: own, revision: 9 })).toEqual({ kind: "adopt", revision: 9, renewedAt: 123 });
  });
  it("is lost when another hub, another run or another session holds it, or it is gone", () => {
    expect(decideAfterRenewalConflict(mine, null)).toEqual({ kind: "lost", holder: null });
    expect(decideAfterRenewalConflict(mine, { entry: entry(), revision: 9 }).kind).toBe("lost");
    expect(decideAfterRenewalConflict(mine, { entry: entry({ hubId: "hub-a", runId: "run-x", sessionId: "s1" }), revision: 9 }).kind).toBe("lost");
    expect(decideAfterRenewalConflict(mine, { entry: entry({ hubId: "hub-a", runId: "run-a", sessionId: "s2" }), revision: 9 }).kind).toBe("lost");
  });
});

describe("parseOwnerEntry", () => {
  it("accepts the documented shape and rejects anything else", () => {
    expect(parseOwnerEntry(entry())).toEqual(entry());
    expect(parseOwnerEntry({ ...entry(), v: 2 })).toBeNull();
    expect(parseOwnerEntry({ ...entry(), hubId: "" })).toBeNull();
    expect(parseOwnerEntry({ ...entry(), renewedAt: -1 })).toBeNull();
    expect(parseOwnerEntry("x")).toBeNull();
    expect(parseOwnerEntry(null)).toBeNull();
  });
});

describe("takeoverEvents (pure)", () => {
  const previous = { v: 1 as const, edgeId: "e1", hubId: "dead", runId: "r-dead", sessionId: "s-dead", since: 1_000, renewedAt: 5_000, leaseMs: 2_000 };
  const facts = { previous, toHubId: "hub-b", toSessionId: "s-new", atMs: 7_500 };
  const where = { edgePort: 80, clientAddr: "127.0.0.1:1", target: null };
  const base = { hubId: "dead", edgeId: "e1", sessionId: "s-dead" };

  it("an ended session only gets its open streams closed; another hub's or session's events are ignored", () => {
    const events = [
      makeEvent({ ...base, streamId: null, type: "edge.connected", seq: 1, time: 1_000, data: { remoteAddr: "x" } }),
      makeEvent({ ...base, streamId: "1", type: "stream.opened", seq: 1, time: 1_100, data: where }),
      makeEvent({ ...base, streamId: null, type: "edge.disconnected", seq: 2, time: 4_000, data: { reason: "leaseLost", message: "", durationMs: 3_000 } }),
      makeEvent({ ...base, sessionId: "other", streamId: "2", type: "stream.opened", seq: 1, time: 1_200, data: where }),
      makeEvent({ ...base, hubId: "alive", streamId: "3", type: "stream.opened", seq: 1, time: 1_200, data: where }),
    ];
    const r = takeoverEvents(events, facts);
    expect(r).toMatchObject({ streamsClosed: 1, udpClosed: 0, sessionClosed: false, gapMs: 2_500 });
    expect(r.events.map((e) => `${e.hubId}/${e.sessionId}/${e.streamId}:${e.type}#${e.seq}`)).toEqual(["dead/s-dead/1:stream.closed#2"]);
    expect(r.events[0]!.data).toMatchObject({ reason: "hubLost", writtenBy: "hub-b", durationMs: 6_400 });
  });

  it("an unknown session still gets edge.failedOver and edge.disconnected(hubLost), from seq 1", () => {
    const r = takeoverEvents([], facts);
    expect(r.events.map((e) => `${e.type}#${e.seq}`)).toEqual(["edge.failedOver#1", "edge.disconnected#2"]);
    expect(r.events[1]!.data).toMatchObject({ reason: "hubLost", durationMs: 6_500, writtenBy: "hub-b" });
    // Deterministic: the same facts give the same ids.
    expect(takeoverEvents([], { ...facts, toHubId: "hub-c" }).events.map((e) => e.id)).toEqual(r.events.map((e) => e.id));
  });
});

describe("election grace (fenceDecision)", () => {
  const base = { renewedAt: 10_000, leaseMs: 2_000, electionGraceMs: 10_000, connected: true } as const;
  // Fence point without grace: 10_000 + 2_000 - 250 = 11_750; grace ends at 21_750.
  it("serves while the lease is current, whatever failed", () => {
    expect(fenceDecision({ ...base, nowMs: 11_749, lastFailure: "connectionLost" })).toBe("serve");
    expect(fenceDecision({ ...base, nowMs: 11_749, lastFailure: null, connected: false })).toBe("serve");
  });
  it("keeps the edge past the lease while connected and the bucket has no leader, up to the grace", () => {
    expect(fenceDecision({ ...base, nowMs: 11_750, lastFailure: "bucketUnavailable" })).toBe("grace");
    expect(fenceDecision({ ...base, nowMs: 21_749, lastFailure: "bucketUnavailable" })).toBe("grace");
    expect(fenceDecision({ ...base, nowMs: 21_750, lastFailure: "bucketUnavailable" })).toBe("fence");
  });
  it("fences as before when NATS is lost, when the last failure was not an election, or with grace 0", () => {
    expect(fenceDecision({ ...base, nowMs: 12_000, lastFailure: "bucketUnavailable", connected: false })).toBe("fence");
    expect(fenceDecision({ ...base, nowMs: 12_000, lastFailure: "connectionLost" })).toBe("fence");
    expect(fenceDecision({ ...base, nowMs: 12_000, lastFailure: null })).toBe("fence");
    expect(fenceDecision({ ...base, nowMs: 12_000, lastFailure: "bucketUnavailable", electionGraceMs: 0 })).toBe("fence");
  });
});

describe("classifyRenewalFailure", () => {
  const up = { casConflict: false, connected: true, answers: true };
  it("a CAS conflict is a conflict (the entry is read again)", () => {
    expect(classifyRenewalFailure(new Error("wrong last sequence: 4"), { ...up, casConflict: true })).toBe("conflict");
  });
  it("JetStream without a leader while the connection answers: bucketUnavailable", () => {
    for (const e of [
      Object.assign(new Error("503"), { code: 503 }),
      new Error("no responders"),
      new Error("JetStream system temporarily unavailable"),
      // What @nats-io/jetstream 3.4 reports for a publish with no responders (seen while the bucket elects).
      new Error("jetstream is not enabled"),
      new Error("renewing e1: no answer within 1000 ms"),
      Object.assign(new Error("TIMEOUT"), { code: "TIMEOUT" }),
    ]) {
      expect(isBucketUnavailableError(e)).toBe(true);
      expect(classifyRenewalFailure(e, up)).toBe("bucketUnavailable");
    }
  });
  it("a disconnected or silent connection, or another error, is connectionLost", () => {
    expect(classifyRenewalFailure(new Error("no responders"), { ...up, connected: false })).toBe("connectionLost");
    expect(classifyRenewalFailure(new Error("renewing e1: no answer within 1000 ms"), { ...up, answers: false })).toBe("connectionLost");
    expect(classifyRenewalFailure(new Error("permissions violation"), up)).toBe("connectionLost");
  });
});
