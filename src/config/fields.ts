/** Field schemas shared by the hub and edge config, each failing with "must be …, got <value>". */
import { ParseResult, Schema } from "effect";
import { edgeIdProblem, hostProblem, normalizeFingerprint, portProblem } from "../token.js";

const show = (value: unknown): string => {
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 80 ? `${json.slice(0, 77)}...` : json;
};

/** Replaces a schema's failure messages with `must be <expected>, got <actual value>`. */
export const expecting = <S extends Schema.Schema.Any>(schema: S, expected: string): S =>
  schema.annotations({
    message: (issue) => ({
      message: `must be ${expected}, got ${"actual" in issue ? show(issue.actual) : "nothing"}`,
      override: true,
    }),
  }) as S;

/** A TCP/UDP port 1..65535. */
export const Port = expecting(Schema.Int.pipe(Schema.between(1, 65535)), "an integer 1..65535");

/** A port to listen on; 0 asks the OS for a free one. */
export const ListenPort = expecting(Schema.Int.pipe(Schema.between(0, 65535)), "an integer 0..65535 (0 = any free port)");

/** A list of ports without duplicates. */
export const PortList = Schema.Array(Port).pipe(
  Schema.filter((ports) => {
    const seen = new Set<number>();
    for (const port of ports) {
      if (seen.has(port)) return `lists port ${port} twice`;
      seen.add(port);
    }
    return true;
  }),
);

export const Milliseconds = (min: number, max: number) =>
  expecting(Schema.Int.pipe(Schema.between(min, max)), `a whole number of milliseconds ${min}..${max}`);

export const NonEmptyString = expecting(Schema.String.pipe(Schema.minLength(1)), "a non-empty string");

/** A DNS name or an IP address (IPv6 may be bracketed). */
export const Host = Schema.String.pipe(
  Schema.filter((host) => {
    const problem = hostProblem(host);
    return problem === undefined ? true : problem;
  }),
  (s) => expecting(s, "a host name or IP address"),
);

/** A bind address: an IP address, or a host name the OS resolves. */
export const BindHost = Host;

/** `host:port` (IPv6 as `[addr]:port`). */
export const HostPort = expecting(
  Schema.String.pipe(
    Schema.filter((text) => {
      const colon = text.lastIndexOf(":");
      if (colon <= 0) return false;
      const port = Number(text.slice(colon + 1));
      return hostProblem(text.slice(0, colon)) === undefined && portProblem(port) === undefined;
    }),
  ),
  '"host:port" (e.g. "10.0.0.5:8080")',
);

/** An id usable as a NATS subject token: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`. */
export const Identifier = expecting(
  Schema.String.pipe(Schema.filter((id) => edgeIdProblem(id) === undefined)),
  "letters, digits, '_' or '-' (starting with a letter or digit, at most 64)",
);

/** A sha256 certificate fingerprint; `AB:CD:…` and uppercase are accepted and normalized to lowercase hex. */
export const Fingerprint = expecting(
  Schema.transformOrFail(Schema.String, Schema.String, {
    strict: true,
    decode: (text, _, ast) => {
      const normalized = normalizeFingerprint(text);
      return normalized === undefined
        ? ParseResult.fail(new ParseResult.Type(ast, text))
        : ParseResult.succeed(normalized);
    },
    encode: (text) => ParseResult.succeed(text),
  }),
  "a sha256 fingerprint (64 hex characters)",
);

const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
};

/**
 * `"30d"`, `"12h"`, `"1h30m"`, `"90s"`, `"500ms"` → milliseconds; undefined when the text is not a duration.
 * Units: ms, s, m, h, d, w.
 */
export const parseDuration = (text: string): number | undefined => {
  const trimmed = text.trim();
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d|w))+$/.test(trimmed)) return undefined;
  let total = 0;
  for (const m of trimmed.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) total += Number(m[1]) * (DURATION_UNITS[m[2] as string] as number);
  return Number.isSafeInteger(Math.round(total)) ? Math.round(total) : undefined;
};

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
};

/** `"10GiB"`, `"512 MiB"`, `"1GB"`, `"4096"` → bytes; undefined when the text is not a size. */
export const parseByteSize = (text: string): number | undefined => {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] ?? "").toLowerCase() || "b"];
  if (unit === undefined) return undefined;
  const bytes = Math.round(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
};

const positiveFrom = (parse: (text: string) => number | undefined, expected: string) =>
  expecting(
    Schema.transformOrFail(Schema.Union(Schema.String, Schema.Number), Schema.Number, {
      strict: true,
      decode: (input, _, ast) => {
        const value = typeof input === "number" ? input : parse(input);
        return value !== undefined && Number.isSafeInteger(value) && value > 0
          ? ParseResult.succeed(value)
          : ParseResult.fail(new ParseResult.Type(ast, input));
      },
      encode: (value) => ParseResult.succeed(value),
    }),
    expected,
  );

/** A duration given as text (`"30d"`, `"12h"`, `"10m"`) or as milliseconds; decodes to milliseconds. */
export const DurationMs = positiveFrom(parseDuration, 'a duration such as "30d", "12h", "10m" (or milliseconds)');

/** A size given as text (`"10GiB"`, `"256MiB"`) or as bytes; decodes to bytes. */
export const ByteSize = positiveFrom(parseByteSize, 'a size such as "10GiB", "256MiB" (or bytes)');
