/** The installed Portway version (package.json), for `hub.started` events and `portway --version`. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../native/addon.js";

let cached: string | undefined;

export const portwayVersion = (): string => {
  if (cached !== undefined) return cached;
  try {
    cached = (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version?: string }).version ?? "unknown";
  } catch {
    cached = "unknown";
  }
  return cached;
};
