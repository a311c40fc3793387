// RedisStore against a real redis-server started by each test: the same
// answers as InMemoryStore for the same calls, atomic allocations under
// racing callers and across replicas, leases that expire on Redis's clock,
// and recovery after Redis restarts empty.

#include "services/dispatcher/redis_store.h"

#include "common/clock.h"
#include "common/token.h"
#include "services/dispatcher/in_memory_store.h"
#include "tests/dispatcher/is_ok_and_holds.h"
#include "tests/dispatcher/redis_server.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace broker::dispatcher {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::IsOkAndHolds;
using ::broker::testing::RedisServer;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;

const std::string kHash = common::HashToken("abc");

StoreOptions LongLived() {
  StoreOptions options;
  options.lease_ttl = absl::Hours(1);
  options.server_ttl = absl::Hours(1);
  return options;
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto redis = RedisServer::Start();
    ASSERT_THAT(redis, IsOk());
    redis_ = *std::move(redis);
  }

  std::unique_ptr<Store> MakeStore(StoreOptions options = LongLived(),
                                   const std::string& prefix = "test") {
    RedisOptions redis;
    redis.endpoint.host = "127.0.0.1";
    redis.endpoint.port = redis_->port();
    redis.key_prefix = prefix;
    auto store = RedisStore::Create(options, redis);
    EXPECT_THAT(store, IsOk());
    return store.ok() ? *std::move(store) : nullptr;
  }

  static void Register(Store& store, const std::string& id) {
    ServerRegistration registration;
    registration.id = id;
    registration.tunnel_url = absl::StrCat("grpc://s", id, ":7342");
    registration.internal_url = absl::StrCat("http://s", id, ":7341");
    ASSERT_THAT(store.RegisterServer(registration), IsOk());
  }

  std::unique_ptr<RedisServer> redis_;
};

std::string Describe(const absl::StatusOr<AllocationResult>& result) {
  if (!result.ok()) return absl::StatusCodeToString(result.status().code());
  return absl::StrCat(result->server_id, "|", result->tunnel_url, "|",
                      result->existing);
}

std::string Describe(const absl::StatusOr<std::vector<TokenServer>>& result) {
  if (!result.ok()) return absl::StatusCodeToString(result.status().code());
  std::string out;
  for (const TokenServer& s : *result) {
    absl::StrAppend(&out, s.id, "|", s.internal_url, "|", s.tunnel_url, "|",
                    s.clients, ";");
  }
  return out;
}

std::string Describe(const absl::StatusOr<StoreCounts>& result) {
  if (!result.ok()) return absl::StatusCodeToString(result.status().code());
  return absl::StrCat(result->live_servers, " servers, ", result->live_leases,
                      " leases");
}

template <typename T>
std::string Describe(const absl::StatusOr<T>& result) {
  if (!result.ok()) return absl::StatusCodeToString(result.status().code());
  return absl::StrCat(*result);
}

std::string Describe(const absl::Status& status) {
  return absl::StatusCodeToString(status.code());
}

// The Lua script and the C++ store implement one model: a long random
// sequence of calls must get identical answers from both.
TEST_F(RedisStoreTest, GivesTheSameAnswersAsTheInMemoryStore) {
  std::unique_ptr<Store> redis = MakeStore();
  ASSERT_NE(redis, nullptr);
  common::ManualClock clock(absl::Now());
  InMemoryStore memory(LongLived(), clock);
  std::mt19937 random(20240601);
  auto pick = [&](int n) {
    return static_cast<int>(random() % static_cast<unsigned>(n));
  };
  for (int i = 0; i < 6; ++i) {
    Register(*redis, absl::StrCat(i));
    Register(memory, absl::StrCat(i));
  }
  int allocations = 0;
  for (int step = 0; step < 1500; ++step) {
    const std::string hash = common::HashToken(absl::StrCat("t", pick(12)));
    const std::string client = absl::StrCat("c", pick(7));
    const std::string server = absl::StrCat(pick(8));
    const int op = pick(100);
    std::string a;
    std::string b;
    if (op < 55) {
      a = Describe(redis->Allocate(hash, client));
      b = Describe(memory.Allocate(hash, client));
      ++allocations;
    } else if (op < 70) {
      a = Describe(redis->ReleaseClient(server, hash, client));
      b = Describe(memory.ReleaseClient(server, hash, client));
    } else if (op < 80) {
      a = Describe(redis->RefreshClient(server, hash, client));
      b = Describe(memory.RefreshClient(server, hash, client));
    } else if (op < 88) {
      a = Describe(redis->ServersForToken(hash));
      b = Describe(memory.ServersForToken(hash));
    } else if (op < 94) {
      ServerRegistration registration;
      registration.id = server;
      registration.tunnel_url = absl::StrCat("grpc://", step);
      a = Describe(redis->RegisterServer(registration));
      b = Describe(memory.RegisterServer(registration));
    } else {
      a = Describe(redis->RemoveServer(server));
      b = Describe(memory.RemoveServer(server));
    }
    ASSERT_EQ(a, b) << "step " << step << " op " << op;
    if (step % 10 == 0) {
      ASSERT_EQ(Describe(redis->Counts()), Describe(memory.Counts()))
          << "step " << step;
    }
  }
  EXPECT_GT(allocations, 500);
  EXPECT_THAT(memory.Counts(),
              IsOkAndHolds(::testing::Field(&StoreCounts::live_leases,
                                            ::testing::Gt(0))));
}

TEST_F(RedisStoreTest, CapAndIdempotency) {
  std::unique_ptr<Store> store = MakeStore();
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 8; ++i) Register(*store, absl::StrCat(i));
  std::set<std::string> used;
  for (int c = 0; c < 4; ++c) {
    auto result = store->Allocate(kHash, absl::StrCat("c", c));
    ASSERT_THAT(result, IsOk());
    EXPECT_FALSE(result->existing);
    used.insert(result->server_id);
  }
  EXPECT_EQ(used.size(), 4U);
  EXPECT_THAT(store->Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("4 of at most 4")));
  auto again = store->Allocate(kHash, "c1");
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->existing);
  EXPECT_EQ(again->tunnel_url,
            absl::StrCat("grpc://s", again->server_id, ":7342"));
}

TEST_F(RedisStoreTest, RacingAllocationsAcrossReplicasAdmitExactlyTheCap) {
  std::unique_ptr<Store> a = MakeStore();
  std::unique_ptr<Store> b = MakeStore();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  for (int i = 0; i < 8; ++i) Register(*a, absl::StrCat(i));
  constexpr int kThreads = 100;
  std::atomic<int> admitted{0};
  std::atomic<int> refused{0};
  absl::Notification go;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      Store& store = i % 2 == 0 ? *a : *b;
      auto result = store.Allocate(kHash, absl::StrCat("client-", i));
      if (result.ok()) {
        ++admitted;
      } else if (absl::IsResourceExhausted(result.status())) {
        ++refused;
      }
    });
  }
  go.Notify();
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 4);
  EXPECT_EQ(refused.load(), kThreads - 4);
  auto servers = b->ServersForToken(kHash);
  ASSERT_THAT(servers, IsOk());
  std::int64_t total = 0;
  for (const TokenServer& s : *servers) total += s.clients;
  EXPECT_EQ(total, 4);
}

TEST_F(RedisStoreTest, LeasesExpireOnRedisTime) {
  StoreOptions options = LongLived();
  options.lease_ttl = absl::Milliseconds(300);
  std::unique_ptr<Store> store = MakeStore(options);
  ASSERT_NE(store, nullptr);
  Register(*store, "0");
  const absl::Time first_allocation = absl::Now();
  for (int c = 0; c < 4; ++c) {
    ASSERT_THAT(store->Allocate(kHash, absl::StrCat("c", c)), IsOk());
  }
  ASSERT_THAT(store->Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  // Wait (bounded) for the leases to run out; nobody refreshes them.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::StatusOr<AllocationResult> admitted = store->Allocate(kHash, "c4");
  while (!admitted.ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    admitted = store->Allocate(kHash, "c4");
  }
  ASSERT_THAT(admitted, IsOk());
  // Not before the first lease's 300 ms were over (Redis keeps whole ms).
  EXPECT_GE(absl::Now() - first_allocation, absl::Milliseconds(299));
  // The other three run out too; c4, refreshed, stays.
  std::int64_t clients = -1;
  while (clients != 1 && absl::Now() < deadline) {
    ASSERT_THAT(store->Allocate(kHash, "c4"), IsOk());
    auto servers = store->ServersForToken(kHash);
    ASSERT_THAT(servers, IsOk());
    ASSERT_EQ(servers->size(), 1U);
    clients = servers->front().clients;
    if (clients != 1) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(clients, 1);
}

TEST_F(RedisStoreTest, UnreachableIsUnavailableAndAnEmptyRestartServesAgain) {
  std::unique_ptr<Store> store = MakeStore();
  ASSERT_NE(store, nullptr);
  Register(*store, "0");
  ASSERT_THAT(store->Allocate(kHash, "c1"), IsOk());
  ASSERT_THAT(store->Ping(), IsOk());
  redis_->Kill();
  EXPECT_THAT(store->Allocate(kHash, "c1"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("redis")));
  EXPECT_THAT(store->Ping(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("redis")));
  ASSERT_THAT(redis_->Restart(), IsOk());
  // The restarted Redis is empty and has no scripts cached: the store
  // reconnects (after its short connect back-off) and loads them again.
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::Status ping = store->Ping();
  while (!ping.ok() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    ping = store->Ping();
  }
  ASSERT_THAT(ping, IsOk());
  EXPECT_THAT(store->Allocate(kHash, "c1"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("")));
  Register(*store, "0");
  auto result = store->Allocate(kHash, "c1");
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->server_id, "0");
}

TEST_F(RedisStoreTest, PrefixesSeparateDeployments) {
  std::unique_ptr<Store> one = MakeStore(LongLived(), "one");
  std::unique_ptr<Store> two = MakeStore(LongLived(), "two");
  ASSERT_NE(one, nullptr);
  ASSERT_NE(two, nullptr);
  Register(*one, "0");
  ASSERT_THAT(one->Allocate(kHash, "c1"), IsOk());
  EXPECT_THAT(two->Allocate(kHash, "c1"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("")));
}

TEST_F(RedisStoreTest, AWrongPasswordIsUnavailable) {
  RedisOptions redis;
  redis.endpoint.host = "127.0.0.1";
  redis.endpoint.port = redis_->port();
  redis.endpoint.password = "wrong";
  auto store = RedisStore::Create(LongLived(), redis);
  ASSERT_THAT(store, IsOk());
  // No password is configured on this Redis: AUTH fails, and says so.
  EXPECT_THAT((*store)->Ping(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("AUTH")));
}

}  // namespace
}  // namespace broker::dispatcher
