// The start/stop lifecycle shared by RemoteIngressHub and RemoteIngressEdge (src/api/lifecycle.ts), on a fake
// service: one transition at a time, tagged errors, every event emitted before stop() resolves, the scope closed.
import { Effect, Queue, Stream } from "effect";
import { describe, expect, it } from "vitest";
import { Lifecycle } from "../src/api/lifecycle.js";
import { AlreadyRunningError, NotRunningError } from "../src/errors.js";

interface FakeService {
  readonly events: Stream.Stream<number>;
  readonly send: (n: number) => void;
}

/** A service whose event stream ends (after what was sent) when its scope closes; `closed` counts the closings. */
const fake = (log: { closed: number }) =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<number>();
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        log.closed++;
      }).pipe(Effect.zipRight(Queue.offer(queue, -1))),
    );
    return {
      events: Stream.fromQueue(queue).pipe(Stream.takeWhile((n) => n >= 0)),
      send: (n: number) => Effect.runSync(Queue.offer(queue, n)),
    } satisfies FakeService;
  });

describe("api lifecycle", () => {
  it("starts once, emits the service's events, refuses a second start and calls while stopped, stops idempotently", async () => {
    const log = { closed: 0 };
    const seen: number[] = [];
    const life = new Lifecycle<FakeService, number>("thing");
    expect(() => life.require()).toThrow(NotRunningError);
    expect(() => life.require()).toThrow("thing is not running; call start() first");

    await life.start(fake(log), (n) => seen.push(n));
    const service = life.require();
    expect(life.service).toBe(service);
    await expect(life.start(fake(log), () => undefined)).rejects.toBeInstanceOf(AlreadyRunningError);

    for (let i = 0; i < 100; i++) service.send(i);
    await life.stop();
    expect(seen).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(log.closed).toBe(1);
    expect(life.service).toBeUndefined();
    expect(() => life.require()).toThrow(NotRunningError);
    await life.stop();
    expect(log.closed).toBe(1);
  });

  it("a failed start leaves it stopped, and it can start again", async () => {
    const log = { closed: 0 };
    const life = new Lifecycle<FakeService, number>("thing");
    const failing = fake(log).pipe(Effect.zipRight(Effect.fail(new Error("no"))));
    await expect(life.start(failing, () => undefined)).rejects.toThrow("no");
    expect(log.closed).toBe(1);
    expect(life.service).toBeUndefined();
    await life.start(fake(log), () => undefined);
    expect(life.service).toBeDefined();
    await life.stop();
    expect(log.closed).toBe(2);
  });
});
