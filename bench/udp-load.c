// UDP load driver for the benchmark (bench/udp.mjs compiles it with `cc -O2` into a temp dir on first use).
// C with sendmmsg/recvmmsg so that the driver, not Node's one-datagram-per-call dgram, is never what limits direct
// loopback: the baseline must be the fastest the machine can do, or "tunnel / direct" flatters the tunnel.
//
//   udp-load send HOST PORT RATE SECONDS SIZE   RATE in datagrams/s, 0 = as fast as possible.
//       Sends 3 warm-up datagrams 100 ms apart (they open a tunnel session and are not counted), then numbered
//       datagrams of SIZE bytes for SECONDS, paced against the monotonic clock (catching up in batches of at most
//       64 with one sendmmsg). Prints {"sent":N,"seconds":S,"cpuSeconds":C} (C: its own user + system CPU, which
//       includes the kernel's loopback delivery to the receiving socket).
//   udp-load reflect PORT RATE SECONDS SIZE
//       The reply direction: binds 127.0.0.1:PORT (0 = any), prints "listening PORT", waits for one datagram,
//       prints "started" and then sends to its source like `send` (no warm-up), e.g. from a tunnel's target back
//       through the tunnel.
//   udp-load sink
//       Binds 127.0.0.1:0 with a 4 MiB receive buffer, prints "listening PORT", then counts measured datagrams.
//       Commands on stdin, one per line: "z" zeroes the counters and prints "ok"; "r" prints
//       {"received":N,"bytes":B,"reordered":R}; "w PORT" sends a warm-up datagram from the sink's socket to
//       127.0.0.1:PORT (opening a tunnel session whose replies the sink then counts) and prints "ok".
//       Exits when stdin closes.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SIZE 65507

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

/** Sends numbered datagrams of SIZE bytes on the connected socket FD for SECONDS at RATE (0 = flat out), after 3
 * warm-up datagrams when WARM_UP; prints the JSON summary. */
static int blast(int fd, double rate, double seconds, int size, int warm_up) {
  static unsigned char payload[BATCH][MAX_SIZE];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    memset(payload[i], 0x61, (size_t)size);
    iov[i].iov_base = payload[i];
    iov[i].iov_len = (size_t)size;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  // Warm-up: kind 0, not counted by the sink.
  for (int i = 0; warm_up && i < 3; i++) {
    payload[0][0] = 0;
    if (send(fd, payload[0], (size_t)size, 0) < 0 && errno != ECONNREFUSED) perror("send");
    sleep_us(100000);
  }
  for (int i = 0; i < BATCH; i++) payload[i][0] = 1;

  uint64_t sent = 0;
  double start = now_s();
  double elapsed = 0;
  while ((elapsed = now_s() - start) < seconds) {
    uint64_t due = rate > 0 ? (uint64_t)(elapsed * rate) + 1 : sent + BATCH;
    if (sent >= due) {
      sleep_us(20);
      continue;
    }
    uint64_t n = due - sent;
    if (n > BATCH) n = BATCH;
    for (uint64_t i = 0; i < n; i++) {
      uint64_t seq = sent + i;
      memcpy(payload[i] + 8, &seq, sizeof seq);
    }
    int r = sendmmsg(fd, msgs, (unsigned)n, 0);
    if (r < 0) {
      // ECONNREFUSED: an ICMP port unreachable from a previous datagram; ENOBUFS: local queue full. Neither is sent.
      if (errno != ECONNREFUSED && errno != ENOBUFS && errno != EAGAIN && errno != EINTR) return perror("sendmmsg"), 1;
      continue;
    }
    sent += (uint64_t)r;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  printf("{\"sent\":%llu,\"seconds\":%.6f,\"cpuSeconds\":%.6f}\n", (unsigned long long)sent, now_s() - start, cpu);
  return 0;
}

static int check_size(int size) {
  if (size < 16 || size > MAX_SIZE) {
    fprintf(stderr, "size must be 16..%d\n", MAX_SIZE);
    return 2;
  }
  return 0;
}

static int do_send(const char *host, int port, double rate, double seconds, int size) {
  if (check_size(size)) return 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return perror("socket"), 1;
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &to.sin_addr) != 1) return fprintf(stderr, "bad host %s\n", host), 2;
  if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) return perror("connect"), 1;
  return blast(fd, rate, seconds, size, 1);
}

/** Binds FD to 127.0.0.1:PORT (0 = any) and prints "listening PORT"; nonzero on failure. */
static int bind_loopback(int fd, int port) {
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return perror("bind"), 1;
  socklen_t len = sizeof addr;
  getsockname(fd, (struct sockaddr *)&addr, &len);
  printf("listening %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  return 0;
}

/** Binds 127.0.0.1:PORT, waits for one datagram, then sends to its source like `send` (no warm-up). */
static int do_reflect(int port, double rate, double seconds, int size) {
  if (check_size(size)) return 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return perror("socket"), 1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  if (bind_loopback(fd, port)) return 1;
  unsigned char first[2048];
  struct sockaddr_in peer;
  socklen_t peer_len = sizeof peer;
  if (recvfrom(fd, first, sizeof first, 0, (struct sockaddr *)&peer, &peer_len) < 0) return perror("recvfrom"), 1;
  if (connect(fd, (struct sockaddr *)&peer, peer_len) < 0) return perror("connect"), 1;
  printf("started\n");
  fflush(stdout);
  return blast(fd, rate, seconds, size, 0);
}

/** Sends one warm-up datagram (kind 0) from the sink's socket to 127.0.0.1:PORT (without waiting: the sink must
 * keep reading). */
static void warm_up(int fd, int port) {
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  unsigned char payload[16] = {0};
  if (sendto(fd, payload, sizeof payload, 0, (struct sockaddr *)&to, sizeof to) < 0) perror("sendto");
}

static int do_sink(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return perror("socket"), 1;
  int buf = 4 << 20;
  // SO_RCVBUFFORCE passes rmem_max when running as root; otherwise the capped SO_RCVBUF.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  if (bind_loopback(fd, 0)) return 1;

  static unsigned char bufs[BATCH][2048];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = sizeof bufs[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  uint64_t received = 0, bytes = 0, reordered = 0, last = 0;
  struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  char line[64];
  size_t have = 0;
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return perror("poll"), 1;
    }
    if (fds[0].revents & POLLIN) {
      int r;
      while ((r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL)) > 0) {
        for (int i = 0; i < r; i++) {
          unsigned len_i = msgs[i].msg_len;
          // The hub may prepend a PROXY v2 header; the benchmark runs with proxyProtocol.udp "none".
          if (len_i < 16 || bufs[i][0] != 1) continue;
          uint64_t seq;
          memcpy(&seq, bufs[i] + 8, sizeof seq);
          if (received > 0 && seq < last) reordered++;
          last = seq;
          received++;
          bytes += len_i;
        }
      }
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      ssize_t r = read(0, line + have, sizeof line - 1 - have);
      if (r <= 0) return 0;
      have += (size_t)r;
      char *nl;
      while ((nl = memchr(line, '\n', have)) != NULL) {
        char cmd = line[0];
        *nl = 0;
        int arg = atoi(line + 1);
        size_t used = (size_t)(nl - line) + 1;
        memmove(line, nl + 1, have - used);
        have -= used;
        if (cmd == 'z') {
          received = bytes = reordered = last = 0;
          printf("ok\n");
        } else if (cmd == 'w') {
          warm_up(fd, arg);
          printf("ok\n");
        } else if (cmd == 'r') {
          printf("{\"received\":%llu,\"bytes\":%llu,\"reordered\":%llu}\n", (unsigned long long)received,
                 (unsigned long long)bytes, (unsigned long long)reordered);
        }
        fflush(stdout);
      }
      if (have == sizeof line - 1) have = 0;
    }
  }
}

int main(int argc, char **argv) {
  if (argc >= 7 && strcmp(argv[1], "send") == 0)
    return do_send(argv[2], atoi(argv[3]), atof(argv[4]), atof(argv[5]), atoi(argv[6]));
  if (argc >= 6 && strcmp(argv[1], "reflect") == 0) return do_reflect(atoi(argv[2]), atof(argv[3]), atof(argv[4]), atoi(argv[5]));
  if (argc >= 2 && strcmp(argv[1], "sink") == 0) return do_sink();
  fprintf(stderr, "usage: udp-load send HOST PORT RATE SECONDS SIZE | udp-load reflect PORT RATE SECONDS SIZE | udp-load sink\n");
  return 2;
}
