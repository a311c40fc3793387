#pragma once

// A token bucket: at most `burst` events at once, refilled at `per_second`.
// The server uses one to cap how fast it admits workers, so that a fleet
// reconnecting at once after a restart is spread out instead of landing in
// one instant (the refused retry on their jittered backoff).
//
// Thread-safety: TryTake may be called from any thread.

#include "common/clock.h"

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace broker::common {

class TokenBucket {
 public:
  // per_second > 0 and burst >= 1; the bucket starts full. `clock` must
  // outlive the bucket.
  TokenBucket(double per_second, double burst, Clock& clock = SystemClock());

  // Takes one token if there is one.
  bool TryTake() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const double per_second_;
  const double burst_;
  Clock& clock_;
  absl::Mutex mu_;
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time refilled_at_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::common
