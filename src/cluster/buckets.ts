/**
 * The cluster's JetStream KV buckets (docs/cluster.md, "KV layout"): their names and the schemas of their
 * values. One place for both, so the registry, the hubs' liveness and ownership read and write the same shapes.
 *
 * - `pw_<NAME>_edges`  key edgeId → EdgeEntry  (the allowed-edge registry; secrets only as verifiers)
 * - `pw_<NAME>_hubs`   key hubId  → HubEntry   (liveness: rewritten every heartbeatMs, deleted on clean stop)
 * - `pw_<NAME>_owners` key edgeId → OwnerEntry (which hub serves an edge; compare-and-set on the revision)
 */
import { Either, ParseResult, Schema } from "effect";
import { isSecretVerifier } from "./verifier.js";

/** A cluster name: also part of bucket names. */
export const CLUSTER_NAME_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;

export interface BucketNames {
  readonly edges: string;
  readonly hubs: string;
  readonly owners: string;
}

/** Bucket names of cluster `name` (checked against CLUSTER_NAME_PATTERN by the config). */
export const bucketNames = (name: string): BucketNames => ({
  edges: `pw_${name}_edges`,
  hubs: `pw_${name}_hubs`,
  owners: `pw_${name}_owners`,
});

/** KV keys are NATS subject tokens: the edge/hub id alphabet fits. */
const Key = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{1,64}$/));
const Port = Schema.Int.pipe(Schema.between(1, 65535));
const Millis = Schema.Number.pipe(Schema.finite(), Schema.nonNegative());

/** `pw_<NAME>_edges` value: one allowed edge. `secretVerifier`, never the secret. */
export const EdgeEntrySchema = Schema.Struct({
  v: Schema.Literal(1),
  id: Key,
  secretVerifier: Schema.String.pipe(Schema.filter((s) => isSecretVerifier(s) || "must be a v1 secret verifier")),
  listenPorts: Schema.Array(Port),
  listenPortsUdp: Schema.Array(Port),
  /** Per-port target `host:port`, keyed by edge port. */
  targets: Schema.Record({ key: Schema.String, value: Schema.String }),
  stunIntervalSecs: Schema.Int.pipe(Schema.between(0, 86_400)),
  /** ms since the epoch. */
  updatedAt: Millis,
  /** hubId, or `cli` for `portway cluster edges`. */
  updatedBy: Schema.String,
});
export type EdgeEntry = typeof EdgeEntrySchema.Type;

/** `pw_<NAME>_hubs` value: one running hub. */
export const HubEntrySchema = Schema.Struct({
  v: Schema.Literal(1),
  hubId: Key,
  runId: Schema.String,
  /** Where edges reach this hub (its bind host, or the host given for the cluster). */
  tunnelHost: Schema.String,
  /** 0 until the hub listens. */
  tunnelPort: Schema.Int.pipe(Schema.between(0, 65535)),
  startedAt: Millis,
  heartbeatAt: Millis,
  /** Portway version of the hub. */
  version: Schema.String,
});
export type HubEntry = typeof HubEntrySchema.Type;

/** `pw_<NAME>_owners` value: the hub serving an edge, under a lease it renews (written by ownership). */
export const OwnerEntrySchema = Schema.Struct({
  v: Schema.Literal(1),
  edgeId: Key,
  hubId: Key,
  runId: Schema.String,
  sessionId: Schema.String,
  since: Millis,
  renewedAt: Millis,
  leaseMs: Schema.Int.pipe(Schema.positive()),
});
export type OwnerEntry = typeof OwnerEntrySchema.Type;

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

/** Decodes a KV value (JSON bytes) with `schema`; Left is a one-line reason. */
export const decodeEntry = <A, I>(schema: Schema.Schema<A, I>, bytes: Uint8Array): Either.Either<A, string> => {
  let json: unknown;
  try {
    json = JSON.parse(textDecoder.decode(bytes));
  } catch (error) {
    return Either.left(`not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  return Either.mapLeft(Schema.decodeUnknownEither(schema, { onExcessProperty: "ignore" })(json), (e) =>
    ParseResult.TreeFormatter.formatErrorSync(e).replace(/\s+/g, " "),
  );
};

/** Encodes a KV value as JSON bytes. */
export const encodeEntry = (value: EdgeEntry | HubEntry | OwnerEntry): Uint8Array => textEncoder.encode(JSON.stringify(value));
