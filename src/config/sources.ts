/**
 * Where configuration comes from — a file (JSON or YAML), environment variables, command-line flags — and how
 * they merge: defaults < file < env < flags. Every value remembers its source so errors can name it.
 */
import { readFileSync } from "node:fs";
import { extname } from "node:path";
import { Effect, ParseResult } from "effect";
import { parse as parseYaml } from "yaml";
import { ConfigError } from "../errors.js";

/** A plain JSON-like object. */
export type RawConfig = { readonly [key: string]: unknown };

/** How a string from the environment or a flag becomes a config value. */
export type ValueKind =
  | "string"
  /** A whole number. */
  | "integer"
  /** Comma-separated strings. */
  | "list"
  /** Comma-separated whole numbers. */
  | "integerList"
  /** A JSON value. */
  | "json"
  /** A file whose text is the value (e.g. a PEM); the flag/env holds the path. */
  | "fileText"
  /** `ID:PORTS:SECRET` (ports comma-separated, may be empty), repeatable: one allowed edge each. */
  | "edgeSpec"
  /** true/false (also 1/0, yes/no, on/off) in the environment; a switch without a value as a flag. */
  | "boolean";

/** One settable field: where it lives in the config object and how the environment and flags name it. */
export interface FieldSpec {
  readonly path: ReadonlyArray<string>;
  readonly flag?: string;
  readonly env?: string;
  readonly kind: ValueKind;
  /** For a `boolean` field: the flag switches it off (`--no-events` sets `events.enabled` to false). */
  readonly negatedFlag?: boolean;
  /** Shown in --help after the flag, e.g. `PORT`. */
  readonly placeholder: string;
  readonly description: string;
}

/** Where each set path came from (`"tunnelPort"` → `"--tunnel-port"`). */
export type Origins = ReadonlyMap<string, string>;

/** A config object together with the source of each value. */
export interface SourcedConfig {
  readonly value: RawConfig;
  readonly origins: Origins;
  /** The config file, when one was read; errors in paths no env/flag set are blamed on it. */
  readonly file?: string | undefined;
}

const pathKey = (path: ReadonlyArray<PropertyKey>): string => path.map(String).join(".");

const isPlainObject = (value: unknown): value is RawConfig =>
  typeof value === "object" && value !== null && !Array.isArray(value);

const setPath = (target: Record<string, unknown>, path: ReadonlyArray<string>, value: unknown): void => {
  let node = target;
  path.forEach((key, i) => {
    if (i === path.length - 1) {
      node[key] = value;
      return;
    }
    const next = node[key];
    if (isPlainObject(next)) {
      node = next as Record<string, unknown>;
    } else {
      const created: Record<string, unknown> = {};
      node[key] = created;
      node = created;
    }
  });
};

/** Deep-merges plain objects; anything else in `override` (arrays, scalars) replaces what `base` had. */
export const mergeConfig = (base: RawConfig, override: RawConfig): RawConfig => {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(override)) {
    if (value === undefined) continue;
    const prior = out[key];
    out[key] = isPlainObject(prior) && isPlainObject(value) ? mergeConfig(prior, value) : value;
  }
  return out;
};

/** Merges sources in order, later ones winning, and keeps the origins of every value. */
export const mergeSources = (...sources: ReadonlyArray<SourcedConfig>): SourcedConfig => {
  let value: RawConfig = {};
  const origins = new Map<string, string>();
  let file: string | undefined;
  for (const source of sources) {
    value = mergeConfig(value, source.value);
    for (const [key, origin] of source.origins) origins.set(key, origin);
    file = source.file ?? file;
  }
  return { value, origins, file };
};

const INTEGER = /^[+-]?\d+$/;

const parseEdgeSpec = (text: string, field: string, source: string): Effect.Effect<RawConfig, ConfigError> => {
  const first = text.indexOf(":");
  const second = first < 0 ? -1 : text.indexOf(":", first + 1);
  if (first < 0 || second < 0) {
    return Effect.fail(
      new ConfigError({ field, source, reason: `must look like ID:PORTS:SECRET (e.g. e1:80,443:s3cret), got "${text}"` }),
    );
  }
  const id = text.slice(0, first);
  const ports = text.slice(first + 1, second);
  const secret = text.slice(second + 1);
  const listenPorts: number[] = [];
  const listenPortsUdp: number[] = [];
  for (const raw of ports.split(",").map((p) => p.trim())) {
    if (raw === "") continue;
    // "53/udp" is a UDP port; "80" and "80/tcp" are TCP ports.
    const slash = raw.lastIndexOf("/");
    const part = slash < 0 ? raw : raw.slice(0, slash).trim();
    const protocol = slash < 0 ? "tcp" : raw.slice(slash + 1).trim().toLowerCase();
    if (protocol !== "tcp" && protocol !== "udp") {
      return Effect.fail(new ConfigError({ field, source, reason: `edge ${id}: port "${raw}" must end in /tcp or /udp, if anything` }));
    }
    if (!INTEGER.test(part)) {
      return Effect.fail(new ConfigError({ field, source, reason: `edge ${id}: port "${part}" is not a whole number` }));
    }
    (protocol === "udp" ? listenPortsUdp : listenPorts).push(Number(part));
  }
  return Effect.succeed(listenPortsUdp.length === 0 ? { id, secret, listenPorts } : { id, secret, listenPorts, listenPortsUdp });
};

/** Turns one env/flag string into a config value of the field's kind. */
export const parseValue = (
  spec: FieldSpec,
  text: string,
  source: string,
): Effect.Effect<unknown, ConfigError> => {
  const field = spec.path.join(".");
  const bad = (reason: string) => Effect.fail(new ConfigError({ field, source, reason }));
  switch (spec.kind) {
    case "string":
      return Effect.succeed(text);
    case "integer":
      return INTEGER.test(text.trim()) ? Effect.succeed(Number(text.trim())) : bad(`must be a whole number, got "${text}"`);
    case "list":
      return Effect.succeed(
        text
          .split(",")
          .map((s) => s.trim())
          .filter((s) => s !== ""),
      );
    case "integerList": {
      const parts = text
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== "");
      const wrong = parts.find((p) => !INTEGER.test(p));
      return wrong === undefined ? Effect.succeed(parts.map(Number)) : bad(`"${wrong}" is not a whole number`);
    }
    case "json":
      return Effect.try({
        try: () => JSON.parse(text) as unknown,
        catch: (error) => new ConfigError({ field, source, reason: `is not valid JSON (${describeError(error)})` }),
      });
    case "fileText":
      return Effect.try({
        try: () => readFileSync(text, "utf8"),
        catch: (error) => new ConfigError({ field, source, reason: `cannot read file "${text}" (${describeError(error)})` }),
      });
    case "edgeSpec":
      return parseEdgeSpec(text, field, source);
    case "boolean": {
      const t = text.trim().toLowerCase();
      if (["true", "1", "yes", "on"].includes(t)) return Effect.succeed(true);
      if (["false", "0", "no", "off"].includes(t)) return Effect.succeed(false);
      return bad(`must be true or false, got "${text}"`);
    }
  }
};

const describeError = (error: unknown): string => {
  const code = (error as { code?: unknown } | null)?.code;
  const message = error instanceof Error ? error.message : String(error);
  return typeof code === "string" && !message.startsWith(code) ? `${code}: ${message}` : message;
};

/** Reads the fields' environment variables (unset and empty variables are ignored). */
export const fromEnv = (
  specs: ReadonlyArray<FieldSpec>,
  env: Readonly<Record<string, string | undefined>>,
): Effect.Effect<SourcedConfig, ConfigError> =>
  Effect.gen(function* () {
    const value: Record<string, unknown> = {};
    const origins = new Map<string, string>();
    for (const spec of specs) {
      if (spec.env === undefined) continue;
      const text = env[spec.env];
      if (text === undefined || text === "") continue;
      const parsed = yield* parseValue(spec, text, spec.env);
      setPath(value, spec.path, spec.kind === "edgeSpec" ? [parsed] : parsed);
      origins.set(spec.path.join("."), spec.env);
    }
    return { value, origins };
  });

/** Flag values as `node:util` parseArgs returns them (repeatable flags give arrays). */
export type FlagValues = Readonly<Record<string, string | boolean | ReadonlyArray<string | boolean> | undefined>>;

/** Reads the fields' flags from parsed argv. */
export const fromFlags = (
  specs: ReadonlyArray<FieldSpec>,
  flags: FlagValues,
): Effect.Effect<SourcedConfig, ConfigError> =>
  Effect.gen(function* () {
    const value: Record<string, unknown> = {};
    const origins = new Map<string, string>();
    for (const spec of specs) {
      if (spec.flag === undefined) continue;
      const given = flags[spec.flag];
      if (given === undefined) continue;
      const source = `--${spec.flag}`;
      if (spec.kind === "boolean") {
        const on = Array.isArray(given) ? given[given.length - 1] : given;
        if (typeof on !== "boolean") continue;
        setPath(value, spec.path, spec.negatedFlag === true ? !on : on);
        origins.set(spec.path.join("."), source);
        continue;
      }
      const texts = (Array.isArray(given) ? given : [given]).filter((t): t is string => typeof t === "string");
      if (spec.kind === "edgeSpec") {
        const edges: unknown[] = [];
        for (const text of texts) edges.push(yield* parseValue(spec, text, source));
        setPath(value, spec.path, edges);
      } else {
        const text = texts[texts.length - 1];
        if (text === undefined) continue;
        setPath(value, spec.path, yield* parseValue(spec, text, source));
      }
      origins.set(spec.path.join("."), source);
    }
    return { value, origins };
  });

/** Parses config text as JSON (`.json`) or YAML (`.yaml`/`.yml`, or anything else: YAML is a superset of JSON). */
export const parseConfigText = (text: string, path: string): Effect.Effect<RawConfig, ConfigError> =>
  Effect.gen(function* () {
    const asJson = extname(path).toLowerCase() === ".json";
    const parsed = yield* Effect.try({
      try: () => (asJson ? (JSON.parse(text) as unknown) : (parseYaml(text, { prettyErrors: true }) as unknown)),
      catch: (error) =>
        new ConfigError({
          field: "config",
          source: path,
          reason: `is not valid ${asJson ? "JSON" : "YAML"}: ${describeError(error).split("\n")[0] ?? ""}`,
        }),
    });
    if (parsed === null || parsed === undefined) return {};
    if (!isPlainObject(parsed)) {
      return yield* Effect.fail(
        new ConfigError({ field: "config", source: path, reason: "must be an object (key: value pairs) at the top level" }),
      );
    }
    return parsed;
  });

/** Reads a config file; every value in it is attributed to the file. */
export const fromFile = (path: string): Effect.Effect<SourcedConfig, ConfigError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (error) => new ConfigError({ field: "config", source: path, reason: `cannot be read (${describeError(error)})` }),
    });
    const value = yield* parseConfigText(text, path);
    return { value, origins: new Map(), file: path };
  });

/** The source of a path: the env var or flag that set it (or a parent of it), else the config file. */
export const originOf = (config: Pick<SourcedConfig, "origins" | "file">, path: ReadonlyArray<PropertyKey>) => {
  for (let n = path.length; n > 0; n--) {
    const origin = config.origins.get(pathKey(path.slice(0, n)));
    if (origin !== undefined) return origin;
  }
  return config.file;
};

/** The first problem in a schema decode failure, as a `ConfigError` naming the field, the value and its source. */
export const configErrorFromParse = (
  error: ParseResult.ParseError,
  config: Pick<SourcedConfig, "origins" | "file">,
  prefix: ReadonlyArray<PropertyKey> = [],
): ConfigError => {
  const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0];
  if (issue === undefined) return new ConfigError({ field: "config", reason: error.message, source: config.file });
  const path = [...prefix, ...issue.path];
  const field = path.length === 0 ? "config" : pathKey(path);
  const reason =
    issue._tag === "Unexpected"
      ? `is not a known setting (${issue.message.replace(/^is unexpected, /, "")})`
      : issue._tag === "Missing"
        ? "is required"
        : issue.message;
  return new ConfigError({ field, reason, source: originOf(config, path) });
};

/** A config with no sources: options passed in code. */
export const fromValue = (value: RawConfig): SourcedConfig => ({ value, origins: new Map() });
