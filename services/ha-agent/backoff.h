#pragma once

// Retry delays of the agent's dispatcher loop, as pure functions of a
// random source (absl::BitGenRef), so tests pin them with a seeded engine.
//
// Thread-safety: a Backoff is a plain value; guard it like any other.

#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"

namespace broker::ha {

// Jittered exponential backoff: the n-th delay is uniform in
// [b/2, b] with b = min(initial * 2^n, max), so it never exceeds `max` and
// retries from many agents spread out instead of arriving together.
class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max)
      : initial_(initial), max_(max), next_(initial) {}

  // The delay before the next attempt; doubles the base for the one after.
  absl::Duration Next(absl::BitGenRef gen);
  // After a success: the next failure waits about `initial` again.
  void Reset() { next_ = initial_; }
  // The base the next delay is drawn under (its upper bound).
  absl::Duration current() const { return next_; }

 private:
  absl::Duration initial_;
  absl::Duration max_;
  absl::Duration next_;
};

// Uniform in [min, max] (min when max <= min): the refused client's poll.
absl::Duration UniformDelay(absl::BitGenRef gen, absl::Duration min,
                            absl::Duration max);

}  // namespace broker::ha
