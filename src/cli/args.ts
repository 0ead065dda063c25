/** Command-line parsing (node:util parseArgs) and help text built from the same field specs as the config. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { Data, Effect } from "effect";
import type { FieldSpec, FlagValues } from "../config/sources.js";

/** Bad command line: unknown flag, missing value, stray argument. Exit code 2. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly message: string }> {}

/** A flag that is not a config field (`--json`, `--help`, `--config`). */
export interface ExtraFlag {
  readonly flag: string;
  readonly short?: string;
  readonly boolean?: boolean;
  readonly env?: string;
  readonly placeholder?: string;
  readonly description: string;
}

export const commonFlags = (configEnv: string | undefined): ReadonlyArray<ExtraFlag> => [
  ...(configEnv === undefined
    ? []
    : [{ flag: "config", env: configEnv, placeholder: "FILE", description: "config file, JSON or YAML (by extension; else YAML)" }]),
  { flag: "json", boolean: true, description: "log JSON lines instead of text" },
  { flag: "help", short: "h", boolean: true, description: "show this help" },
];

/** Parses argv for one command; unknown flags and positionals are usage errors naming the flag. */
export const parseCommandArgs = (
  command: string,
  argv: ReadonlyArray<string>,
  specs: ReadonlyArray<FieldSpec>,
  extras: ReadonlyArray<ExtraFlag>,
): Effect.Effect<FlagValues, UsageError> =>
  Effect.try({
    try: () => {
      const options: NonNullable<ParseArgsConfig["options"]> = {};
      for (const spec of specs) {
        if (spec.flag === undefined) continue;
        options[spec.flag] = spec.kind === "boolean" ? { type: "boolean" } : { type: "string", multiple: spec.kind === "edgeSpec" };
      }
      for (const extra of extras) {
        options[extra.flag] = { type: extra.boolean === true ? "boolean" : "string", ...(extra.short === undefined ? {} : { short: extra.short }) };
      }
      const { values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false });
      return values as FlagValues;
    },
    catch: (error) => {
      const message = error instanceof Error ? error.message : String(error);
      // Node's parse errors span lines (e.g. "… is ambiguous." then how to pass a value starting with '-'): keep all.
      const oneLine = message.split("\n").map((l) => l.trim()).filter(Boolean).join(" ");
      return new UsageError({ message: `portway ${command}: ${oneLine} (see \`portway ${command} --help\`)` });
    },
  });

const row = (left: string, env: string | undefined, description: string): string =>
  `  ${left.padEnd(34)} ${(env ?? "").padEnd(38)} ${description}`;

/** Renders help: usage line, summary, then every flag with its environment variable and default. */
export const renderHelp = (
  usage: string,
  summary: string,
  specs: ReadonlyArray<FieldSpec>,
  extras: ReadonlyArray<ExtraFlag>,
  footer = "",
): string => {
  const lines = [`Usage: ${usage}`, "", summary, "", row("Flag", "Environment variable", "Meaning"), ""];
  const envOnly: FieldSpec[] = [];
  for (const spec of specs) {
    if (spec.flag === undefined) {
      envOnly.push(spec);
      continue;
    }
    const twin = specs.find(
      (s) => s !== spec && s.flag === undefined && s.kind === spec.kind && s.path.join(".") === spec.path.join("."),
    );
    lines.push(row(`--${spec.flag}${spec.placeholder === "" ? "" : ` ${spec.placeholder}`}`, spec.env ?? twin?.env, spec.description));
  }
  for (const spec of envOnly) lines.push(row("", spec.env, spec.description));
  for (const extra of extras) {
    const flag = `${extra.short === undefined ? "" : `-${extra.short}, `}--${extra.flag}${extra.placeholder === undefined ? "" : ` ${extra.placeholder}`}`;
    lines.push(row(flag, extra.env, extra.description));
  }
  lines.push("", "Precedence: built-in defaults < config file < environment < flags.");
  if (footer !== "") lines.push("", footer);
  return `${lines.join("\n")}\n`;
};
