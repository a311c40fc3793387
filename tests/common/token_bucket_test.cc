#include "common/token_bucket.h"

#include "common/clock.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace broker::common {
namespace {

int TakeAll(TokenBucket& bucket) {
  int taken = 0;
  while (bucket.TryTake()) ++taken;
  return taken;
}

TEST(TokenBucketTest, StartsFullThenRefillsAtTheRate) {
  ManualClock clock;
  TokenBucket bucket(/*per_second=*/100, /*burst=*/10, clock);
  EXPECT_EQ(TakeAll(bucket), 10);
  clock.Advance(absl::Milliseconds(50));  // 5 tokens' worth
  EXPECT_EQ(TakeAll(bucket), 5);
  clock.Advance(absl::Milliseconds(5));  // half a token: none yet
  EXPECT_FALSE(bucket.TryTake());
  clock.Advance(absl::Milliseconds(5));
  EXPECT_TRUE(bucket.TryTake());
}

TEST(TokenBucketTest, NeverHoldsMoreThanTheBurst) {
  ManualClock clock;
  TokenBucket bucket(/*per_second=*/1000, /*burst=*/3, clock);
  clock.Advance(absl::Hours(1));
  EXPECT_EQ(TakeAll(bucket), 3);
}

TEST(TokenBucketTest, AClockSteppingBackRefillsNothingThenGoesOn) {
  ManualClock clock(absl::UnixEpoch() + absl::Hours(1));
  TokenBucket bucket(/*per_second=*/10, /*burst=*/2, clock);
  EXPECT_EQ(TakeAll(bucket), 2);
  clock.Set(absl::UnixEpoch());  // an hour back
  EXPECT_FALSE(bucket.TryTake());
  // Refilling resumes from the new time, not an hour later.
  clock.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_FALSE(bucket.TryTake());
}

}  // namespace
}  // namespace broker::common
