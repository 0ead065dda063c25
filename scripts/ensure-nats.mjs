#!/usr/bin/env node
// Ensures `.tools/bin/nats-server` exists at the pinned version, building it with `go install` when it
// does not (docs/adr/0005-nats-server-provisioning.md). Node builtins only.
//
//   node scripts/ensure-nats.mjs            # build if missing or the wrong version
//   node scripts/ensure-nats.mjs --force    # rebuild anyway
//
// From another script: `const { ensureNatsServer } = await import(".../ensure-nats.mjs")`.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const NATS_SERVER_VERSION = "v2.15.2";
export const NATS_SERVER_MODULE = "github.com/nats-io/nats-server/v2";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const natsServerBinDir = join(root, ".tools", "bin");
export const natsServerPath = join(natsServerBinDir, "nats-server");

const defaultLog = (msg) => process.stderr.write(`[ensure-nats] ${msg}\n`);

export class EnsureNatsError extends Error {
  name = "EnsureNatsError";
}

/** The version the binary at `path` reports (`nats-server: v2.15.2` → `v2.15.2`), or null. */
export function installedVersion(path = natsServerPath) {
  if (!existsSync(path)) return null;
  const res = spawnSync(path, ["--version"], { encoding: "utf8", timeout: 10_000 });
  if (res.status !== 0) return null;
  const m = /v\d+\.\d+\.\d+\S*/.exec(res.stdout ?? "");
  return m ? m[0] : null;
}

/**
 * Makes sure `.tools/bin/nats-server` reports the pinned version; returns its path.
 * Throws EnsureNatsError with a message that says what to do.
 */
export async function ensureNatsServer({ log = defaultLog, force = false } = {}) {
  const found = installedVersion();
  if (!force && found === NATS_SERVER_VERSION) {
    log(`nats-server ${found} present at ${natsServerPath}`);
    return natsServerPath;
  }
  log(
    found
      ? `nats-server at ${natsServerPath} is ${found}, want ${NATS_SERVER_VERSION}: rebuilding`
      : `building nats-server ${NATS_SERVER_VERSION} into ${natsServerBinDir} (go install; first time takes a minute)`,
  );
  const go = spawnSync("go", ["version"], { encoding: "utf8" });
  if (go.error || go.status !== 0) {
    throw new EnsureNatsError(
      "Go is required to build nats-server (https://go.dev/dl/); or put a nats-server " +
        `${NATS_SERVER_VERSION} binary at ${natsServerPath}, or run the hub with --nats <url> to use an existing server`,
    );
  }
  log(go.stdout.trim());
  mkdirSync(natsServerBinDir, { recursive: true });
  const res = spawnSync("go", ["install", `${NATS_SERVER_MODULE}@${NATS_SERVER_VERSION}`], {
    cwd: root,
    stdio: ["ignore", "inherit", "inherit"],
    // CGO off: a static binary that does not depend on the build host's libc.
    env: { ...process.env, GOBIN: natsServerBinDir, CGO_ENABLED: "0" },
  });
  if (res.error) throw new EnsureNatsError(`could not run go install: ${res.error.message}`);
  if (res.status !== 0) {
    throw new EnsureNatsError(
      `go install ${NATS_SERVER_MODULE}@${NATS_SERVER_VERSION} exited with ${res.status}; ` +
        "check network access to the Go module proxy (GOPROXY) or the module cache",
    );
  }
  const built = installedVersion();
  if (built !== NATS_SERVER_VERSION) {
    throw new EnsureNatsError(`built ${natsServerPath} but it reports ${built ?? "nothing"}, want ${NATS_SERVER_VERSION}`);
  }
  log(`nats-server ${built} ready at ${natsServerPath}`);
  return natsServerPath;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    await ensureNatsServer({ force: process.argv.includes("--force") });
  } catch (err) {
    process.stderr.write(`[ensure-nats] error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  }
}
