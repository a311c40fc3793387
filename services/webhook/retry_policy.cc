#include "services/webhook/retry_policy.h"

#include <algorithm>

namespace broker::webhook {

absl::Duration RetryDelay(int attempts, const RetryPolicy& policy) {
  if (attempts <= 1) return absl::ZeroDuration();
  absl::Duration delay = policy.backoff_initial;
  for (int i = 2; i < attempts && delay < policy.backoff_max; ++i) delay *= 2;
  return std::min(delay, policy.backoff_max);
}

RetryDecision DecideRetry(const FailedAttempt& attempt,
                          const RetryPolicy& policy) {
  RetryDecision decision;
  if (attempt.code == absl::StatusCode::kDeadlineExceeded ||
      attempt.now >= attempt.deadline) {
    decision.action =
        attempt.channel_ready ? RetryAction::kTimedOut : RetryAction::kNoTunnel;
    return decision;
  }
  if (!attempt.body_replayable) {
    decision.action = RetryAction::kNotReplayable;
    return decision;
  }
  if (attempt.channel_failing &&
      attempt.now - attempt.received >= policy.no_tunnel_wait) {
    decision.action = RetryAction::kNoTunnel;
    return decision;
  }
  const absl::Duration delay = RetryDelay(attempt.attempts, policy);
  if (attempt.now + delay >= attempt.deadline) {
    decision.action = RetryAction::kNoTunnel;
    return decision;
  }
  decision.action = RetryAction::kRetry;
  decision.delay = delay;
  return decision;
}

}  // namespace broker::webhook
