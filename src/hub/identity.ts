/**
 * The hub's TLS identity: given PEM text, given files, or a self-signed pair generated once and kept in the
 * data dir so restarts keep the same fingerprint (and tokens stay valid).
 */
import { X509Certificate } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { homedir, hostname } from "node:os";
import { join } from "node:path";
import { Effect, Either, Schema } from "effect";
import type { HubConfig } from "../config/hub.js";
import { ConfigError, HubStartError, nativeErrorParts } from "../errors.js";
import type { NativeAddon, TlsIdentity } from "../native/addon.js";

/** `options.dataDir`, else `$PORTWAY_DATA_DIR`, else `$XDG_STATE_HOME/portway/hub` (`~/.local/state/portway/hub`). */
export const defaultHubDataDir = (env: Readonly<Record<string, string | undefined>> = process.env): string => {
  const explicit = env["PORTWAY_DATA_DIR"];
  if (explicit !== undefined && explicit !== "") return explicit;
  const state = env["XDG_STATE_HOME"];
  return join(state !== undefined && state !== "" ? state : join(homedir(), ".local", "state"), "portway", "hub");
};

/** Where a hub keeps its generated certificate and key. */
export const hubCertPaths = (dataDir: string) => ({
  certPath: join(dataDir, "hub-cert.pem"),
  keyPath: join(dataDir, "hub-key.pem"),
});

/** sha256 of a PEM certificate's DER, lowercase hex; `undefined` when the text is not a certificate. */
export const fingerprintOfPem = (certPem: string): string | undefined => {
  try {
    return new X509Certificate(certPem).fingerprint256.replace(/:/g, "").toLowerCase();
  } catch {
    return undefined;
  }
};

/** Names a generated certificate covers: loopback, this host, the bind address, and any extra names asked for. */
export const subjectAltNames = (config: HubConfig): ReadonlyArray<string> => {
  const names = ["localhost", "127.0.0.1", "::1", hostname(), ...(config.tls.subjectAltNames ?? [])];
  if (config.bindHost !== "0.0.0.0" && config.bindHost !== "::") names.push(config.bindHost);
  return [...new Set(names.filter((n) => n !== ""))];
};

const TlsIdentityJson = Schema.parseJson(
  Schema.Struct({ certPem: Schema.String, keyPem: Schema.String, fingerprint: Schema.String }),
);

const tlsFailure = (error: unknown) => new HubStartError({ ...nativeErrorParts(error), cause: error });

const readPem = (path: string, field: string): Effect.Effect<string, ConfigError> =>
  Effect.try({
    try: () => readFileSync(path, "utf8"),
    catch: (error) =>
      new ConfigError({ field, reason: `cannot read "${path}" (${error instanceof Error ? error.message : String(error)})` }),
  });

/** How the identity was obtained, for logs. */
export type IdentitySource = "options" | "files" | "dataDir";

export interface HubIdentity extends TlsIdentity {
  readonly source: IdentitySource;
  /** Set when the identity lives in the data dir. */
  readonly dataDir: string | undefined;
}

/** Resolves the hub's certificate, key and fingerprint. */
export const resolveHubIdentity = (
  addon: NativeAddon,
  config: HubConfig,
): Effect.Effect<HubIdentity, HubStartError | ConfigError> =>
  Effect.gen(function* () {
    const given = (certPem: string, keyPem: string, source: IdentitySource) =>
      Effect.try({
        try: () => ({ certPem, keyPem, fingerprint: addon.certFingerprint(certPem), source, dataDir: undefined }),
        catch: tlsFailure,
      });
    if (config.tls.certPem !== undefined && config.tls.keyPem !== undefined) {
      return yield* given(config.tls.certPem, config.tls.keyPem, "options");
    }
    if (config.tls.certFile !== undefined && config.tls.keyFile !== undefined) {
      const certPem = yield* readPem(config.tls.certFile, "tls.certFile");
      const keyPem = yield* readPem(config.tls.keyFile, "tls.keyFile");
      return yield* given(certPem, keyPem, "files");
    }
    const dataDir = config.dataDir ?? defaultHubDataDir();
    yield* Effect.try({
      try: () => mkdirSync(dataDir, { recursive: true, mode: 0o700 }),
      catch: (error) =>
        new ConfigError({
          field: "dataDir",
          reason: `cannot create "${dataDir}" (${error instanceof Error ? error.message : String(error)})`,
        }),
    });
    const { certPath, keyPath } = hubCertPaths(dataDir);
    const json = yield* Effect.try({
      try: () => addon.tlsIdentity(certPath, keyPath, JSON.stringify(subjectAltNames(config))),
      catch: tlsFailure,
    });
    const identity = Schema.decodeEither(TlsIdentityJson)(json);
    if (Either.isLeft(identity)) {
      return yield* Effect.fail(
        new HubStartError({ code: "ETLS", message: `ETLS: tlsIdentity returned an unexpected value: ${identity.left.message}` }),
      );
    }
    return { ...identity.right, source: "dataDir" as const, dataDir };
  });
