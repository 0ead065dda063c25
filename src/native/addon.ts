/**
 * The one place that loads the native addon (`native/index.node`) and the typed surface it offers
 * (docs/architecture.md, "Native ⇄ TypeScript contract").
 */
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Effect, Either } from "effect";
import { AddonLoadError } from "../errors.js";
import type { EventDecoder } from "./events.js";

declare const hubHandleBrand: unique symbol;
declare const edgeHandleBrand: unique symbol;
/** Opaque handle to a running native hub. */
export interface HubHandle {
  readonly [hubHandleBrand]: true;
}
/** Opaque handle to a running native edge. */
export interface EdgeHandle {
  readonly [edgeHandleBrand]: true;
}

/** Called by the addon with one JSON batch `{ firstSeq, events }`. */
export type NativeEventsCallback = (batchJson: string) => void;

export interface NativeAddon {
  version(): string;
  /** Loads cert/key from the paths, or generates a self-signed pair and writes them. Returns `{certPem,keyPem,fingerprint}` JSON. */
  tlsIdentity(certPath: string, keyPath: string, subjectAltNamesJson: string): string;
  /** sha256 of the certificate's DER, lowercase hex (64 chars). */
  certFingerprint(certPem: string): string;
  /** Resolves once the tunnel port is listening. */
  hubStart(configJson: string, onEvents: NativeEventsCallback): Promise<HubHandle>;
  /** Full replacement of the allowed-edge list. */
  hubUpdateEdges(hub: HubHandle, edgesJson: string): void;
  /**
   * `admission: "deferred"`: the decision for the session announced by `edge.admitting`. `admit=false` refuses
   * with HelloReply `notOwner` and emits `edge.refused { reason, message }`. Returns whether the session was
   * still waiting (false for an unknown, already decided or timed-out one).
   */
  hubAdmitEdge(hub: HubHandle, sessionId: string, admit: boolean, reason: string, message: string): boolean;
  /**
   * Closes the edge's live session now with GoAway(`reason`); `edge.disconnected` carries the reason, its streams
   * and UDP sessions close with `tunnelLost`. Returns whether a session was found. Throws EINVALIDCONFIG for
   * another reason.
   */
  hubDropEdge(hub: HubHandle, edgeId: string, reason: "leaseLost" | "notOwner", message: string): boolean;
  hubStatus(hub: HubHandle): string;
  /** Idempotent; closes tunnels with GoAway(hubShutdown). */
  hubStop(hub: HubHandle): Promise<void>;
  /** Returns at once; connects in the background. */
  edgeStart(configJson: string, onEvents: NativeEventsCallback): EdgeHandle;
  edgeStatus(edge: EdgeHandle): string;
  /** Idempotent. */
  edgeStop(edge: EdgeHandle): Promise<void>;
}

/** Parsed result of `tlsIdentity`. */
export interface TlsIdentity {
  readonly certPem: string;
  readonly keyPem: string;
  readonly fingerprint: string;
}

const ADDON_FUNCTIONS = [
  "version",
  "tlsIdentity",
  "certFingerprint",
  "hubStart",
  "hubUpdateEdges",
  "hubAdmitEdge",
  "hubDropEdge",
  "hubStatus",
  "hubStop",
  "edgeStart",
  "edgeStatus",
  "edgeStop",
] as const satisfies ReadonlyArray<keyof NativeAddon>;

/** The package root: the nearest directory above this module whose package.json is named "portway". */
export const packageRoot = (): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "package.json");
    if (existsSync(candidate)) {
      try {
        const pkg = JSON.parse(readFileSync(candidate, "utf8")) as { name?: unknown };
        if (pkg.name === "portway") return dir;
      } catch {
        // Unreadable package.json: keep walking up.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) return resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
    dir = parent;
  }
};

/** Where the addon is loaded from: `$PORTWAY_NATIVE_ADDON`, else `<package root>/native/index.node`. */
export const addonPath = (): string => {
  const override = process.env["PORTWAY_NATIVE_ADDON"];
  return override !== undefined && override !== "" ? resolve(override) : join(packageRoot(), "native", "index.node");
};

let cached: { readonly path: string; readonly addon: NativeAddon } | undefined;

const loadAddonSync = (path: string): Either.Either<NativeAddon, AddonLoadError> => {
  if (cached?.path === path) return Either.right(cached.addon);
  if (!existsSync(path)) {
    return Either.left(
      new AddonLoadError({
        path,
        message: `native addon not found at ${path}: run \`npm run build:native\` (or set PORTWAY_NATIVE_ADDON)`,
      }),
    );
  }
  let loaded: unknown;
  try {
    loaded = createRequire(import.meta.url)(path);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    return Either.left(
      new AddonLoadError({
        path,
        cause,
        message: `native addon at ${path} failed to load (${reason}): rebuild it with \`npm run build:native\``,
      }),
    );
  }
  const missing = ADDON_FUNCTIONS.filter(
    (name) => typeof (loaded as Record<string, unknown> | null)?.[name] !== "function",
  );
  if (missing.length > 0) {
    return Either.left(
      new AddonLoadError({
        path,
        message: `native addon at ${path} lacks ${missing.join(", ")}: it is out of date, run \`npm run build:native\``,
      }),
    );
  }
  const addon = loaded as NativeAddon;
  cached = { path, addon };
  return Either.right(addon);
};

/** Loads the addon once per path (cached). Fails with `AddonLoadError` telling the user how to build it. */
export const loadAddon: Effect.Effect<NativeAddon, AddonLoadError> = Effect.suspend(() => loadAddonSync(addonPath()));

// ---- event batches ---------------------------------------------------------------------------------------

/** Something wrong with the event stream itself: a gap in `seq`, or a batch/event that does not decode. */
export type EventStreamProblem =
  | {
      readonly type: "events.gap";
      /** The seq we expected next. */
      readonly expectedSeq: number;
      /** The seq that arrived instead. */
      readonly receivedSeq: number;
      /** How many events were lost (0 when the seq went backwards). */
      readonly missed: number;
      readonly message: string;
    }
  | {
      readonly type: "events.invalid";
      readonly seq: number | null;
      readonly message: string;
    };

export interface BatchSink<E> {
  readonly events: (events: ReadonlyArray<E>) => void;
  readonly problem: (problem: EventStreamProblem) => void;
}

const safely = (f: () => void): void => {
  try {
    f();
  } catch (error) {
    // Last resort: a throwing sink must never unwind into the addon's callback.
    console.error("portway: event sink threw", error);
  }
};

/**
 * Builds the callback handed to `hubStart`/`edgeStart`. It parses each batch once, checks that `seq` increases
 * by exactly 1 across batches, decodes every event, and hands decoded events and problems to `sink`.
 * It never throws: problems (including a throwing sink) are reported, never propagated into the addon.
 */
export const makeBatchDecoder = <E>(decode: EventDecoder<E>, sink: BatchSink<E>): NativeEventsCallback => {
  let expected = 1;
  const report = (problem: EventStreamProblem) => safely(() => sink.problem(problem));
  return (batchJson) => {
    safely(() => {
      let batch: unknown;
      try {
        batch = JSON.parse(batchJson);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        report({ type: "events.invalid", seq: null, message: `event batch is not JSON: ${reason}` });
        return;
      }
      const rawEvents = (batch as { events?: unknown } | null)?.events;
      if (typeof batch !== "object" || batch === null || !Array.isArray(rawEvents)) {
        report({ type: "events.invalid", seq: null, message: "event batch lacks an `events` array" });
        return;
      }
      const decoded: E[] = [];
      for (const raw of rawEvents as ReadonlyArray<unknown>) {
        const seq = (raw as { seq?: unknown } | null)?.seq;
        if (typeof seq === "number" && Number.isInteger(seq)) {
          if (seq !== expected) {
            const missed = Math.max(0, seq - expected);
            report({
              type: "events.gap",
              expectedSeq: expected,
              receivedSeq: seq,
              missed,
              message:
                seq > expected
                  ? `native event seq gap: expected ${expected}, got ${seq} (${missed} lost)`
                  : `native event seq went backwards: expected ${expected}, got ${seq}`,
            });
          }
          expected = seq + 1;
        }
        const result = decode(raw);
        if (Either.isRight(result)) decoded.push(result.right);
        else report({ type: "events.invalid", seq: typeof seq === "number" ? seq : null, message: result.left });
      }
      if (decoded.length > 0) sink.events(decoded);
    });
  };
};
