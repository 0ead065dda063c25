import { createHash, randomFillSync } from "node:crypto";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { readProxyHeader, type ProxyHeader, type ProxyMode } from "./proxy-header.js";

/** What a target saw on one accepted connection. Counters are updated live. */
export interface TargetConnection {
  readonly header: ProxyHeader | undefined;
  /** The hub's side of the target connection. */
  readonly peer: { address: string; port: number };
  bytesReceived: number;
  bytesSent: number;
  /** sha256 (hex) of all payload bytes received, set once the peer ended its write side. */
  receivedSha256?: string;
  /** True once the peer's FIN arrived. */
  sawEnd: boolean;
  closed: boolean;
  /** Code of the socket error the connection ended with, if any (`ECONNRESET` when the hub reset it). */
  socketError?: string;
}

export interface Target {
  readonly host: string;
  readonly port: number;
  /** `host:port`, the form `targets` takes in `updateAllowedEdges`. */
  readonly address: string;
  readonly connections: TargetConnection[];
  /** Errors from connections (bad PROXY header, protocol misuse). A test asserts this stays empty. */
  readonly errors: Error[];
  close(): Promise<void>;
}

type Handler = (socket: Socket, connection: TargetConnection) => Promise<void>;

const startTarget = async (proxy: ProxyMode, handle: Handler): Promise<Target> => {
  const connections: TargetConnection[] = [];
  const errors: Error[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // Errors (e.g. ECONNRESET when a test tears a stream down) are reported through the handler's rejection.
    socket.on("error", () => undefined);
    void (async () => {
      const header = await readProxyHeader(socket, proxy);
      const connection: TargetConnection = {
        header,
        peer: { address: socket.remoteAddress ?? "", port: socket.remotePort ?? 0 },
        bytesReceived: 0,
        bytesSent: 0,
        sawEnd: false,
        closed: false,
      };
      connections.push(connection);
      socket.on("error", (error: NodeJS.ErrnoException) => {
        connection.socketError ??= error.code ?? error.message;
      });
      socket.on("close", () => {
        connection.closed = true;
      });
      await handle(socket, connection);
    })().catch((error: unknown) => {
      errors.push(error instanceof Error ? error : new Error(String(error)));
      socket.destroy();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const addressInfo = server.address();
  if (addressInfo === null || typeof addressInfo === "string") throw new Error("target: no AddressInfo");
  return {
    host: "127.0.0.1",
    port: addressInfo.port,
    address: `127.0.0.1:${addressInfo.port}`,
    connections,
    errors,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
};

/** Writes with backpressure; resolves when the chunk was accepted (waits for `drain` if the buffer is full). */
export const writeWithBackpressure = (socket: Socket, chunk: Buffer): Promise<void> => {
  if (socket.write(chunk)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      reject(new Error("socket closed while waiting for drain"));
    };
    const cleanup = () => {
      socket.off("drain", onDrain);
      socket.off("close", onClose);
    };
    socket.on("drain", onDrain);
    socket.on("close", onClose);
  });
};

/** Chunk size for generated payloads. */
const CHUNK = 64 * 1024;

/** Streams `total` random bytes to `socket`, honouring backpressure; returns their sha256. */
export const sendRandom = async (socket: Socket, total: number, onProgress?: (sent: number) => void): Promise<Buffer> => {
  const hash = createHash("sha256");
  let sent = 0;
  while (sent < total) {
    const chunk = randomFillSync(Buffer.allocUnsafe(Math.min(CHUNK, total - sent)));
    hash.update(chunk);
    await writeWithBackpressure(socket, chunk);
    sent += chunk.length;
    onProgress?.(sent);
  }
  return hash.digest();
};

/** PROXY header (per `proxy`), then echoes every byte; ends its write side after the peer's FIN. */
export const startEchoTarget = (proxy: ProxyMode = "v1"): Promise<Target> =>
  startTarget(proxy, async (socket, connection) => {
    socket.on("data", (chunk: Buffer) => {
      connection.bytesReceived += chunk.length;
      connection.bytesSent += chunk.length;
    });
    socket.on("end", () => {
      connection.sawEnd = true;
    });
    socket.pipe(socket);
    socket.resume();
  });

/**
 * Hash target. Request: 16-byte header (u64 BE `n` = bytes the client will send, u64 BE `m` = bytes it wants),
 * then `n` bytes. Right after the header the target starts streaming `m` random bytes (full duplex), and once
 * both directions are done it sends a 64-byte trailer: sha256(bytes received) ‖ sha256(bytes sent), then FIN.
 */
export const startHashTarget = (proxy: ProxyMode = "v1"): Promise<Target> =>
  startTarget(proxy, async (socket, connection) => {
    const received = createHash("sha256");
    let header = Buffer.alloc(0);
    let want = -1;
    let sending: Promise<Buffer> | undefined;
    let doneReceiving!: () => void;
    const receivedAll = new Promise<void>((resolve) => {
      doneReceiving = resolve;
    });
    const protocolError = new Promise<never>((_, reject) => {
      socket.on("data", (chunk: Buffer) => {
        let payload = chunk;
        if (want < 0) {
          header = Buffer.concat([header, chunk]);
          if (header.length < 16) return;
          want = Number(header.readBigUInt64BE(0));
          const reply = Number(header.readBigUInt64BE(8));
          payload = header.subarray(16);
          sending = sendRandom(socket, reply, (sent) => {
            connection.bytesSent = sent;
          });
          sending.catch(() => undefined);
        }
        connection.bytesReceived += payload.length;
        if (connection.bytesReceived > want) {
          reject(new Error(`hash target: client sent ${connection.bytesReceived} bytes, announced ${want}`));
          return;
        }
        received.update(payload);
        if (connection.bytesReceived === want) doneReceiving();
      });
      socket.on("end", () => {
        connection.sawEnd = true;
        if (want < 0 || connection.bytesReceived < want) {
          reject(new Error(`hash target: FIN after ${connection.bytesReceived} of ${want} announced bytes`));
        }
      });
    });
    protocolError.catch(() => undefined);
    socket.resume();
    await Promise.race([receivedAll, protocolError]);
    if (sending === undefined) throw new Error("hash target: finished receiving before the header");
    const sentSha = await Promise.race([sending, protocolError]);
    const receivedSha = received.digest();
    connection.receivedSha256 = receivedSha.toString("hex");
    socket.end(Buffer.concat([receivedSha, sentSha]));
  });

/** Counts and hashes what the peer sends until its FIN, recording both on `connection`. */
const receiveUntilEnd = async (socket: Socket, connection: TargetConnection): Promise<void> => {
  const hash = createHash("sha256");
  socket.on("data", (chunk: Buffer) => {
    connection.bytesReceived += chunk.length;
    hash.update(chunk);
  });
  socket.resume();
  await once(socket, "end");
  connection.sawEnd = true;
  connection.receivedSha256 = hash.digest("hex");
};

/** Reads until the peer's FIN, then replies sha256(received) (hex) + "\n" and ends: the half-close probe. */
export const startReplyAfterEndTarget = (proxy: ProxyMode = "v1"): Promise<Target> =>
  startTarget(proxy, async (socket, connection) => {
    await receiveUntilEnd(socket, connection);
    const reply = `${connection.receivedSha256}\n`;
    connection.bytesSent = reply.length;
    socket.end(reply);
  });

/** Sends `greeting` and ends its write side at once, then keeps reading until the peer's FIN: the reverse half-close. */
export const startEndFirstTarget = (proxy: ProxyMode = "v1", greeting = "hello\n"): Promise<Target> =>
  startTarget(proxy, async (socket, connection) => {
    socket.end(greeting);
    connection.bytesSent = greeting.length;
    await receiveUntilEnd(socket, connection);
  });

/** Reads; once `after` bytes have arrived it resets the connection (RST, no FIN): the target-side abort. */
export const startResetTarget = (proxy: ProxyMode = "v1", after = 1): Promise<Target> =>
  startTarget(proxy, async (socket, connection) => {
    socket.on("data", (chunk: Buffer) => {
      connection.bytesReceived += chunk.length;
      if (connection.bytesReceived >= after && !socket.destroyed) socket.resetAndDestroy();
    });
    socket.resume();
  });
