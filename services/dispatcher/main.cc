// broker-dispatcher: allocates broker servers to (hashed token, client id)
// and keeps the cap of clients per token. main() reads the environment,
// builds the typed config, runs until SIGTERM/SIGINT.

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/dispatcher/dispatcher_server.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock
  // detection on: a lock-graph update on every nested lock. The binaries
  // turn it off; the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::cout
        << "broker-dispatcher: allocates broker servers to broker clients "
           "(HA mode).\n"
           "Environment:\n"
           "  PORT                  HTTP port of the REST API (default 7340; "
           "0 = any free port)\n"
           "  HTTPS_CERT, HTTPS_KEY TLS on the listener when set (PEM files)\n"
           "  BROKER_DISPATCHER_REDIS_URL  redis://[[user]:password@]host"
           "[:port][/db]:\n"
           "                        keep the state in Redis, shared by "
           "replicas (default: in\n"
           "                        memory, one replica only)\n"
           "  BROKER_DISPATCHER_REDIS_TIMEOUT_MS  Redis connect and command "
           "timeout (default 1000)\n"
           "  BROKER_DISPATCHER_REDIS_KEY_PREFIX  Redis key prefix (default "
           "broker-dispatcher)\n"
           "  BROKER_MAX_CLIENTS_PER_TOKEN  live broker clients allowed per "
           "token (default 4)\n"
           "  BROKER_DISPATCHER_LEASE_TTL_MS  a client's slot expires this "
           "long after its last\n"
           "                        allocation, connected or pinged event "
           "(default 90000)\n"
           "  BROKER_DISPATCHER_SERVER_TTL_MS  a server counts as live this "
           "long after its last\n"
           "                        registration or client event (default "
           "30000)\n"
           "  LOG_LEVEL             debug|info|warn|error (default info)\n";
    return 0;
  }
  broker::common::EnvReader env = broker::common::EnvReader::FromEnviron();
  auto fail = [](const absl::Status& status) {
    std::cerr << "broker-dispatcher: " << status.message() << "\n";
    return 2;
  };
  broker::dispatcher::DispatcherConfig config;
  auto port = env.Port("PORT", 7340, broker::common::PortZero::kAllowed);
  if (!port.ok()) return fail(port.status());
  config.port = *port;
  config.tls_cert_file = env.Optional("HTTPS_CERT", "");
  config.tls_key_file = env.Optional("HTTPS_KEY", "");
  config.redis_url = env.Optional("BROKER_DISPATCHER_REDIS_URL", "");
  auto redis_timeout =
      env.DurationMs("BROKER_DISPATCHER_REDIS_TIMEOUT_MS", absl::Seconds(1));
  if (!redis_timeout.ok()) return fail(redis_timeout.status());
  config.redis_timeout = *redis_timeout;
  config.redis_key_prefix =
      env.Optional("BROKER_DISPATCHER_REDIS_KEY_PREFIX", "broker-dispatcher");
  auto max_clients = env.Integer("BROKER_MAX_CLIENTS_PER_TOKEN", 4, 1, 64);
  if (!max_clients.ok()) return fail(max_clients.status());
  config.max_clients_per_token = static_cast<int>(*max_clients);
  auto lease_ttl =
      env.DurationMs("BROKER_DISPATCHER_LEASE_TTL_MS", absl::Seconds(90));
  if (!lease_ttl.ok()) return fail(lease_ttl.status());
  config.lease_ttl = *lease_ttl;
  auto server_ttl =
      env.DurationMs("BROKER_DISPATCHER_SERVER_TTL_MS", absl::Seconds(30));
  if (!server_ttl.ok()) return fail(server_ttl.status());
  config.server_ttl = *server_ttl;
  absl::Status logging = broker::common::InitLogging(
      env.Optional("LOG_LEVEL", "info"), "broker-dispatcher");
  if (!logging.ok()) return fail(logging);
  absl::Status valid = broker::dispatcher::Validate(config);
  if (!valid.ok()) return fail(valid);

  auto server = broker::dispatcher::DispatcherServer::Create(std::move(config));
  if (!server.ok()) return fail(server.status());
  auto bound = (*server)->Start();
  if (!bound.ok()) return fail(bound.status());
  broker::common::WriteStdoutLine(
      absl::StrCat("{\"msg\":\"broker-dispatcher listening\",\"port\":", *bound,
                   ",\"store\":\"", (*server)->store_kind(), "\"}"));
  broker::common::WaitForTerminationSignal();
  (*server)->Shutdown(absl::Now() + absl::Seconds(10));
  broker::common::FlushLogs();
  return 0;
}
