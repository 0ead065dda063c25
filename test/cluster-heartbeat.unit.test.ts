import type { KV } from "@nats-io/kv";
import { Effect, Exit } from "effect";
import { describe, expect, it } from "vitest";
import { startHeartbeat } from "../src/cluster/hubs.js";

/** A KV whose first `failures` puts fail with `message`; records the keys written. */
const flakyKv = (failures: number, message: string) => {
  const puts: string[] = [];
  let left = failures;
  const kv = {
    put: async (key: string) => {
      if (left-- > 0) throw new Error(message);
      puts.push(key);
      return puts.length;
    },
    delete: async () => undefined,
  } as unknown as KV;
  return { kv, puts };
};

const heartbeat = (kv: KV, logs: string[]) =>
  Effect.scoped(
    startHeartbeat({
      kv,
      heartbeatMs: 60_000,
      log: (_level, msg) => logs.push(msg),
      entry: () => ({ hubId: "hub-a", runId: "run-a", tunnelHost: "127.0.0.1", tunnelPort: 8443, startedAt: 1, version: "test" }),
    }),
  );

describe("the first cluster heartbeat", () => {
  it("waits for a cluster that is still forming (no stream leader yet) and says so once", async () => {
    const { kv, puts } = flakyKv(3, "jetstream is not enabled");
    const logs: string[] = [];
    const exit = await Effect.runPromiseExit(heartbeat(kv, logs));
    expect(Exit.isSuccess(exit)).toBe(true);
    expect(puts).toEqual(["hub-a"]);
    expect(logs.filter((l) => /cluster still forming/.test(l))).toHaveLength(1);
  });

  it("fails the start at once when NATS refuses for another reason", async () => {
    const { kv, puts } = flakyKv(1, "permissions violation for publish");
    const logs: string[] = [];
    const exit = await Effect.runPromiseExit(heartbeat(kv, logs));
    expect(Exit.isFailure(exit)).toBe(true);
    expect(puts).toEqual([]);
    expect(logs).toEqual([]);
  });
});
