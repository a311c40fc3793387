#include "services/ha-agent/backoff.h"

#include "gtest/gtest.h"

#include <random>
#include <set>

namespace broker::ha {
namespace {

TEST(Backoff, GrowsJitteredAndCapped) {
  std::mt19937_64 engine(42);
  Backoff backoff(absl::Milliseconds(100), absl::Seconds(10));
  absl::Duration base = absl::Milliseconds(100);
  for (int i = 0; i < 40; ++i) {
    const absl::Duration delay = backoff.Next(engine);
    EXPECT_GE(delay, base / 2) << "attempt " << i;
    EXPECT_LE(delay, base) << "attempt " << i;
    EXPECT_LE(delay, absl::Seconds(10));
    base = std::min(base * 2, absl::Seconds(10));
  }
  EXPECT_EQ(backoff.current(), absl::Seconds(10));
}

TEST(Backoff, IsJittered) {
  std::mt19937_64 engine(7);
  std::set<int64_t> seen;
  for (int i = 0; i < 20; ++i) {
    Backoff backoff(absl::Seconds(1), absl::Seconds(10));
    seen.insert(absl::ToInt64Microseconds(backoff.Next(engine)));
  }
  EXPECT_GT(seen.size(), 10U);
}

TEST(Backoff, ResetStartsOver) {
  std::mt19937_64 engine(1);
  Backoff backoff(absl::Milliseconds(100), absl::Seconds(10));
  for (int i = 0; i < 10; ++i) (void)backoff.Next(engine);
  backoff.Reset();
  EXPECT_LE(backoff.Next(engine), absl::Milliseconds(100));
}

TEST(UniformDelay, StaysInItsRange) {
  std::mt19937_64 engine(3);
  for (int i = 0; i < 1000; ++i) {
    const absl::Duration d =
        UniformDelay(engine, absl::Milliseconds(250), absl::Milliseconds(500));
    EXPECT_GE(d, absl::Milliseconds(250));
    EXPECT_LE(d, absl::Milliseconds(500));
  }
  EXPECT_EQ(UniformDelay(engine, absl::Seconds(2), absl::Seconds(1)),
            absl::Seconds(2));
}

}  // namespace
}  // namespace broker::ha
