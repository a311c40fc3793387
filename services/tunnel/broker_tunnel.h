#pragma once

#include "filters/origin.h"
#include "services/tunnel/systemcheck.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::tunnel {

// Everything broker-tunnel needs, typed. main() builds it from the
// environment (BROKER_TOKEN, BROKER_SERVER_URL, ACCEPT, PORT, ...).
struct TunnelConfig {
  std::string token;        // BROKER_TOKEN: never logged
  std::string server_url;   // BROKER_SERVER_URL: http(s)://host:port of the
                            // server's tunnel endpoint
  std::string accept_path;  // ACCEPT: private rules choose the origin
  std::string client_url;   // BROKER_CLIENT_URL
  std::string ca_file;      // CA_CERT: extra trust for origins and server
  // BROKER_TUNNEL_CLIENT_CERT/_KEY (PEM; both or neither, https server URL
  // only): the certificate the worker presents to a server that requires
  // mutual TLS on its tunnel endpoint.
  std::string tunnel_client_cert_file;
  std::string tunnel_client_key_file;
  // BROKER_HA_AGENT_ADDR (host:port): HA mode; the agent assigns the server
  // (server_url is then only the fallback the agent itself uses).
  std::string ha_agent_address;
  std::string address = "0.0.0.0";
  int http_port = 8000;  // PORT: /healthcheck, /systemcheck, /filters
  // BROKER_TUNNEL_EGRESS_PORT: the gRPC endpoint broker-webhook hands
  // events to (0: any free port); unset (-1): no webhook egress.
  int egress_port = -1;
  // BROKER_TUNNEL_EGRESS_CERT/_KEY (PEM; both or neither, needs the egress
  // port): TLS on the egress endpoint; unset: plaintext.
  std::string egress_cert_file;
  std::string egress_key_file;
  // BROKER_TUNNEL_LANES: the fewest idle lanes kept parked; the pool grows
  // to the most requests in flight at once (each idle lane costs the server
  // about 19 KiB).
  int lanes = 1;
  absl::Duration request_timeout = absl::Minutes(10);
  int io_threads = 2;
  std::string version = "0.1.0";
  // BROKER_METRICS_ENABLED: false serves no /metrics and registers no gRPC
  // interceptors (a benchmark's baseline).
  bool metrics_enabled = true;
  filters::Variables variables;  // the environment, for ${VAR} in origins

  std::string healthcheck_path = "/healthcheck";  // BROKER_HEALTHCHECK_PATH
  std::string systemcheck_path = "/systemcheck";  // BROKER_SYSTEMCHECK_PATH
  // BROKER_CLIENT_VALIDATION_*; its `version` is set from `version` above.
  SystemCheckConfig systemcheck;
};

[[nodiscard]] absl::Status Validate(const TunnelConfig& config);

// The worker: keeps a Control call and a pool of Serve lanes open to the
// server (reconnecting with jittered exponential backoff, forever), serves
// relayed requests through the private accept rules to the origins, and
// answers /healthcheck, /systemcheck and /filters locally.
class BrokerTunnel {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BrokerTunnel>> Create(
      TunnelConfig config);
  virtual ~BrokerTunnel() = default;
  struct Ports {
    int http = 0;
    int egress = 0;  // 0 without webhook egress
  };
  // Starts the local HTTP server, the webhook egress and the tunnel.
  [[nodiscard]] virtual absl::StatusOr<Ports> Start() = 0;
  // Stops taking requests, finishes in-flight ones until `deadline`.
  virtual void Shutdown(absl::Time deadline) = 0;
  // Whether the Control call is up (for health checks).
  virtual bool Connected() const = 0;
};

}  // namespace broker::tunnel
