#pragma once

// When a delivery attempt ended without any answer message from its
// worker, whether to send the event again and after how long. Pure
// functions, so the rules are tested without gRPC (docs/webhook.md,
// "Retries").

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace broker::webhook {

struct RetryPolicy {
  // The first retry goes at once (round_robin picks the next worker);
  // later ones wait `backoff_initial`, doubling up to `backoff_max`.
  absl::Duration backoff_initial = absl::Milliseconds(10);
  absl::Duration backoff_max = absl::Milliseconds(250);
  // How long an event waits, from its arrival, while the channel is in
  // TRANSIENT_FAILURE (a worker's tunnel flapping, a rolling restart)
  // before it is answered as having no tunnel.
  absl::Duration no_tunnel_wait = absl::Seconds(2);
};

// An attempt that ended before any answer message arrived. (Once one has
// arrived the event is answered and never retried.)
struct FailedAttempt {
  absl::StatusCode code = absl::StatusCode::kUnavailable;  // the call's
  int attempts = 1;  // attempts made so far, this one included
  // The body read from the SCM so far is all still held.
  bool body_replayable = true;
  // The channel's state now: READY (some worker is up and SERVING), and
  // TRANSIENT_FAILURE (every worker unreachable or NOT_SERVING).
  bool channel_ready = true;
  bool channel_failing = false;
  absl::Time now;
  absl::Time received;  // when the event arrived
  absl::Time deadline;  // of the whole delivery
};

enum class RetryAction {
  kRetry,          // send again after `delay`
  kNoTunnel,       // no worker can take it: 503, or the API fallback
  kNotReplayable,  // the body cannot be sent again: 502
  kTimedOut,       // a worker took it but the deadline passed: 504
};

struct RetryDecision {
  RetryAction action = RetryAction::kNoTunnel;
  absl::Duration delay = absl::ZeroDuration();
};

// The wait before attempt number `attempts + 1`.
absl::Duration RetryDelay(int attempts, const RetryPolicy& policy);

// In this order: a passed deadline ends it (kTimedOut when the channel is
// READY, so a worker had it; else kNoTunnel: it waited for one); a body
// that cannot be replayed ends it (kNotReplayable); a channel in
// TRANSIENT_FAILURE ends it (kNoTunnel) once the event waited
// `no_tunnel_wait` since it arrived; a retry that would start at or
// after the deadline ends it (kNoTunnel: the workers tried all refused
// it); otherwise kRetry after RetryDelay(). Any status code but
// DEADLINE_EXCEEDED is retried (UNAVAILABLE is the usual one: the worker
// has no tunnel, or died).
RetryDecision DecideRetry(const FailedAttempt& attempt,
                          const RetryPolicy& policy);

}  // namespace broker::webhook
