#include "services/ha-agent/backoff.h"

#include "absl/random/distributions.h"

#include <algorithm>
#include <cstdint>

namespace broker::ha {

absl::Duration UniformDelay(absl::BitGenRef gen, absl::Duration min,
                            absl::Duration max) {
  if (max <= min) return min;
  const int64_t lo = absl::ToInt64Microseconds(min);
  const int64_t hi = absl::ToInt64Microseconds(max);
  return absl::Microseconds(
      absl::Uniform<int64_t>(absl::IntervalClosedClosed, gen, lo, hi));
}

absl::Duration Backoff::Next(absl::BitGenRef gen) {
  const absl::Duration base = std::min(next_, max_);
  next_ = std::min(base * 2, max_);
  return UniformDelay(gen, base / 2, base);
}

}  // namespace broker::ha
