/**
 * Refuses servers that would silently misbehave. Minimum 2.10.0: consumers with several
 * `filter_subjects` (replay by edge *and* kind) arrived in 2.10; older servers — Debian's 2.9.10 — accept
 * the request but ignore the field and deliver every subject. 2.10 also brought the stream `metadata`
 * field we stamp the schema into.
 */
import { Data, Effect } from "effect";

export const MIN_NATS_SERVER_VERSION = "2.10.0";

export class NatsServerTooOld extends Data.TaggedError("NatsServerTooOld")<{
  readonly server: string;
  readonly version: string;
  readonly minimum: string;
}> {
  override get message(): string {
    return (
      `NATS server ${this.server} runs ${this.version}; Portway needs ${this.minimum} or newer ` +
      `(older servers ignore consumer filter_subjects). Upgrade the server, or run the hub without --nats ` +
      `to use the embedded one (node scripts/ensure-nats.mjs)`
    );
  }
}

export class NatsJetStreamUnavailable extends Data.TaggedError("NatsJetStreamUnavailable")<{
  readonly server: string;
}> {
  override get message(): string {
    return `NATS server ${this.server} does not have JetStream enabled; start it with -js (or jetstream {} in its config)`;
  }
}

/** The subset of nats.js ServerInfo the check reads. */
export interface ServerInfoLike {
  readonly version: string;
  readonly jetstream?: boolean;
  readonly server_name?: string;
  readonly host?: string;
  readonly port?: number;
}

/** `2.10.0`, `v2.15.2`, `2.11.0-beta.1` → [major, minor, patch]; undefined when unreadable. */
export const parseVersion = (v: string): readonly [number, number, number] | undefined => {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
};

export const versionAtLeast = (v: string, min: string): boolean => {
  const a = parseVersion(v);
  const b = parseVersion(min);
  if (!a || !b) return false;
  for (let i = 0; i < 3; i++) {
    if ((a[i] as number) !== (b[i] as number)) return (a[i] as number) > (b[i] as number);
  }
  // A pre-release of the minimum (2.10.0-beta) predates it.
  return !/^v?\d+\.\d+\.\d+-/.test(v.trim());
};

export const checkServerInfo = (
  info: ServerInfoLike | undefined,
  minimum: string = MIN_NATS_SERVER_VERSION,
): Effect.Effect<void, NatsServerTooOld | NatsJetStreamUnavailable> => {
  const server = info ? `${info.server_name ?? info.host ?? "?"}${info.port ? `:${info.port}` : ""}` : "?";
  if (!info || !versionAtLeast(info.version, minimum)) {
    return Effect.fail(new NatsServerTooOld({ server, version: info?.version ?? "unknown", minimum }));
  }
  if (info.jetstream !== true) return Effect.fail(new NatsJetStreamUnavailable({ server }));
  return Effect.void;
};
