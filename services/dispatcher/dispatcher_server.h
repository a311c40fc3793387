#pragma once

// broker-dispatcher: the REST API (services/dispatcher/api.h) on the
// project's HTTP server, over an in-memory or a Redis store.
//
// Threads: the HTTP server's I/O threads only read request bodies and
// write answers; each request is then handled on one of `store_threads`
// worker threads, because a store call may block (RedisStore, bounded by
// its timeouts). At most `max_pending_requests` wait for a worker; more are
// answered 503 at once, so an unreachable Redis cannot pile up unbounded
// work.

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::dispatcher {

// Everything broker-dispatcher needs, typed. main() builds it from the
// environment (see main.cc --help for the variables).
struct DispatcherConfig {
  std::string address = "0.0.0.0";
  int port = 7340;            // PORT; 0 = any free port
  std::string tls_cert_file;  // HTTPS_CERT: TLS when set (with HTTPS_KEY)
  std::string tls_key_file;   // HTTPS_KEY
  // BROKER_DISPATCHER_REDIS_URL: "" keeps the state in memory (one replica).
  std::string redis_url;
  absl::Duration redis_timeout = absl::Seconds(1);
  std::string redis_key_prefix = "broker-dispatcher";
  int max_clients_per_token = 4;  // BROKER_MAX_CLIENTS_PER_TOKEN
  absl::Duration lease_ttl = absl::Seconds(90);
  absl::Duration server_ttl = absl::Seconds(30);
  int io_threads = 2;
  int store_threads = 4;
  int max_pending_requests = 1024;
  std::string version = "0.1.0";
};

[[nodiscard]] absl::Status Validate(const DispatcherConfig& config);

class DispatcherServer {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<DispatcherServer>> Create(
      DispatcherConfig config);
  virtual ~DispatcherServer() = default;
  // Binds and starts serving; returns the bound port. Once only.
  [[nodiscard]] virtual absl::StatusOr<int> Start() = 0;
  // Stops accepting; requests in progress may finish until `deadline`.
  virtual void Shutdown(absl::Time deadline) = 0;
  // "memory" or "redis".
  virtual std::string store_kind() const = 0;
};

}  // namespace broker::dispatcher
