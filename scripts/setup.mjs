#!/usr/bin/env node
// Brings a fresh clone to a runnable state: npm dependencies, the Rust addon, the TypeScript build, a
// nats-server with JetStream, and (with --with-peers) the Debian programs the tests and benchmark talk to.
// Node builtins only: this runs before `npm ci`.
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = new Set(process.argv.slice(2));
const quiet = process.env.PORTWAY_SETUP_QUIET === "1";

const log = (msg) => {
  if (!quiet) process.stderr.write(`[setup] ${msg}\n`);
};

function run(cmd, cmdArgs, opts = {}) {
  const res = spawnSync(cmd, cmdArgs, { cwd: root, stdio: "inherit", ...opts });
  if (res.error) fail(`could not run ${cmd}: ${res.error.message}`);
  if (res.status !== 0) fail(`${cmd} ${cmdArgs.join(" ")} exited with ${res.status}`);
}

function fail(msg) {
  process.stderr.write(`[setup] error: ${msg}\n`);
  process.exit(1);
}

function has(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

function mtime(path) {
  return existsSync(path) ? statSync(path).mtimeMs : 0;
}

function ensureNodeVersion() {
  const [major, minor] = process.versions.node.split(".").map(Number);
  if (major < 20 || (major === 20 && minor < 10)) {
    fail(`Node.js >= 20.10 is required (found ${process.versions.node}); see docs/adr/0001-runtime-and-versions.md`);
  }
}

function ensureNpmDependencies() {
  const installed = join(root, "node_modules", ".package-lock.json");
  if (mtime(installed) >= mtime(join(root, "package-lock.json")) && mtime(installed) >= mtime(join(root, "package.json"))) return;
  // `npm install`, not `npm ci`: npm 11 rejects this lock file in `ci` because of platform-specific optional
  // packages (msgpackr-extract) it never recorded; `install` resolves from the same lock and leaves it unchanged.
  log("installing npm dependencies (npm install from package-lock.json)");
  run("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error"]);
}

function ensureNativeAddon() {
  if (!has("cargo")) fail("cargo (Rust) is required to build the native addon: install it with rustup");
  log("building the native addon (cargo build --release, incremental)");
  run(process.execPath, [join(root, "scripts", "build-native.mjs")]);
}

function ensureTypeScriptBuild() {
  log("compiling TypeScript (tsc -p tsconfig.build.json)");
  run(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.build.json"]);
}

async function ensureNatsServer() {
  const script = join(root, "scripts", "ensure-nats.mjs");
  if (!existsSync(script)) return;
  const mod = await import(pathToFileURL(script).href);
  if (typeof mod.ensureNatsServer === "function") await mod.ensureNatsServer({ log });
}

// Programs from Debian that the integration tests and the benchmark start as real peers.
const PEERS = [
  ["haproxy", "haproxy"],
  ["nginx", "nginx-light"],
  ["socat", "socat"],
  ["iperf3", "iperf3"],
  ["dnsmasq", "dnsmasq-base"],
  ["dig", "dnsutils"],
  ["wrk", "wrk"],
  ["turnserver", "coturn"],
  // Debian's own (too old) nats-server: the tests prove that Portway refuses it with a clear message.
  ["/usr/sbin/nats-server", "nats-server"],
];

function ensurePeers() {
  const present = (bin) => (bin.startsWith("/") ? existsSync(bin) : has(bin) || existsSync(`/usr/sbin/${bin}`) || existsSync(`/usr/bin/${bin}`));
  const missing = PEERS.filter(([bin]) => !present(bin));
  if (missing.length === 0) return;
  const pkgs = missing.map(([, pkg]) => pkg);
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    fail(`missing test peers: ${missing.map(([b]) => b).join(", ")}; install with: sudo apt-get install -y ${pkgs.join(" ")}`);
  }
  log(`installing test peers from Debian: ${pkgs.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  run("apt-get", ["update", "-qq"], { env });
  run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...pkgs], { env });
  // The Debian packages start their daemons; the tests start their own instances on free ports.
  spawnSync("sh", ["-c", "systemctl stop nginx haproxy coturn nats-server 2>/dev/null; for s in nginx haproxy coturn nats-server; do service $s stop 2>/dev/null; done; true"], { stdio: "ignore" });
}

ensureNodeVersion();
ensureNpmDependencies();
if (args.has("--with-peers")) ensurePeers();
ensureNativeAddon();
ensureTypeScriptBuild();
await ensureNatsServer();
log("ready");
