/**
 * The allowed-edge registry in `pw_<NAME>_edges`: written by `updateAllowedEdges` on any hub (and by
 * `portway cluster edges`), watched by every hub, which gives the addon the full list with secret verifiers.
 * Clear secrets never reach KV (docs/cluster.md, "Verifiers").
 */
import type { KV, KvEntry } from "@nats-io/kv";
import { Effect, Either, type Scope } from "effect";
import type { AllowedEdge } from "../config/hub.js";
import { decodeEntry, EdgeEntrySchema, encodeEntry, type EdgeEntry } from "./buckets.js";
import { isSecretVerifier, makeSecretVerifier, verifierSalt } from "./verifier.js";

/** What `hubUpdateEdges`/`hubStart` take for one edge in cluster mode (a `NativeEdge` with a verifier). */
export interface NativeVerifierEdge {
  readonly id: string;
  readonly secretVerifier: string;
  readonly listenPorts: ReadonlyArray<number>;
  readonly listenPortsUdp: ReadonlyArray<number>;
  readonly targets: Readonly<Record<string, string>>;
  readonly stunIntervalSecs: number;
}

export const nativeEdgeOf = (e: EdgeEntry): NativeVerifierEdge => ({
  id: e.id,
  secretVerifier: e.secretVerifier,
  listenPorts: e.listenPorts,
  listenPortsUdp: e.listenPortsUdp,
  targets: e.targets,
  stunIntervalSecs: e.stunIntervalSecs,
});

/** The registry list in a stable order (by id). */
export const sortedEdges = (entries: Iterable<EdgeEntry>): EdgeEntry[] => [...entries].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));

/** Same edge settings (the verifier included; who wrote it and when aside). */
const sameSettings = (a: EdgeEntry, b: EdgeEntry): boolean =>
  JSON.stringify(nativeEdgeOf(a)) === JSON.stringify(nativeEdgeOf(b));

/**
 * The registry entry for `edge`. When `previous` holds a verifier of the same secret, that verifier is kept
 * (a fresh salt would change it, and a changed verifier drops the edge's session).
 */
export const edgeEntryFor = (edge: AllowedEdge, previous: EdgeEntry | undefined, by: string, now: number): EdgeEntry => {
  const salt = previous === undefined ? undefined : verifierSalt(previous.secretVerifier);
  const sameSecret = salt !== undefined && previous !== undefined && makeSecretVerifier(edge.secret, salt) === previous.secretVerifier;
  // A `secret` that is already a verifier (e.g. the registry's own list, as `allowedEdges` returns it in
  // cluster mode, or one computed offline so the config holds no clear secret) is stored as it is.
  const verifier = isSecretVerifier(edge.secret)
    ? edge.secret
    : sameSecret && previous !== undefined
      ? previous.secretVerifier
      : makeSecretVerifier(edge.secret);
  return {
    v: 1,
    id: edge.id,
    secretVerifier: verifier,
    listenPorts: [...edge.listenPorts],
    listenPortsUdp: [...edge.listenPortsUdp],
    targets: Object.fromEntries(Object.entries(edge.targets).map(([port, target]) => [port, target])),
    stunIntervalSecs: edge.stunIntervalSecs,
    updatedAt: now,
    updatedBy: by,
  };
};

const liveEntry = (entry: KvEntry | null): entry is KvEntry => entry !== null && entry.operation === "PUT";

/** Every edge in the registry with its revision (malformed entries are skipped and named in `problems`). */
export const readRegistry = async (
  kv: KV,
): Promise<{ edges: Array<EdgeEntry & { readonly revision: number }>; problems: string[] }> => {
  const keys: string[] = [];
  for await (const key of await kv.keys()) keys.push(key);
  const edges: Array<EdgeEntry & { readonly revision: number }> = [];
  const problems: string[] = [];
  for (const key of keys) {
    const entry = await kv.get(key);
    if (!liveEntry(entry)) continue;
    const decoded = decodeEntry(EdgeEntrySchema, entry.value);
    if (Either.isRight(decoded)) edges.push({ ...decoded.right, revision: entry.revision });
    else problems.push(`edge entry ${key}: ${decoded.left}`);
  }
  return { edges: sortedEdges(edges) as Array<EdgeEntry & { readonly revision: number }>, problems };
};

/** Writes one edge (unchanged settings are not rewritten). Returns whether something was written. */
export const setRegistryEdge = async (kv: KV, edge: AllowedEdge, by: string): Promise<boolean> => {
  const current = await kv.get(edge.id);
  const decoded = liveEntry(current) ? decodeEntry(EdgeEntrySchema, current.value) : undefined;
  const previous = decoded !== undefined && Either.isRight(decoded) ? decoded.right : undefined;
  const next = edgeEntryFor(edge, previous, by, Date.now());
  if (previous !== undefined && sameSettings(previous, next)) return false;
  await kv.put(edge.id, encodeEntry(next));
  return true;
};

/** Removes one edge; returns whether it was there. */
export const removeRegistryEdge = async (kv: KV, edgeId: string): Promise<boolean> => {
  const current = await kv.get(edgeId);
  if (!liveEntry(current)) return false;
  await kv.delete(edgeId);
  return true;
};

/** Full replacement: the registry becomes `edges` (edges not listed are deleted). */
export const writeRegistry = async (
  kv: KV,
  edges: ReadonlyArray<AllowedEdge>,
  by: string,
): Promise<{ readonly written: number; readonly removed: number }> => {
  const { edges: before } = await readRegistry(kv);
  const keep = new Set(edges.map((e) => e.id));
  let written = 0;
  let removed = 0;
  for (const edge of edges) if (await setRegistryEdge(kv, edge, by)) written += 1;
  for (const old of before) {
    if (!keep.has(old.id)) {
      await kv.delete(old.id);
      removed += 1;
    }
  }
  return { written, removed };
};

export interface RegistryWatchOptions {
  readonly kv: KV;
  /** Called with the full list after the initial values and after every change (never concurrently). */
  readonly apply: (edges: ReadonlyArray<EdgeEntry>) => void;
  readonly log: (level: "warn" | "info", msg: string) => void;
}

/**
 * Watches the registry until the scope closes: first the current values (one `apply` once caught up, also for
 * an empty bucket), then one `apply` per change. A watch that ends (NATS gone for good, bucket recreated) is
 * started again after a short pause, resuming after the last revision seen.
 */
export const watchRegistry = (o: RegistryWatchOptions): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const edges = new Map<string, EdgeEntry>();
    let stopped = false;
    let stopWatch: (() => void) | undefined;
    let lastRevision = 0;
    let lastApplied = "";
    const applyNow = (): void => {
      const list = sortedEdges(edges.values());
      const key = JSON.stringify(list.map(nativeEdgeOf));
      if (key === lastApplied) return;
      lastApplied = key;
      try {
        o.apply(list);
      } catch (error) {
        o.log("warn", `applying the edge registry failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    };
    const onEntry = (e: KvEntry): void => {
      lastRevision = Math.max(lastRevision, e.revision);
      if (e.operation !== "PUT") {
        edges.delete(e.key);
        return;
      }
      const decoded = decodeEntry(EdgeEntrySchema, e.value);
      if (Either.isRight(decoded)) edges.set(e.key, decoded.right);
      else {
        edges.delete(e.key);
        o.log("warn", `ignoring registry entry ${e.key}: ${decoded.left}`);
      }
    };

    const loop = async (): Promise<void> => {
      let first = true;
      while (!stopped) {
        try {
          const status = first ? await o.kv.status() : undefined;
          const iter = await o.kv.watch(lastRevision > 0 ? { resumeFromRevision: lastRevision + 1 } : {});
          stopWatch = () => iter.stop();
          // An empty bucket delivers nothing initially: apply the (empty) list at once.
          if (status !== undefined && status.values === 0) applyNow();
          first = false;
          for await (const e of iter) {
            onEntry(e);
            if (e.delta === 0 || e.delta === undefined) applyNow();
          }
        } catch (error) {
          if (!stopped) o.log("warn", `edge registry watch failed: ${error instanceof Error ? error.message : String(error)}`);
        }
        if (!stopped) await new Promise((r) => setTimeout(r, 250));
      }
    };
    const running = loop();
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        stopped = true;
        stopWatch?.();
        await Promise.race([running, new Promise((r) => setTimeout(r, 1000).unref())]);
      }),
    );
  });
