#!/usr/bin/env node
// Echo server for the benchmark, run as its own process so its event loop does not share time with the
// client that measures. Prints "listening <port>" once ready; exits on SIGTERM or when stdin closes.
import { createServer } from "node:net";

const server = createServer({ noDelay: true }, (socket) => {
  socket.setNoDelay(true);
  socket.on("error", () => socket.destroy());
  socket.pipe(socket);
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
