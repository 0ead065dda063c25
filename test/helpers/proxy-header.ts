import type { Socket } from "node:net";

/** A parsed PROXY protocol header (HAProxy proxy-protocol.txt), v1 text or v2 binary. */
export interface ProxyHeader {
  readonly version: 1 | 2;
  /** `TCP4` | `TCP6` | `UNKNOWN` for v1; `TCP4` | `TCP6` | `UDP4` | `UDP6` | `LOCAL` | `UNSPEC` for v2. */
  readonly protocol: string;
  readonly sourceAddress: string;
  readonly destinationAddress: string;
  readonly sourcePort: number;
  readonly destinationPort: number;
  /** The header bytes exactly as received. */
  readonly raw: Buffer;
}

export type ProxyMode = "v1" | "v2" | "none";

export class ProxyHeaderError extends Error {
  override readonly name = "ProxyHeaderError";
}

const V1_MAX = 107;
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

const parseV1 = (line: Buffer): ProxyHeader => {
  const text = line.subarray(0, line.length - 2).toString("latin1");
  const parts = text.split(" ");
  if (parts[0] !== "PROXY") throw new ProxyHeaderError(`v1 header does not start with "PROXY ": ${JSON.stringify(text)}`);
  if (parts[1] === "UNKNOWN") {
    return { version: 1, protocol: "UNKNOWN", sourceAddress: "", destinationAddress: "", sourcePort: 0, destinationPort: 0, raw: line };
  }
  if (parts.length !== 6 || (parts[1] !== "TCP4" && parts[1] !== "TCP6")) {
    throw new ProxyHeaderError(`malformed v1 header: ${JSON.stringify(text)}`);
  }
  const [, protocol, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const port = (value: string) => {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(value) || Number(value) > 65535) {
      throw new ProxyHeaderError(`bad port ${JSON.stringify(value)} in v1 header: ${JSON.stringify(text)}`);
    }
    return Number(value);
  };
  return {
    version: 1,
    protocol,
    sourceAddress: src,
    destinationAddress: dst,
    sourcePort: port(sport),
    destinationPort: port(dport),
    raw: line,
  };
};

const ipv6 = (bytes: Buffer): string => {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return groups.join(":");
};

const parseV2 = (header: Buffer): ProxyHeader => {
  const versionCommand = header[12] ?? 0;
  const familyTransport = header[13] ?? 0;
  if (versionCommand >> 4 !== 2) throw new ProxyHeaderError(`v2 header with version nibble ${versionCommand >> 4}`);
  const body = header.subarray(16);
  const base = { version: 2 as const, raw: header };
  if ((versionCommand & 0x0f) === 0) {
    return { ...base, protocol: "LOCAL", sourceAddress: "", destinationAddress: "", sourcePort: 0, destinationPort: 0 };
  }
  const transport = (familyTransport & 0x0f) === 2 ? "UDP" : "TCP";
  switch (familyTransport >> 4) {
    case 1:
      if (body.length < 12) throw new ProxyHeaderError("v2 INET address block shorter than 12 bytes");
      return {
        ...base,
        protocol: `${transport}4`,
        sourceAddress: [...body.subarray(0, 4)].join("."),
        destinationAddress: [...body.subarray(4, 8)].join("."),
        sourcePort: body.readUInt16BE(8),
        destinationPort: body.readUInt16BE(10),
      };
    case 2:
      if (body.length < 36) throw new ProxyHeaderError("v2 INET6 address block shorter than 36 bytes");
      return {
        ...base,
        protocol: `${transport}6`,
        sourceAddress: ipv6(body.subarray(0, 16)),
        destinationAddress: ipv6(body.subarray(16, 32)),
        sourcePort: body.readUInt16BE(32),
        destinationPort: body.readUInt16BE(34),
      };
    default:
      return { ...base, protocol: "UNSPEC", sourceAddress: "", destinationAddress: "", sourcePort: 0, destinationPort: 0 };
  }
};

/**
 * Tries to take one PROXY header off the front of `buf`.
 * Returns `undefined` if more bytes are needed; throws `ProxyHeaderError` if `buf` cannot start a header.
 */
export const takeProxyHeader = (buf: Buffer): { header: ProxyHeader; rest: Buffer } | undefined => {
  const probe = Math.min(buf.length, V2_SIGNATURE.length);
  if (probe > 0 && buf.subarray(0, probe).equals(V2_SIGNATURE.subarray(0, probe))) {
    if (buf.length < 16) return undefined;
    const total = 16 + buf.readUInt16BE(14);
    if (buf.length < total) return undefined;
    return { header: parseV2(buf.subarray(0, total)), rest: buf.subarray(total) };
  }
  const prefix = Buffer.from("PROXY ");
  const head = buf.subarray(0, Math.min(buf.length, prefix.length));
  if (!head.equals(prefix.subarray(0, head.length))) {
    throw new ProxyHeaderError(`stream does not start with a PROXY header: ${JSON.stringify(buf.subarray(0, 32).toString("latin1"))}`);
  }
  const end = buf.indexOf("\r\n");
  if (end === -1) {
    if (buf.length >= V1_MAX) throw new ProxyHeaderError(`v1 header longer than ${V1_MAX} bytes`);
    return undefined;
  }
  if (end + 2 > V1_MAX) throw new ProxyHeaderError(`v1 header longer than ${V1_MAX} bytes`);
  return { header: parseV1(buf.subarray(0, end + 2)), rest: buf.subarray(end + 2) };
};

/**
 * Reads the PROXY header (if `mode` expects one) from a freshly accepted socket. Bytes after the header are
 * pushed back (`unshift`), so the caller reads the payload from `socket` as if the header was never there.
 * The socket is left paused.
 */
export const readProxyHeader = (socket: Socket, mode: ProxyMode, timeoutMs = 10_000): Promise<ProxyHeader | undefined> => {
  if (mode === "none") return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new ProxyHeaderError(`no complete PROXY header within ${timeoutMs} ms`)), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("error", fail);
    };
    const fail = (error: Error) => {
      cleanup();
      reject(error);
    };
    const onEnd = () => fail(new ProxyHeaderError(`connection ended after ${buffered.length} bytes, before a complete PROXY header`));
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      let taken: ReturnType<typeof takeProxyHeader>;
      try {
        taken = takeProxyHeader(buffered);
      } catch (error) {
        fail(error as Error);
        return;
      }
      if (taken === undefined) return;
      cleanup();
      socket.pause();
      if (taken.rest.length > 0) socket.unshift(taken.rest);
      const expected = mode === "v1" ? 1 : 2;
      if (taken.header.version !== expected) {
        reject(new ProxyHeaderError(`expected a PROXY ${mode} header, got v${taken.header.version}`));
        return;
      }
      resolve(taken.header);
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("error", fail);
    socket.resume();
  });
};
