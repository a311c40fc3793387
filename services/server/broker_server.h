#pragma once

#include "filters/origin.h"
#include "services/server/dispatcher_link.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <cstdint>
#include <memory>
#include <string>

namespace broker::server {

// Everything broker-server needs, typed. main() builds it from the
// environment (PORT, BROKER_TUNNEL_PORT, ACCEPT, HTTPS_CERT, HTTPS_KEY, ...).
struct ServerConfig {
  std::string address = "0.0.0.0";
  int http_port = 7341;    // PORT: the platform's HTTP ingress
  int tunnel_port = 7342;  // BROKER_TUNNEL_PORT: workers' gRPC tunnels
  // ACCEPT: public rules filter platform requests, private rules webhooks
  // (You => Snyk, Tunnel.Deliver) and choose their origin, the platform.
  std::string accept_path;
  std::string tls_cert_file;  // HTTPS_CERT: TLS on both listeners when set
  std::string tls_key_file;   // HTTPS_KEY
  // BROKER_TUNNEL_CLIENT_CA: mutual TLS on the tunnel listener when set
  // (needs HTTPS_CERT): a worker must present a certificate this bundle
  // verifies. The platform ingress is unaffected.
  std::string tunnel_client_ca_file;
  absl::Duration request_timeout = absl::Minutes(10);
  // CA_CERT: extra trust toward the platform (webhooks), besides the system
  // store; the dispatcher's copy is `dispatcher.ca_file`.
  std::string ca_file;
  // The environment, for ${VAR} in the private rules' origins and auth.
  filters::Variables variables;
  // BROKER_MAX_BODY_BYTES: bodies stream, so this only bounds abuse.
  std::uint64_t max_body_bytes = 2ULL << 30;
  // BROKER_MAX_CLIENTS_PER_TOKEN: distinct workers per token (0: no limit).
  int max_clients_per_token = 4;
  // BROKER_TUNNEL_KEEPALIVE_MS: the server pings each worker's connection
  // this often and drops it when a ping is unanswered for
  // `tunnel_keepalive_timeout`, so a frozen worker or a silently dropped
  // connection is found within about two seconds.
  absl::Duration tunnel_keepalive = absl::Milliseconds(300);
  absl::Duration tunnel_keepalive_timeout = absl::Seconds(1);
  // BROKER_TUNNEL_ADMIT_PER_SECOND: workers admitted per second at most,
  // with a burst of as many at once (0: no cap). Past it a Hello is
  // refused with UNAVAILABLE and the worker retries on its jittered
  // backoff, so a fleet reconnecting after a restart arrives spread out.
  int admit_per_second = 1000;
  // HA mode: registration with the dispatcher (DISPATCHER_URL; off when
  // empty). Empty tunnel/internal URLs default to
  // <scheme>://<advertise_host>:<bound port>.
  DispatcherConfig dispatcher;
  std::string advertise_host = "127.0.0.1";  // HOSTNAME
  // On shutdown in HA mode: how long workers get to move to another server
  // after Drain, before in-flight requests are finished and the rest cut.
  absl::Duration drain_wait = absl::Seconds(10);
  int io_threads = 2;
  std::string version = "0.1.0";
  // BROKER_METRICS_ENABLED: false serves no /metrics and registers no gRPC
  // interceptors (a benchmark's baseline).
  bool metrics_enabled = true;
};

[[nodiscard]] absl::Status Validate(const ServerConfig& config);

struct BoundPorts {
  int http = 0;
  int tunnel = 0;
};

// The Snyk-side server: platform HTTP ingress + gRPC tunnel endpoint.
class BrokerServer {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BrokerServer>> Create(
      ServerConfig config);
  virtual ~BrokerServer() = default;
  [[nodiscard]] virtual absl::StatusOr<BoundPorts> Start() = 0;
  // Stops accepting, lets in-flight requests finish until `deadline`.
  virtual void Shutdown(absl::Time deadline) = 0;
};

}  // namespace broker::server
