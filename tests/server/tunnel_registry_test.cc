#include "services/server/tunnel_registry.h"

#include "tests/testing/status_matchers.h"

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <memory>
#include <set>
#include <string>

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

}  // namespace
}  // namespace broker::server
