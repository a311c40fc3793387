#pragma once

// broker-webhook: the HTTP(S) ingress at BROKER_CLIENT_URL for the
// webhooks the SCM posts (You => Snyk). Each event is checked against the
// client's public accept rules and pushed through any healthy tunnel
// worker (broker-tunnel's Egress), retrying on another one; with no usable
// tunnel it is answered 503, or posted straight to the API when the
// fallback is on. Also serves /healthcheck and /metrics. See
// docs/webhook.md.

#include "services/webhook/webhook_config.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include <memory>

namespace broker::webhook {

// Thread-safe, except that Start() must return before Shutdown().
class WebhookServer {
 public:
  // Loads ACCEPT, builds the channel to the workers (it starts connecting
  // at once) and, with the fallback on, the API client.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<WebhookServer>> Create(
      WebhookConfig config);
  // Shuts down with a deadline of now if Shutdown() was not called.
  virtual ~WebhookServer() = default;

  // Binds the HTTP port; returns it (PORT=0 picks a free one).
  [[nodiscard]] virtual absl::StatusOr<int> Start() = 0;
  // Stops taking events; events in flight get until `deadline`, then are
  // cancelled. Blocks until every delivery ended.
  virtual void Shutdown(absl::Time deadline) = 0;
};

}  // namespace broker::webhook
