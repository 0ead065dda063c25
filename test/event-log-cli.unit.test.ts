/**
 * The pure parts of wiring the event log: hub config (`nats`, `events`, their flags and env), the CLI's time
 * and kind arguments and its one-line format, and `recover()` reading a log whose subjects arrive out of order.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Either } from "effect";
import { afterAll, describe, expect, it } from "vitest";
import { recover } from "../src/actors/recover.js";
import { parseCommandArgs, renderHelp } from "../src/cli/args.js";
import { formatDuration, formatEventLine, formatHistory, parseTimeArg } from "../src/cli/event-format.js";
import { eventsTailHelp, historyHelp, parseKinds } from "../src/cli/events.js";
import { parseByteSize, parseDuration } from "../src/config/fields.js";
import { EVENTS_DEFAULTS, hubFieldSpecs, loadHubConfig, resolveHubOptions, type ConfigInputs } from "../src/config/hub.js";
import { makeEvent } from "../src/events/envelope.js";
import { projectHistory } from "../src/nats/history.js";

const dir = mkdtempSync(join(tmpdir(), "portway-evcfg-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hub = (inputs: ConfigInputs) => Effect.runSync(loadHubConfig(inputs));
const hubError = (inputs: ConfigInputs): string => {
  const r = Effect.runSync(Effect.either(loadHubConfig(inputs)));
  if (Either.isRight(r)) throw new Error("expected a ConfigError");
  return r.left.message;
};
const flags = (argv: string[]) => Effect.runSync(parseCommandArgs("hub", argv, hubFieldSpecs, []));

describe("hub config: nats and events", () => {
  it("defaults to the embedded server and the documented stream limits", () => {
    const c = hub({});
    expect(c.nats).toBeUndefined();
    expect(c.events).toEqual({ ...EVENTS_DEFAULTS });
    expect(c.events).toMatchObject({ enabled: true, stream: "PORTWAY_EVENTS", replicas: 1, maxAge: 30 * 86_400_000, maxBytes: 10 * 1024 ** 3 });
  });

  it("takes --nats (comma-separated, bare host:port allowed) from flags, env and the file", () => {
    expect(hub({ flags: flags(["--nats", "nats://a:4222, b:4222"]) }).nats).toEqual(["nats://a:4222", "nats://b:4222"]);
    expect(hub({ env: { PORTWAY_NATS: "tls://n1:4222" } }).nats).toEqual(["tls://n1:4222"]);
    const file = join(dir, "hub.yaml");
    writeFileSync(file, "nats: [nats://x:4222, nats://y:4222]\n");
    expect(hub({ file }).nats).toEqual(["nats://x:4222", "nats://y:4222"]);
    expect(hubError({ flags: flags(["--nats", "http://a:80"]) })).toMatch(/^nats: must be NATS server URLs .*scheme must be nats:\/\/ or tls:\/\/.*--nats/);
  });

  it("turns events off with --no-events, PORTWAY_EVENTS=false, `events: false`", () => {
    expect(hub({ flags: flags(["--no-events"]) }).events.enabled).toBe(false);
    expect(hub({ env: { PORTWAY_EVENTS: "false" } }).events.enabled).toBe(false);
    expect(hubError({ env: { PORTWAY_EVENTS: "maybe" } })).toMatch(/events\.enabled: must be true or false, got "maybe" \(from PORTWAY_EVENTS\)/);
    const file = join(dir, "off.yaml");
    writeFileSync(file, "events: false\n");
    // A limit set elsewhere does not turn a file's `events: false` back on.
    expect(hub({ file, env: { PORTWAY_EVENTS_REPLICAS: "3" } }).events).toMatchObject({ enabled: false, replicas: 3 });
    expect(Effect.runSync(resolveHubOptions({ events: false })).events.enabled).toBe(false);
  });

  it("reads stream limits as durations and sizes, and names the bad one", () => {
    const c = hub({ flags: flags(["--events-replicas", "3", "--events-max-age", "7d", "--events-max-bytes", "512MiB", "--events-stream", "AUDIT"]) });
    expect(c.events).toMatchObject({ replicas: 3, maxAge: 7 * 86_400_000, maxBytes: 512 * 1024 ** 2, stream: "AUDIT" });
    expect(Effect.runSync(resolveHubOptions({ events: { maxAge: 3_600_000, outboxMaxBytes: "1GiB" } })).events).toMatchObject({
      maxAge: 3_600_000,
      outboxMaxBytes: 1024 ** 3,
    });
    expect(hubError({ flags: flags(["--events-replicas", "7"]) })).toMatch(/events\.replicas: must be an integer 1\.\.5, got 7/);
    expect(hubError({ flags: flags(["--events-max-age", "forever"]) })).toMatch(/events\.maxAge: must be a duration such as "30d"/);
    expect(hubError({ flags: flags(["--events-max-bytes", "lots"]) })).toMatch(/events\.maxBytes: must be a size such as "10GiB"/);
    expect(Either.isLeft(Effect.runSync(Effect.either(resolveHubOptions({ events: { duplicateWindow: "2h", maxAge: "1h" } }))))).toBe(true);
    expect(hubError({ file: (writeFileSync(join(dir, "x.yaml"), "events: { colour: red }\n"), join(dir, "x.yaml")) })).toMatch(/events\.colour: is not a known setting/);
  });

  it("documents the flags with their environment variables", () => {
    const help = renderHelp("portway hub", "", hubFieldSpecs, []);
    expect(help).toMatch(/--nats URLS\s+PORTWAY_NATS/);
    expect(help).toMatch(/--no-events\s+PORTWAY_EVENTS\s+do not record/);
    expect(help).toMatch(/--events-max-age DURATION\s+PORTWAY_EVENTS_MAX_AGE/);
  });
});

describe("durations, sizes and times", () => {
  it("parses durations and sizes", () => {
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("2w")).toBe(14 * 86_400_000);
    expect(parseDuration("10")).toBeUndefined();
    expect(parseDuration("1 h")).toBeUndefined();
    expect(parseByteSize("10GiB")).toBe(10 * 1024 ** 3);
    expect(parseByteSize("1.5 kb")).toBe(1500);
    expect(parseByteSize("4096")).toBe(4096);
    expect(parseByteSize("12 parsecs")).toBeUndefined();
  });

  it("reads --since/--until as ago-durations, ISO times or epoch ms", () => {
    const now = Date.parse("2025-06-01T12:00:00Z");
    expect(parseTimeArg("1h", now)).toBe(now - 3_600_000);
    expect(parseTimeArg("2025-06-01T10:00:00Z", now)).toBe(Date.parse("2025-06-01T10:00:00Z"));
    expect(parseTimeArg("1748779200000", now)).toBe(1_748_779_200_000);
    expect(parseTimeArg("now", now)).toBe(now);
    expect(parseTimeArg("last tuesday", now)).toBeUndefined();
    expect(formatDuration(30 * 86_400_000)).toBe("30d");
    expect(formatDuration(1_250)).toBe("1.25 s");
  });

  it("reads --kind as kinds and types, refusing unknown ones", () => {
    expect(Effect.runSync(parseKinds("events tail", "stream,edge.connected"))).toEqual({ kinds: ["stream"], types: ["edge.connected"] });
    expect(Effect.runSync(parseKinds("events tail", undefined))).toEqual({});
    const bad = Effect.runSync(Effect.either(parseKinds("events tail", "stream.exploded")));
    expect(Either.isLeft(bad) && bad.left.message).toMatch(/--kind "stream.exploded" is neither a kind/);
    expect(eventsTailHelp).toMatch(/--kind KINDS/);
    expect(historyHelp).toMatch(/--edge ID/);
  });
});

const T0 = Date.parse("2025-06-01T12:00:00Z");
const where = { edgePort: 8080, clientAddr: "198.51.100.7:40000", target: "10.0.0.5:80" };
const base = { hubId: "hub-1", edgeId: "e1", sessionId: "s1" };
const opened = makeEvent({ ...base, type: "stream.opened", streamId: "7", seq: 1, time: T0, data: where });
const closed = makeEvent({
  ...base,
  type: "stream.closed",
  streamId: "7",
  seq: 2,
  time: T0 + 1_500,
  data: { ...where, bytesIn: 1_200, bytesOut: 3 * 1024 ** 2, durationMs: 1_500, reason: "clientClosed", message: "" },
});

describe("one-line event format and the history text", () => {
  it("prints time, hub, edge, type, actor and what happened", () => {
    expect(formatEventLine(closed)).toBe(
      "2025-06-01T12:00:01.500Z hub-1 e1 stream.closed     s1/7 198.51.100.7:40000 → :8080 → 10.0.0.5:80  in 1.2 KiB, out 3.0 MiB, 1.50 s, clientClosed",
    );
    const hubEvent = makeEvent({ hubId: "hub-1", edgeId: null, sessionId: "run-1", streamId: null, type: "hub.stopped", seq: 2, time: T0, data: { reason: "signal", message: null } });
    expect(formatEventLine(hubEvent)).toMatch(/hub-1 ~ hub\.stopped +run-1 signal$/);
  });

  it("renders sessions, connections (most recent first cut) and totals", () => {
    const text = formatHistory(projectHistory([opened, closed], "e1"), { limit: 50 });
    expect(text).toMatch(/Connections \(1: 1 TCP, 0 UDP, 0 open\)/);
    expect(text).toMatch(/198\.51\.100\.7:40000\s+8080\s+10\.0\.0\.5:80\s+1\.2 KiB\s+3\.0 MiB\s+1\.50 s\s+clientClosed/);
    expect(text).toMatch(/close reasons: clientClosed 1/);
  });
});

describe("recover() on a log stored out of order across subjects", () => {
  it("does not reopen a stream whose close was stored before its open", () => {
    // opened and closed travel on different subjects, so the closed batch can be stored first.
    const r = recover([closed, opened], { hubId: "hub-1", currentRunId: "run-2", atMs: T0 + 10_000 });
    expect(r.openStreams).toEqual([]);
    expect(r.closingEvents).toEqual([]);
  });
});
