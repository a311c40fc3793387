// worker-fleet: many real broker-tunnel workers in one process, for the
// fault tests that need a fleet (a server restarted with 1,000 tunnels
// attached). Each worker is a whole services/tunnel BrokerTunnel: its own
// gRPC channel and TCP connection (a local subchannel pool), its own
// Control call, lane pool, backoff and local HTTP port; only the process is
// shared, because 1,000 broker-tunnel processes do not fit a test machine.
//
//   worker-fleet --server http://127.0.0.1:<tunnel port> --accept FILE
//                --workers N --token-prefix P
//
// Worker i has the token "<P>-<i>" (the test knows them; they are never
// printed). Once every worker started, prints one line
// {"msg":"worker fleet started","workers":N}, then runs until SIGTERM or
// SIGINT. Logs at warn (LOG_LEVEL overrides).

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/tunnel/broker_tunnel.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/resource.h>

extern char** environ;

namespace {

int Fail(const std::string& message) {
  std::cerr << "worker-fleet: " << message << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  std::map<std::string, std::string> flags;
  for (int i = 1; i + 1 < argc; i += 2) flags[argv[i]] = argv[i + 1];
  int workers = 0;
  if (!absl::SimpleAtoi(flags["--workers"], &workers) || workers < 1 ||
      flags["--server"].empty() || flags["--accept"].empty() ||
      flags["--token-prefix"].empty()) {
    return Fail(
        "usage: worker-fleet --server URL --accept FILE --workers N "
        "--token-prefix P");
  }
  // Each worker holds a TCP connection and a listening socket (and gRPC a
  // few descriptors more): raise the soft limit as far as allowed.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 &&
      files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  broker::common::EnvReader env = broker::common::EnvReader::FromEnviron();
  absl::Status logging = broker::common::InitLogging(
      env.Optional("LOG_LEVEL", "warn"), "worker-fleet");
  if (!logging.ok()) return Fail(std::string(logging.message()));

  std::vector<std::unique_ptr<broker::tunnel::BrokerTunnel>> fleet;
  fleet.reserve(static_cast<std::size_t>(workers));
  const broker::filters::Variables variables =
      broker::filters::Variables::FromEnviron(environ);
  for (int i = 0; i < workers; ++i) {
    broker::tunnel::TunnelConfig config;
    config.token = absl::StrCat(flags["--token-prefix"], "-", i);
    config.server_url = flags["--server"];
    config.accept_path = flags["--accept"];
    config.address = "127.0.0.1";
    config.http_port = 0;
    config.io_threads = 1;
    config.metrics_enabled = false;
    config.request_timeout = absl::Seconds(30);
    config.variables = variables;
    auto tunnel = broker::tunnel::BrokerTunnel::Create(std::move(config));
    if (!tunnel.ok()) {
      return Fail(absl::StrCat("worker ", i, ": ", tunnel.status().message()));
    }
    auto started = (*tunnel)->Start();
    if (!started.ok()) {
      return Fail(absl::StrCat("worker ", i, ": ", started.status().message()));
    }
    fleet.push_back(*std::move(tunnel));
  }
  std::cout << "{\"msg\":\"worker fleet started\",\"workers\":" << workers
            << "}" << std::endl;
  broker::common::WaitForTerminationSignal();
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  for (auto& tunnel : fleet) tunnel->Shutdown(deadline);
  return 0;
}
