#!/usr/bin/env node
// The whole test suite: Rust unit tests of the addon, then vitest (unit + integration tiers).
// Prints one closing line "tests: N passed, N failed" that covers both runners.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const extra = process.argv.slice(2);

function cargoTest() {
  // --release reuses the dependency builds of the addon build (one compile of tokio/rustls, not two).
  const res = spawnSync("cargo", ["test", "--release", "--color", "never"], {
    cwd: join(root, "native"),
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  process.stdout.write(res.stdout ?? "");
  let passed = 0;
  let failed = 0;
  for (const m of (res.stdout ?? "").matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
    passed += Number(m[1]);
    failed += Number(m[2]);
  }
  if (res.status !== 0 && failed === 0) failed = 1; // a build failure counts as a failure
  return { passed, failed, ok: res.status === 0 };
}

function vitest() {
  const out = join(mkdtempSync(join(tmpdir(), "portway-vitest-")), "results.json");
  const res = spawnSync(
    process.execPath,
    [join(root, "node_modules", "vitest", "vitest.mjs"), "run", "--reporter=default", "--reporter=json", `--outputFile.json=${out}`, ...extra],
    { cwd: root, stdio: "inherit" },
  );
  let passed = 0;
  let failed = 0;
  try {
    const report = JSON.parse(readFileSync(out, "utf8"));
    passed = report.numPassedTests ?? 0;
    failed = report.numFailedTests ?? 0;
    if (failed === 0) failed = report.numFailedTestSuites ?? 0; // a file that failed to load
  } catch {
    failed = 1;
  }
  if (res.status !== 0 && failed === 0) failed = 1;
  return { passed, failed, ok: res.status === 0 };
}

const rust = cargoTest();
const ts = vitest();
const passed = rust.passed + ts.passed;
const failed = rust.failed + ts.failed;
console.log(`\nrust: ${rust.passed} passed, ${rust.failed} failed; vitest: ${ts.passed} passed, ${ts.failed} failed`);
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(rust.ok && ts.ok && failed === 0 && passed > 0 ? 0 : 1);
