#pragma once

// The worker's egress for webhooks (You => Snyk): a gRPC endpoint
// (broker.webhook.v1.Egress, BROKER_TUNNEL_EGRESS_PORT) where broker-webhook
// hands over each event, which the worker passes through its tunnel's
// Deliver call to the server, and the server's answer back. Next to it, the
// standard grpc.health.v1 service says SERVING only while the tunnel is
// admitted, so broker-webhook's round_robin channel sends events only to
// workers that can pass them on (docs/webhook.md).

#include "common/pem.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace grpc {
class Server;
}  // namespace grpc

namespace broker::common::rpc {
class RpcMetrics;
}  // namespace broker::common::rpc

namespace broker::tunnel {

// The tunnel an event goes through: the admitted server's stub and the
// worker's client id there.
struct DeliveryRoute {
  std::shared_ptr<broker::tunnel::v1::Tunnel::Stub> stub;
  std::string client_id;
};

struct WebhookEgressOptions {
  std::string address = "0.0.0.0";
  int port = 0;       // 0: any free port
  std::string token;  // BROKER_TOKEN, the tunnel call's credentials
  // The admitted tunnel, or nullopt while there is none. Called on gRPC
  // threads for each event; must not block.
  std::function<std::optional<DeliveryRoute>()> route;
  // BROKER_TUNNEL_EGRESS_CERT/_KEY: TLS on the endpoint; unset: plaintext.
  std::optional<common::PemKeyCertPair> tls;
  // Server-side RPC metrics of the egress endpoint (null: none); must
  // outlive the egress.
  common::rpc::RpcMetrics* rpc_metrics = nullptr;
};

class WebhookEgress {
 public:
  // Listens at once; the health status starts NOT_SERVING.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<WebhookEgress>> Start(
      WebhookEgressOptions options);
  ~WebhookEgress();
  WebhookEgress(const WebhookEgress&) = delete;
  WebhookEgress& operator=(const WebhookEgress&) = delete;

  int port() const { return port_; }
  // Whether the worker's tunnel is admitted. Thread-safe, never blocks.
  void SetServing(bool serving);
  // Stops taking events; those in flight get until `deadline`.
  void Shutdown(absl::Time deadline);
  // Events handed to the tunnel so far (/metrics).
  std::uint64_t delivered() const { return delivered_.load(); }

 private:
  class Service;
  WebhookEgress() = default;

  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<std::uint64_t> delivered_{0};
};

}  // namespace broker::tunnel
