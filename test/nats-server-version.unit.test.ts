import { Effect, Exit } from "effect";
import { describe, expect, it } from "vitest";
import { checkServerInfo, MIN_NATS_SERVER_VERSION, parseVersion, versionAtLeast } from "../src/nats/server-version.js";
import { parseNatsServers } from "../src/nats/connection.js";

const run = (info: Parameters<typeof checkServerInfo>[0]) => Effect.runSyncExit(checkServerInfo(info));
const failure = (exit: Exit.Exit<void, { _tag: string; message: string }>) =>
  Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined;

describe("server version check", () => {
  it("parses versions with or without v and pre-release suffixes", () => {
    expect(parseVersion("v2.15.2")).toEqual([2, 15, 2]);
    expect(parseVersion("2.10.0-beta.3")).toEqual([2, 10, 0]);
    expect(parseVersion("nonsense")).toBeUndefined();
  });

  it("orders versions numerically, pre-releases of the minimum before it", () => {
    expect(versionAtLeast("2.10.0", "2.10.0")).toBe(true);
    expect(versionAtLeast("2.9.10", "2.10.0")).toBe(false);
    expect(versionAtLeast("2.10.0-RC.1", "2.10.0")).toBe(false);
    expect(versionAtLeast("2.11.0-RC.1", "2.10.0")).toBe(true);
    expect(versionAtLeast("3.0.0", "2.10.0")).toBe(true);
    expect(versionAtLeast("junk", "2.10.0")).toBe(false);
  });

  it("refuses Debian's 2.9.10 with a message that says why and what to do", () => {
    const err = failure(run({ version: "2.9.10", jetstream: true, server_name: "deb", port: 4222 }));
    expect(err?._tag).toBe("NatsServerTooOld");
    expect(err?.message).toMatch(/deb:4222 runs 2\.9\.10; Portway needs 2\.10\.0 or newer/);
    expect(err?.message).toMatch(/filter_subjects/);
  });

  it("refuses a server without JetStream, and a missing info", () => {
    expect(failure(run({ version: "2.15.2", jetstream: false }))?._tag).toBe("NatsJetStreamUnavailable");
    expect(failure(run({ version: "2.15.2" }))?.message).toMatch(/-js/);
    expect(failure(run(undefined))?._tag).toBe("NatsServerTooOld");
  });

  it("accepts the minimum and newer with JetStream", () => {
    expect(Exit.isSuccess(run({ version: MIN_NATS_SERVER_VERSION, jetstream: true }))).toBe(true);
    expect(Exit.isSuccess(run({ version: "2.15.2", jetstream: true }))).toBe(true);
  });
});

describe("--nats server list", () => {
  it("accepts comma-separated URLs and bare host:port", () => {
    expect(Effect.runSync(parseNatsServers("nats://a:4222, b:4223,tls://c:4222"))).toEqual(["nats://a:4222", "nats://b:4223", "tls://c:4222"]);
  });
  it("rejects empty lists and other schemes clearly", () => {
    for (const bad of ["", " , ", "http://a:4222", "nats://"]) {
      const exit = Effect.runSyncExit(parseNatsServers(bad));
      expect(Exit.isFailure(exit)).toBe(true);
    }
    const exit = Effect.runSyncExit(parseNatsServers("http://a:1"));
    expect(failure(exit as Exit.Exit<void, { _tag: string; message: string }>)?.message).toMatch(/scheme must be nats:\/\/ or tls:\/\//);
  });
});
