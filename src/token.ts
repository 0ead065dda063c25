/**
 * Connection tokens: base64url (no padding) of `{ "v": 1, "hubs": [{ host, port }], "edgeId", "secret", "fp" }`.
 * The seed's `{ hubHost, hubPort, edgeId, secret }` shape is accepted when decoding.
 */
import { isIP } from "node:net";
import { Effect } from "effect";
import { TokenError } from "./errors.js";

/** One hub address an edge can dial. */
export interface HubAddress {
  readonly host: string;
  readonly port: number;
}

/** What `encodeConnectionToken` takes. `hubs` (several hubs) replaces `hubHost`/`hubPort` when given. */
export interface ConnectionTokenInput {
  readonly hubHost?: string;
  readonly hubPort?: number;
  readonly hubs?: ReadonlyArray<HubAddress>;
  readonly edgeId: string;
  readonly secret: string;
  /** sha256 of the hub certificate (64 hex chars; `AB:CD:…` is accepted too). */
  readonly hubCertFingerprint?: string | undefined;
}

/** A decoded token. `hubHost`/`hubPort` are the first hub, kept for the seed API. */
export interface ConnectionToken {
  readonly hubHost: string;
  readonly hubPort: number;
  readonly hubs: ReadonlyArray<HubAddress>;
  readonly edgeId: string;
  readonly secret: string;
  /** Lowercase hex, or undefined when the token does not pin the hub. */
  readonly hubCertFingerprint: string | undefined;
}

export const TOKEN_VERSION = 1;

/** Edge ids become NATS subject tokens, so they are restricted to a safe alphabet. */
export const EDGE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const HOSTNAME_PATTERN =
  /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;
const BASE64URL = /^[A-Za-z0-9_-]*$/;
const FINGERPRINT_HEX = /^[0-9a-f]{64}$/;

const show = (value: unknown): string => {
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 80 ? `${json.slice(0, 77)}...` : json;
};

/** `undefined` when valid, else why not. Accepts DNS names, IPv4 and IPv6 (bare or in brackets). */
export const hostProblem = (host: unknown): string | undefined => {
  if (typeof host !== "string" || host === "") return `must be a non-empty host name or IP address, got ${show(host)}`;
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (isIP(bare) !== 0 || HOSTNAME_PATTERN.test(bare)) return undefined;
  return `must be a host name or IP address, got ${show(host)}`;
};

/** `undefined` when valid, else why not. */
export const portProblem = (port: unknown): string | undefined =>
  typeof port === "number" && Number.isInteger(port) && port >= 1 && port <= 65535
    ? undefined
    : `must be an integer 1..65535, got ${show(port)}`;

/** `undefined` when valid, else why not. */
export const edgeIdProblem = (edgeId: unknown): string | undefined =>
  typeof edgeId === "string" && EDGE_ID_PATTERN.test(edgeId)
    ? undefined
    : `must match ${EDGE_ID_PATTERN.source} (letters, digits, '_' and '-', at most 64), got ${show(edgeId)}`;

/**
 * Normalizes a sha256 certificate fingerprint to 64 lowercase hex chars; accepts `AB:CD:…` and an optional
 * `sha256:` prefix. Returns undefined when it is not one.
 */
export const normalizeFingerprint = (fingerprint: unknown): string | undefined => {
  if (typeof fingerprint !== "string") return undefined;
  const hex = fingerprint
    .trim()
    .replace(/^sha256:/i, "")
    .replace(/:/g, "")
    .toLowerCase();
  return FINGERPRINT_HEX.test(hex) ? hex : undefined;
};

const fail = (message: string): never => {
  throw new TokenError({ message });
};

const host = (value: string): string => (value.startsWith("[") && value.endsWith("]") ? value.slice(1, -1) : value);

const checkHubs = (hubs: unknown, where: string): HubAddress[] => {
  if (!Array.isArray(hubs) || hubs.length === 0) return fail(`${where} hubs must be a non-empty list`);
  return hubs.map((hub: unknown, i) => {
    if (typeof hub !== "object" || hub === null) return fail(`${where} hubs[${i}] is not an object`);
    const { host: h, port: p } = hub as { host?: unknown; port?: unknown };
    if (h === undefined) return fail(`${where} hubs[${i}] lacks host`);
    if (p === undefined) return fail(`${where} hubs[${i}] lacks port`);
    const hp = hostProblem(h);
    if (hp !== undefined) return fail(`${where} hubs[${i}].host ${hp}`);
    const pp = portProblem(p);
    if (pp !== undefined) return fail(`${where} hubs[${i}].port ${pp}`);
    return { host: host(h as string), port: p as number };
  });
};

const checkEdgeAndSecret = (edgeId: unknown, secret: unknown, where: string): void => {
  if (edgeId === undefined) fail(`${where} lacks edgeId`);
  const ep = edgeIdProblem(edgeId);
  if (ep !== undefined) fail(`${where} edgeId ${ep}`);
  if (secret === undefined) fail(`${where} lacks secret`);
  if (typeof secret !== "string" || secret === "") fail(`${where} secret must be a non-empty string`);
};

const checkFingerprint = (fp: unknown, where: string): string | undefined => {
  if (fp === undefined || fp === null) return undefined;
  const normalized = normalizeFingerprint(fp);
  if (normalized === undefined) fail(`${where} fp must be a sha256 fingerprint (64 hex chars), got ${show(fp)}`);
  return normalized;
};

/**
 * Encodes a connection token. Throws `TokenError` naming the bad field.
 * @example encodeConnectionToken({ hubHost: "hub.example", hubPort: 8443, edgeId: "e1", secret: "s3cret" })
 */
export const encodeConnectionToken = (input: ConnectionTokenInput): string => {
  const where = "token";
  let hubs: HubAddress[];
  if (input.hubs !== undefined && input.hubs.length > 0) {
    hubs = checkHubs(input.hubs, where);
  } else {
    if (input.hubHost === undefined) return fail(`${where} needs hubHost (or hubs)`);
    if (input.hubPort === undefined) return fail(`${where} needs hubPort`);
    const hp = hostProblem(input.hubHost);
    if (hp !== undefined) return fail(`${where} hubHost ${hp}`);
    const pp = portProblem(input.hubPort);
    if (pp !== undefined) return fail(`${where} hubPort ${pp}`);
    hubs = [{ host: host(input.hubHost), port: input.hubPort }];
  }
  checkEdgeAndSecret(input.edgeId, input.secret, where);
  const fp = checkFingerprint(input.hubCertFingerprint, where);
  const body = { v: TOKEN_VERSION, hubs, edgeId: input.edgeId, secret: input.secret, ...(fp === undefined ? {} : { fp }) };
  return Buffer.from(JSON.stringify(body), "utf8").toString("base64url");
};

/** Decodes a connection token (current or seed shape). Throws `TokenError` naming what is wrong. */
export const decodeConnectionToken = (token: string): ConnectionToken => {
  if (typeof token !== "string") return fail(`token must be a string, got ${typeof token}`);
  const text = token.trim().replace(/=+$/, "");
  if (text === "") return fail("token is empty");
  if (!BASE64URL.test(text)) {
    const bad = [...text].find((c) => !/[A-Za-z0-9_-]/.test(c)) ?? "";
    return fail(`token is not base64url (unexpected character ${show(bad)})`);
  }
  let json: string;
  try {
    json = new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(text, "base64url"));
  } catch {
    return fail("token does not decode to UTF-8 text");
  }
  let body: unknown;
  try {
    body = JSON.parse(json);
  } catch {
    return fail("token does not contain JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) return fail("token JSON is not an object");
  const record = body as Record<string, unknown>;
  const where = "token JSON";

  let hubs: HubAddress[];
  if ("v" in record) {
    if (record["v"] !== TOKEN_VERSION) {
      return fail(`token version ${show(record["v"])} is not supported (expected ${TOKEN_VERSION})`);
    }
    if (record["hubs"] === undefined) return fail(`${where} lacks hubs`);
    hubs = checkHubs(record["hubs"], where);
  } else if (record["hubs"] !== undefined) {
    hubs = checkHubs(record["hubs"], where);
  } else {
    // Seed shape: { hubHost, hubPort, edgeId, secret }.
    if (record["hubHost"] === undefined) return fail(`${where} lacks hubs (or hubHost)`);
    if (record["hubPort"] === undefined) return fail(`${where} lacks hubPort`);
    const hp = hostProblem(record["hubHost"]);
    if (hp !== undefined) return fail(`${where} hubHost ${hp}`);
    const pp = portProblem(record["hubPort"]);
    if (pp !== undefined) return fail(`${where} hubPort ${pp}`);
    hubs = [{ host: host(record["hubHost"] as string), port: record["hubPort"] as number }];
  }
  checkEdgeAndSecret(record["edgeId"], record["secret"], where);
  const fp = checkFingerprint(record["fp"] ?? record["hubCertFingerprint"], where);
  const [first] = hubs as [HubAddress, ...HubAddress[]];
  return {
    hubHost: first.host,
    hubPort: first.port,
    hubs,
    edgeId: record["edgeId"] as string,
    secret: record["secret"] as string,
    hubCertFingerprint: fp,
  };
};

/** Effect form of `decodeConnectionToken`. */
export const decodeToken = (token: string): Effect.Effect<ConnectionToken, TokenError> =>
  Effect.try({
    try: () => decodeConnectionToken(token),
    catch: (error) => (error instanceof TokenError ? error : new TokenError({ message: String(error) })),
  });

/** Effect form of `encodeConnectionToken`. */
export const encodeToken = (input: ConnectionTokenInput): Effect.Effect<string, TokenError> =>
  Effect.try({
    try: () => encodeConnectionToken(input),
    catch: (error) => (error instanceof TokenError ? error : new TokenError({ message: String(error) })),
  });
