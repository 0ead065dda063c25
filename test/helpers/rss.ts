import { readFileSync } from "node:fs";

/** VmRSS of a process in KiB, from /proc/<pid>/status (Linux). */
export const rssKiB = (pid: number | "self" = "self"): number => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS line in /proc/${pid}/status`);
  return Number(match[1]);
};
