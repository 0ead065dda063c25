/**
 * Edge ownership in a cluster: a hub serves an edge only while it holds that edge's entry in
 * `pw_<cluster>_owners`, under a lease it renews (docs/cluster.md "Ownership", ADR 0008).
 *
 * - Admission (`edge.admitting` from the addon, hub started with `admission: "deferred"`): read the owner
 *   entry, decide (`lease.ts`), apply the verdict with compare-and-set on the revision, then
 *   `hubAdmitEdge(ok)`; a CAS conflict is re-read once, then refused (`notOwner`); a bucket that cannot be
 *   read or written refuses with `ownershipUnavailable` (a hub cut from NATS takes no new edge).
 *   A live lease of another hub is waited out once (bounded by the admission timeout): an owner that
 *   renews meanwhile is alive and the edge is refused; one that does not is dead and taken over.
 * - Renewal every leaseMs/4 by CAS. A conflict that shows another holder, or no successful renewal until
 *   just before the lease would run out, drops the edge (`hubDropEdge(leaseLost)`): self-fencing.
 *   Exception (election grace, ADR 0009): while the NATS connection is up and answering but the owners bucket
 *   cannot commit (JetStream electing a leader: 503 / no responders / timeouts), the edges already held are
 *   kept for up to `cluster.electionGraceMs` past that point; new admissions are refused meanwhile (the
 *   bucket cannot be written). The first renewal that lands again decides by its CAS.
 * - Release: when the edge's session ends here, the entry is deleted at our revision.
 * - Takeover: after the CAS, `takeover.ts` closes the dead hub's session in the log (hubLost).
 *
 * Operations on one edge run one at a time (a per-edge chain); different edges run concurrently.
 */
import type { KV } from "@nats-io/kv";
import { Effect, type Scope } from "effect";
import type { DomainEvent } from "../events/envelope.js";
import type { NatsClientService } from "../nats/connection.js";
import {
  decideAdmission,
  decideAfterRenewalConflict,
  decideAfterWait,
  classifyRenewalFailure,
  fenceDecision,
  parseOwnerEntry,
  type RenewalFailure,
  type AdmissionVerdict,
  type HubView,
  type OwnerEntry,
} from "./lease.js";
import { closeDeadSession, takeoverEvents, type TakeoverSummary } from "./takeover.js";

/** What ownership needs of the cluster connection (`ClusterConnection` from connection.ts fits). */
export interface OwnershipCluster {
  readonly name: string;
  readonly kv: { readonly owners: KV; readonly hubs: KV };
  readonly config: { readonly leaseMs: number; readonly hubTimeoutMs: number; readonly electionGraceMs?: number };
}

/** The addon events ownership reacts to (a structural subset of NativeHubEvent). */
export interface OwnershipNativeEvent {
  readonly type: string;
  readonly edgeId?: string | null | undefined;
  readonly sessionId?: string | null | undefined;
  readonly reason?: string | null | undefined;
}

export type DropReason = "leaseLost" | "notOwner";

export interface OwnershipDeps {
  readonly cluster: OwnershipCluster;
  readonly hubId: string;
  readonly runId: string;
  /** `hubAdmitEdge`: true when the session was still waiting. */
  readonly admit: (sessionId: string, ok: boolean, reason: string, message: string) => boolean;
  /** `hubDropEdge`: true when the edge had a session. */
  readonly drop: (edgeId: string, reason: DropReason, message: string) => boolean;
  /** The hub's event log (used when the closing events of a takeover cannot be published directly). */
  readonly append: (event: DomainEvent) => void;
  /** To read the dead hub's events and publish the closing ones. */
  readonly log: { readonly stream: string; readonly client: NatsClientService };
  readonly logAs?: (level: "info" | "warn" | "error", msg: string) => void;
  /** The addon's admission timeout: a wait for another hub's lease ends 500 ms before it. Default 5000. */
  readonly admissionTimeoutMs?: number;
  /** Bound of each KV operation. Default min(1000, leaseMs / 2). */
  readonly kvTimeoutMs?: number;
  readonly now?: () => number;
  /** Called after a takeover's closing events are written (tests, bench). */
  readonly onTakeover?: (t: TakeoverRecord) => void;
}

export interface TakeoverRecord {
  readonly edgeId: string;
  readonly fromHubId: string;
  readonly fromRunId: string;
  readonly fromSessionId: string;
  readonly toSessionId: string;
  readonly atMs: number;
  readonly gapMs: number;
  readonly streamsClosed: number;
  readonly udpClosed: number;
  readonly error: string | null;
}

export interface OwnedEdgeStatus {
  readonly edgeId: string;
  readonly sessionId: string;
  readonly since: number;
  /** ms since the last successful renewal. */
  readonly leaseAgeMs: number;
  readonly revision: number;
}

export interface OwnershipStatus {
  readonly name: string;
  readonly leaseMs: number;
  readonly owned: ReadonlyArray<OwnedEdgeStatus>;
  readonly admitted: number;
  readonly refused: number;
  readonly takeovers: number;
  readonly leaseLost: number;
  readonly released: number;
  readonly renewFailures: number;
  /** Renewals that failed because the owners bucket had no leader while the connection was up. */
  readonly bucketUnavailable: number;
  /** Times an edge was kept past its lease by the election grace (once per edge and outage). */
  readonly electionGraces: number;
  /** Edges served right now under the election grace. */
  readonly inGrace: number;
  readonly lastTakeover: TakeoverRecord | null;
}

export interface Ownership {
  readonly onNativeEvent: (e: OwnershipNativeEvent) => void;
  readonly status: () => OwnershipStatus;
}

interface Held {
  readonly sessionId: string;
  readonly since: number;
  revision: number;
  renewedAt: number;
  /** The latest failed renewal since `renewedAt` (reset by a successful one). */
  lastFailure: RenewalFailure | null;
  /** Served under the election grace since the lease ran out (counted once per outage). */
  inGrace: boolean;
}

class KvTimeout extends Error {}

const isCasConflict = (e: unknown): boolean => {
  const code = (e as { code?: unknown } | null)?.code;
  if (code === 10071) return true;
  const msg = e instanceof Error ? e.message : String(e);
  return /wrong last sequence|key exists/i.test(msg);
};

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

const decodeJson = (bytes: Uint8Array): unknown => {
  try {
    return JSON.parse(textDecoder.decode(bytes));
  } catch {
    return null;
  }
};

const parseHubView = (value: unknown): HubView | null => {
  if (typeof value !== "object" || value === null) return null;
  const o = value as Record<string, unknown>;
  return typeof o["hubId"] === "string" && typeof o["runId"] === "string" && typeof o["heartbeatAt"] === "number"
    ? { hubId: o["hubId"], runId: o["runId"], heartbeatAt: o["heartbeatAt"] }
    : null;
};

export const startOwnership = (deps: OwnershipDeps): Effect.Effect<Ownership, never, Scope.Scope> =>
  Effect.gen(function* () {
    const now = deps.now ?? Date.now;
    const { owners, hubs } = deps.cluster.kv;
    const leaseMs = deps.cluster.config.leaseMs;
    const kvTimeoutMs = deps.kvTimeoutMs ?? Math.min(1_000, Math.floor(leaseMs / 2));
    const admissionTimeoutMs = deps.admissionTimeoutMs ?? 5_000;
    const electionGraceMs = deps.cluster.config.electionGraceMs ?? 0;
    const me = { hubId: deps.hubId, runId: deps.runId };
    const logAs = deps.logAs ?? (() => undefined);

    const held = new Map<string, Held>();
    const chains = new Map<string, Promise<void>>();
    let stopped = false;
    const counters = { admitted: 0, refused: 0, takeovers: 0, leaseLost: 0, released: 0, renewFailures: 0, bucketUnavailable: 0, electionGraces: 0 };
    let lastTakeover: TakeoverRecord | null = null;

    const bounded = <A>(p: Promise<A>, what: string): Promise<A> => {
      let timer: NodeJS.Timeout | undefined;
      const t = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new KvTimeout(`${what}: no answer within ${kvTimeoutMs} ms`)), kvTimeoutMs);
      });
      return Promise.race([p, t]).finally(() => clearTimeout(timer));
    };

    /** Runs `job` after the edge's previous job; errors are logged, never thrown into the chain. */
    const enqueue = (edgeId: string, job: () => Promise<void>): void => {
      const prev = chains.get(edgeId) ?? Promise.resolve();
      const next = prev.then(job).catch((e) => logAs("warn", `ownership of ${edgeId}: ${errText(e)}`));
      chains.set(edgeId, next);
      void next.finally(() => {
        if (chains.get(edgeId) === next) chains.delete(edgeId);
      });
    };

    const readOwner = async (edgeId: string): Promise<{ entry: OwnerEntry; revision: number } | null> => {
      const e = await bounded(owners.get(edgeId), `reading the owner of ${edgeId}`);
      if (e === null || e.operation !== "PUT") return null;
      const entry = parseOwnerEntry(decodeJson(e.value));
      // A malformed entry is nobody's: overwrite it (claim at its revision).
      return entry === null
        ? { entry: { v: 1, edgeId, hubId: deps.hubId, runId: "", sessionId: "", since: 0, renewedAt: 0, leaseMs }, revision: e.revision }
        : { entry, revision: e.revision };
    };

    const readHub = async (hubId: string): Promise<HubView | null> => {
      try {
        const e = await bounded(hubs.get(hubId), `reading hub ${hubId}`);
        return e === null || e.operation !== "PUT" ? null : parseHubView(decodeJson(e.value));
      } catch {
        return null;
      }
    };

    const valueOf = (edgeId: string, sessionId: string, since: number, renewedAt: number): Uint8Array =>
      textEncoder.encode(
        JSON.stringify({ v: 1, edgeId, hubId: deps.hubId, runId: deps.runId, sessionId, since, renewedAt, leaseMs } satisfies OwnerEntry),
      );

    const refuse = (sessionId: string, reason: "notOwner" | "ownershipUnavailable", message: string): void => {
      counters.refused += 1;
      deps.admit(sessionId, false, reason, message);
    };

    const release = async (edgeId: string, h: Held): Promise<void> => {
      try {
        await bounded(owners.delete(edgeId, { previousSeq: h.revision }), `releasing ${edgeId}`);
        counters.released += 1;
      } catch (e) {
        // Someone else holds it already, or NATS is away: the lease runs out on its own.
        logAs("info", `release of ${edgeId} skipped: ${errText(e)}`);
      }
    };

    const afterTakeover = (edgeId: string, toSessionId: string, previous: OwnerEntry, atMs: number): void => {
      counters.takeovers += 1;
      const nc = deps.log.client.current();
      const done = (s: TakeoverSummary | null, error: string | null) => {
        const record: TakeoverRecord = {
          edgeId,
          fromHubId: previous.hubId,
          fromRunId: previous.runId,
          fromSessionId: previous.sessionId,
          toSessionId,
          atMs,
          gapMs: s?.gapMs ?? Math.max(0, atMs - previous.renewedAt),
          streamsClosed: s?.streamsClosed ?? 0,
          udpClosed: s?.udpClosed ?? 0,
          error,
        };
        lastTakeover = record;
        logAs("warn", `took edge ${edgeId} over from hub ${previous.hubId} (gap ${record.gapMs} ms, ${record.streamsClosed} streams closed)`);
        deps.onTakeover?.(record);
      };
      const facts = { previous, toHubId: deps.hubId, toSessionId, atMs };
      if (nc === undefined) {
        // Cannot read the dead session: still say it moved (its streams are closed when that hub restarts).
        const s = takeoverEvents([], facts);
        for (const e of s.events) deps.append(e);
        done(s, "NATS unavailable: the dead session's streams were not read");
        return;
      }
      void closeDeadSession({ ...facts, nc, stream: deps.log.stream }).then(
        (s) => done(s, null),
        (e) => {
          const s = takeoverEvents([], facts);
          for (const ev of s.events) deps.append(ev);
          done(s, errText(e));
        },
      );
    };

    const admitting = async (edgeId: string, sessionId: string): Promise<void> => {
      const holdUntil = now() + admissionTimeoutMs - 500;
      let waited = false;
      let conflicts = 0;
      for (;;) {
        if (stopped) return refuse(sessionId, "ownershipUnavailable", "the hub is stopping");
        let verdict: AdmissionVerdict;
        try {
          const owner = await readOwner(edgeId);
          const ownerHub = owner !== null && owner.entry.hubId !== deps.hubId ? await readHub(owner.entry.hubId) : null;
          const input = { me, owner, ownerHub, nowMs: now() };
          // After a wait, or after losing a CAS race (the winner just wrote: it is alive), no more waiting.
          verdict = waited || conflicts > 0 ? decideAfterWait(input) : decideAdmission({ ...input, mayWaitUntilMs: holdUntil });
        } catch (e) {
          return refuse(sessionId, "ownershipUnavailable", `cannot read the owner of ${edgeId}: ${errText(e)}`);
        }
        if (verdict.kind === "wait") {
          waited = true;
          // Until the lease would run out; looking every 250 ms, so a release (or a renewal) ends the wait early.
          while (!stopped && now() < verdict.untilMs) {
            await sleep(Math.min(250, verdict.untilMs - now()));
            const seen = await readOwner(edgeId).catch(() => undefined);
            if (seen === undefined || seen === null || seen.revision !== verdict.revision) break;
          }
          continue;
        }
        if (verdict.kind === "refuse") {
          return refuse(sessionId, "notOwner", `edge ${edgeId} is owned by hub ${verdict.owner.hubId} (lease renewed ${Math.max(0, now() - verdict.owner.renewedAt)} ms ago)`);
        }
        const at = now();
        const value = valueOf(edgeId, sessionId, at, at);
        let revision: number;
        try {
          revision =
            verdict.kind === "create"
              ? await bounded(owners.create(edgeId, value), `creating the owner of ${edgeId}`)
              : await bounded(owners.update(edgeId, value, verdict.revision), `updating the owner of ${edgeId}`);
        } catch (e) {
          if (isCasConflict(e) && conflicts === 0) {
            conflicts += 1;
            continue;
          }
          return isCasConflict(e)
            ? refuse(sessionId, "notOwner", `edge ${edgeId}: another hub changed its owner entry at the same time`)
            : refuse(sessionId, "ownershipUnavailable", `cannot write the owner of ${edgeId}: ${errText(e)}`);
        }
        if (stopped) {
          await release(edgeId, { sessionId, since: at, revision, renewedAt: at, lastFailure: null, inGrace: false });
          return refuse(sessionId, "ownershipUnavailable", "the hub is stopping");
        }
        const h: Held = { sessionId, since: at, revision, renewedAt: at, lastFailure: null, inGrace: false };
        held.set(edgeId, h);
        if (!deps.admit(sessionId, true, "", "")) {
          // The session gave up waiting (admission timeout) or went away: give the edge back.
          held.delete(edgeId);
          await release(edgeId, h);
          return;
        }
        counters.admitted += 1;
        if (verdict.kind === "takeover") afterTakeover(edgeId, sessionId, verdict.previous, at);
        return;
      }
    };

    const fence = (edgeId: string, why: string): void => {
      if (!held.delete(edgeId)) return;
      counters.leaseLost += 1;
      logAs("warn", `dropping edge ${edgeId}: ${why}`);
      deps.drop(edgeId, "leaseLost", why);
    };

    const isConnected = (): boolean => deps.log.client.isConnected();
    /** The server answers a ping within `ms` (the link is alive even if JetStream does not answer). */
    const answers = async (ms: number): Promise<boolean> => {
      const nc = deps.log.client.current();
      if (nc === undefined || !isConnected()) return false;
      let timer: NodeJS.Timeout | undefined;
      const t = new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), ms);
      });
      return Promise.race([nc.flush().then(() => true, () => false), t]).finally(() => clearTimeout(timer));
    };
    const classify = async (e: unknown): Promise<RenewalFailure> => {
      const casConflict = isCasConflict(e);
      const connected = isConnected();
      // A timeout proves nothing about the link: ask the server for a pong. A 503 / no responders is an answer.
      const timedOut = e instanceof KvTimeout || /timeout|timed out/i.test(errText(e));
      const ok = casConflict || !connected ? connected : timedOut ? await answers(Math.min(500, kvTimeoutMs)) : true;
      return classifyRenewalFailure(e, { casConflict, connected: connected && isConnected(), answers: ok });
    };

    const renewing = new Set<string>();
    const renew = async (edgeId: string, h: Held): Promise<void> => {
      if (held.get(edgeId) !== h) return;
      const at = now();
      try {
        const rev = await bounded(owners.update(edgeId, valueOf(edgeId, h.sessionId, h.since, at), h.revision), `renewing ${edgeId}`);
        if (held.get(edgeId) === h) {
          if (h.inGrace) logAs("info", `edge ${edgeId}: lease renewed again after ${at - h.renewedAt} ms (owners bucket back)`);
          h.revision = rev;
          h.renewedAt = at;
          h.lastFailure = null;
          h.inGrace = false;
        }
      } catch (e) {
        if (held.get(edgeId) !== h) return;
        const kind = await classify(e);
        if (held.get(edgeId) !== h) return;
        if (kind !== "conflict") {
          if (h.lastFailure !== kind) logAs("warn", `renewing ${edgeId} failed (${kind}, NATS ${isConnected() ? "connected" : "not connected"}): ${errText(e)}`);
          counters.renewFailures += 1;
          if (kind === "bucketUnavailable") counters.bucketUnavailable += 1;
          h.lastFailure = kind;
          return;
        }
        let current: { entry: OwnerEntry; revision: number } | null;
        try {
          current = await readOwner(edgeId);
        } catch (re) {
          counters.renewFailures += 1;
          h.lastFailure = await classify(re);
          return;
        }
        const v = decideAfterRenewalConflict({ ...me, sessionId: h.sessionId }, current);
        if (v.kind === "adopt") {
          h.revision = v.revision;
          h.renewedAt = Math.max(h.renewedAt, Math.min(v.renewedAt, at));
          h.lastFailure = null;
          h.inGrace = false;
        } else {
          fence(edgeId, v.holder === null ? "its owner entry was deleted" : `hub ${v.holder.hubId} owns it now`);
        }
      }
    };

    const renewTimer = setInterval(() => {
      for (const [edgeId, h] of held) {
        if (renewing.has(edgeId)) continue;
        renewing.add(edgeId);
        enqueue(edgeId, () => renew(edgeId, h).finally(() => renewing.delete(edgeId)));
      }
    }, Math.max(50, Math.floor(leaseMs / 4)));
    const fenceTimer = setInterval(() => {
      const t = now();
      const connected = isConnected();
      for (const [edgeId, h] of held) {
        const d = fenceDecision({ renewedAt: h.renewedAt, leaseMs, nowMs: t, electionGraceMs, lastFailure: h.lastFailure, connected });
        if (d === "grace" && !h.inGrace) {
          h.inGrace = true;
          counters.electionGraces += 1;
          logAs("warn", `edge ${edgeId}: no lease renewal for ${t - h.renewedAt} ms, the owners bucket has no leader (NATS connected): kept for up to ${electionGraceMs} ms more`);
        } else if (d === "fence") {
          const why =
            h.inGrace
              ? `no lease renewal for ${t - h.renewedAt} ms (lease ${leaseMs} ms + election grace ${electionGraceMs} ms)`
              : `no lease renewal for ${t - h.renewedAt} ms (lease ${leaseMs} ms${h.lastFailure === "connectionLost" || !connected ? ", NATS connection lost" : ""})`;
          fence(edgeId, why);
        }
      }
    }, 50);

    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        stopped = true;
        clearInterval(renewTimer);
        clearInterval(fenceTimer);
        const all = [...held];
        held.clear();
        await Promise.allSettled(all.map(([edgeId, h]) => release(edgeId, h)));
      }),
    );

    const onNativeEvent = (e: OwnershipNativeEvent): void => {
      if (stopped) return;
      const { edgeId, sessionId } = e;
      if (typeof edgeId !== "string" || typeof sessionId !== "string") return;
      if (e.type === "edge.admitting") {
        enqueue(edgeId, () => admitting(edgeId, sessionId));
      } else if (e.type === "edge.disconnected") {
        enqueue(edgeId, async () => {
          const h = held.get(edgeId);
          if (h === undefined || h.sessionId !== sessionId) return;
          held.delete(edgeId);
          if (e.reason === "leaseLost" || e.reason === "notOwner") return;
          await release(edgeId, h);
        });
      }
    };

    const status = (): OwnershipStatus => {
      const t = now();
      return {
        name: deps.cluster.name,
        leaseMs,
        owned: [...held].map(([edgeId, h]) => ({ edgeId, sessionId: h.sessionId, since: h.since, leaseAgeMs: Math.max(0, t - h.renewedAt), revision: h.revision })),
        ...counters,
        inGrace: [...held.values()].filter((h) => h.inGrace).length,
        lastTakeover,
      };
    };

    return { onNativeEvent, status };
  });
