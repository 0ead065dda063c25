import { Cause, Effect, Exit, FiberId } from "effect";
import { afterEach, describe, expect, it, vi } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseCommandArgs, renderHelp, UsageError } from "../src/cli/args.js";
import { exitCodeOf, runCommand } from "../src/cli/commands.js";
import { describeEdge, hubHelp } from "../src/cli/hub.js";
import { edgeHelp } from "../src/cli/edge.js";
import { formatLine, makeLineLog } from "../src/cli/log.js";
import { tokenHelp } from "../src/cli/token.js";
import { hubFieldSpecs } from "../src/config/hub.js";
import { ConfigError, HubStartError } from "../src/errors.js";
import { decodeConnectionToken } from "../src/token.js";

const FP = "12".repeat(32);

const captureStdout = () => {
  const chunks: string[] = [];
  vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    chunks.push(String(chunk));
    return true;
  });
  vi.spyOn(process.stderr, "write").mockImplementation(() => true);
  return () => chunks.join("");
};
afterEach(() => vi.restoreAllMocks());

const failure = (effect: Effect.Effect<unknown, unknown>) => {
  const exit = Effect.runSyncExit(effect);
  if (Exit.isSuccess(exit)) throw new Error("expected failure");
  return exit;
};

describe("portway CLI", () => {
  it("rejects unknown flags and stray arguments as usage errors naming them", () => {
    const unknown = failure(parseCommandArgs("hub", ["--tunel-port", "1"], hubFieldSpecs, []));
    expect(exitCodeOf(unknown)).toBe(2);
    const error = Cause.squash(unknown.cause);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toMatch(/--tunel-port/);
    expect(exitCodeOf(failure(parseCommandArgs("hub", ["extra"], hubFieldSpecs, [])))).toBe(2);
    expect(exitCodeOf(failure(runCommand(["launch"], {})))).toBe(2);
    expect(exitCodeOf(failure(runCommand([], {})))).toBe(2);
  });

  it("says how to pass a value that starts with a dash", () => {
    const ambiguous = failure(parseCommandArgs("token", ["--secret", "-3Cn2"], [], [{ flag: "secret", description: "the secret" }]));
    const message = (Cause.squash(ambiguous.cause) as UsageError).message;
    expect(message).toMatch(/'--secret' argument is ambiguous/);
    expect(message).toMatch(/--secret=-XYZ/);
    const ok = Effect.runSync(parseCommandArgs("token", ["--secret=-3Cn2"], [], [{ flag: "secret", description: "the secret" }]));
    expect(ok["secret"]).toBe("-3Cn2");
  });

  it("maps config errors to exit 2, runtime failures to 1, success and interruption to 0", () => {
    expect(exitCodeOf(Exit.fail(new ConfigError({ field: "tunnelPort", reason: "bad" })))).toBe(2);
    expect(exitCodeOf(Exit.fail(new HubStartError({ code: "EADDRINUSE", message: "EADDRINUSE: in use" })))).toBe(1);
    expect(exitCodeOf(Exit.die(new Error("boom")))).toBe(1);
    expect(exitCodeOf(Exit.void)).toBe(0);
    expect(exitCodeOf(Exit.interrupt(FiberId.none))).toBe(0);
  });

  it("fails with a ConfigError (exit 2) for a bad flag value, before starting anything", () => {
    const exit = failure(runCommand(["hub", "--tunnel-port", "99999"], {}));
    expect(exitCodeOf(exit)).toBe(2);
    expect(String(Cause.squash(exit.cause))).toMatch(/tunnelPort.*99999.*--tunnel-port/);
  });

  it("documents every flag with its environment variable in --help", () => {
    for (const spec of hubFieldSpecs) {
      if (spec.flag !== undefined) expect(hubHelp).toContain(`--${spec.flag}`);
      if (spec.env !== undefined) expect(hubHelp).toContain(spec.env);
    }
    expect(edgeHelp).toContain("PORTWAY_EDGE_TOKEN");
    expect(tokenHelp).toContain("--fingerprint");
    expect(renderHelp("x", "y", [], [{ flag: "json", boolean: true, description: "json lines" }])).toMatch(/--json\s+json lines/);
    const out = captureStdout();
    Effect.runSync(runCommand(["edge", "--help"], {}));
    expect(out()).toBe(edgeHelp);
  });

  it("prints a token from flags, with the pinned fingerprint", () => {
    const out = captureStdout();
    Effect.runSync(runCommand(["token", "--hub-host", "hub.example", "--edge-id", "e1", "--secret", "s", "--fingerprint", FP], {}));
    expect(decodeConnectionToken(out().trim())).toMatchObject({ hubHost: "hub.example", hubPort: 8443, edgeId: "e1", secret: "s", hubCertFingerprint: FP });
  });

  it("prints a token with several hubs from repeated --hub", () => {
    const out = captureStdout();
    Effect.runSync(
      runCommand(["token", "--hub", "a.example:8443", "--edge-id", "e1", "--hub=[::1]:9443", "--secret", "s", "--hub", "c.example", "--fingerprint", FP], {}),
    );
    expect(decodeConnectionToken(out().trim()).hubs).toEqual([
      { host: "a.example", port: 8443 },
      { host: "::1", port: 9443 },
      { host: "c.example", port: 8443 },
    ]);
    expect(Cause.squash(failure(runCommand(["token", "--hub", "a:b:c", "--edge-id", "e1", "--secret", "s"], {})).cause)).toMatchObject({
      _tag: "ConfigError",
      field: "hubs",
    });
  });

  it("takes the token's port and secret from the hub config, and env for the rest", () => {
    const dir = mkdtempSync(join(tmpdir(), "portway-cli-"));
    try {
      const config = join(dir, "hub.yaml");
      writeFileSync(config, `tunnelPort: 9443\ndataDir: ${dir}\nedges:\n  - id: e7\n    secret: from-file\n`);
      const out = captureStdout();
      Effect.runSync(
        runCommand(["token", "--config", config, "--edge-id", "e7"], { PORTWAY_TOKEN_HUB_HOST: "10.0.0.1", PORTWAY_TOKEN_FINGERPRINT: FP }),
      );
      expect(decodeConnectionToken(out().trim())).toMatchObject({ hubHost: "10.0.0.1", hubPort: 9443, secret: "from-file", hubCertFingerprint: FP });
      const missing = failure(runCommand(["token", "--config", config, "--edge-id", "nope", "--hub-host", "h"], {}));
      expect(String(Cause.squash(missing.cause))).toMatch(/secret: is required: edge "nope" is not in/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("formats events as one readable line or one JSON object", () => {
    const event = { type: "stream.closed", seq: 4, atMs: 0, edgeId: "e1", bytesIn: 9, reason: "clientClosed", message: "" };
    expect(formatLine("text", { time: new Date(0), level: "info", source: "hub", event })).toBe(
      "1970-01-01T00:00:00.000Z INFO  hub stream.closed edgeId=e1 bytesIn=9 reason=clientClosed",
    );
    expect(JSON.parse(formatLine("json", { time: new Date(0), level: "info", source: "hub", event }))).toMatchObject({
      event: "stream.closed",
      edgeId: "e1",
      source: "hub",
    });
    const lines: string[] = [];
    makeLineLog("text", (l) => lines.push(l)).event("edge e1", { type: "listener.error", port: 80, code: "EACCES", message: "permission denied" });
    expect(lines[0]).toMatch(/WARN  edge e1 listener.error port=80 code=EACCES message="permission denied"/);
  });

  it("describes allowed edges without their secrets", () => {
    const line = describeEdge(
      { id: "e1", secret: "hunter2", listenPorts: [80, 443], listenPortsUdp: [], targets: { "443": "10.0.0.5:8443" }, stunIntervalSecs: 300 },
      "127.0.0.1",
    );
    expect(line).toBe("allowed edge e1: tcp 80,443; targets 443->10.0.0.5:8443 (others 127.0.0.1:<port>)");
    expect(line).not.toContain("hunter2");
  });
});
