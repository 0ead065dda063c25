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
