#pragma once

// A real redis-server for a test, on a free loopback port, without
// persistence (`--save '' --appendonly no`), killed with the test. The
// binary's path is compiled in (REDIS_SERVER_BIN).

#include "tests/testing/child_process.h"

#include "absl/status/statusor.h"

#include <memory>
#include <string>

namespace broker::testing {

class RedisServer {
 public:
  // Picks a free port (trying again if another process takes it first) and
  // waits until Redis accepts connections.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RedisServer>> Start();

  int port() const { return port_; }
  std::string url() const;  // redis://127.0.0.1:<port>

  // SIGKILL, and waits until the process is gone.
  void Kill();
  // Starts again on the same port, empty (no persistence).
  [[nodiscard]] absl::Status Restart();

  ChildProcess* process() { return process_.get(); }

 private:
  explicit RedisServer(int port) : port_(port) {}
  [[nodiscard]] absl::Status Run();

  const int port_;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace broker::testing
