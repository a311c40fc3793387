#pragma once

// Time as a seam (STYLE 5.2): code that keeps leases or deadlines takes a
// Clock&, so tests and benchmarks move time by hand instead of sleeping.
//
// Thread-safety: every method of every Clock here may be called from any
// thread.

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace broker::common {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

// The system clock (absl::Now()).
class DefaultClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

// The process-wide DefaultClock (never destroyed, so objects with static
// or long lifetimes may keep a reference).
inline Clock& SystemClock() {
  static auto* const kClock = new DefaultClock();
  return *kClock;
}

// A clock that moves only when told to: for tests and benchmarks.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::UnixEpoch()) : now_(start) {}
  absl::Time Now() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration by) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    now_ += by;
  }
  void Set(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    now_ = now;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace broker::common
