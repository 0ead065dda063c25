/**
 * Ownership leases, the pure part: given what the owners bucket and the hubs bucket say about one edge and
 * the time now, what a hub does — create the entry, renew its own, take over a dead owner's, wait for a
 * lease to run out, or refuse. No I/O and no clock: `ownership.ts` reads the buckets and applies the verdict
 * with compare-and-set (docs/cluster.md, ADR 0008).
 *
 * Safety rests on two rules that use the same instant, `renewedAt + leaseMs`:
 *  - the owner stops serving (self-fences) a margin *before* it: `mustFence`;
 *  - another hub takes over only *after* it: `leaseExpired`.
 * A hub's heartbeat going stale is not proof of death (a hub cut from NATS stops heartbeating but may still
 * hold the edge until its lease runs out), so staleness alone never allows a takeover; a hub entry carrying
 * another run id does (that run is gone: the hub restarted).
 */

/** Value of `pw_<cluster>_owners[edgeId]` (docs/cluster.md). */
export interface OwnerEntry {
  readonly v: 1;
  readonly edgeId: string;
  readonly hubId: string;
  readonly runId: string;
  /** The tunnel session the owner serves the edge with. */
  readonly sessionId: string;
  /** When this hub took the edge (epoch ms). */
  readonly since: number;
  /** Last successful renewal (epoch ms, the owner's clock). */
  readonly renewedAt: number;
  readonly leaseMs: number;
}

/** What a hub needs of a `pw_<cluster>_hubs` entry. */
export interface HubView {
  readonly hubId: string;
  readonly runId: string;
  readonly heartbeatAt: number;
}

export interface Me {
  readonly hubId: string;
  readonly runId: string;
}

export type TakeoverCause = "leaseExpired" | "hubRestarted";

export type AdmissionVerdict =
  /** No owner: `kv.create`. */
  | { readonly kind: "create" }
  /** Ours already (this hub, any run or session): `kv.update` at `revision`. */
  | { readonly kind: "claim"; readonly revision: number }
  /** Another hub's, and that owner is gone: `kv.update` at `revision`, then close its leftovers. */
  | { readonly kind: "takeover"; readonly revision: number; readonly previous: OwnerEntry; readonly cause: TakeoverCause }
  /** Another hub holds a live lease: wait until `untilMs` and look again (a live owner renews meanwhile). */
  | { readonly kind: "wait"; readonly untilMs: number; readonly revision: number }
  /** Another hub holds a live lease and we will not wait (again): refuse with `notOwner`. */
  | { readonly kind: "refuse"; readonly reason: "notOwner"; readonly owner: OwnerEntry };

export interface AdmissionInput {
  readonly me: Me;
  /** The owner entry and its revision; null when absent (never written, deleted or purged). */
  readonly owner: { readonly entry: OwnerEntry; readonly revision: number } | null;
  /** The owner hub's entry in the hubs bucket; null when absent or unknown. */
  readonly ownerHub: HubView | null;
  readonly nowMs: number;
  /** May we wait for the lease to run out (false once we waited, or when the wait would be too long)? */
  readonly mayWaitUntilMs: number | null;
  /** Added to the expiry before looking again (clock granularity). Default 50. */
  readonly waitSlackMs?: number;
}

export const leaseExpiresAt = (entry: Pick<OwnerEntry, "renewedAt" | "leaseMs">): number => entry.renewedAt + entry.leaseMs;

/** Another hub may take the edge over: the owner's lease has run out. */
export const leaseExpired = (entry: Pick<OwnerEntry, "renewedAt" | "leaseMs">, nowMs: number): boolean => nowMs > leaseExpiresAt(entry);

/** How long before expiry the owner fences itself: a quarter of the lease, at most 250 ms. */
export const fenceMarginMs = (leaseMs: number): number => Math.min(250, Math.floor(leaseMs / 4));

/** The owner must stop serving the edge now: its last successful renewal is about to run out. */
export const mustFence = (renewedAt: number, leaseMs: number, nowMs: number): boolean =>
  nowMs >= renewedAt + leaseMs - fenceMarginMs(leaseMs);

/**
 * Why a lease renewal failed, as far as the hub can tell:
 *  - `conflict`: the CAS lost (the revision moved): the entry is read again (`decideAfterRenewalConflict`);
 *  - `bucketUnavailable`: the NATS connection is up and answering, but the owners bucket cannot commit right
 *    now — JetStream is electing a leader for it (503 / no responders, which @nats-io/jetstream reports as
 *    "jetstream is not enabled" / "JetStream system temporarily unavailable" / a request timeout while the
 *    server still answers a ping);
 *  - `connectionLost`: the connection is down or does not answer: this hub may be cut from NATS.
 */
export type RenewalFailure = "conflict" | "bucketUnavailable" | "connectionLost";

/** JetStream answered (or timed out) in a way that means "no leader for this stream right now". */
export const isBucketUnavailableError = (error: unknown): boolean => {
  const o = error as { code?: unknown; message?: unknown } | null;
  const code = o?.code;
  if (code === 503 || code === "503" || code === "TIMEOUT" || code === 408) return true;
  const msg = error instanceof Error ? error.message : typeof o?.message === "string" ? o.message : String(error);
  return /no responders|\b503\b|temporarily unavailable|jetstream is not enabled|timeout|timed out|no answer within|stream not current|no leader/i.test(msg);
};

/**
 * Classifies a failed renewal. `connected`: the client's connection status; `answers`: the server answered a
 * ping just now (only asked for errors that could also be a dead link, i.e. timeouts). Any other error (or a
 * connection that is not up) is `connectionLost`: fence as before.
 */
export const classifyRenewalFailure = (
  error: unknown,
  connection: { readonly casConflict: boolean; readonly connected: boolean; readonly answers: boolean },
): RenewalFailure => {
  if (connection.casConflict) return "conflict";
  if (!connection.connected || !connection.answers) return "connectionLost";
  return isBucketUnavailableError(error) ? "bucketUnavailable" : "connectionLost";
};

export type FenceDecision =
  /** The lease is current: serve. */
  | "serve"
  /** The lease ran out while the bucket has no leader (connection up): keep serving, admit nothing new. */
  | "grace"
  /** Stop serving now (`leaseLost`). */
  | "fence";

export interface FenceInput {
  /** Last successful renewal (or the admission write). */
  readonly renewedAt: number;
  readonly leaseMs: number;
  readonly nowMs: number;
  /** `cluster.electionGraceMs` (0: no grace). Counted from the instant the hub would otherwise fence. */
  readonly electionGraceMs: number;
  /** The latest failed renewal since `renewedAt` (null: none failed yet, e.g. still in flight). */
  readonly lastFailure: RenewalFailure | null;
  /** The NATS connection is up right now. */
  readonly connected: boolean;
}

/**
 * Self-fencing with an election grace. Past `mustFence` the hub keeps an edge only while (1) its connection
 * to NATS is up, (2) the latest renewal failed because the bucket could not commit (no leader), and (3) the
 * grace has not run out. Why this keeps at most one owner (ADR 0009): another hub takes an expired lease only
 * by a CAS write to the same bucket, which needs the same leader this hub cannot reach; once a leader is back,
 * this hub's next renewal (at most leaseMs/4 later) either succeeds (still ours) or loses the CAS (drop); and an
 * edge runs one tunnel at a time, so a takeover needs the edge to have left this hub anyway.
 */
export const fenceDecision = (i: FenceInput): FenceDecision => {
  if (!mustFence(i.renewedAt, i.leaseMs, i.nowMs)) return "serve";
  if (i.electionGraceMs <= 0 || !i.connected || i.lastFailure !== "bucketUnavailable") return "fence";
  const graceEnds = i.renewedAt + i.leaseMs - fenceMarginMs(i.leaseMs) + i.electionGraceMs;
  return i.nowMs < graceEnds ? "grace" : "fence";
};

/** The entry is this hub's (any run: a restarted hub reclaims its edges; recovery closes the old run's leftovers). */
export const isMine = (entry: Pick<OwnerEntry, "hubId">, me: Me): boolean => entry.hubId === me.hubId;

export const decideAdmission = (input: AdmissionInput): AdmissionVerdict => {
  const { owner, me, nowMs } = input;
  if (owner === null) return { kind: "create" };
  const { entry, revision } = owner;
  if (isMine(entry, me)) return { kind: "claim", revision };
  if (input.ownerHub !== null && input.ownerHub.hubId === entry.hubId && input.ownerHub.runId !== entry.runId) {
    return { kind: "takeover", revision, previous: entry, cause: "hubRestarted" };
  }
  if (leaseExpired(entry, nowMs)) return { kind: "takeover", revision, previous: entry, cause: "leaseExpired" };
  const untilMs = leaseExpiresAt(entry) + (input.waitSlackMs ?? 50);
  if (input.mayWaitUntilMs !== null && untilMs <= input.mayWaitUntilMs) return { kind: "wait", untilMs, revision };
  return { kind: "refuse", reason: "notOwner", owner: entry };
};

/**
 * After waiting for a lease to run out, the entry is read again and decided without another wait: an owner
 * that renewed meanwhile is alive (refuse), an unchanged entry has expired now (take over), a deleted one is
 * free (create).
 */
export const decideAfterWait = (input: Omit<AdmissionInput, "mayWaitUntilMs">): AdmissionVerdict =>
  decideAdmission({ ...input, mayWaitUntilMs: null });

export type RenewalVerdict =
  /** Still ours under a newer revision (our earlier write landed but its ack was lost): adopt it. */
  | { readonly kind: "adopt"; readonly revision: number; readonly renewedAt: number }
  /** Another hub or session holds it, or it is gone: drop the edge (`leaseLost`). */
  | { readonly kind: "lost"; readonly holder: OwnerEntry | null };

/** A renewal's CAS failed; the entry as read again decides whether the lease is still ours. */
export const decideAfterRenewalConflict = (
  me: Me & { readonly sessionId: string },
  current: { readonly entry: OwnerEntry; readonly revision: number } | null,
): RenewalVerdict => {
  if (current === null) return { kind: "lost", holder: null };
  const e = current.entry;
  if (e.hubId === me.hubId && e.runId === me.runId && e.sessionId === me.sessionId) {
    return { kind: "adopt", revision: current.revision, renewedAt: e.renewedAt };
  }
  return { kind: "lost", holder: e };
};

/** Parses a stored owner entry; null when it is not one (then it is treated as absent and overwritten by CAS). */
export const parseOwnerEntry = (value: unknown): OwnerEntry | null => {
  if (typeof value !== "object" || value === null) return null;
  const o = value as Record<string, unknown>;
  const str = (k: string) => typeof o[k] === "string" && (o[k] as string).length > 0;
  const num = (k: string) => typeof o[k] === "number" && Number.isFinite(o[k]) && (o[k] as number) >= 0;
  if (o["v"] !== 1 || !str("edgeId") || !str("hubId") || !str("runId") || !str("sessionId")) return null;
  if (!num("since") || !num("renewedAt") || !num("leaseMs")) return null;
  return {
    v: 1,
    edgeId: o["edgeId"] as string,
    hubId: o["hubId"] as string,
    runId: o["runId"] as string,
    sessionId: o["sessionId"] as string,
    since: o["since"] as number,
    renewedAt: o["renewedAt"] as number,
    leaseMs: o["leaseMs"] as number,
  };
};
