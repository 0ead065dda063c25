/** One-line logs to stderr: readable text by default, JSON lines with `--json`. */
import { Cause, HashMap, type Layer, Logger, type LogLevel } from "effect";

export type LogFormat = "text" | "json";
export type Level = "debug" | "info" | "warn" | "error";

/** Where lines go; replaced in tests. */
export type Write = (line: string) => void;
const stderr: Write = (line) => {
  process.stderr.write(`${line}\n`);
};

const HIDDEN = new Set(["type", "seq", "atMs"]);

const formatValue = (value: unknown): string => {
  if (Array.isArray(value)) return value.length === 0 ? "-" : value.map((v) => formatValue(v)).join(",");
  if (value === null || value === undefined) return "-";
  if (typeof value === "string") return value === "" || /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
};

/** `key=value` pairs of an event's own fields (not type/seq/atMs), in field order. */
export const formatFields = (fields: Readonly<Record<string, unknown>>): string =>
  Object.entries(fields)
    .filter(([key, value]) => !HIDDEN.has(key) && value !== undefined && !(key === "message" && value === ""))
    .map(([key, value]) => `${key}=${formatValue(value)}`)
    .join(" ");

/** Events that deserve attention are logged as warnings. */
const WARN_EVENTS = new Set([
  "edge.authFailed",
  "tunnel.protocolError",
  "tunnel.rejected",
  "tunnel.unpinned",
  "listener.error",
  "events.gap",
  "events.invalid",
]);

export const eventLevel = (type: string): Level => (WARN_EVENTS.has(type) ? "warn" : "info");

export interface EventLike {
  readonly type: string;
  readonly atMs?: number;
  readonly [key: string]: unknown;
}

/** Formats one line. `source` says who speaks ("hub", "edge e1", "demo"). */
export const formatLine = (
  format: LogFormat,
  line: { readonly time: Date; readonly level: Level; readonly source: string; readonly text?: string; readonly event?: EventLike },
): string => {
  const { time, level, source, text, event } = line;
  if (format === "json") {
    const body: Record<string, unknown> = { time: time.toISOString(), level, source };
    if (event !== undefined) {
      for (const [key, value] of Object.entries(event)) if (key !== "atMs") body[key === "type" ? "event" : key] = value;
    }
    if (text !== undefined) body["message"] = text;
    return JSON.stringify(body);
  }
  const head = `${time.toISOString()} ${level.toUpperCase().padEnd(5)} ${source}`;
  if (event !== undefined) {
    const fields = formatFields(event);
    return `${head} ${event.type}${fields === "" ? "" : ` ${fields}`}${text === undefined ? "" : ` ${text}`}`;
  }
  return `${head} ${text ?? ""}`;
};

/** Writes lines in one format. */
export interface LineLog {
  readonly format: LogFormat;
  readonly event: (source: string, event: EventLike) => void;
  readonly line: (level: Level, source: string, text: string) => void;
}

export const makeLineLog = (format: LogFormat, write: Write = stderr): LineLog => ({
  format,
  event: (source, event) =>
    write(
      formatLine(format, {
        time: new Date(typeof event.atMs === "number" ? event.atMs : Date.now()),
        level: eventLevel(event.type),
        source,
        event,
      }),
    ),
  line: (level, source, text) => write(formatLine(format, { time: new Date(), level, source, text })),
});

const toLevel = (level: LogLevel.LogLevel): Level =>
  level._tag === "Error" || level._tag === "Fatal"
    ? "error"
    : level._tag === "Warning"
      ? "warn"
      : level._tag === "Info"
        ? "info"
        : "debug";

/** Routes Effect's logs (e.g. the unpinned-hub warning) through the same one-line format. */
export const loggerLayer = (log: LineLog, source: string): Layer.Layer<never> =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message, cause, annotations }) => {
      const parts = (Array.isArray(message) ? message : [message]).map((m) => (typeof m === "string" ? m : JSON.stringify(m)));
      if (!Cause.isEmpty(cause)) parts.push(Cause.pretty(cause));
      const from = HashMap.get(annotations, "source");
      const speaker = from._tag === "Some" ? String(from.value) : source;
      const text = parts.join(" ");
      // Library messages name their hub/edge; the line already does.
      log.line(toLevel(logLevel), speaker, text.startsWith(`${speaker}: `) ? text.slice(speaker.length + 2) : text);
    }),
  );
