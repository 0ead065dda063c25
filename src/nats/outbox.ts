/**
 * Disk-backed outbox for event batches that could not be published (NATS down, or the in-memory queue
 * full). Bounded by bytes, append-only, flushed in order, segments removed once acknowledged.
 *
 * Layout under `dir`:
 *   seg-0000000000000001.log …   records, appended in order; a new segment every `segmentBytes`
 *   cursor.json                  {segment, offset}: everything before it was acknowledged by JetStream
 *
 * Record: u32 bodyLength | u32 crc32(body) | body, body = u8 format(1) | u16 subjectLength | subject |
 * u8 msgIdLength | msgId | u32 eventCount | payload. All integers big-endian.
 *
 * fsync policy (`fsync`):
 *   "always" (default) — group commit: every write burst is followed by one fdatasync before the records
 *                        count as stored; concurrent appends share it.
 *   { intervalMs }     — fdatasync at most every intervalMs; a machine crash may lose that much.
 *   "never"            — leave it to the OS; survives a process crash, not a power cut.
 * The cursor is written with rename and not fsynced: after a crash an older cursor only means records are
 * published again, which JetStream deduplicates by message id.
 *
 * Recovery (open): segments before the cursor are deleted; every remaining record is checked (length and
 * CRC). A torn tail — a partial write cut by a crash — is truncated away and reported.
 */
import { crc32 } from "node:zlib";
import { open, mkdir, readdir, rename, rm, stat, writeFile, readFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Data } from "effect";

export interface OutboxRecord {
  readonly subject: string;
  readonly msgId: string;
  readonly count: number;
  readonly payload: Uint8Array;
}

/** End position of a record: acknowledging it acknowledges everything before it too. */
export interface OutboxPosition {
  readonly segment: number;
  readonly offset: number;
}

export interface OutboxEntry {
  readonly record: OutboxRecord;
  readonly end: OutboxPosition;
  /** Encoded size, framing included. */
  readonly size: number;
}

export type FsyncPolicy = "always" | "never" | { readonly intervalMs: number };

export interface OutboxOptions {
  readonly dir: string;
  /** Bound on unacknowledged bytes (records incl. framing). Default 256 MiB. */
  readonly maxBytes?: number;
  /** Segment size at which a new file is started. Default 16 MiB. */
  readonly segmentBytes?: number;
  readonly fsync?: FsyncPolicy;
  readonly log?: (level: "info" | "warn" | "error", msg: string) => void;
}

export interface OutboxRecovery {
  readonly segments: number;
  readonly records: number;
  readonly events: number;
  readonly bytes: number;
  /** Bytes cut from torn or corrupt tails. */
  readonly truncatedBytes: number;
}

export class OutboxIoError extends Data.TaggedError("OutboxIoError")<{ readonly op: string; readonly cause: unknown }> {
  override get message(): string {
    return `outbox ${this.op} failed: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`;
  }
}

const HEADER = 8;
const FORMAT = 1;
const SEG_RE = /^seg-(\d{16})\.log$/;
const segName = (n: number): string => `seg-${String(n).padStart(16, "0")}.log`;

export const encodeRecord = (r: OutboxRecord): Buffer => {
  const subject = Buffer.from(r.subject, "utf8");
  const msgId = Buffer.from(r.msgId, "utf8");
  if (subject.length > 0xffff || msgId.length > 0xff) throw new RangeError("subject or msgId too long for the outbox");
  const bodyLen = 1 + 2 + subject.length + 1 + msgId.length + 4 + r.payload.length;
  const buf = Buffer.allocUnsafe(HEADER + bodyLen);
  let o = HEADER;
  buf.writeUInt8(FORMAT, o++);
  buf.writeUInt16BE(subject.length, o);
  o += 2;
  subject.copy(buf, o);
  o += subject.length;
  buf.writeUInt8(msgId.length, o++);
  msgId.copy(buf, o);
  o += msgId.length;
  buf.writeUInt32BE(r.count, o);
  o += 4;
  buf.set(r.payload, o);
  buf.writeUInt32BE(bodyLen, 0);
  buf.writeUInt32BE(crc32(buf.subarray(HEADER)), 4);
  return buf;
};

type Decoded = { readonly record: OutboxRecord; readonly size: number } | "incomplete" | "corrupt";

/** Decodes the record at `off`; "incomplete" when the buffer ends inside it. */
export const decodeRecord = (buf: Buffer, off: number): Decoded => {
  if (buf.length - off < HEADER) return "incomplete";
  const bodyLen = buf.readUInt32BE(off);
  if (bodyLen < 8 || bodyLen > 64 * 1024 * 1024) return "corrupt";
  if (buf.length - off < HEADER + bodyLen) return "incomplete";
  const body = buf.subarray(off + HEADER, off + HEADER + bodyLen);
  if (crc32(body) !== buf.readUInt32BE(off + 4)) return "corrupt";
  let o = 0;
  if (body.readUInt8(o++) !== FORMAT) return "corrupt";
  const sl = body.readUInt16BE(o);
  o += 2;
  if (o + sl + 1 > body.length) return "corrupt";
  const subject = body.toString("utf8", o, o + sl);
  o += sl;
  const il = body.readUInt8(o++);
  if (o + il + 4 > body.length) return "corrupt";
  const msgId = body.toString("utf8", o, o + il);
  o += il;
  const count = body.readUInt32BE(o);
  o += 4;
  return { record: { subject, msgId, count, payload: body.subarray(o) }, size: HEADER + bodyLen };
};

interface Segment {
  readonly index: number;
  /** Bytes durably written (or at least handed to the OS) — readers never go past it. */
  size: number;
}

export interface OutboxStats {
  readonly bytes: number;
  readonly maxBytes: number;
  readonly records: number;
  readonly segments: number;
  readonly full: boolean;
}

export class Outbox {
  private readonly maxBytes: number;
  private readonly segmentBytes: number;
  private readonly fsync: FsyncPolicy;
  private readonly log: NonNullable<OutboxOptions["log"]>;
  private segments: Segment[] = [];
  private writeFh: FileHandle | undefined;
  private ack: OutboxPosition;
  private read: OutboxPosition;
  private pending: Buffer[] = [];
  private pendingRecords = 0;
  private unackedBytes = 0;
  private unackedRecords = 0;
  private writing: Promise<void> | undefined;
  private lastSync = 0;
  private cursorDirty = false;
  private cursorTimer: NodeJS.Timeout | undefined;
  private cursorWrite: Promise<void> = Promise.resolve();
  private closed = false;
  private writeError: OutboxIoError | undefined;
  private readonly readHandles = new Map<number, FileHandle>();
  /** Set when an append was refused for lack of room; cleared when one fits again. */
  full = false;

  private constructor(private readonly dir: string, opts: OutboxOptions, cursor: OutboxPosition) {
    this.maxBytes = opts.maxBytes ?? 256 * 1024 * 1024;
    this.segmentBytes = opts.segmentBytes ?? 16 * 1024 * 1024;
    this.fsync = opts.fsync ?? "always";
    this.log = opts.log ?? (() => undefined);
    this.ack = cursor;
    this.read = cursor;
  }

  static async open(opts: OutboxOptions): Promise<{ outbox: Outbox; recovery: OutboxRecovery }> {
    try {
      await mkdir(opts.dir, { recursive: true });
      let cursor: OutboxPosition = { segment: 0, offset: 0 };
      try {
        const c = JSON.parse(await readFile(join(opts.dir, "cursor.json"), "utf8")) as Partial<OutboxPosition>;
        if (Number.isSafeInteger(c.segment) && Number.isSafeInteger(c.offset)) cursor = c as OutboxPosition;
      } catch {
        // no cursor yet (or unreadable): start from the first segment; duplicates are deduplicated
      }
      const names = (await readdir(opts.dir)).filter((n) => SEG_RE.test(n)).sort();
      const ob = new Outbox(opts.dir, opts, cursor);
      let records = 0;
      let events = 0;
      let truncated = 0;
      for (let i = 0; i < names.length; i++) {
        const name = names[i] as string;
        const index = Number(SEG_RE.exec(name)?.[1]);
        const path = join(opts.dir, name);
        if (index < cursor.segment) {
          await rm(path, { force: true });
          continue;
        }
        const buf = await readFile(path);
        let off = index === cursor.segment ? Math.min(cursor.offset, buf.length) : 0;
        if (index === cursor.segment && cursor.offset > buf.length) {
          ob.log("warn", `outbox cursor ${cursor.offset} is past the end of ${name} (${buf.length} bytes); resuming at its end`);
        }
        const start = off;
        let good = off;
        for (;;) {
          const d = decodeRecord(buf, off);
          if (typeof d === "string") break;
          off += d.size;
          good = off;
          records++;
          events += d.record.count;
        }
        if (good < buf.length) {
          const cut = buf.length - good;
          truncated += cut;
          const last = i === names.length - 1;
          ob.log(
            last ? "warn" : "error",
            `outbox ${name}: ${last ? "torn tail" : "corrupt record"} at offset ${good}, truncating ${cut} bytes`,
          );
          const fh = await open(path, "r+");
          await fh.truncate(good);
          await fh.datasync();
          await fh.close();
        }
        ob.segments.push({ index, size: good });
        ob.unackedBytes += good - start;
      }
      ob.unackedRecords = records;
      if (ob.segments.length === 0) ob.segments.push({ index: Math.max(cursor.segment, 1), size: 0 });
      const first = ob.segments[0] as Segment;
      if (first.index !== cursor.segment) {
        ob.ack = { segment: first.index, offset: 0 };
        ob.read = ob.ack;
      } else if (cursor.offset > first.size) {
        ob.ack = { segment: first.index, offset: first.size };
        ob.read = ob.ack;
      }
      const tail = ob.segments[ob.segments.length - 1] as Segment;
      ob.writeFh = await open(join(opts.dir, segName(tail.index)), "a");
      return {
        outbox: ob,
        recovery: { segments: ob.segments.length, records, events, bytes: ob.unackedBytes, truncatedBytes: truncated },
      };
    } catch (cause) {
      throw new OutboxIoError({ op: "open", cause });
    }
  }

  stats(): OutboxStats {
    return {
      bytes: this.unackedBytes,
      maxBytes: this.maxBytes,
      records: this.unackedRecords,
      segments: this.segments.length,
      full: this.full,
    };
  }

  isEmpty(): boolean {
    return this.unackedRecords === 0;
  }

  /** True while records were read but not yet acknowledged or rewound. */
  hasUnread(): boolean {
    const tail = this.segments[this.segments.length - 1] as Segment;
    return !(this.read.segment === tail.index && this.read.offset >= tail.size) || this.pending.length > 0;
  }

  /**
   * Queues records for writing, all or none. Returns false — and sets `full` — when they do not fit under
   * maxBytes (or a write failed); the caller must count them as dropped and say so loudly.
   */
  append(records: ReadonlyArray<OutboxRecord>): boolean {
    if (this.closed || this.writeError) return false;
    const bufs = records.map(encodeRecord);
    const size = bufs.reduce((n, b) => n + b.length, 0);
    if (this.unackedBytes + size > this.maxBytes) {
      this.full = true;
      return false;
    }
    this.full = false;
    this.pending.push(...bufs);
    this.pendingRecords += bufs.length;
    this.unackedBytes += size;
    this.unackedRecords += bufs.length;
    this.kick();
    return true;
  }

  /** Resolves once everything appended so far is written (and synced, per policy). */
  async flushed(): Promise<void> {
    while (this.writing) await this.writing;
    if (this.writeError) throw this.writeError;
  }

  private kick(): void {
    if (this.writing) return;
    this.writing = this.writeLoop().finally(() => {
      this.writing = undefined;
      if (this.pending.length > 0 && !this.writeError) this.kick();
    });
  }

  private async writeLoop(): Promise<void> {
    while (this.pending.length > 0 && !this.writeError) {
      const bufs = this.pending;
      this.pending = [];
      this.pendingRecords = 0;
      try {
        // One write per segment touched; roll once a segment reaches segmentBytes.
        let i = 0;
        while (i < bufs.length) {
          const tail = this.segments[this.segments.length - 1] as Segment;
          const group: Buffer[] = [];
          let size = 0;
          while (i < bufs.length && (group.length === 0 || tail.size + size < this.segmentBytes)) {
            const b = bufs[i++] as Buffer;
            group.push(b);
            size += b.length;
          }
          await this.writeAll(group.length === 1 ? (group[0] as Buffer) : Buffer.concat(group, size));
          tail.size += size;
          if (tail.size >= this.segmentBytes) await this.roll();
        }
        const now = Date.now();
        if (this.fsync === "always" || (typeof this.fsync === "object" && now - this.lastSync >= this.fsync.intervalMs)) {
          await this.writeFh?.datasync();
          this.lastSync = now;
        }
      } catch (cause) {
        this.writeError = new OutboxIoError({ op: "write", cause });
        this.log("error", this.writeError.message);
      }
    }
  }

  private async writeAll(chunk: Buffer): Promise<void> {
    const fh = this.writeFh as FileHandle;
    let written = 0;
    while (written < chunk.length) {
      const r = await fh.write(chunk, written, chunk.length - written);
      written += r.bytesWritten;
    }
  }

  private async roll(): Promise<void> {
    const tail = this.segments[this.segments.length - 1] as Segment;
    if (this.fsync !== "never") await this.writeFh?.datasync();
    await this.writeFh?.close();
    const next: Segment = { index: tail.index + 1, size: 0 };
    this.writeFh = await open(join(this.dir, segName(next.index)), "a");
    this.segments.push(next);
  }

  private async handle(index: number): Promise<FileHandle> {
    let fh = this.readHandles.get(index);
    if (!fh) {
      fh = await open(join(this.dir, segName(index)), "r");
      this.readHandles.set(index, fh);
    }
    return fh;
  }

  /** Reads up to `maxRecords` / about `maxBytes` records after the read position, in order. */
  async readNext(maxRecords: number, maxBytes = 4 * 1024 * 1024): Promise<OutboxEntry[]> {
    const out: OutboxEntry[] = [];
    let bytes = 0;
    while (out.length < maxRecords && bytes < maxBytes) {
      const seg = this.segments.find((s) => s.index === this.read.segment);
      if (!seg) break;
      if (this.read.offset >= seg.size) {
        const next = this.segments.find((s) => s.index > seg.index);
        if (!next) break;
        this.read = { segment: next.index, offset: 0 };
        continue;
      }
      const want = Math.min(seg.size - this.read.offset, Math.max(maxBytes - bytes, 64 * 1024));
      const buf = Buffer.allocUnsafe(want);
      const fh = await this.handle(seg.index);
      const { bytesRead } = await fh.read(buf, 0, want, this.read.offset);
      let off = 0;
      let progressed = false;
      while (out.length < maxRecords) {
        const d = decodeRecord(buf.subarray(0, bytesRead), off);
        if (d === "incomplete") {
          if (!progressed) {
            // A single record larger than the read window: read exactly it.
            const len = buf.readUInt32BE(0) + HEADER;
            const big = Buffer.allocUnsafe(len);
            await fh.read(big, 0, len, this.read.offset);
            const db = decodeRecord(big, 0);
            if (typeof db === "string") throw new OutboxIoError({ op: "read", cause: new Error(`bad record at ${segName(seg.index)}:${this.read.offset}`) });
            off = db.size;
            this.read = { segment: seg.index, offset: this.read.offset + off };
            out.push({ record: db.record, end: this.read, size: db.size });
            bytes += db.size;
            off = 0;
          }
          break;
        }
        if (d === "corrupt") throw new OutboxIoError({ op: "read", cause: new Error(`corrupt record at ${segName(seg.index)}:${this.read.offset + off}`) });
        off += d.size;
        bytes += d.size;
        progressed = true;
        // Copy: the payload must outlive the read buffer's reuse by later reads.
        out.push({
          record: { ...d.record, payload: Uint8Array.from(d.record.payload) },
          end: { segment: seg.index, offset: this.read.offset + off },
          size: d.size,
        });
      }
      if (progressed) this.read = { segment: seg.index, offset: this.read.offset + off };
    }
    return out;
  }

  /** Forget what was read but not acknowledged: the next readNext starts after the last ack. */
  rewind(): void {
    this.read = this.ack;
  }

  /** Everything up to `pos` reached JetStream. */
  acknowledge(pos: OutboxPosition, records: number, bytes: number): void {
    this.ack = pos;
    this.unackedRecords = Math.max(0, this.unackedRecords - records);
    this.unackedBytes = Math.max(0, this.unackedBytes - bytes);
    if (this.unackedBytes < this.maxBytes) this.full = false;
    this.cursorDirty = true;
    if (!this.cursorTimer) {
      this.cursorTimer = setTimeout(() => {
        this.cursorTimer = undefined;
        void this.persistCursor().catch((e: unknown) => this.log("error", `outbox cursor write failed: ${String(e)}`));
      }, 100);
    }
  }

  /**
   * Writes the cursor and deletes fully acknowledged segments. Calls are serialized: a timer's write still in
   * flight (slow disk) and a later one (or close) would otherwise race on the same temporary file.
   */
  persistCursor(): Promise<void> {
    const next = this.cursorWrite.then(() => this.writeCursor());
    this.cursorWrite = next.catch(() => undefined);
    return next;
  }

  private async writeCursor(): Promise<void> {
    if (!this.cursorDirty) return;
    this.cursorDirty = false;
    let ack = this.ack;
    const tail = this.segments[this.segments.length - 1] as Segment;
    // Drained at the end of a finished segment: move the cursor to the start of the next one.
    const cur = this.segments.find((s) => s.index === ack.segment);
    if (cur && ack.offset >= cur.size && cur !== tail) ack = { segment: cur.index + 1, offset: 0 };
    const tmp = join(this.dir, "cursor.json.tmp");
    await writeFile(tmp, JSON.stringify(ack));
    await rename(tmp, join(this.dir, "cursor.json"));
    const dead = this.segments.filter((s) => s.index < ack.segment);
    this.segments = this.segments.filter((s) => s.index >= ack.segment);
    for (const s of dead) {
      const fh = this.readHandles.get(s.index);
      this.readHandles.delete(s.index);
      await fh?.close();
      await rm(join(this.dir, segName(s.index)), { force: true });
    }
    if (this.read.segment < ack.segment) this.read = ack;
    this.ack = ack;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.flushed().catch(() => undefined);
    this.closed = true;
    if (this.cursorTimer) clearTimeout(this.cursorTimer);
    this.cursorTimer = undefined;
    await this.persistCursor().catch(() => undefined);
    await this.writeFh?.close();
    for (const fh of this.readHandles.values()) await fh.close();
    this.readHandles.clear();
  }

  /** Total size of segment files on disk (for tests and status). */
  async diskBytes(): Promise<number> {
    let n = 0;
    for (const s of this.segments) n += (await stat(join(this.dir, segName(s.index))).catch(() => ({ size: 0 }))).size;
    return n;
  }
}
