import { Context, Data, Effect, Layer, ManagedRuntime, Stream } from "effect";
import { describe, expect, it } from "vitest";
import { createActor, toPromise } from "xstate";
import { createEdgeActorSystem, type EdgeLifecycleEvent } from "../src/actors/edge-actor-system.js";
import { feedEdgeActors } from "../src/actors/feed.js";
import { fromEffect, fromPlainEffect } from "../src/actors/from-effect.js";
import type { EventStreamProblem } from "../src/native/addon.js";
import type { NativeEdgeEvent } from "../src/native/events.js";

class Greeting extends Context.Tag("test/Greeting")<Greeting, { readonly hello: (name: string) => string }>() {}

describe("fromEffect", () => {
  it("runs an Effect with the actor's input on the given runtime", async () => {
    const runtime = ManagedRuntime.make(Layer.succeed(Greeting, { hello: (name) => `hello ${name}` }));
    const rt = await runtime.runtime();
    const logic = fromEffect((name: string) => Effect.map(Greeting, (g) => g.hello(name)), rt);
    await expect(toPromise(createActor(logic, { input: "edge" }).start())).resolves.toBe("hello edge");
    await runtime.dispose();
  });

  it("interrupts the Effect when the actor is stopped", async () => {
    let started = false;
    let interrupted = false;
    const logic = fromPlainEffect(() =>
      Effect.sync(() => void (started = true)).pipe(
        Effect.zipRight(Effect.never),
        Effect.onInterrupt(() => Effect.sync(() => void (interrupted = true))),
      ),
    );
    const actor = createActor(logic).start();
    await new Promise((resolve) => setImmediate(resolve));
    expect(started).toBe(true);
    actor.stop();
    await new Promise((resolve) => setImmediate(resolve));
    expect(interrupted).toBe(true);
  });

  it("rejects with the Effect's own error, not a FiberFailure wrapper", async () => {
    class Gone extends Data.TaggedError("Gone")<{ readonly message: string }> {}
    const actor = createActor(fromPlainEffect(() => Effect.fail(new Gone({ message: "ECLOSED: gone" })))).start();
    const error = await toPromise(actor).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Gone);
    expect(actor.getSnapshot().status).toBe("error");
  });
});

describe("feedEdgeActors", () => {
  it("ingests each chunk's native events and passes stream problems aside", async () => {
    const log: EdgeLifecycleEvent[] = [];
    const actors = createEdgeActorSystem({ edgeId: "e1", sink: { append: (e) => void log.push(e) }, stop: Effect.void });
    const gap: EventStreamProblem = { type: "events.gap", expectedSeq: 2, receivedSeq: 4, missed: 2, message: "gap" };
    const events: Array<NativeEdgeEvent | EventStreamProblem> = [
      { type: "tunnel.connecting", seq: 1, atMs: 1, hub: "h:1", attempt: 1 },
      gap,
      { type: "tunnel.connected", seq: 4, atMs: 2, hub: "h:1", hubId: "hub", sessionId: "s1", hubFingerprint: "ff", pinned: true },
    ];
    const problems: EventStreamProblem[] = [];
    await Effect.runPromise(feedEdgeActors(actors, Stream.fromIterable(events), (p) => void problems.push(p)));
    expect(problems).toEqual([gap]);
    expect(log.map((e) => e.type)).toEqual(["tunnel.connecting", "tunnel.connected"]);
    expect(actors.snapshot().connected).toBe(true);
  });
});
