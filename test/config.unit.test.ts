import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Effect, Either } from "effect";
import { afterAll, describe, expect, it } from "vitest";
import { loadEdgeConfig, resolveEdgeOptions } from "../src/config/edge.js";
import { loadHubConfig, resolveAllowedEdges, resolveHubOptions, type ConfigInputs } from "../src/config/hub.js";
import { ConfigError } from "../src/errors.js";
import { encodeConnectionToken } from "../src/token.js";

const dir = mkdtempSync(join(tmpdir(), "portway-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string) => {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
};

const hub = (inputs: ConfigInputs) => Effect.runSync(loadHubConfig(inputs));
const hubError = (inputs: ConfigInputs): ConfigError => {
  const result = Effect.runSync(Effect.either(loadHubConfig(inputs)));
  if (Either.isRight(result)) throw new Error("expected a ConfigError");
  expect(result.left).toBeInstanceOf(ConfigError);
  return result.left;
};
const FP = "0f".repeat(32);

describe("hub config", () => {
  it("applies documented defaults", () => {
    expect(hub({})).toMatchObject({
      hubId: "hub",
      bindHost: "0.0.0.0",
      tunnelPort: 8443,
      targetHost: "127.0.0.1",
      proxyProtocol: { tcp: "v1", udp: "v2" },
      pingIntervalMs: 5000,
      idleTimeoutMs: 15000,
      edges: [],
    });
  });

  it("reads a JSON file, with edges and their defaults", () => {
    const path = file(
      "hub.json",
      JSON.stringify({ tunnelPort: 9000, edges: [{ id: "e1", secret: "s", listenPorts: [80], targets: { 80: "10.0.0.5:8080" } }] }),
    );
    const config = hub({ file: path });
    expect(config.tunnelPort).toBe(9000);
    expect(config.edges).toEqual([
      { id: "e1", secret: "s", listenPorts: [80], listenPortsUdp: [], targets: { "80": "10.0.0.5:8080" }, stunIntervalSecs: 300 },
    ]);
  });

  it("reads a YAML file (by extension and by content)", () => {
    const yaml = "tunnelPort: 9100\nproxyProtocol:\n  tcp: v2\nedges:\n  - id: e1\n    secret: s\n    listenPorts: [22]\n";
    for (const name of ["hub.yaml", "hub.conf"]) {
      const config = hub({ file: file(name, yaml) });
      expect(config.tunnelPort).toBe(9100);
      expect(config.proxyProtocol).toEqual({ tcp: "v2", udp: "v2" });
      expect(config.edges[0]?.listenPorts).toEqual([22]);
    }
  });

  it("merges defaults < file < env < flags", () => {
    const path = file("merge.yaml", "tunnelPort: 1000\ntargetHost: file.example\nhubId: from-file\n");
    const env = { PORTWAY_HUB_TUNNEL_PORT: "2000", PORTWAY_HUB_TARGET_HOST: "env.example" };
    const config = hub({ file: path, env, flags: { "tunnel-port": "3000" } });
    expect(config.tunnelPort).toBe(3000);
    expect(config.targetHost).toBe("env.example");
    expect(config.hubId).toBe("from-file");
    expect(config.bindHost).toBe("0.0.0.0");
  });

  it("keeps file values next to a flag in the same nested object", () => {
    const path = file("nested.yaml", "proxyProtocol:\n  udp: none\n");
    expect(hub({ file: path, flags: { "proxy-protocol-tcp": "none" } }).proxyProtocol).toEqual({ tcp: "none", udp: "none" });
  });

  it("takes allowed edges from --edge flags and PORTWAY_HUB_EDGES", () => {
    expect(hub({ flags: { edge: ["e1:80,443:se:cret", "e2::x"] } }).edges.map((e) => [e.id, e.listenPorts, e.secret])).toEqual([
      ["e1", [80, 443], "se:cret"],
      ["e2", [], "x"],
    ]);
    expect(hub({ env: { PORTWAY_HUB_EDGES: '[{"id":"e3","secret":"s","listenPorts":[5432]}]' } }).edges[0]?.id).toBe("e3");
  });

  it("rejects an unknown key in a file, naming the key and the file", () => {
    const path = file("typo.json", JSON.stringify({ tunelPort: 1 }));
    const error = hubError({ file: path });
    expect(error.field).toBe("tunelPort");
    expect(error.message).toMatch(/tunelPort: is not a known setting/);
    expect(error.message).toContain(path);
  });

  it("rejects an unknown key inside an edge", () => {
    const error = hubError({ file: file("edge-typo.yaml", "edges:\n  - id: e1\n    secret: s\n    listenPort: [80]\n") });
    expect(error.field).toBe("edges.0.listenPort");
  });

  it("names the field, the value and the source of a bad port", () => {
    const fromFile = hubError({ file: file("badport.json", JSON.stringify({ tunnelPort: 70000 })) });
    expect(fromFile.field).toBe("tunnelPort");
    expect(fromFile.message).toMatch(/must be an integer 0\.\.65535.*got 70000/);

    const fromEnv = hubError({ env: { PORTWAY_HUB_TUNNEL_PORT: "70000" } });
    expect(fromEnv.message).toMatch(/tunnelPort: .*got 70000 \(from PORTWAY_HUB_TUNNEL_PORT\)/);

    const notNumber = hubError({ flags: { "tunnel-port": "http" } });
    expect(notNumber.message).toMatch(/tunnelPort: must be a whole number, got "http" \(from --tunnel-port\)/);

    const edgePort = hubError({ file: file("edgeport.yaml", "edges:\n  - id: e1\n    secret: s\n    listenPorts: [80, 0]\n") });
    expect(edgePort.field).toBe("edges.0.listenPorts.1");
    expect(edgePort.message).toMatch(/got 0/);
  });

  it("rejects other bad values clearly", () => {
    expect(hubError({ flags: { "proxy-protocol-tcp": "v3" } }).message).toMatch(/proxyProtocol\.tcp: must be "v1", "v2" or "none", got "v3"/);
    expect(hubError({ flags: { edge: ["e1:80,80:s"] } }).message).toMatch(/lists port 80 twice/);
    expect(hubError({ flags: { edge: ["e1:80:s", "e1:81:t"] } }).message).toMatch(/edges\.1\.id: duplicate edge id "e1"/);
    expect(hubError({ flags: { edge: ["e1"] } }).message).toMatch(/ID:PORTS:SECRET/);
    expect(hubError({ flags: { cert: "/x.pem" } }).message).toMatch(/tls\.keyFile: is required when tls\.certFile is given/);
    expect(hubError({ flags: { "ping-interval-ms": "5000", "idle-timeout-ms": "4000" } }).field).toBe("idleTimeoutMs");
    expect(hubError({ env: { PORTWAY_HUB_EDGES: "[{" } }).message).toMatch(/edges: is not valid JSON/);
    const targets = hubError({ file: file("targets.json", JSON.stringify({ edges: [{ id: "e", secret: "s", targets: { 80: "nope" } }] })) });
    expect(targets.field).toBe("edges.0.targets.80");
    expect(targets.message).toMatch(/"host:port"/);
  });

  it("reports unreadable and malformed files", () => {
    expect(hubError({ file: join(dir, "missing.yaml") }).message).toMatch(/config: cannot be read \(ENOENT/);
    expect(hubError({ file: file("bad.json", "{ nope") }).message).toMatch(/config: is not valid JSON/);
    expect(hubError({ file: file("bad.yaml", "a: [1,\n") }).message).toMatch(/config: is not valid YAML/);
    expect(hubError({ file: file("list.yaml", "- 1\n- 2\n") }).message).toMatch(/must be an object/);
  });

  it("checks options passed in code and allowed-edge updates", () => {
    expect(Effect.runSync(resolveHubOptions({ tunnelPort: 0 })).tunnelPort).toBe(0);
    const bad = Effect.runSync(Effect.either(resolveAllowedEdges([{ id: "e 1", secret: "s" }])));
    expect(Either.isLeft(bad) && bad.left.field).toBe("edges.0.id");
  });
});

describe("edge config", () => {
  const token = encodeConnectionToken({ hubHost: "hub.example", hubPort: 8443, edgeId: "e1", secret: "s", hubCertFingerprint: FP });

  it("takes hubs, id, secret and fingerprint from a token", () => {
    expect(Effect.runSync(resolveEdgeOptions({ token }))).toEqual({
      hubs: [{ host: "hub.example", port: 8443 }],
      edgeId: "e1",
      secret: "s",
      bindAddress: "0.0.0.0",
      hubCertFingerprint: FP,
      caPem: null,
      serverName: null,
      pingIntervalMs: 5000,
      idleTimeoutMs: 15000,
      reconnectInitialMs: 250,
      reconnectMaxMs: 30000,
      gapHoldMs: 3000,
    });
  });

  it("detects a dead hub faster when the edge has several hubs (flags override)", () => {
    const several = encodeConnectionToken({
      hubs: [
        { host: "a.example", port: 8443 },
        { host: "b.example", port: 8443 },
      ],
      edgeId: "e1",
      secret: "s",
    });
    const fast = Effect.runSync(resolveEdgeOptions({ token: several }));
    expect(fast).toMatchObject({ pingIntervalMs: 1000, idleTimeoutMs: 2500, gapHoldMs: 3000 });
    expect(fast.hubs.map((h) => h.host)).toEqual(["a.example", "b.example"]);
    const flagged = Effect.runSync(
      loadEdgeConfig({ flags: { token: several, "ping-interval-ms": "400", "idle-timeout-ms": "1500", "gap-hold-ms": "0" } }),
    );
    expect(flagged).toMatchObject({ pingIntervalMs: 400, idleTimeoutMs: 1500, gapHoldMs: 0 });
    // An explicit ping interval alone keeps the idle timeout above it.
    expect(Effect.runSync(resolveEdgeOptions({ token: several, pingIntervalMs: 2500 }))).toMatchObject({ idleTimeoutMs: 5000 });
  });

  it("accepts the explicit seed shape", () => {
    const config = Effect.runSync(resolveEdgeOptions({ hubHost: "10.1.1.1", hubPort: 443, edgeId: "e2", secret: "x", bindAddress: "127.0.0.1" }));
    expect(config).toMatchObject({ hubs: [{ host: "10.1.1.1", port: 443 }], edgeId: "e2", bindAddress: "127.0.0.1", hubCertFingerprint: null });
  });

  it("lets flags override env and the token", () => {
    const config = Effect.runSync(
      loadEdgeConfig({ env: { PORTWAY_EDGE_TOKEN: token, PORTWAY_EDGE_HUB_PORT: "9000" }, flags: { "hub-port": "9443", "bind-address": "127.0.0.1" } }),
    );
    expect(config.hubs).toEqual([{ host: "hub.example", port: 9443 }]);
    expect(config.bindAddress).toBe("127.0.0.1");
    expect(config.edgeId).toBe("e1");
  });

  it("reads a YAML file and normalizes the fingerprint", () => {
    const path = file("edge.yml", `hubHost: hub.example\nhubPort: 8443\nedgeId: e1\nsecret: s\nhubCertFingerprint: "${FP.toUpperCase()}"\n`);
    expect(Effect.runSync(loadEdgeConfig({ file: path })).hubCertFingerprint).toBe(FP);
  });

  it("names what is missing or wrong", () => {
    const error = (inputs: ConfigInputs) => {
      const result = Effect.runSync(Effect.either(loadEdgeConfig(inputs)));
      if (Either.isRight(result)) throw new Error("expected a ConfigError");
      return result.left;
    };
    expect(error({}).message).toMatch(/hubHost: is required \(or give a token\)/);
    expect(error({ flags: { "hub-host": "h", "hub-port": "1" } }).message).toMatch(/edgeId: is required/);
    expect(error({ env: { PORTWAY_EDGE_TOKEN: "%%%" } }).message).toMatch(/token: token is not base64url.*\(from PORTWAY_EDGE_TOKEN\)/);
    expect(error({ flags: { token, "hub-fingerprint": "xyz" } }).message).toMatch(/hubCertFingerprint: must be a sha256 fingerprint/);
    expect(error({ file: file("edge-typo.json", JSON.stringify({ tokn: token })) }).field).toBe("tokn");
  });
});
