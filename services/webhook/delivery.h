#pragma once

// Delivery of one webhook event through the tunnel workers: one
// Egress.Deliver call per attempt on the round_robin channel, the request
// streamed up with back-pressure (one gRPC write outstanding, the next
// chunk read from the SCM as a write completes), the answer streamed back
// to the SCM, a failed attempt sent again to the next worker while no
// answer message arrived and the body can be replayed, and the no-tunnel
// answer (503 or the API fallback). See docs/webhook.md.

#include "common/http/server.h"
#include "services/webhook/api_fallback.h"
#include "services/webhook/egress_channel.h"
#include "services/webhook/event.h"
#include "services/webhook/request_body.h"
#include "services/webhook/retry_policy.h"
#include "services/webhook/webhook_config.h"
#include "services/webhook/webhook_metrics.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <cstdint>
#include <memory>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace broker::webhook {

// Something in flight that shutdown can stop.
class Cancellable {
 public:
  virtual ~Cancellable() = default;
  virtual void Cancel() = 0;
};

// The deliveries alive, so that shutdown can cancel them and wait for
// them. Thread-safe.
class DeliveryTracker {
 public:
  std::uint64_t Add(const std::weak_ptr<Cancellable>& delivery)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Remove(std::uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels every delivery alive: each drops its call and ends soon.
  void CancelAll() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until none is alive; false at `deadline`.
  [[nodiscard]] bool WaitIdle(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  int live() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty(); }

  mutable absl::Mutex mu_;
  std::uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::uint64_t, std::weak_ptr<Cancellable>> live_
      ABSL_GUARDED_BY(mu_);
};

// What every delivery shares; owned by the server, outlives them all.
struct DeliveryEnv {
  boost::asio::io_context& io;
  EgressChannel& channel;
  WebhookMetrics& metrics;
  DeliveryTracker& tracker;
  ApiFallback* fallback;  // null when BROKER_WEBHOOK_API_FALLBACK is off
  RetryPolicy retry;
  int retry_after_seconds = 5;
};

// Delivers `event` (whose body is `body`, read from `exchange`) and
// answers `exchange`. Returns at once; the delivery keeps itself alive
// until it ended, and ends by the event's deadline.
void StartDelivery(DeliveryEnv& env,
                   std::shared_ptr<common::http::Exchange> exchange,
                   std::shared_ptr<RequestBody> body, Event event);

}  // namespace broker::webhook
