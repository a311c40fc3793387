#pragma once

// The server's side of webhooks (You => Snyk): one `Tunnel.Deliver` call per
// attempt to pass one event from a worker to the platform. The request is
// checked against the server's private accept rules, sent to the rule's
// origin (the platform) with the broker headers Snyk's server adds, and the
// platform's answer streams back down the call. A DeliveryLedger keeps
// retries of one event (same x-broker-delivery-id) from reaching the
// platform twice. See docs/tunnel.md, "A webhook (You => Snyk), at the
// server".

#include "common/clock.h"
#include "common/http/client.h"
#include "filters/origin.h"
#include "filters/rule_set.h"
#include "services/server/delivery_ledger.h"
#include "services/server/tunnel_service.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::server {

class ServerMetrics;

struct WebhookDeliveryOptions {
  // CA_CERT: extra trust toward the platform, besides the system store.
  std::string ca_file;
  // Only for tests of the failure path; never set from configuration.
  bool insecure_skip_verify = false;
  // The longest a delivery may take; RequestHead.deadline_unix_micros
  // shortens it.
  absl::Duration request_timeout = absl::Minutes(10);
  DeliveryLedger::Options ledger;
  // Rule decisions and delivery results (/metrics); may be null. Must
  // outlive the deliveries.
  ServerMetrics* metrics = nullptr;
};

// Call metadata of a Deliver call, besides the identity.
inline constexpr char kDeliveryIdMetadata[] = "x-broker-delivery-id";
inline constexpr char kDeliveryAttemptMetadata[] = "x-broker-delivery-attempt";

// Failure codes of a Deliver answer (besides FILTER_BLOCKED and the
// DOWNSTREAM_* codes of common/http/client.h).
inline constexpr char kPayloadTooLargeCode[] = "PAYLOAD_TOO_LARGE";     // 413
inline constexpr char kBadRequestBodyCode[] = "BAD_REQUEST_BODY";       // 400
inline constexpr char kDuplicateDeliveryCode[] = "DUPLICATE_DELIVERY";  // 502

// Everything Deliver calls share: the rules, the platform client, the
// ledger. Thread-safe; Start() is called on gRPC threads. Must outlive the
// gRPC server that calls Start(); reactors still finishing a platform call
// after their call ended (to record its answer) run on `io` and must not
// outlive it either (stop the executor first).
class WebhookDeliveries {
 public:
  // Builds the platform client on `io` (CA_CERT trust, verification on).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<WebhookDeliveries>>
  Create(boost::asio::io_context& io,
         std::shared_ptr<const filters::RuleSet> rules,
         filters::Variables variables, WebhookDeliveryOptions options,
         common::Clock& clock = common::SystemClock());

  WebhookDeliveries(boost::asio::io_context& io,
                    std::shared_ptr<const filters::RuleSet> rules,
                    filters::Variables variables,
                    WebhookDeliveryOptions options,
                    std::unique_ptr<common::http::Client> client,
                    common::Clock& clock);

  // The reactor for one admitted Deliver call. `token` is the caller's
  // bearer token (sent to the platform as X-Broker-Token, never logged).
  grpc::ServerBidiReactor<tunnel::v1::DeliverUp, tunnel::v1::DeliverDown>*
  Start(const grpc::CallbackServerContext& context, CallIdentity identity,
        std::string token);

  // For the reactors.
  boost::asio::io_context& io() { return io_; }
  const filters::RuleSet& rules() const { return *rules_; }
  const filters::OriginResolver& resolver() const { return resolver_; }
  common::http::Client& client() { return *client_; }
  DeliveryLedger& ledger() { return ledger_; }
  const WebhookDeliveryOptions& options() const { return options_; }

 private:
  boost::asio::io_context& io_;
  const std::shared_ptr<const filters::RuleSet> rules_;
  const filters::OriginResolver resolver_;
  const WebhookDeliveryOptions options_;
  std::unique_ptr<common::http::Client> client_;
  DeliveryLedger ledger_;
};

}  // namespace broker::server
