/**
 * The one place JetStream subjects are built and parsed.
 *
 *   portway.ev.<hubId>.<edgeId>.<kind>.<action>
 *
 * e.g. `portway.ev.hub-1.e1.stream.closed`. Token positions are fixed, so one filter answers each question:
 * all events of edge X → `portway.ev.*.X.>`; all stream events of X → `portway.ev.*.X.stream.>`; all closes
 * anywhere → `portway.ev.*.*.*.closed`. Hub events (no edge) use the edge token `~`.
 *
 * Ids are encoded so any string is a safe single token: `[A-Za-z0-9_-]` pass through, every other UTF-8 byte
 * becomes `~XX` (uppercase hex), so `.`, `*`, `>`, spaces and `~` itself can never split or widen a subject.
 */
import { Data } from "effect";
import { actionOf, actorKindOf, isEventType, type ActorKind, type EventType } from "./catalog.js";

export const SUBJECT_ROOT = "portway.ev";
export const NO_EDGE_TOKEN = "~";
/** Every subject the event stream captures. */
export const ALL_EVENTS_SUBJECT = `${SUBJECT_ROOT}.>`;

export class InvalidSubject extends Data.TaggedError("InvalidSubject")<{
  readonly subject: string;
  readonly reason: string;
}> {
  override get message(): string {
    return `invalid Portway event subject "${this.subject}": ${this.reason}`;
  }
}

const PLAIN = /^[A-Za-z0-9_-]$/;
const SAFE_TOKEN = /^[A-Za-z0-9_-]+$/;
const encoder = new TextEncoder();

/** Encodes an id as one subject token. Empty strings are not ids. */
export const encodeToken = (id: string): string => {
  if (id.length === 0) throw new RangeError("an id used in a subject must not be empty");
  if (SAFE_TOKEN.test(id)) return id;
  let out = "";
  for (const ch of id) {
    if (PLAIN.test(ch)) out += ch;
    else for (const b of encoder.encode(ch)) out += `~${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
};

const ENCODED = /^(?:[A-Za-z0-9_-]|~[0-9A-F]{2})+$/;

export const decodeToken = (token: string): string | undefined => {
  if (!ENCODED.test(token)) return undefined;
  if (!token.includes("~")) return token;
  const bytes: number[] = [];
  for (let i = 0; i < token.length; ) {
    if (token[i] === "~") {
      bytes.push(parseInt(token.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      bytes.push(token.charCodeAt(i));
      i += 1;
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    return undefined;
  }
};

export interface SubjectParts {
  readonly hubId: string;
  readonly edgeId: string | null;
  readonly type: EventType;
}

export const subjectOf = (e: { readonly hubId: string; readonly edgeId: string | null; readonly type: EventType }): string =>
  `${SUBJECT_ROOT}.${encodeToken(e.hubId)}.${e.edgeId === null ? NO_EDGE_TOKEN : encodeToken(e.edgeId)}.${actorKindOf(e.type)}.${actionOf(e.type)}`;

export const parseSubject = (subject: string): SubjectParts | InvalidSubject => {
  const parts = subject.split(".");
  if (parts.length !== 6 || `${parts[0]}.${parts[1]}` !== SUBJECT_ROOT) {
    return new InvalidSubject({ subject, reason: `expected ${SUBJECT_ROOT}.<hubId>.<edgeId>.<kind>.<action>` });
  }
  const [, , hubTok, edgeTok, kind, action] = parts as [string, string, string, string, string, string];
  const hubId = decodeToken(hubTok);
  if (hubId === undefined) return new InvalidSubject({ subject, reason: `bad hub token "${hubTok}"` });
  let edgeId: string | null = null;
  if (edgeTok !== NO_EDGE_TOKEN) {
    const decoded = decodeToken(edgeTok);
    if (decoded === undefined) return new InvalidSubject({ subject, reason: `bad edge token "${edgeTok}"` });
    edgeId = decoded;
  }
  const type = `${kind}.${action}`;
  if (!isEventType(type)) return new InvalidSubject({ subject, reason: `unknown event type "${type}"` });
  return { hubId, edgeId, type };
};

/** What a reader wants; every field is optional and narrows the filter. */
export interface EventFilter {
  readonly hubId?: string;
  /** `null` selects hub-level events (no edge). */
  readonly edgeId?: string | null;
  /** Actor kinds (`stream`, `udp`, …). Empty or absent: all. */
  readonly kinds?: ReadonlyArray<ActorKind>;
  /** Exact event types. Combined with kinds as a union. */
  readonly types?: ReadonlyArray<EventType>;
}

/**
 * Subject filters (for `filter_subjects` or a core subscription) that select exactly the events matching
 * the filter. Always at least one subject.
 */
export const filterSubjects = (f: EventFilter = {}): ReadonlyArray<string> => {
  const hub = f.hubId === undefined ? "*" : encodeToken(f.hubId);
  const edge = f.edgeId === undefined ? "*" : f.edgeId === null ? NO_EDGE_TOKEN : encodeToken(f.edgeId);
  const prefix = `${SUBJECT_ROOT}.${hub}.${edge}`;
  // JetStream rejects overlapping filter_subjects: drop repeats and types already covered by a kind.
  const kinds = [...new Set(f.kinds ?? [])];
  const types = [...new Set(f.types ?? [])].filter((t) => !kinds.includes(actorKindOf(t)));
  if (kinds.length === 0 && types.length === 0) return [hub === "*" && edge === "*" ? ALL_EVENTS_SUBJECT : `${prefix}.>`];
  return [...kinds.map((k) => `${prefix}.${k}.*`), ...types.map((t) => `${prefix}.${actorKindOf(t)}.${actionOf(t)}`)];
};
