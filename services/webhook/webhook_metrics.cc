#include "services/webhook/webhook_metrics.h"

#include <string>

namespace broker::webhook {

absl::string_view OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kDelivered:
      return "delivered";
    case Outcome::kFallback:
      return "fallback";
    case Outcome::kBlocked:
      return "blocked";
    case Outcome::kNoTunnel:
      return "no_tunnel";
    case Outcome::kFailed:
      return "failed";
    case Outcome::kTimedOut:
      return "timed_out";
    case Outcome::kTooLarge:
      return "too_large";
    case Outcome::kBadRequest:
      return "bad_request";
    case Outcome::kCancelled:
      return "cancelled";
    case Outcome::kAborted:
      return "aborted";
  }
  return "unknown";
}

WebhookMetrics::WebhookMetrics() {
  namespace metrics = common::metrics;
  metrics::Family<metrics::Counter>& events =
      registry_.AddCounter("broker_webhook_events_total",
                           "Webhook events by how they ended.", {"outcome"});
  for (int i = 0; i < kOutcomeCount; ++i) {
    outcomes_[static_cast<std::size_t>(i)] =
        &events.With({std::string(OutcomeName(static_cast<Outcome>(i)))});
  }
  retries_ = &registry_
                  .AddCounter("broker_webhook_retries_total",
                              "Delivery attempts sent again to another worker.")
                  .With({});
  metrics::Family<metrics::Counter>& fallback = registry_.AddCounter(
      "broker_webhook_fallback_total",
      "Events posted straight to the API with no usable tunnel, by result.",
      {"result"});
  fallback_delivered_ = &fallback.With({"delivered"});
  fallback_failed_ = &fallback.With({"failed"});
  in_flight_ =
      &registry_
           .AddGauge("broker_webhook_in_flight", "Events being delivered now.")
           .With({});
  latency_ = &registry_
                  .AddHistogram("broker_webhook_delivery_seconds",
                                "Time from an event's arrival to the end of "
                                "its answer.",
                                {}, metrics::LatencySecondsBuckets())
                  .With({});
}

void WebhookMetrics::CountOutcome(Outcome outcome) {
  outcomes_[static_cast<std::size_t>(outcome)]->Increment();
}

void WebhookMetrics::CountFallback(bool delivered) {
  (delivered ? fallback_delivered_ : fallback_failed_)->Increment();
}

void WebhookMetrics::EventEnded(absl::Duration latency) {
  in_flight_->Add(-1);
  latency_->Observe(absl::ToDoubleSeconds(latency));
}

std::uint64_t WebhookMetrics::outcome_count(Outcome outcome) const {
  return outcomes_[static_cast<std::size_t>(outcome)]->Value();
}

}  // namespace broker::webhook
