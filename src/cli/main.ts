/** Entry point of the `portway` binary (bin/portway.js imports this). */
import { NodeRuntime } from "@effect/platform-node";
import { Cause, Exit } from "effect";
import { describeFailure, exitCodeOf, runCommand } from "./commands.js";

NodeRuntime.runMain(runCommand(process.argv.slice(2), process.env), {
  disableErrorReporting: true,
  disablePrettyLogger: true,
  teardown: (exit, onExit) => {
    if (Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)) {
      process.stderr.write(`${describeFailure(exit.cause)}\n`);
    }
    onExit(exitCodeOf(exit));
  },
});
