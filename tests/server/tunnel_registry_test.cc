#include "services/server/tunnel_registry.h"

#include "common/clock.h"
#include "tests/testing/status_matchers.h"

#include "absl/status/status.h"
#include "boost/asio/io_context.hpp"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace broker::server {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kToken[] = "token-hash";

// A lane that only knows its worker: the registry never calls into it.
class FakeLane final : public Lane {
 public:
  explicit FakeLane(std::string client_id) : client_id_(std::move(client_id)) {}
  void Attach(std::shared_ptr<LaneListener>) override {}
  void Send(tunnel::v1::ServeDown) override {}
  void ReadNext() override {}
  void Close(absl::Status) override {}
  void Repark() override {}
  const std::string& client_id() const override { return client_id_; }

 private:
  std::string client_id_;
};

TunnelRegistry::WorkerInfo Worker(const std::string& id,
                                  const std::string& rules = "rules-a") {
  TunnelRegistry::WorkerInfo info;
  info.client_id = id;
  info.client_url = "http://scm:1";
  info.rules_digest = rules;
  return info;
}

// A request that found the token's tunnel nowhere (its workers moving
// between servers) is told when the first worker arrives here.
TEST(TunnelRegistryTest, AWaitForAWorkerEndsWhenOneArrives) {
  TunnelRegistry registry(/*max_clients_per_token=*/4);
  boost::asio::io_context io;
  std::vector<bool> answers;
  registry.WaitForWorker(io, kToken, absl::Seconds(30),
                         [&](bool arrived) { answers.push_back(arrived); });
  registry.WaitForWorker(io, kToken, absl::Seconds(30),
                         [&](bool arrived) { answers.push_back(arrived); });
  io.poll();
  EXPECT_TRUE(answers.empty()) << "answered before any worker came";
  // Another token's worker does not end the wait.
  ASSERT_THAT(registry.AddWorker("other", Worker("x")).status(), IsOk());
  io.poll();
  EXPECT_TRUE(answers.empty());
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  io.run_for(std::chrono::seconds(5));  // ends when nothing is left to do
  EXPECT_EQ(answers, (std::vector<bool>{true, true}));
}

TEST(TunnelRegistryTest, AWaitForAWorkerEndsFalseAtItsDeadline) {
  TunnelRegistry registry(/*max_clients_per_token=*/4);
  boost::asio::io_context io;
  std::vector<bool> answers;
  registry.WaitForWorker(io, kToken, absl::Milliseconds(10),
                         [&](bool arrived) { answers.push_back(arrived); });
  io.run_for(std::chrono::seconds(5));  // the timer is all there is
  EXPECT_EQ(answers, (std::vector<bool>{false}));
  // A worker arriving afterwards has no one left to tell.
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  io.restart();
  io.poll();
  EXPECT_EQ(answers.size(), 1U);
}

TEST(TunnelRegistryTest, AWaitForAWorkerAlreadyHereAnswersAtOnce) {
  TunnelRegistry registry(/*max_clients_per_token=*/4);
  boost::asio::io_context io;
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  std::vector<bool> answers;
  registry.WaitForWorker(io, kToken, absl::Seconds(30),
                         [&](bool arrived) { answers.push_back(arrived); });
  EXPECT_EQ(answers, (std::vector<bool>{true}));
  // Without a wait, no worker is answered at once too.
  registry.WaitForWorker(io, "nobody", absl::ZeroDuration(),
                         [&](bool arrived) { answers.push_back(arrived); });
  EXPECT_EQ(answers, (std::vector<bool>{true, false}));
}

TEST(TunnelRegistryTest, CapsDistinctWorkersPerToken) {
  TunnelRegistry registry(/*max_clients_per_token=*/2);
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  ASSERT_THAT(registry.AddWorker(kToken, Worker("b")).status(), IsOk());
  EXPECT_THAT(registry.AddWorker(kToken, Worker("c")).status(),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("BROKER_MAX_CLIENTS_PER_TOKEN")));
  // A worker reconnecting with its id is not a new client.
  EXPECT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  // Another token has its own slots.
  EXPECT_THAT(registry.AddWorker("other", Worker("c")).status(), IsOk());
  EXPECT_EQ(registry.Workers(kToken).size(), 2U);
}

TEST(TunnelRegistryTest, ZeroMeansNoCap) {
  TunnelRegistry registry(/*max_clients_per_token=*/0);
  for (int i = 0; i < 10; ++i) {
    EXPECT_THAT(registry.AddWorker(kToken, Worker(std::to_string(i))).status(),
                IsOk());
  }
}

TEST(TunnelRegistryTest, RefusesADifferentFingerprintNamingTheSetting) {
  TunnelRegistry registry;
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  EXPECT_THAT(
      registry.AddWorker(kToken, Worker("b", "rules-b")).status(),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("ACCEPT")));
  TunnelRegistry::WorkerInfo other_url = Worker("b");
  other_url.client_url = "http://elsewhere:1";
  EXPECT_THAT(registry.AddWorker(kToken, other_url).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("BROKER_CLIENT_URL")));
}

TEST(TunnelRegistryTest, AnOldRegistrationCannotRemoveItsReplacement) {
  TunnelRegistry registry;
  auto old_serial = registry.AddWorker(kToken, Worker("a"));
  ASSERT_THAT(old_serial.status(), IsOk());
  auto new_serial = registry.AddWorker(kToken, Worker("a"));
  ASSERT_THAT(new_serial.status(), IsOk());
  EXPECT_FALSE(registry.RemoveWorker(kToken, "a", *old_serial).found);
  EXPECT_TRUE(registry.HasWorkers(kToken));
  EXPECT_TRUE(registry.RemoveWorker(kToken, "a", *new_serial).found);
  EXPECT_FALSE(registry.HasWorkers(kToken));
}

// A worker that opens lane after lane (10,000, say) parks at most the cap;
// the rest are refused as full, and a taken lane makes room again.
TEST(TunnelRegistryTest, AWorkerParksAtMostTheCap) {
  TunnelRegistry registry;
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  int parked = 0;
  int refused_full = 0;
  for (int i = 0; i < 10000; ++i) {
    bool full = false;
    if (registry.Park(kToken, std::make_shared<FakeLane>("a"), &full)) {
      ++parked;
    } else if (full) {
      ++refused_full;
    }
  }
  EXPECT_EQ(parked, static_cast<int>(TunnelRegistry::kMaxIdleLanesPerWorker));
  EXPECT_EQ(refused_full, 10000 - parked);
  ASSERT_TRUE(registry.Take(kToken).has_value());
  EXPECT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>("a")));
  bool full = false;
  EXPECT_FALSE(registry.Park(kToken, std::make_shared<FakeLane>("a"), &full));
  EXPECT_TRUE(full);
  // An unknown worker is refused, not as full.
  full = false;
  EXPECT_FALSE(registry.Park(kToken, std::make_shared<FakeLane>("x"), &full));
  EXPECT_FALSE(full);
}

TEST(TunnelRegistryTest, TakeAvoidsTheNamedWorker) {
  TunnelRegistry registry;
  ASSERT_THAT(registry.AddWorker(kToken, Worker("a")).status(), IsOk());
  ASSERT_THAT(registry.AddWorker(kToken, Worker("b")).status(), IsOk());
  ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>("a")));
  ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>("b")));
  for (int i = 0; i < 2; ++i) {
    auto taken = registry.Take(kToken, /*avoid=*/"a");
    if (i == 0) {
      ASSERT_TRUE(taken.has_value());
      EXPECT_EQ(taken->client_id, "b");
    } else {
      // Only a's lane is left.
      EXPECT_FALSE(taken.has_value());
    }
  }
  auto any = registry.Take(kToken);
  ASSERT_TRUE(any.has_value());
  EXPECT_EQ(any->client_id, "a");
}

TEST(TunnelRegistryTest, SpreadsOverTheLeastLoadedWorkerThenRoundRobin) {
  TunnelRegistry registry;
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_THAT(registry.AddWorker(kToken, Worker(id)).status(), IsOk());
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>(id)));
    }
  }
  // Three takes without releases land on three different workers.
  std::set<std::string> first_round;
  for (int i = 0; i < 3; ++i)
    first_round.insert(registry.Take(kToken)->client_id);
  EXPECT_EQ(first_round.size(), 3U);
  // b finishes: it is now the least loaded and gets the next request.
  registry.Release(kToken, "b");
  EXPECT_EQ(registry.Take(kToken)->client_id, "b");
}

// Takes `n` requests and gives each back at once with `latency_of(worker)`;
// returns how many each worker served.
template <typename LatencyOf>
std::map<std::string, int> Serve(TunnelRegistry& registry, int n,
                                 LatencyOf latency_of) {
  std::map<std::string, int> served;
  for (int i = 0; i < n; ++i) {
    auto taken = registry.Take(kToken);
    if (!taken.has_value()) {
      ADD_FAILURE() << "no lane at request " << i;
      return served;
    }
    ++served[taken->client_id];
    registry.Park(kToken, std::move(taken->lane));
    registry.Release(kToken, taken->client_id, latency_of(taken->client_id));
  }
  return served;
}

TEST(TunnelRegistryTest, EqualWorkersShareEvenly) {
  common::ManualClock clock(absl::Now());
  TunnelRegistry registry(4, clock);
  for (const char* id : {"a", "b", "c", "d"}) {
    ASSERT_THAT(registry.AddWorker(kToken, Worker(id)).status(), IsOk());
    ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>(id)));
  }
  // Latencies vary a little, as real ones do; nobody counts as slow.
  int tick = 0;
  auto served = Serve(registry, 4000, [&tick](const std::string&) {
    return absl::Milliseconds(2) + absl::Microseconds((++tick % 7) * 100);
  });
  for (const char* id : {"a", "b", "c", "d"}) EXPECT_EQ(served[id], 1000) << id;
}

TEST(TunnelRegistryTest, ASlowWorkerGetsWorkOnlyWhenTheOthersAreBusier) {
  common::ManualClock clock(absl::Now());
  TunnelRegistry registry(4, clock);
  for (const char* id : {"a", "b", "c", "slow"}) {
    ASSERT_THAT(registry.AddWorker(kToken, Worker(id)).status(), IsOk());
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>(id)));
    }
  }
  auto latency_of = [](const std::string& id) {
    return id == "slow" ? absl::Milliseconds(20) : absl::Milliseconds(2);
  };
  // Learn the latencies.
  Serve(registry, 4 * TunnelRegistry::kSlowAfterSamples, latency_of);
  clock.Advance(absl::Milliseconds(10));
  // Sequential requests: the fast workers are never busy, the slow one is
  // never chosen.
  auto served = Serve(registry, 300, latency_of);
  EXPECT_EQ(served.count("slow"), 0U);
  // Concurrent requests: ten in flight on a fast worker weigh as much as
  // one on the 10x slower worker, so the slow one waits until each fast one
  // has nine, and gets one before any fast one has eleven.
  std::vector<TunnelRegistry::Taken> held;
  for (int i = 0; i < 27; ++i) held.push_back(*registry.Take(kToken));
  for (const auto& taken : held) EXPECT_NE(taken.client_id, "slow");
  bool slow_taken = false;
  for (int i = 0; i < 4 && !slow_taken; ++i) {
    slow_taken = registry.Take(kToken)->client_id == "slow";
  }
  EXPECT_TRUE(slow_taken);
}

TEST(TunnelRegistryTest, ASlowWorkerIsProbedAndRecovers) {
  common::ManualClock clock(absl::Now());
  TunnelRegistry registry(4, clock);
  for (const char* id : {"a", "slow"}) {
    ASSERT_THAT(registry.AddWorker(kToken, Worker(id)).status(), IsOk());
    ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>(id)));
  }
  bool recovered = false;
  auto latency_of = [&recovered](const std::string& id) {
    return id == "slow" && !recovered ? absl::Milliseconds(20)
                                      : absl::Milliseconds(2);
  };
  Serve(registry, 2 * TunnelRegistry::kSlowAfterSamples, latency_of);
  EXPECT_EQ(Serve(registry, 100, latency_of).count("slow"), 0U);
  // After kProbeInterval it gets one request to be measured again.
  clock.Advance(TunnelRegistry::kProbeInterval);
  auto served = Serve(registry, 100, latency_of);
  EXPECT_EQ(served["slow"], 1);
  // It is fast again: after its next probe it shares the load again.
  recovered = true;
  clock.Advance(TunnelRegistry::kProbeInterval);
  Serve(registry, 1, latency_of);
  served = Serve(registry, 100, latency_of);
  EXPECT_EQ(served["slow"], 50);
}

TEST(TunnelRegistryTest, OneOddAnswerDoesNotMakeAWorkerSlow) {
  common::ManualClock clock(absl::Now());
  TunnelRegistry registry(4, clock);
  for (const char* id : {"a", "b"}) {
    ASSERT_THAT(registry.AddWorker(kToken, Worker(id)).status(), IsOk());
    ASSERT_TRUE(registry.Park(kToken, std::make_shared<FakeLane>(id)));
  }
  Serve(registry, 10, [](const std::string&) { return absl::Milliseconds(2); });
  // b serves one large git fetch whose answer took five seconds.
  bool once = true;
  Serve(registry, 2, [&once](const std::string& id) {
    if (id == "b" && once) {
      once = false;
      return absl::Seconds(5);
    }
    return absl::Milliseconds(2);
  });
  auto served = Serve(registry, 100,
                      [](const std::string&) { return absl::Milliseconds(2); });
  EXPECT_EQ(served["b"], 50);
}

}  // namespace
}  // namespace broker::server
