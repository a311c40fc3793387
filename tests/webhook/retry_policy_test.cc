#include "services/webhook/retry_policy.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace broker::webhook {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1700000000);

FailedAttempt Failed(int attempts) {
  FailedAttempt attempt;
  attempt.code = absl::StatusCode::kUnavailable;
  attempt.attempts = attempts;
  attempt.body_replayable = true;
  attempt.channel_ready = true;
  attempt.channel_failing = false;
  attempt.now = kNow;
  attempt.received = kNow - absl::Seconds(1);
  attempt.deadline = kNow + absl::Seconds(29);
  return attempt;
}

TEST(RetryDelayTest, FirstRetryAtOnceThenDoublingUpToTheCap) {
  const RetryPolicy policy;  // 10 ms .. 250 ms
  EXPECT_EQ(RetryDelay(1, policy), absl::ZeroDuration());
  EXPECT_EQ(RetryDelay(2, policy), absl::Milliseconds(10));
  EXPECT_EQ(RetryDelay(3, policy), absl::Milliseconds(20));
  EXPECT_EQ(RetryDelay(4, policy), absl::Milliseconds(40));
  EXPECT_EQ(RetryDelay(6, policy), absl::Milliseconds(160));
  EXPECT_EQ(RetryDelay(7, policy), absl::Milliseconds(250));
  EXPECT_EQ(RetryDelay(1000, policy), absl::Milliseconds(250));
}

TEST(DecideRetryTest, UnavailableWorkerIsRetriedAtOnceOnTheNext) {
  const RetryDecision decision = DecideRetry(Failed(1), RetryPolicy{});
  EXPECT_EQ(decision.action, RetryAction::kRetry);
  EXPECT_EQ(decision.delay, absl::ZeroDuration());
}

TEST(DecideRetryTest, LaterRetriesBackOff) {
  const RetryDecision decision = DecideRetry(Failed(3), RetryPolicy{});
  EXPECT_EQ(decision.action, RetryAction::kRetry);
  EXPECT_EQ(decision.delay, absl::Milliseconds(20));
}

TEST(DecideRetryTest, AnyErrorButTheDeadlineIsRetried) {
  for (absl::StatusCode code :
       {absl::StatusCode::kInternal, absl::StatusCode::kUnknown,
        absl::StatusCode::kCancelled, absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kUnauthenticated, absl::StatusCode::kOk}) {
    FailedAttempt attempt = Failed(1);
    attempt.code = code;
    EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kRetry)
        << absl::StatusCodeToString(code);
  }
}

TEST(DecideRetryTest, BodyThatCannotBeReplayedIsNotRetried) {
  FailedAttempt attempt = Failed(1);
  attempt.body_replayable = false;
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action,
            RetryAction::kNotReplayable);
  // Not even when no worker is left: what was sent is gone.
  attempt.channel_failing = true;
  attempt.channel_ready = false;
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action,
            RetryAction::kNotReplayable);
}

TEST(DecideRetryTest, NoUsableWorkerIsWaitedForBriefly) {
  RetryPolicy policy;
  policy.no_tunnel_wait = absl::Seconds(2);
  FailedAttempt attempt = Failed(3);
  attempt.channel_ready = false;
  attempt.channel_failing = true;
  // 1 s after it arrived: a tunnel may be reconnecting.
  RetryDecision decision = DecideRetry(attempt, policy);
  EXPECT_EQ(decision.action, RetryAction::kRetry);
  EXPECT_EQ(decision.delay, absl::Milliseconds(20));
  attempt.received = kNow - absl::Seconds(2);
  EXPECT_EQ(DecideRetry(attempt, policy).action, RetryAction::kNoTunnel);
  policy.no_tunnel_wait = absl::ZeroDuration();
  attempt.received = kNow;
  EXPECT_EQ(DecideRetry(attempt, policy).action, RetryAction::kNoTunnel);
}

TEST(DecideRetryTest, ConnectingChannelIsWaitedFor) {
  FailedAttempt attempt = Failed(2);
  attempt.channel_ready = false;  // CONNECTING: a worker may come up
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kRetry);
}

TEST(DecideRetryTest, DeadlineWithAReadyChannelIsATimeout) {
  FailedAttempt attempt = Failed(1);
  attempt.code = absl::StatusCode::kDeadlineExceeded;
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kTimedOut);
  attempt.code = absl::StatusCode::kUnavailable;
  attempt.now = attempt.deadline;
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kTimedOut);
}

TEST(DecideRetryTest, DeadlineWhileNoWorkerWasReadyIsNoTunnel) {
  FailedAttempt attempt = Failed(1);
  attempt.code = absl::StatusCode::kDeadlineExceeded;
  attempt.channel_ready = false;
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kNoTunnel);
}

TEST(DecideRetryTest, RetryThatWouldStartAtTheDeadlineEndsNow) {
  FailedAttempt attempt = Failed(5);  // would wait 80 ms
  attempt.deadline = kNow + absl::Milliseconds(80);
  EXPECT_EQ(DecideRetry(attempt, RetryPolicy{}).action, RetryAction::kNoTunnel);
  attempt.deadline = kNow + absl::Milliseconds(81);
  const RetryDecision decision = DecideRetry(attempt, RetryPolicy{});
  EXPECT_EQ(decision.action, RetryAction::kRetry);
  EXPECT_EQ(decision.delay, absl::Milliseconds(80));
}

}  // namespace
}  // namespace broker::webhook
