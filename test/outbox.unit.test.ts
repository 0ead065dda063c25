import { appendFile, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { decodeRecord, encodeRecord, Outbox, type OutboxRecord } from "../src/nats/outbox.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "portway-outbox-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (i: number, size = 100): OutboxRecord => ({
  subject: `portway.ev.h.e${i % 3}.stream.closed`,
  msgId: `m-${i}`,
  count: 1 + (i % 5),
  payload: new TextEncoder().encode(`[${JSON.stringify({ i, pad: "x".repeat(size) })}]`),
});

const readAll = async (ob: Outbox): Promise<string[]> => {
  const ids: string[] = [];
  for (;;) {
    const got = await ob.readNext(100);
    if (got.length === 0) return ids;
    ids.push(...got.map((e) => e.record.msgId));
  }
};

describe("outbox record codec", () => {
  it("round-trips and rejects a flipped bit", () => {
    const buf = encodeRecord(rec(7));
    const d = decodeRecord(buf, 0);
    expect(typeof d).toBe("object");
    if (typeof d === "object") {
      expect(d.record.msgId).toBe("m-7");
      expect(d.record.count).toBe(3);
      expect(d.size).toBe(buf.length);
    }
    const bad = Buffer.from(buf);
    bad[bad.length - 3] = (bad[bad.length - 3] as number) ^ 1;
    expect(decodeRecord(bad, 0)).toBe("corrupt");
    expect(decodeRecord(buf.subarray(0, buf.length - 1), 0)).toBe("incomplete");
  });
});

describe("outbox", () => {
  it("reads records back in append order across segments, and deletes acknowledged segments", async () => {
    const { outbox } = await Outbox.open({ dir, segmentBytes: 4096, fsync: "never" });
    for (let i = 0; i < 200; i++) expect(outbox.append([rec(i)])).toBe(true);
    await outbox.flushed();
    expect(outbox.stats().records).toBe(200);
    const segsBefore = (await readdir(dir)).filter((n) => n.startsWith("seg-")).length;
    expect(segsBefore).toBeGreaterThan(3);
    const entries = [];
    for (;;) {
      const got = await outbox.readNext(64);
      if (got.length === 0) break;
      entries.push(...got);
    }
    expect(entries.map((e) => e.record.msgId)).toEqual(Array.from({ length: 200 }, (_, i) => `m-${i}`));
    const last = entries[entries.length - 1];
    if (!last) throw new Error("no entries");
    outbox.acknowledge(last.end, entries.length, entries.reduce((n, e) => n + e.size, 0));
    await outbox.persistCursor();
    expect(outbox.isEmpty()).toBe(true);
    expect(outbox.stats().bytes).toBe(0);
    const segsAfter = (await readdir(dir)).filter((n) => n.startsWith("seg-")).length;
    expect(segsAfter).toBe(1);
    await outbox.close();
  });

  it("survives a restart: unacknowledged records come back, acknowledged ones do not", async () => {
    const a = await Outbox.open({ dir, segmentBytes: 2048 });
    for (let i = 0; i < 50; i++) a.outbox.append([rec(i)]);
    await a.outbox.flushed();
    const first = await a.outbox.readNext(20);
    const end = first[first.length - 1];
    if (!end) throw new Error("nothing read");
    a.outbox.acknowledge(end.end, first.length, first.reduce((n, e) => n + e.size, 0));
    await a.outbox.close();

    const b = await Outbox.open({ dir, segmentBytes: 2048 });
    expect(b.recovery.records).toBe(30);
    expect(b.recovery.truncatedBytes).toBe(0);
    expect(await readAll(b.outbox)).toEqual(Array.from({ length: 30 }, (_, i) => `m-${i + 20}`));
    await b.outbox.close();
  });

  it("recovers from a torn tail: truncates the partial record, keeps every whole one", async () => {
    const a = await Outbox.open({ dir });
    for (let i = 0; i < 10; i++) a.outbox.append([rec(i)]);
    await a.outbox.close();
    const seg = join(dir, (await readdir(dir)).find((n) => n.startsWith("seg-")) as string);
    const full = (await stat(seg)).size;
    // A crash in the middle of writing record 10: only part of it reached the disk.
    const partial = encodeRecord(rec(10)).subarray(0, 37);
    await appendFile(seg, partial);

    const b = await Outbox.open({ dir });
    expect(b.recovery.records).toBe(10);
    expect(b.recovery.truncatedBytes).toBe(37);
    expect((await stat(seg)).size).toBe(full);
    expect(await readAll(b.outbox)).toEqual(Array.from({ length: 10 }, (_, i) => `m-${i}`));
    // And it appends cleanly after the cut.
    b.outbox.append([rec(11)]);
    await b.outbox.flushed();
    expect((await readAll(b.outbox)).at(-1)).toBe("m-11");
    await b.outbox.close();
  });

  it("recovers from a tail truncated mid-record (lost sectors) and from a garbled last record", async () => {
    const a = await Outbox.open({ dir });
    for (let i = 0; i < 5; i++) a.outbox.append([rec(i, 1000)]);
    await a.outbox.close();
    const seg = join(dir, (await readdir(dir)).find((n) => n.startsWith("seg-")) as string);
    const size = (await stat(seg)).size;
    await truncate(seg, size - 500);
    const b = await Outbox.open({ dir });
    expect(b.recovery.records).toBe(4);
    await b.outbox.close();

    const bytes = await readFile(seg);
    bytes[bytes.length - 10] = (bytes[bytes.length - 10] as number) ^ 0xff;
    await writeFile(seg, bytes);
    const c = await Outbox.open({ dir });
    expect(c.recovery.records).toBe(3);
    expect(await readAll(c.outbox)).toEqual(["m-0", "m-1", "m-2"]);
    await c.outbox.close();
  });

  it("refuses appends beyond maxBytes and says so, then accepts again once acknowledged", async () => {
    const { outbox } = await Outbox.open({ dir, maxBytes: 2_000 });
    let accepted = 0;
    for (let i = 0; i < 50; i++) if (outbox.append([rec(i)])) accepted++;
    expect(accepted).toBeGreaterThan(5);
    expect(accepted).toBeLessThan(50);
    expect(outbox.stats().full).toBe(true);
    expect(outbox.stats().bytes).toBeLessThanOrEqual(2_000);
    await outbox.flushed();
    const all = await outbox.readNext(1000);
    const last = all[all.length - 1];
    if (!last) throw new Error("nothing read");
    outbox.acknowledge(last.end, all.length, all.reduce((n, e) => n + e.size, 0));
    expect(outbox.stats().full).toBe(false);
    expect(outbox.append([rec(99)])).toBe(true);
    await outbox.close();
  });

  it("rewind re-reads what was not acknowledged", async () => {
    const { outbox } = await Outbox.open({ dir });
    for (let i = 0; i < 6; i++) outbox.append([rec(i)]);
    await outbox.flushed();
    const a = await outbox.readNext(3);
    outbox.acknowledge((a[0] as { end: { segment: number; offset: number } }).end, 1, (a[0] as { size: number }).size);
    outbox.rewind();
    expect(await readAll(outbox)).toEqual(["m-1", "m-2", "m-3", "m-4", "m-5"]);
    await outbox.close();
  });
});
