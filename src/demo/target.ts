/** The demo's target service: reads the PROXY v1 line the hub sends, then answers each message with what it saw. */
import { createServer, type AddressInfo, type Server } from "node:net";

/** What a PROXY v1 header says about the original client. */
export interface ProxyV1 {
  readonly family: string;
  readonly clientAddr: string;
  readonly serverAddr: string;
}

/** Parses `PROXY TCP4 <src> <dst> <sport> <dport>`; undefined when the line is not one. */
export const parseProxyV1 = (line: string): ProxyV1 | undefined => {
  const parts = line.trim().split(" ");
  if (parts[0] !== "PROXY" || parts.length !== 6) return undefined;
  const [, family, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const host = (ip: string) => (family === "TCP6" ? `[${ip}]` : ip);
  return { family, clientAddr: `${host(src)}:${sport}`, serverAddr: `${host(dst)}:${dport}` };
};

export interface EchoTarget {
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

const MAX_HEADER = 108; // PROXY v1 lines are at most 107 bytes plus CRLF.

/** Starts the target on loopback, on a free port. `onHeader` sees every parsed header (or the bad line). */
export const startEchoTarget = async (onHeader: (header: ProxyV1 | string) => void): Promise<EchoTarget> => {
  const server = createServer((socket) => {
    let buffered = Buffer.alloc(0);
    let header: ProxyV1 | undefined;
    socket.on("error", () => socket.destroy());
    socket.on("data", (chunk: Buffer) => {
      if (header === undefined) {
        buffered = Buffer.concat([buffered, chunk]);
        const end = buffered.indexOf("\r\n");
        if (end < 0) {
          if (buffered.length > MAX_HEADER) {
            onHeader(`no PROXY line in ${JSON.stringify(buffered.subarray(0, 40).toString())}`);
            socket.destroy();
          }
          return;
        }
        const line = buffered.subarray(0, end).toString("latin1");
        header = parseProxyV1(line);
        if (header === undefined) {
          onHeader(`not a PROXY v1 line: ${JSON.stringify(line)}`);
          socket.end("target: expected a PROXY v1 header\n");
          return;
        }
        onHeader(header);
        chunk = buffered.subarray(end + 2);
        if (chunk.length === 0) return;
      }
      socket.write(`target saw client ${header.clientAddr} say: ${chunk.toString().trim()}\n`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    server,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
};
