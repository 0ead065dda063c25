/**
 * The TCP stream's compiled common path (tcpStreamFastStep, run by TcpStreamRunner) must behave exactly like the
 * XState machine: same facts with the same seqs and times, same states and context, same end — for every short
 * sequence of events, every close reason, and with timers (the grace after a lost tunnel) on a simulated clock.
 */
import { isDeepStrictEqual } from "node:util";
import { describe, expect, it } from "vitest";
import { SimulatedClock, type Actor } from "xstate";
import { startNumberedActor } from "../../src/actors/logged-actor.js";
import { TcpStreamRunner } from "../../src/actors/tcp-stream-runner.js";
import { StreamCloseReason } from "../../src/events/catalog.js";
import {
  tcpStreamFastStep,
  tcpStreamMachine,
  initialTcpStreamContext,
  type TcpStreamEvent,
  type TcpStreamFact,
  type TcpStreamInput,
} from "../../src/machines/tcp-stream.js";

const input: TcpStreamInput = {
  edgeId: "e1",
  sessionId: "s1",
  streamId: 7,
  edgePort: 80,
  clientAddr: "203.0.113.9:51000",
  target: "10.0.0.5:8080",
  closeGraceMs: 1_000,
};

/** One step of a scenario: an event (its time taken from the clock) or letting the clock run. */
type Step =
  | { readonly kind: "event"; readonly make: (atMs: number) => TcpStreamEvent; readonly label: string }
  | { readonly kind: "tick"; readonly ms: number; readonly label: string };

const REASONS = StreamCloseReason.literals;

const opened: Step = { kind: "event", label: "opened", make: (atMs) => ({ type: "stream.opened", atMs }) };
const openedWithTarget: Step = {
  kind: "event",
  label: "opened(target)",
  make: (atMs) => ({ type: "stream.opened", atMs, target: "10.0.0.9:22" }),
};
const closed = (reason: StreamCloseReason): Step => ({
  kind: "event",
  label: `closed(${reason})`,
  make: (atMs) => ({ type: "stream.closed", atMs, reason, message: reason === "reset" ? "connection reset" : null, bytesIn: 120, bytesOut: 4_096, durationMs: 33 }),
});
const halfClosed: Step = { kind: "event", label: "halfClosed", make: (atMs) => ({ type: "stream.halfClosed", atMs, side: "client" }) };
const tunnelLost: Step = { kind: "event", label: "tunnelLost", make: (atMs) => ({ type: "policy.tunnelLost", atMs }) };
const shutdown: Step = { kind: "event", label: "shutdown", make: (atMs) => ({ type: "policy.shutdown", atMs }) };
const graceShort: Step = { kind: "tick", ms: 999, label: "tick(999)" };
const graceEnd: Step = { kind: "tick", ms: 1_000, label: "tick(1000)" };

interface Observed {
  readonly facts: Array<{ readonly seq: number; readonly fact: TcpStreamFact }>;
  done: number;
}

/** Runs a scenario through a plain XState actor and through a runner, comparing after every step. */
const compare = (steps: ReadonlyArray<Step>): { readonly interpreted: boolean } => {
  const plainClock = new SimulatedClock();
  const fastClock = new SimulatedClock();
  plainClock.set(10_000);
  fastClock.set(10_000);
  const plain: Observed = { facts: [], done: 0 };
  const fast: Observed = { facts: [], done: 0 };
  const actor: Actor<typeof tcpStreamMachine> = startNumberedActor({
    machine: tcpStreamMachine,
    input,
    clock: plainClock,
    onFact: (fact, seq) => void plain.facts.push({ seq, fact }),
    onDone: () => void (plain.done += 1),
  });
  const runner = new TcpStreamRunner({
    input,
    clock: fastClock,
    onFact: (fact, seq) => void fast.facts.push({ seq, fact }),
    onDone: () => void (fast.done += 1),
  });
  const where = (i: number) => steps.slice(0, i + 1).map((s) => s.label).join(" → ");
  for (const [i, step] of steps.entries()) {
    if (step.kind === "tick") {
      plainClock.increment(step.ms);
      fastClock.increment(step.ms);
    } else {
      actor.send(step.make(plainClock.now()));
      runner.send(step.make(fastClock.now()));
    }
    const s = actor.getSnapshot();
    const v = runner.view();
    const got = { facts: fast.facts, done: fast.done, value: v.value, context: v.context, ended: v.done };
    const want = { facts: plain.facts, done: plain.done, value: s.value, context: s.context, ended: s.status === "done" };
    // Compared cheaply; expect() only to report a difference (thousands of scenarios run).
    if (!isDeepStrictEqual(got, want)) expect(got, where(i)).toEqual(want);
    // A stopped actor ignores further events (and would warn); the hub drops ended streams the same way.
    if (s.status === "done") break;
  }
  return { interpreted: runner.interpreted };
};

/** Every sequence of length 1..n over `alphabet`. */
const sequences = (alphabet: ReadonlyArray<Step>, n: number): Step[][] => {
  const out: Step[][] = [];
  let level: Step[][] = [[]];
  for (let len = 1; len <= n; len++) {
    level = level.flatMap((prefix) => alphabet.map((s) => [...prefix, s]));
    out.push(...level);
  }
  return out;
};

describe("TCP stream fast path vs tcpStreamMachine", () => {
  it.each(REASONS)("common path opened → closed(%s): same facts, no interpreter", (reason) => {
    expect(compare([opened, closed(reason)])).toEqual({ interpreted: false });
    expect(compare([openedWithTarget, closed(reason)])).toEqual({ interpreted: false });
  });

  it.each(REASONS)("closed(%s) before opened: same single fact, no interpreter", (reason) => {
    expect(compare([closed(reason)])).toEqual({ interpreted: false });
  });

  it("leaves the fast path (and replays into a real actor) on half-close, tunnel loss and shutdown", () => {
    expect(compare([opened, halfClosed, closed("targetClosed")])).toEqual({ interpreted: true });
    expect(compare([opened, tunnelLost, graceShort, closed("tunnelLost")])).toEqual({ interpreted: true });
    expect(compare([opened, tunnelLost, graceEnd])).toEqual({ interpreted: true });
    expect(compare([shutdown, graceEnd])).toEqual({ interpreted: true });
    expect(compare([opened, shutdown, closed("hubShutdown"), graceEnd])).toEqual({ interpreted: true });
  });

  it("agrees with the machine on every sequence of up to 3 events over all events and close reasons", () => {
    const alphabet = [opened, openedWithTarget, halfClosed, tunnelLost, shutdown, graceEnd, ...REASONS.map(closed)];
    const all = sequences(alphabet, 3);
    for (const steps of all) compare(steps);
    expect(all.length).toBe(alphabet.length + alphabet.length ** 2 + alphabet.length ** 3);
  });

  it("agrees with the machine on every sequence of up to 4 steps over the lifecycle events and timers", () => {
    const alphabet = [opened, halfClosed, tunnelLost, shutdown, graceShort, graceEnd, closed("clientClosed"), closed("tunnelLost")];
    for (const steps of sequences(alphabet, 4)) compare(steps);
  });

  it("tcpStreamFastStep declines every pair off the common path", () => {
    const context = initialTcpStreamContext(input);
    for (const value of ["opening", "open", "closed"] as const) {
      const state = { value, context };
      expect(tcpStreamFastStep(state, { type: "policy.tunnelLost", atMs: 1 })).toBeUndefined();
      expect(tcpStreamFastStep(state, { type: "policy.shutdown", atMs: 1 })).toBeUndefined();
      expect(tcpStreamFastStep(state, { type: "stream.halfClosed", atMs: 1, side: "target" })).toBeUndefined();
    }
    expect(tcpStreamFastStep({ value: "open", context }, { type: "stream.opened", atMs: 1 })).toBeUndefined();
    expect(tcpStreamFastStep({ value: "closed", context }, { type: "stream.opened", atMs: 1 })).toBeUndefined();
  });
});
