import { Data } from "effect";

/** A configuration value is missing or invalid. `field` is the dotted path (e.g. `edges.0.listenPorts.1`). */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  readonly field: string;
  readonly reason: string;
  /** Where the value came from: a file path, an environment variable or a flag (when known). */
  readonly source?: string | undefined;
  readonly message: string;
}> {
  constructor(props: { readonly field: string; readonly reason: string; readonly source?: string | undefined }) {
    const from = props.source === undefined ? "" : ` (from ${props.source})`;
    super({ ...props, message: `${props.field}: ${props.reason}${from}` });
  }
}

/** A connection token could not be encoded or decoded; `message` says what is wrong with it. */
export class TokenError extends Data.TaggedError("TokenError")<{ readonly message: string }> {}

/** The native addon could not be loaded (usually: it has not been built yet). */
export class AddonLoadError extends Data.TaggedError("AddonLoadError")<{
  readonly path: string;
  readonly message: string;
  readonly cause?: unknown;
}> {}

/**
 * Stable error codes that prefix native error messages (`EADDRINUSE: …`). Other codes may appear; `EUNKNOWN` is
 * used when a native message carries no code.
 */
export type NativeErrorCode =
  | "EADDRINUSE"
  | "EACCES"
  | "EINVALIDCONFIG"
  | "ETLS"
  | "ECLOSED"
  | "EUNKNOWN"
  | (string & {});

/** The hub could not start (tunnel port in use, permission denied, TLS identity unusable, …). */
export class HubStartError extends Data.TaggedError("HubStartError")<{
  readonly code: NativeErrorCode;
  readonly message: string;
  readonly cause?: unknown;
}> {}

/** The edge could not start (invalid config, TLS material unusable, …). Connection failures are events, not this. */
export class EdgeStartError extends Data.TaggedError("EdgeStartError")<{
  readonly code: NativeErrorCode;
  readonly message: string;
  readonly cause?: unknown;
}> {}

/** A call into a running hub or edge failed (e.g. status of a stopped handle, rejected edge list). */
export class NativeCallError extends Data.TaggedError("NativeCallError")<{
  readonly operation: string;
  readonly code: NativeErrorCode;
  readonly message: string;
  readonly cause?: unknown;
}> {}

/** The edge did not connect to a hub within the time asked for. `lastError` is the most recent reason seen. */
export class EdgeConnectTimeoutError extends Data.TaggedError("EdgeConnectTimeoutError")<{
  readonly timeoutMs: number;
  readonly lastError: string | null;
  readonly message: string;
}> {}

/** `start()` was called on an instance that is already running. */
export class AlreadyRunningError extends Data.TaggedError("AlreadyRunningError")<{ readonly message: string }> {}

/** An operation that needs a running instance was called on a stopped one. */
export class NotRunningError extends Data.TaggedError("NotRunningError")<{ readonly message: string }> {}

const CODE_PREFIX = /^([A-Z][A-Z0-9_]{2,31}):\s*/;

/** Splits a native error (`"EADDRINUSE: 0.0.0.0:8443 already in use"`) into its stable code and message. */
export const nativeErrorParts = (error: unknown): { readonly code: NativeErrorCode; readonly message: string } => {
  const text = error instanceof Error ? error.message : String(error);
  const match = CODE_PREFIX.exec(text);
  return match?.[1] === undefined ? { code: "EUNKNOWN", message: text } : { code: match[1], message: text };
};
