#include "common/token_bucket.h"

#include <algorithm>

namespace broker::common {

TokenBucket::TokenBucket(double per_second, double burst, Clock& clock)
    : per_second_(per_second),
      burst_(burst),
      clock_(clock),
      tokens_(burst),
      refilled_at_(clock.Now()) {}

bool TokenBucket::TryTake() {
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  // A clock stepping back refills nothing, and refilling goes on from the
  // new time (not after the clock has caught up again, which would stop
  // admissions for as long as the step).
  if (now > refilled_at_) {
    tokens_ =
        std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - refilled_at_) *
                                       per_second_);
  }
  refilled_at_ = now;
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

}  // namespace broker::common
