#!/usr/bin/env node
// Builds the Rust addon (release) and copies the library to native/index.node.
// Always runs cargo: it is incremental, so an up-to-date build is quick.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, readFileSync, renameSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const nativeDir = join(dirname(fileURLToPath(import.meta.url)), "..", "native");
const cargo = process.env.CARGO ?? "cargo";

const build = spawnSync(cargo, ["build", "--release"], { cwd: nativeDir, stdio: "inherit" });
if (build.error) {
  const hint = build.error.code === "ENOENT" ? " (is the Rust toolchain installed and on PATH? https://rustup.rs)" : "";
  console.error(`build-native: cannot run ${cargo}: ${build.error.message}${hint}`);
  process.exit(1);
}
if (build.status !== 0) {
  console.error(`build-native: cargo build --release failed (exit ${build.status ?? build.signal})`);
  process.exit(build.status ?? 1);
}

const libNames = {
  linux: "libportway_native.so",
  darwin: "libportway_native.dylib",
  win32: "portway_native.dll",
};
const libName = libNames[process.platform];
if (!libName) {
  console.error(`build-native: unsupported platform ${process.platform}`);
  process.exit(1);
}
const built = join(nativeDir, "target", "release", libName);
if (!existsSync(built)) {
  console.error(`build-native: cargo succeeded but ${built} is missing`);
  process.exit(1);
}
const dest = join(nativeDir, "index.node");
// Replace by rename, never overwrite in place: a running process has the old file mapped, and writing
// into it crashes that process.
if (!existsSync(dest) || !readFileSync(dest).equals(readFileSync(built))) {
  const tmp = `${dest}.${process.pid}.tmp`;
  copyFileSync(built, tmp);
  renameSync(tmp, dest);
}
console.log(`build-native: ${dest}`);
