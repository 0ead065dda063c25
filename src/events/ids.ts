/**
 * Deterministic event ids: the same actor event always gets the same id, so a retried publish is
 * recognised by JetStream's duplicate window and by readers.
 *
 * The actor identity is (hubId, kind, sessionId, streamId). Callers must make sessionId unique across hub
 * restarts (tunnel session ids are; the hub actor uses its run id), otherwise a restarted actor's seq 1
 * would collide with the previous incarnation's seq 1.
 */
import * as crypto from "node:crypto";
import { createHash } from "node:crypto";
import type { ActorKind } from "./catalog.js";

export interface ActorRef {
  readonly hubId: string;
  readonly kind: ActorKind;
  readonly sessionId: string;
  readonly streamId: string | null;
}

/** Stable textual key of an actor, used for grouping in projections and as the id's hash input. */
export const actorKey = (a: ActorRef): string =>
  `${a.kind}\u0000${a.hubId}\u0000${a.sessionId}\u0000${a.streamId ?? ""}`;

/** 128-bit hex id of the `seq`-th event of an actor. */
// One-shot crypto.hash (Node ≥ 20.12) is several times cheaper than createHash() on this hot path; same digest.
const sha256hex: (s: string) => string =
  typeof crypto.hash === "function"
    ? (s) => crypto.hash("sha256", s, "hex")
    : (s) => createHash("sha256").update(s).digest("hex");

export const eventId = (actor: ActorRef, seq: number): string => sha256hex(`${actorKey(actor)}\u0000${seq}`).slice(0, 32);

/**
 * `eventId` for callers that number many events of one actor: `prefix` is `actorKeyPrefix(actor)`, computed
 * once per actor instead of once per event. Same ids.
 */
export const eventIdOf = (prefix: string, seq: number): string => sha256hex(prefix + seq).slice(0, 32);

/** `actorKey(actor)` followed by the separator before the seq: the input of `eventIdOf`. */
export const actorKeyPrefix = (actor: ActorRef): string => `${actorKey(actor)}\u0000`;

/**
 * Message id of a batch of events (one JetStream message). Derived from its events' ids, so re-publishing
 * the same batch — from the in-memory queue or the outbox — is deduplicated by JetStream.
 */
export const batchMessageId = (eventIds: ReadonlyArray<string>): string => {
  if (eventIds.length === 1) return eventIds[0] as string;
  const h = createHash("sha256");
  for (const id of eventIds) h.update(id);
  return `b${eventIds.length}-${h.digest("hex").slice(0, 32)}`;
};

/** A hub run id: unique per hub process start, sortable by time. */
export const newRunId = (now: number = Date.now()): string =>
  `${now.toString(36)}-${createHash("sha256").update(String(Math.random()) + process.pid + now).digest("hex").slice(0, 8)}`;
