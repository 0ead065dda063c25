/** `portway token`: prints a connection token for one edge on stdout. */
import { existsSync, readFileSync } from "node:fs";
import { Effect } from "effect";
import { loadHubConfig, type HubConfig } from "../config/hub.js";
import { fromEnv, fromFlags, mergeSources, originOf, type FieldSpec } from "../config/sources.js";
import { ConfigError, TokenError } from "../errors.js";
import { defaultHubDataDir, fingerprintOfPem, hubCertPaths } from "../hub/identity.js";
import { encodeToken, normalizeFingerprint, type HubAddress } from "../token.js";
import { commonFlags, parseCommandArgs, renderHelp, type UsageError } from "./args.js";
import { makeLineLog } from "./log.js";

export const tokenFieldSpecs: ReadonlyArray<FieldSpec> = [
  { path: ["hubs"], flag: "hub", env: "PORTWAY_TOKEN_HUBS", kind: "list", placeholder: "HOST:PORT", description: "a hub edges dial; repeat for several hubs (tried in order, failover to the next)" },
  { path: ["hubHost"], flag: "hub-host", env: "PORTWAY_TOKEN_HUB_HOST", kind: "string", placeholder: "HOST", description: "host name or IP edges dial (required unless --hub)" },
  { path: ["hubPort"], flag: "hub-port", env: "PORTWAY_TOKEN_HUB_PORT", kind: "integer", placeholder: "PORT", description: "hub tunnel port (default: the config's tunnelPort, else 8443)" },
  { path: ["edgeId"], flag: "edge-id", env: "PORTWAY_TOKEN_EDGE_ID", kind: "string", placeholder: "ID", description: "the edge's id (required)" },
  { path: ["secret"], flag: "secret", env: "PORTWAY_TOKEN_SECRET", kind: "string", placeholder: "SECRET", description: "the edge's secret (default: from the config's edges)" },
  { path: ["fingerprint"], flag: "fingerprint", env: "PORTWAY_TOKEN_FINGERPRINT", kind: "string", placeholder: "SHA256", description: "hub certificate fingerprint to pin" },
  { path: ["cert"], flag: "cert", env: "PORTWAY_TOKEN_CERT_FILE", kind: "string", placeholder: "FILE", description: "read the fingerprint from this hub certificate (PEM)" },
  { path: ["dataDir"], flag: "data-dir", env: "PORTWAY_DATA_DIR", kind: "string", placeholder: "DIR", description: "read the fingerprint from the hub's data dir (default: config, else ~/.local/state/portway/hub)" },
];

const extras = commonFlags("PORTWAY_HUB_CONFIG").map((extra) =>
  extra.flag === "config" ? { ...extra, description: "the hub's config file: supplies port, secret, certificate" } : extra,
);

export const tokenHelp = renderHelp(
  "portway token (--hub-host HOST | --hub HOST:PORT [--hub HOST:PORT …]) --edge-id ID [--secret SECRET] [--fingerprint SHA256 | --data-dir DIR | --config HUB.yaml]",
  "Prints a connection token for one edge on stdout (give it to `portway edge --token`).\n" +
    "The token pins the hub certificate: its fingerprint comes from --fingerprint, --cert, the hub config's\n" +
    "certificate, or the certificate the hub generated in its data dir. With several hubs (--hub, repeated) the edge\n" +
    "fails over between them; the one pinned certificate must be the one every hub serves.",
  tokenFieldSpecs,
  extras,
);

interface TokenSettings {
  readonly hubs?: ReadonlyArray<string>;
  readonly hubHost?: string;
  readonly hubPort?: number;
  readonly edgeId?: string;
  readonly secret?: string;
  readonly fingerprint?: string;
  readonly cert?: string;
  readonly dataDir?: string;
}

const certFingerprint = (path: string, field: string, source: string | undefined): Effect.Effect<string, ConfigError> =>
  Effect.gen(function* () {
    const pem = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (error) =>
        new ConfigError({ field, source, reason: `cannot read "${path}" (${error instanceof Error ? error.message : String(error)})` }),
    });
    const fp = fingerprintOfPem(pem);
    if (fp === undefined) return yield* Effect.fail(new ConfigError({ field, source, reason: `"${path}" is not a PEM certificate` }));
    return fp;
  });

/** Splits the `--hub X` / `--hub=X` occurrences (in order) from the other arguments. */
const takeHubFlags = (argv: ReadonlyArray<string>): { readonly hubFlags: string[]; readonly rest: string[] } => {
  const hubFlags: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    if (arg.startsWith("--hub=")) hubFlags.push(arg.slice("--hub=".length));
    else if (arg === "--hub" && i + 1 < argv.length) hubFlags.push(argv[++i] as string);
    else rest.push(arg);
  }
  return { hubFlags, rest };
};

/** `host:port`, `[v6]:port`, or a bare host (then `defaultPort`); undefined when it is neither. */
export const parseHubAddress = (text: string, defaultPort: number): HubAddress | undefined => {
  const trimmed = text.trim();
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(trimmed);
  const plain = /^([^:\[\]]+)(?::(\d+))?$/.exec(trimmed);
  const match = bracketed ?? plain;
  if (match === null) return undefined;
  const host = bracketed === null ? (match[1] as string) : `[${match[1] as string}]`;
  const port = match[2] === undefined ? defaultPort : Number(match[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { host, port };
};

/** Where the fingerprint comes from, most explicit first; undefined when nothing pins the hub. */
const findFingerprint = (
  settings: TokenSettings,
  hub: HubConfig | undefined,
  origin: (field: string) => string | undefined,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<{ readonly fp: string; readonly from: string } | undefined, ConfigError> =>
  Effect.gen(function* () {
    if (settings.fingerprint !== undefined) {
      const fp = normalizeFingerprint(settings.fingerprint);
      if (fp === undefined) {
        return yield* Effect.fail(
          new ConfigError({ field: "fingerprint", source: origin("fingerprint"), reason: `must be 64 hex characters, got "${settings.fingerprint}"` }),
        );
      }
      return { fp, from: origin("fingerprint") ?? "--fingerprint" };
    }
    if (settings.cert !== undefined) return { fp: yield* certFingerprint(settings.cert, "cert", origin("cert")), from: settings.cert };
    if (hub?.tls.certPem !== undefined) {
      const fp = fingerprintOfPem(hub.tls.certPem);
      if (fp === undefined) return yield* Effect.fail(new ConfigError({ field: "tls.certPem", reason: "is not a PEM certificate" }));
      return { fp, from: "the config's tls.certPem" };
    }
    if (hub?.tls.certFile !== undefined) {
      return { fp: yield* certFingerprint(hub.tls.certFile, "tls.certFile", undefined), from: hub.tls.certFile };
    }
    const dataDir = settings.dataDir ?? hub?.dataDir ?? defaultHubDataDir(env);
    const { certPath } = hubCertPaths(dataDir);
    if (!existsSync(certPath)) return undefined;
    return { fp: yield* certFingerprint(certPath, "dataDir", origin("dataDir")), from: certPath };
  });

export const runToken = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<void, UsageError | ConfigError | TokenError> =>
  Effect.gen(function* () {
    // `--hub` may be repeated (the generic parser keeps only the last value of a flag): collect them first.
    const { hubFlags, rest } = takeHubFlags(argv);
    const parsed = yield* parseCommandArgs("token", rest, tokenFieldSpecs, extras);
    const flags = hubFlags.length === 0 ? parsed : { ...parsed, hub: hubFlags.join(",") };
    if (flags["help"] === true) {
      process.stdout.write(tokenHelp);
      return;
    }
    const log = makeLineLog(flags["json"] === true ? "json" : "text");
    const configFlag = flags["config"];
    const file = typeof configFlag === "string" ? configFlag : env["PORTWAY_HUB_CONFIG"] || undefined;
    const hub = file === undefined ? undefined : yield* loadHubConfig({ file, env });

    const sourced = mergeSources(yield* fromEnv(tokenFieldSpecs, env), yield* fromFlags(tokenFieldSpecs, flags));
    const settings = sourced.value as TokenSettings;
    const origin = (field: string) => originOf(sourced, [field]);

    const required = (field: "hubHost" | "edgeId", flag: string) =>
      settings[field] === undefined
        ? Effect.fail(new ConfigError({ field, reason: `is required (${flag})` }))
        : Effect.succeed(settings[field] as string);
    const hubList = settings.hubs ?? [];
    const hubHost = hubList.length > 0 ? undefined : yield* required("hubHost", "--hub-host or --hub");
    const edgeId = yield* required("edgeId", "--edge-id");
    const secret = settings.secret ?? hub?.edges.find((e) => e.id === edgeId)?.secret;
    if (secret === undefined) {
      const reason =
        hub === undefined
          ? "is required (--secret, or --config with the hub's edges)"
          : `is required: edge "${edgeId}" is not in ${file}'s edges (give --secret)`;
      return yield* Effect.fail(new ConfigError({ field: "secret", reason }));
    }
    const hubPort = settings.hubPort ?? (hub === undefined || hub.tunnelPort === 0 ? 8443 : hub.tunnelPort);
    const hubs: HubAddress[] = [];
    for (const text of hubList) {
      const address = parseHubAddress(text, hubPort);
      if (address === undefined) {
        return yield* Effect.fail(
          new ConfigError({ field: "hubs", source: origin("hubs"), reason: `expected HOST:PORT (or HOST), got "${text}"` }),
        );
      }
      hubs.push(address);
    }

    const pin = yield* findFingerprint(settings, hub, origin, env);
    const token = yield* encodeToken({ hubHost, hubPort, hubs, edgeId, secret, hubCertFingerprint: pin?.fp }).pipe(
      Effect.mapError((error) => new TokenError({ message: error.message.replace(/^token /, "") })),
    );
    if (pin === undefined) {
      log.line("warn", "token", "no hub certificate found: this token does not pin the hub (give --fingerprint, --cert or --data-dir)");
    } else {
      log.line("info", "token", `pins hub certificate ${pin.fp} (from ${pin.from})`);
    }
    process.stdout.write(`${token}\n`);
  });
