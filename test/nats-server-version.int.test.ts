/**
 * Debian's nats-server 2.9.10 (apt package `nats-server`, when installed) is refused at start with a clear
 * error instead of silently ignoring filter_subjects. Skipped where the package is not installed.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Exit, Layer } from "effect";
import { describe, expect, it } from "vitest";
import * as Conn from "../src/nats/connection.js";
import { startEmbeddedServer } from "../src/nats/embedded-server.js";
import { EventLog, layer as eventLogLayer } from "../src/nats/event-log.js";

const DEBIAN_NATS = "/usr/sbin/nats-server";

describe("server version gate with a real old server", () => {
  it.skipIf(!existsSync(DEBIAN_NATS))("refuses Debian's nats-server 2.9.10 when the event log starts", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "portway-oldnats-"));
    try {
      const exit = await Effect.runPromiseExit(
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* startEmbeddedServer({ dataDir, binary: DEBIAN_NATS });
            const layer = eventLogLayer({ hubId: "h", runId: "r", dataDir }).pipe(Layer.provide(Conn.layer({ servers: [server.url] })));
            return yield* Effect.provide(EventLog, layer);
          }),
        ),
      );
      expect(Exit.isFailure(exit)).toBe(true);
      const err = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined;
      expect(err?._tag).toBe("NatsServerTooOld");
      expect(err?.message).toMatch(/runs 2\.9\.10; Portway needs 2\.10\.0 or newer/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
