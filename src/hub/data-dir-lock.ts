/**
 * One hub per data directory while events are on: the outbox and the embedded nats-server store are not
 * shareable (two publishers appending to one outbox corrupt it, and a second embedded server would stop the
 * first one as a "leftover"). A lock file holds the owner's pid; a lock whose process is gone (a hub killed
 * with -9) is stale and taken over.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Data, Effect, type Scope } from "effect";

export class DataDirInUse extends Data.TaggedError("DataDirInUse")<{ readonly dataDir: string; readonly pid: number }> {
  override get message(): string {
    return (
      `data dir ${this.dataDir} is in use by another hub (pid ${this.pid}${this.pid === process.pid ? ", this process" : ""}); ` +
      "give each hub its own --data-dir"
    );
  }
}

export class DataDirUnusable extends Data.TaggedError("DataDirUnusable")<{ readonly dataDir: string; readonly reason: string }> {
  override get message(): string {
    return `cannot use data dir ${this.dataDir}: ${this.reason}`;
  }
}

/** Data dirs locked by hubs of this process (a pid check cannot tell them apart). */
const lockedHere = new Set<string>();

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === "EPERM";
  }
};

export const LOCK_FILE = "hub.lock";

/** Takes the data dir for this scope; fails with `DataDirInUse` while another live hub holds it. */
export const lockDataDir = (dataDir: string): Effect.Effect<void, DataDirInUse | DataDirUnusable, Scope.Scope> => {
  const dir = resolve(dataDir);
  const path = join(dir, LOCK_FILE);
  return Effect.acquireRelease(
    Effect.suspend((): Effect.Effect<void, DataDirInUse | DataDirUnusable> => {
      if (lockedHere.has(dir)) return Effect.fail(new DataDirInUse({ dataDir: dir, pid: process.pid }));
      try {
        mkdirSync(dir, { recursive: true });
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            writeFileSync(path, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
            lockedHere.add(dir);
            return Effect.void;
          } catch (error) {
            if ((error as { code?: string }).code !== "EEXIST") throw error;
          }
          const owner = Number(readFileSync(path, "utf8").trim());
          if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && alive(owner)) {
            return Effect.fail(new DataDirInUse({ dataDir: dir, pid: owner }));
          }
          // Stale (its hub is gone): take it over.
          rmSync(path, { force: true });
        }
        return Effect.fail(new DataDirUnusable({ dataDir: dir, reason: `${path} keeps coming back` }));
      } catch (error) {
        return Effect.fail(new DataDirUnusable({ dataDir: dir, reason: error instanceof Error ? error.message : String(error) }));
      }
    }),
    () =>
      Effect.sync(() => {
        lockedHere.delete(dir);
        rmSync(path, { force: true });
      }),
  );
};
