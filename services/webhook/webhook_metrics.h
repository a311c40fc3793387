#pragma once

// broker-webhook's Prometheus metrics, on the shared registry
// (common/metrics.h): events by outcome, retries, API fallbacks, events in
// flight and the delivery latency. The server adds the tunnel-availability
// gauge and the gRPC client families to the same registry. Every method
// may be called from any thread.

#include "common/metrics.h"

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <array>
#include <cstdint>
#include <string>

namespace broker::webhook {

// How an event ended; the `outcome` label of broker_webhook_events_total.
enum class Outcome : int {
  kDelivered,   // a worker's answer went back to the SCM (any status)
  kFallback,    // delivered through the API fallback
  kBlocked,     // no public rule allows it: 401 FILTER_BLOCKED
  kNoTunnel,    // no usable worker: 503 with Retry-After
  kFailed,      // 502: a worker failed it and it could not be re-sent, or
                // the API fallback failed
  kTimedOut,    // 504: a worker took it, no answer before the deadline
  kTooLarge,    // 413
  kBadRequest,  // 400: the body could not be read (malformed)
  kCancelled,   // the SCM went away, or the service shut down
  kAborted,     // the answer started but was cut off (worker died)
};
inline constexpr int kOutcomeCount = 10;

absl::string_view OutcomeName(Outcome outcome);

class WebhookMetrics {
 public:
  WebhookMetrics();
  WebhookMetrics(const WebhookMetrics&) = delete;
  WebhookMetrics& operator=(const WebhookMetrics&) = delete;

  void CountOutcome(Outcome outcome);
  void CountRetry() { retries_->Increment(); }
  void CountFallback(bool delivered);
  void EventStarted() { in_flight_->Add(1); }
  // The event's answer ended (or it was dropped) after `latency`.
  void EventEnded(absl::Duration latency);

  std::uint64_t outcome_count(Outcome outcome) const;

  common::metrics::Registry& registry() { return registry_; }
  // Prometheus text format (common::metrics::Registry::kContentType).
  std::string Render() const { return registry_.Render(); }

 private:
  common::metrics::Registry registry_;
  // Children of the registry's families, set once by the constructor.
  std::array<common::metrics::Counter*, kOutcomeCount> outcomes_{};
  common::metrics::Counter* retries_ = nullptr;
  common::metrics::Counter* fallback_delivered_ = nullptr;
  common::metrics::Counter* fallback_failed_ = nullptr;
  common::metrics::Gauge* in_flight_ = nullptr;
  common::metrics::Histogram* latency_ = nullptr;
};

}  // namespace broker::webhook
