#include "tests/dispatcher/redis_server.h"

#include "common/status.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

namespace broker::testing {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(20);

// A port the kernel just gave out on 127.0.0.1 (free for now).
absl::StatusOr<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok =
      bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  close(fd);
  if (!ok) {
    return absl::InternalError(absl::StrCat("bind: ", std::strerror(errno)));
  }
  return ntohs(address.sin_port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start() {
  absl::Status last;
  for (int attempt = 0; attempt < 5; ++attempt) {
    BROKER_ASSIGN_OR_RETURN(int port, PickFreePort());
    std::unique_ptr<RedisServer> server(new RedisServer(port));
    last = server->Run();
    if (last.ok()) return server;
  }
  return last;
}

std::string RedisServer::url() const {
  return absl::StrCat("redis://127.0.0.1:", port_);
}

absl::Status RedisServer::Run() {
  BROKER_ASSIGN_OR_RETURN(
      process_, ChildProcess::Start(REDIS_SERVER_BIN,
                                    {"--port", absl::StrCat(port_), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly",
                                     "no", "--protected-mode", "no"},
                                    {}));
  absl::StatusOr<std::string> ready =
      process_->WaitForLine("Ready to accept connections", kStartTimeout);
  if (!ready.ok()) {
    return absl::UnavailableError(
        absl::StrCat("redis-server on port ", port_, " did not start: ",
                     ready.status().message(), "\n", process_->Output()));
  }
  return absl::OkStatus();
}

void RedisServer::Kill() {
  if (process_ == nullptr) return;
  process_->Signal(SIGKILL);
  (void)process_->Wait(absl::Seconds(20));
  process_.reset();
}

absl::Status RedisServer::Restart() {
  Kill();
  return Run();
}

}  // namespace broker::testing
