#pragma once

// What the libFuzzer targets that talk to a real server share: aborting on
// a broken invariant, and one exchange over a fresh loopback connection
// with a deadline on every step.

#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <string>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace broker::fuzz {

// Aborts (libFuzzer then saves the input) naming the broken invariant.
[[noreturn]] inline void Fail(const char* what, absl::string_view detail) {
  std::fprintf(stderr, "invariant broken: %s: %.*s\n", what,
               static_cast<int>(std::min<std::size_t>(detail.size(), 2000)),
               detail.data());
  std::abort();
}

// Connects to 127.0.0.1:`port`, sends `request` (stopping early if the
// server answers and closes first), half-closes when `close_write_side`,
// and returns everything received until the server closes. Aborts if
// connecting, sending or the close take longer than `limit`: a hang.
inline std::string Exchange(int port, absl::string_view request,
                            absl::Duration limit, bool close_write_side) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Fail("socket", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const absl::Time deadline = absl::Now() + limit;
  auto wait_for = [&](short events, const char* hang,
                      absl::string_view so_far) {
    while (true) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) Fail(hang, so_far);
      pollfd p{fd, events, 0};
      if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) >
          0) {
        return;
      }
    }
  };
  // libFuzzer's -timeout watchdog is a SIGALRM every few seconds: a
  // connect it interrupts goes on in the background (connect(2), EINTR),
  // so wait for it and read its outcome rather than report a failure.
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address),
              sizeof(address)) != 0) {
    if (errno != EINTR) Fail("connect", std::strerror(errno));
    wait_for(POLLOUT, "the interrupted connect never completed", "");
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
      error = errno;
    }
    if (error != 0) Fail("connect", std::strerror(error));
  }
  std::size_t sent = 0;
  while (sent < request.size()) {
    wait_for(POLLOUT, "the server neither read the request nor closed",
             request);
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;  // answered and closed before the request was in
    sent += static_cast<std::size_t>(n);
  }
  if (close_write_side) shutdown(fd, SHUT_WR);
  std::string received;
  char chunk[8192];
  while (true) {
    wait_for(POLLIN, "the request was neither answered nor closed", received);
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    received.append(chunk, static_cast<std::size_t>(n));
  }
  close(fd);
  return received;
}

}  // namespace broker::fuzz
