#include "services/server/delivery_ledger.h"

#include "common/clock.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace broker::server {
namespace {

using Key = DeliveryLedger::Key;
using Role = DeliveryLedger::Role;

// What a waiter's on_resolved saw.
struct Resolution {
  bool ran = false;
  std::uint64_t ticket = 0;
  std::shared_ptr<const DeliveryAnswer> answer;
};

DeliveryLedger::OnResolved Into(Resolution& out) {
  return [&out](std::uint64_t ticket,
                const std::shared_ptr<const DeliveryAnswer>& answer) {
    EXPECT_FALSE(out.ran) << "on_resolved ran twice";
    out.ran = true;
    out.ticket = ticket;
    out.answer = answer;
  };
}

DeliveryLedger::OnResolved Unexpected() {
  return [](std::uint64_t, const std::shared_ptr<const DeliveryAnswer>&) {
    ADD_FAILURE() << "on_resolved must not run";
  };
}

DeliveryAnswer Answer(int status, std::string body) {
  DeliveryAnswer answer;
  answer.status = status;
  answer.headers = {{"content-type", "application/json"}};
  answer.body = std::move(body);
  return answer;
}

class DeliveryLedgerTest : public ::testing::Test {
 protected:
  common::ManualClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  DeliveryLedger ledger_{clock_};
  const Key key_{"hash-a", "0b7c3f4e-1111-4222-8333-944455556666"};
};

TEST_F(DeliveryLedgerTest, FirstAttemptOwnsTheDelivery) {
  DeliveryLedger::Begun begun = ledger_.Begin(key_, Unexpected());
  EXPECT_EQ(begun.role, Role::kOwner);
  EXPECT_NE(begun.ticket, 0U);
  EXPECT_EQ(ledger_.size(), 1U);
}

TEST_F(DeliveryLedgerTest, RetryAfterCompletionGetsTheAnswer) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  ledger_.Complete(key_, first.ticket, Answer(202, "{\"ok\":true}"));
  DeliveryLedger::Begun retry = ledger_.Begin(key_, Unexpected());
  ASSERT_EQ(retry.role, Role::kAnswered);
  ASSERT_NE(retry.answer, nullptr);
  EXPECT_EQ(retry.answer->status, 202);
  EXPECT_EQ(retry.answer->body, "{\"ok\":true}");
  EXPECT_TRUE(retry.answer->whole);
  ASSERT_EQ(retry.answer->headers.size(), 1U);
  EXPECT_EQ(retry.answer->headers[0].value, "application/json");
}

TEST_F(DeliveryLedgerTest, RetryInFlightWaitsForTheAnswer) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  Resolution a;
  Resolution b;
  DeliveryLedger::Begun retry_a = ledger_.Begin(key_, Into(a));
  DeliveryLedger::Begun retry_b = ledger_.Begin(key_, Into(b));
  EXPECT_EQ(retry_a.role, Role::kWaiting);
  EXPECT_EQ(retry_b.role, Role::kWaiting);
  EXPECT_NE(retry_a.ticket, retry_b.ticket);
  EXPECT_FALSE(a.ran);
  ledger_.Complete(key_, first.ticket, Answer(200, "done"));
  ASSERT_TRUE(a.ran);
  ASSERT_TRUE(b.ran);
  EXPECT_EQ(a.ticket, retry_a.ticket);
  EXPECT_EQ(b.ticket, retry_b.ticket);
  ASSERT_NE(a.answer, nullptr);
  EXPECT_EQ(a.answer->body, "done");
  EXPECT_EQ(a.answer, b.answer);  // one shared copy
}

TEST_F(DeliveryLedgerTest, ForgottenDeliveryGoesThroughAgain) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  ledger_.Forget(key_, first.ticket);
  EXPECT_EQ(ledger_.size(), 0U);
  DeliveryLedger::Begun retry = ledger_.Begin(key_, Unexpected());
  EXPECT_EQ(retry.role, Role::kOwner);
  EXPECT_NE(retry.ticket, first.ticket);
}

TEST_F(DeliveryLedgerTest, ForgetPromotesTheOldestWaiter) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  Resolution a;
  Resolution b;
  DeliveryLedger::Begun retry_a = ledger_.Begin(key_, Into(a));
  ledger_.Begin(key_, Into(b));
  ledger_.Forget(key_, first.ticket);
  ASSERT_TRUE(a.ran);
  EXPECT_EQ(a.answer, nullptr);  // the new owner
  EXPECT_EQ(a.ticket, retry_a.ticket);
  EXPECT_FALSE(b.ran);
  // The old owner's ticket no longer counts.
  ledger_.Complete(key_, first.ticket, Answer(500, "stale"));
  EXPECT_FALSE(b.ran);
  ledger_.Complete(key_, retry_a.ticket, Answer(200, "second"));
  ASSERT_TRUE(b.ran);
  ASSERT_NE(b.answer, nullptr);
  EXPECT_EQ(b.answer->body, "second");
}

TEST_F(DeliveryLedgerTest, AbandonedWaiterIsNotCalled) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  DeliveryLedger::Begun retry = ledger_.Begin(key_, Unexpected());
  ledger_.Abandon(key_, retry.ticket);
  ledger_.Complete(key_, first.ticket, Answer(200, "x"));
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kAnswered);
}

TEST_F(DeliveryLedgerTest, AbandonAfterPromotionForgets) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  Resolution a;
  DeliveryLedger::Begun retry = ledger_.Begin(key_, Into(a));
  ledger_.Forget(key_, first.ticket);
  ASSERT_TRUE(a.ran);
  // The promoted attempt's call died before it could go on.
  ledger_.Abandon(key_, retry.ticket);
  EXPECT_EQ(ledger_.size(), 0U);
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kOwner);
}

TEST_F(DeliveryLedgerTest, CompleteAndForgetNeedTheOwnersTicket) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  ledger_.Complete(key_, first.ticket + 100, Answer(200, "no"));
  ledger_.Forget(key_, first.ticket + 100);
  EXPECT_EQ(ledger_.size(), 1U);
  Resolution waiter;
  EXPECT_EQ(ledger_.Begin(key_, Into(waiter)).role, Role::kWaiting);
  ledger_.Complete(key_, first.ticket, Answer(201, "yes"));
  ASSERT_TRUE(waiter.ran);
  EXPECT_EQ(waiter.answer->status, 201);
  // A completed delivery is never forgotten by its owner afterwards.
  ledger_.Forget(key_, first.ticket);
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kAnswered);
}

TEST_F(DeliveryLedgerTest, KeysAreTokenAndId) {
  const Key same_id_other_token{"hash-b", key_.delivery_id};
  const Key other_id{key_.token_hash, "other"};
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kOwner);
  EXPECT_EQ(ledger_.Begin(same_id_other_token, Unexpected()).role,
            Role::kOwner);
  EXPECT_EQ(ledger_.Begin(other_id, Unexpected()).role, Role::kOwner);
  EXPECT_EQ(ledger_.size(), 3U);
}

TEST_F(DeliveryLedgerTest, AnswersExpire) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  clock_.Advance(absl::Minutes(30));  // in flight: never expires
  EXPECT_EQ(ledger_.size(), 1U);
  ledger_.Complete(key_, first.ticket, Answer(200, "x"));
  clock_.Advance(absl::Minutes(10) - absl::Seconds(1));
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kAnswered);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(ledger_.size(), 0U);
  EXPECT_EQ(ledger_.Begin(key_, Unexpected()).role, Role::kOwner);
}

TEST_F(DeliveryLedgerTest, OldestCompletedIsEvictedWhenFull) {
  DeliveryLedger::Options options;
  options.max_entries = 3;
  DeliveryLedger ledger(clock_, options);
  auto key = [](int i) { return Key{"h", std::to_string(i)}; };
  for (int i = 0; i < 3; ++i) {
    DeliveryLedger::Begun begun = ledger.Begin(key(i), Unexpected());
    ASSERT_EQ(begun.role, Role::kOwner);
    clock_.Advance(absl::Seconds(1));
    ledger.Complete(key(i), begun.ticket, Answer(200, std::to_string(i)));
  }
  EXPECT_EQ(ledger.Begin(key(3), Unexpected()).role, Role::kOwner);
  EXPECT_EQ(ledger.size(), 3U);
  EXPECT_EQ(ledger.Begin(key(0), Unexpected()).role, Role::kOwner)
      << "key 0 was the oldest and should have been evicted";
  // key(1) was evicted to make room for key(0); key(2) is still answered.
  EXPECT_EQ(ledger.Begin(key(2), Unexpected()).role, Role::kAnswered);
}

TEST_F(DeliveryLedgerTest, FullOfDeliveriesInFlightStopsDeduplicating) {
  DeliveryLedger::Options options;
  options.max_entries = 2;
  DeliveryLedger ledger(clock_, options);
  const Key a{"h", "a"};
  const Key b{"h", "b"};
  const Key c{"h", "c"};
  DeliveryLedger::Begun first = ledger.Begin(a, Unexpected());
  ledger.Begin(b, Unexpected());
  DeliveryLedger::Begun untracked = ledger.Begin(c, Unexpected());
  EXPECT_EQ(untracked.role, Role::kUntracked);
  EXPECT_EQ(ledger.size(), 2U);
  // Once one completes, it can make room.
  ledger.Complete(a, first.ticket, Answer(200, "a"));
  EXPECT_EQ(ledger.Begin(c, Unexpected()).role, Role::kOwner);
}

TEST_F(DeliveryLedgerTest, TooBigAnswerIsKeptWithoutBody) {
  DeliveryLedger::Begun first = ledger_.Begin(key_, Unexpected());
  DeliveryAnswer big = Answer(200, "");
  big.whole = false;
  ledger_.Complete(key_, first.ticket, std::move(big));
  DeliveryLedger::Begun retry = ledger_.Begin(key_, Unexpected());
  ASSERT_EQ(retry.role, Role::kAnswered);
  EXPECT_FALSE(retry.answer->whole);
  EXPECT_EQ(retry.answer->status, 200);
}

TEST_F(DeliveryLedgerTest, SameKeyAfterExpiryIsANewDelivery) {
  DeliveryLedger::Options options;
  options.keep = absl::Minutes(1);
  DeliveryLedger ledger(clock_, options);
  DeliveryLedger::Begun first = ledger.Begin(key_, Unexpected());
  ledger.Complete(key_, first.ticket, Answer(200, "1"));
  clock_.Advance(absl::Minutes(1));
  // Expired: the same key is a new delivery, which stays while in flight.
  DeliveryLedger::Begun second = ledger.Begin(key_, Unexpected());
  ASSERT_EQ(second.role, Role::kOwner);
  clock_.Advance(absl::Minutes(5));
  EXPECT_EQ(ledger.size(), 1U);
  Resolution waiter;
  EXPECT_EQ(ledger.Begin(key_, Into(waiter)).role, Role::kWaiting);
}

}  // namespace
}  // namespace broker::server
