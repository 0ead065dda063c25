import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { sendRandom, writeWithBackpressure } from "./targets.js";

/** Connects over TCP (half-open allowed, so a test can observe FIN in each direction separately). */
export const connectTcp = async (port: number, host = "127.0.0.1", timeoutMs = 10_000): Promise<Socket> => {
  const socket = connect({ port, host, allowHalfOpen: true });
  const timer = setTimeout(() => socket.destroy(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    await once(socket, "connect");
    // Resets are expected in some tests (tunnel lost, port removed); the read helpers report them where
    // they matter, so an unobserved one must not become an uncaught exception.
    socket.on("error", () => undefined);
    return socket;
  } finally {
    clearTimeout(timer);
  }
};

/** Resolves with the error code when a connection attempt fails (e.g. `ECONNREFUSED`), or `"connected"`. */
export const tryConnect = async (port: number, host = "127.0.0.1"): Promise<string> => {
  try {
    const socket = await connectTcp(port, host, 5_000);
    socket.destroy();
    return "connected";
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  }
};

/** Collects everything until the peer's FIN (or rejects on error / close without FIN). */
export const readUntilEnd = (socket: Socket, timeoutMs = 30_000): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => finish(new Error(`no FIN within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => chunks.push(chunk);
    const onEnd = () => finish();
    const onClose = () => finish(new Error("connection closed without FIN"));
    const finish = (error?: Error) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("error", finish);
      socket.off("close", onClose);
      if (error) reject(error);
      else resolve(Buffer.concat(chunks));
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("error", finish);
    socket.on("close", onClose);
    socket.resume();
  });

/** Reads exactly `length` bytes (leaves any extra bytes unshifted). */
export const readExactly = (socket: Socket, length: number, timeoutMs = 10_000): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const timer = setTimeout(() => finish(new Error(`read ${have} of ${length} bytes within ${timeoutMs} ms`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      if (have >= length) finish();
    };
    const onEnd = () => finish(new Error(`FIN after ${have} of ${length} bytes`));
    const finish = (error?: Error) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("error", finish);
      if (error) {
        reject(error);
        return;
      }
      socket.pause();
      const all = Buffer.concat(chunks);
      if (all.length > length) socket.unshift(all.subarray(length));
      resolve(all.subarray(0, length));
    };
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("error", finish);
    socket.resume();
  });

/** Sends `payload` and expects the same bytes back (for echo targets). */
export const echoRoundTrip = async (socket: Socket, payload: Buffer = randomBytes(64)): Promise<void> => {
  const reply = readExactly(socket, payload.length);
  socket.write(payload);
  const echoed = await reply;
  if (!echoed.equals(payload)) throw new Error(`echo mismatch: sent ${payload.length} bytes, got different bytes back`);
};

export interface HashExchangeResult {
  readonly localAddress: string;
  readonly localPort: number;
  readonly sent: number;
  readonly received: number;
}

export interface HashExchangeOptions {
  readonly host?: string;
  /** Do not read the reply until this settles (slow-reader tests). */
  readonly readGate?: Promise<unknown>;
  /** Called with the connected socket (e.g. to record its local port before the exchange finishes). */
  readonly onConnected?: (socket: Socket) => void;
  readonly timeoutMs?: number;
}

/**
 * One exchange with a hash target (see `startHashTarget`): sends `send` random bytes while receiving `receive`
 * random bytes, then checks both sha256 digests in the target's trailer. Rejects with a message saying which
 * direction was corrupted.
 */
export const hashExchange = async (port: number, send: number, receive: number, options: HashExchangeOptions = {}): Promise<HashExchangeResult> => {
  const socket = await connectTcp(port, options.host);
  const { localAddress = "", localPort = 0 } = socket;
  options.onConnected?.(socket);
  const timeoutMs = options.timeoutMs ?? 60_000;
  const timer = setTimeout(() => socket.destroy(new Error(`hash exchange (send ${send}, receive ${receive}) timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    const requestHeader = Buffer.alloc(16);
    requestHeader.writeBigUInt64BE(BigInt(send), 0);
    requestHeader.writeBigUInt64BE(BigInt(receive), 8);

    socket.pause();
    const replyDone = (async () => {
      await options.readGate;
      const hash = createHash("sha256");
      let received = 0;
      let trailer = Buffer.alloc(0);
      for await (const chunk of socket.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
        const payloadPart = Math.max(0, Math.min(chunk.length, receive - received));
        if (payloadPart > 0) hash.update(chunk.subarray(0, payloadPart));
        if (payloadPart < chunk.length) trailer = Buffer.concat([trailer, chunk.subarray(payloadPart)]);
        received += chunk.length;
      }
      return { digest: hash.digest(), trailer, received };
    })();
    replyDone.catch(() => undefined);

    await writeWithBackpressure(socket, requestHeader);
    const sentDigest = await sendRandom(socket, send);
    const reply = await replyDone;
    socket.end();

    if (reply.received !== receive + 64) {
      throw new Error(`expected ${receive} payload bytes + 64 trailer bytes, got ${reply.received} bytes in total`);
    }
    if (!reply.trailer.subarray(0, 32).equals(sentDigest)) {
      throw new Error(`client→target corruption: target's sha256 of ${send} bytes differs from the client's`);
    }
    if (!reply.trailer.subarray(32, 64).equals(reply.digest)) {
      throw new Error(`target→client corruption: client's sha256 of ${receive} bytes differs from the target's`);
    }
    return { localAddress, localPort, sent: send, received: receive };
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
};
