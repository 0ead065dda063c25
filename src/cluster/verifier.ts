/**
 * Secret verifiers: what the cluster registry stores instead of an edge's clear secret
 * (docs/cluster.md, "Verifiers"). Format `v1:<salt hex, 16 bytes>:<HMAC-SHA256(key = salt, message = secret) hex>`.
 * The native hub checks a presented secret against it in constant time.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/** `v1:` + 32 hex (salt) + `:` + 64 hex (HMAC-SHA256). */
export const SECRET_VERIFIER_PATTERN = /^v1:[0-9a-f]{32}:[0-9a-f]{64}$/;

const SALT_BYTES = 16;

const hmacHex = (salt: Buffer, secret: string): string => createHmac("sha256", salt).update(secret, "utf8").digest("hex");

/**
 * The verifier of `secret`. `salt` (16 bytes, or 32 hex chars) defaults to fresh random bytes; pass the
 * salt of an existing verifier to check whether the secret is unchanged.
 */
export const makeSecretVerifier = (secret: string, salt?: Uint8Array | string): string => {
  const saltBytes =
    salt === undefined ? randomBytes(SALT_BYTES) : typeof salt === "string" ? Buffer.from(salt, "hex") : Buffer.from(salt);
  if (saltBytes.length !== SALT_BYTES || (typeof salt === "string" && !/^[0-9a-f]{32}$/i.test(salt))) {
    throw new RangeError(`a verifier salt is ${SALT_BYTES} bytes (32 hex characters)`);
  }
  return `v1:${saltBytes.toString("hex")}:${hmacHex(saltBytes, secret)}`;
};

/** True for a well-formed `v1:` verifier. */
export const isSecretVerifier = (s: unknown): s is string => typeof s === "string" && SECRET_VERIFIER_PATTERN.test(s);

/** The salt (hex) of a verifier; undefined when it is malformed. */
export const verifierSalt = (verifier: string): string | undefined =>
  isSecretVerifier(verifier) ? verifier.slice(3, 35) : undefined;

/** Whether `secret` matches `verifier` (constant-time comparison of the HMACs). */
export const verifySecret = (verifier: string, secret: string): boolean => {
  const salt = verifierSalt(verifier);
  if (salt === undefined) return false;
  const want = Buffer.from(verifier.slice(36), "hex");
  const got = Buffer.from(hmacHex(Buffer.from(salt, "hex"), secret), "hex");
  return want.length === got.length && timingSafeEqual(want, got);
};
