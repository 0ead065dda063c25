import { createServer } from "node:net";
import { createSocket } from "node:dgram";

/** A TCP port that was free a moment ago on `host` (the OS picks it: bind 0, read, close). */
export const freePort = (host = "127.0.0.1"): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        server.close();
        reject(new Error("freePort: server.address() is not an AddressInfo"));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });

/** `count` distinct free TCP ports. */
export const freePorts = async (count: number, host = "127.0.0.1"): Promise<number[]> => {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort(host));
  return [...ports];
};

/** A UDP port that was free a moment ago. */
export const freeUdpPort = (host = "127.0.0.1"): Promise<number> =>
  new Promise((resolve, reject) => {
    const socket = createSocket("udp4");
    socket.once("error", reject);
    socket.bind(0, host, () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
