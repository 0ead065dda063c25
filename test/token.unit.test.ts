import { describe, expect, it } from "vitest";
import { TokenError } from "../src/errors.js";
import { decodeConnectionToken, encodeConnectionToken, normalizeFingerprint } from "../src/token.js";

const FP = "ab".repeat(32);
const b64 = (value: unknown) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

const decodeError = (token: string): string => {
  try {
    decodeConnectionToken(token);
  } catch (error) {
    expect(error).toBeInstanceOf(TokenError);
    return (error as TokenError).message;
  }
  throw new Error(`expected ${token} to be rejected`);
};

const encodeError = (input: Parameters<typeof encodeConnectionToken>[0]): string => {
  try {
    encodeConnectionToken(input);
  } catch (error) {
    expect(error).toBeInstanceOf(TokenError);
    return (error as TokenError).message;
  }
  throw new Error("expected encode to fail");
};

describe("connection token", () => {
  it("round-trips hub, edge, secret and fingerprint", () => {
    const token = encodeConnectionToken({ hubHost: "hub.example", hubPort: 8443, edgeId: "e1", secret: "s3:cret", hubCertFingerprint: FP });
    expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(decodeConnectionToken(token)).toEqual({
      hubHost: "hub.example",
      hubPort: 8443,
      hubs: [{ host: "hub.example", port: 8443 }],
      edgeId: "e1",
      secret: "s3:cret",
      hubCertFingerprint: FP,
    });
  });

  it("writes the documented JSON shape", () => {
    const token = encodeConnectionToken({ hubHost: "10.0.0.1", hubPort: 1, edgeId: "edge_1", secret: "x", hubCertFingerprint: FP });
    expect(JSON.parse(Buffer.from(token, "base64url").toString())).toEqual({
      v: 1,
      hubs: [{ host: "10.0.0.1", port: 1 }],
      edgeId: "edge_1",
      secret: "x",
      fp: FP,
    });
  });

  it("leaves fp out when there is no fingerprint, and keeps several hubs", () => {
    const token = encodeConnectionToken({
      hubs: [
        { host: "a.example", port: 443 },
        { host: "::1", port: 8443 },
      ],
      edgeId: "e1",
      secret: "s",
    });
    const decoded = decodeConnectionToken(token);
    expect(decoded.hubCertFingerprint).toBeUndefined();
    expect(decoded.hubs).toEqual([
      { host: "a.example", port: 443 },
      { host: "::1", port: 8443 },
    ]);
    expect([decoded.hubHost, decoded.hubPort]).toEqual(["a.example", 443]);
  });

  it("accepts the seed shape", () => {
    const decoded = decodeConnectionToken(b64({ hubHost: "hub.example", hubPort: 443, edgeId: "e2", secret: "s" }));
    expect(decoded).toMatchObject({ hubHost: "hub.example", hubPort: 443, edgeId: "e2", secret: "s", hubCertFingerprint: undefined });
  });

  it("normalizes colon-separated uppercase fingerprints", () => {
    const colons = FP.toUpperCase().match(/../g)?.join(":") ?? "";
    expect(normalizeFingerprint(colons)).toBe(FP);
    const token = encodeConnectionToken({ hubHost: "h", hubPort: 1, edgeId: "e", secret: "s", hubCertFingerprint: colons });
    expect(decodeConnectionToken(token).hubCertFingerprint).toBe(FP);
  });

  it.each([
    ["", /token is empty/],
    ["not a token!", /token is not base64url/],
    [b64("hello"), /token does not contain JSON/],
    [b64([1, 2]), /token JSON is not an object/],
    [b64({ v: 2, hubs: [{ host: "h", port: 1 }], edgeId: "e", secret: "s" }), /token version 2 is not supported/],
    [b64({ v: 1, edgeId: "e", secret: "s" }), /token JSON lacks hubs/],
    [b64({ v: 1, hubs: [], edgeId: "e", secret: "s" }), /hubs must be a non-empty list/],
    [b64({ v: 1, hubs: [{ port: 1 }], edgeId: "e", secret: "s" }), /hubs\[0\] lacks host/],
    [b64({ v: 1, hubs: [{ host: "h" }], edgeId: "e", secret: "s" }), /hubs\[0\] lacks port/],
    [b64({ v: 1, hubs: [{ host: "bad host", port: 1 }], edgeId: "e", secret: "s" }), /hubs\[0\]\.host must be a host name/],
    [b64({ v: 1, hubs: [{ host: "h", port: 0 }], edgeId: "e", secret: "s" }), /hubs\[0\]\.port must be an integer 1\.\.65535, got 0/],
    [b64({ v: 1, hubs: [{ host: "h", port: 65536 }], edgeId: "e", secret: "s" }), /port must be an integer 1\.\.65535, got 65536/],
    [b64({ v: 1, hubs: [{ host: "h", port: "80" }], edgeId: "e", secret: "s" }), /port must be an integer/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], secret: "s" }), /token JSON lacks edgeId/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], edgeId: "a.b", secret: "s" }), /edgeId must match/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], edgeId: "x".repeat(65), secret: "s" }), /edgeId must match/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], edgeId: "e" }), /token JSON lacks secret/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], edgeId: "e", secret: "" }), /secret must be a non-empty string/],
    [b64({ v: 1, hubs: [{ host: "h", port: 1 }], edgeId: "e", secret: "s", fp: "abc" }), /fp must be a sha256 fingerprint/],
    [b64({ hubPort: 1, edgeId: "e", secret: "s" }), /token JSON lacks hubs \(or hubHost\)/],
    [b64({ hubHost: "h", edgeId: "e", secret: "s" }), /token JSON lacks hubPort/],
  ])("rejects %s with a message naming the problem", (token, expected) => {
    expect(decodeError(token)).toMatch(expected);
  });

  it("refuses to encode bad input, naming the field", () => {
    expect(encodeError({ hubHost: "h", hubPort: 0, edgeId: "e", secret: "s" })).toMatch(/hubPort must be an integer/);
    expect(encodeError({ hubHost: "", hubPort: 1, edgeId: "e", secret: "s" })).toMatch(/hubHost must be a non-empty host/);
    expect(encodeError({ hubHost: "h", hubPort: 1, edgeId: "-e", secret: "s" })).toMatch(/edgeId must match/);
    expect(encodeError({ hubHost: "h", hubPort: 1, edgeId: "e", secret: "" })).toMatch(/secret must be a non-empty/);
    expect(encodeError({ hubHost: "h", hubPort: 1, edgeId: "e", secret: "s", hubCertFingerprint: "zz" })).toMatch(/fp must be a sha256/);
    expect(encodeError({ edgeId: "e", secret: "s" })).toMatch(/needs hubHost/);
  });
});
