#include "services/dispatcher/in_memory_store.h"

#include "common/clock.h"
#include "common/token.h"
#include "tests/dispatcher/is_ok_and_holds.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace broker::dispatcher {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::IsOkAndHolds;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kHash = common::HashToken("abc");
const std::string kOtherHash = common::HashToken("def");

class InMemoryStoreTest : public ::testing::Test {
 protected:
  InMemoryStoreTest() : store_(Options(), clock_) {}

  static StoreOptions Options() {
    StoreOptions options;
    options.max_clients_per_token = 4;
    options.lease_ttl = absl::Seconds(90);
    options.server_ttl = absl::Seconds(30);
    return options;
  }

  void Register(const std::string& id, const std::string& tunnel_url = "") {
    ServerRegistration registration;
    registration.id = id;
    registration.tunnel_url = tunnel_url;
    registration.internal_url = absl::StrCat("http://server-", id, ":7341");
    ASSERT_THAT(store_.RegisterServer(registration), IsOk());
  }

  std::string AllocateOk(const std::string& hash, const std::string& client) {
    auto result = store_.Allocate(hash, client);
    EXPECT_THAT(result, IsOk());
    return result.ok() ? result->server_id : "";
  }

  common::ManualClock clock_{absl::FromUnixSeconds(1700000000)};
  InMemoryStore store_;
};

TEST_F(InMemoryStoreTest, NoServerMeansFailedPrecondition) {
  EXPECT_THAT(store_.Allocate(kHash, "c1"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("no")));
}

TEST_F(InMemoryStoreTest, AllocationReturnsTheServerAndItsTunnelUrl) {
  Register("0", "grpc://server-0:7342");
  auto result = store_.Allocate(kHash, "c1");
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->server_id, "0");
  EXPECT_EQ(result->tunnel_url, "grpc://server-0:7342");
  EXPECT_FALSE(result->existing);
}

TEST_F(InMemoryStoreTest, AllocatingAgainIsIdempotent) {
  for (int i = 0; i < 8; ++i) Register(absl::StrCat(i));
  const std::string first = AllocateOk(kHash, "c1");
  for (int i = 0; i < 3; ++i) {
    auto again = store_.Allocate(kHash, "c1");
    ASSERT_THAT(again, IsOk());
    EXPECT_EQ(again->server_id, first);
    EXPECT_TRUE(again->existing);
  }
  auto servers = store_.ServersForToken(kHash);
  ASSERT_THAT(servers, IsOk());
  ASSERT_EQ(servers->size(), 1U);
  EXPECT_EQ(servers->front().clients, 1);
}

TEST_F(InMemoryStoreTest,
       FourClientsOnFourDistinctServersThenTheFifthIsRefused) {
  for (int i = 0; i < 8; ++i) Register(absl::StrCat(i));
  std::set<std::string> used;
  for (int c = 0; c < 4; ++c)
    used.insert(AllocateOk(kHash, absl::StrCat("c", c)));
  EXPECT_EQ(used.size(), 4U);
  EXPECT_THAT(store_.Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("4 of at most 4")));
  // The admitted ones still get their servers, and other tokens are free.
  EXPECT_THAT(store_.Allocate(kHash, "c0"), IsOk());
  EXPECT_THAT(store_.Allocate(kOtherHash, "c4"), IsOk());
}

TEST_F(InMemoryStoreTest, LeasesExpireWithoutRefresh) {
  Register("0");
  for (int c = 0; c < 4; ++c) AllocateOk(kHash, absl::StrCat("c", c));
  clock_.Advance(absl::Seconds(60));
  Register("0");  // the server's own liveness (30 s)
  // Keep c0..c2 (an allocation refreshes; so do the server's events).
  AllocateOk(kHash, "c0");
  ASSERT_THAT(store_.RefreshClient("0", kHash, "c1"), IsOk());
  ASSERT_THAT(store_.RefreshClient("0", kHash, "c2"), IsOk());
  EXPECT_THAT(store_.Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  clock_.Advance(absl::Seconds(29));  // c3: 89 s since its last refresh
  Register("0");
  EXPECT_THAT(store_.Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  clock_.Advance(absl::Seconds(1));  // 90 s: c3's lease is over
  EXPECT_EQ(AllocateOk(kHash, "c4"), "0");
  auto servers = store_.ServersForToken(kHash);
  ASSERT_THAT(servers, IsOk());
  ASSERT_EQ(servers->size(), 1U);
  EXPECT_EQ(servers->front().clients, 4);
}

TEST_F(InMemoryStoreTest, DisconnectFreesTheSlotOnlyOnTheClientsServer) {
  for (int i = 0; i < 8; ++i) Register(absl::StrCat(i));
  std::vector<std::string> servers;
  servers.reserve(4);
  for (int c = 0; c < 4; ++c) {
    servers.push_back(AllocateOk(kHash, absl::StrCat("c", c)));
  }
  const std::string elsewhere = servers[0] == "7" ? "6" : "7";
  // A stale disconnect from a server the client left changes nothing.
  EXPECT_THAT(store_.ReleaseClient(elsewhere, kHash, "c0"),
              IsOkAndHolds(false));
  EXPECT_THAT(store_.Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  EXPECT_THAT(store_.ReleaseClient(servers[0], kHash, "c0"),
              IsOkAndHolds(true));
  // The newcomer takes the freed slot, on the same server.
  EXPECT_EQ(AllocateOk(kHash, "c4"), servers[0]);
}

TEST_F(InMemoryStoreTest, RemovingAServerFreesItsLeases) {
  Register("0");
  Register("1");
  const std::string first = AllocateOk(kHash, "c1");
  AllocateOk(kHash, "c2");
  AllocateOk(kOtherHash, "x");
  EXPECT_THAT(store_.RemoveServer(first), IsOkAndHolds(::testing::Ge(1)));
  // c1 is placed again, on the server that is left.
  auto again = store_.Allocate(kHash, "c1");
  ASSERT_THAT(again, IsOk());
  EXPECT_NE(again->server_id, first);
  EXPECT_FALSE(again->existing);
  EXPECT_THAT(store_.RemoveServer("unknown"), IsOkAndHolds(0));
}

TEST_F(InMemoryStoreTest, CountsAreLiveServersAndTheirLiveLeases) {
  auto counts = [&] {
    absl::StatusOr<StoreCounts> c = store_.Counts();
    EXPECT_THAT(c, IsOk());
    return c.ok() ? std::make_pair(c->live_servers, c->live_leases)
                  : std::make_pair(std::int64_t{-1}, std::int64_t{-1});
  };
  EXPECT_EQ(counts(), std::make_pair(std::int64_t{0}, std::int64_t{0}));
  Register("0");
  Register("1");
  AllocateOk(kHash, "c1");
  AllocateOk(kHash, "c2");
  AllocateOk(kOtherHash, "x");
  AllocateOk(kHash, "c1");  // the same lease again
  EXPECT_EQ(counts(), std::make_pair(std::int64_t{2}, std::int64_t{3}));
  ASSERT_THAT(store_.ReleaseClient(store_.Allocate(kHash, "c2")->server_id,
                                   kHash, "c2"),
              IsOkAndHolds(true));
  EXPECT_EQ(counts(), std::make_pair(std::int64_t{2}, std::int64_t{2}));
  // Past the server TTL, neither the servers nor their leases count.
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(counts(), std::make_pair(std::int64_t{0}, std::int64_t{0}));
}

TEST_F(InMemoryStoreTest, DeadServersGetNoClientsAndLeaveLookups) {
  Register("0");
  AllocateOk(kHash, "c1");
  clock_.Advance(absl::Seconds(31));
  EXPECT_THAT(store_.Allocate(kHash, "c2"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("")));
  EXPECT_THAT(store_.ServersForToken(kHash), IsOkAndHolds(IsEmpty()));
  // Any client event brings it back.
  ASSERT_THAT(store_.RefreshClient("0", kHash, "c1"), IsOk());
  EXPECT_EQ(AllocateOk(kHash, "c2"), "0");
}

TEST_F(InMemoryStoreTest, AClientOnADeadServerIsPlacedAgainKeepingItsSlot) {
  Register("0");
  for (int c = 0; c < 4; ++c) AllocateOk(kHash, absl::StrCat("c", c));
  clock_.Advance(absl::Seconds(31));
  Register("1");
  // c0's server died: it moves, and does not count against itself.
  auto moved = store_.Allocate(kHash, "c0");
  ASSERT_THAT(moved, IsOk());
  EXPECT_EQ(moved->server_id, "1");
  EXPECT_FALSE(moved->existing);
  // The others still hold their (unexpired) slots.
  EXPECT_THAT(store_.Allocate(kHash, "c4"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
}

TEST_F(InMemoryStoreTest, ClientEventsTeachUnknownLeasesUpToTheCap) {
  // A restarted in-memory dispatcher learns from the servers' events.
  ASSERT_THAT(store_.RefreshClient("2", kHash, "c1"), IsOk());
  EXPECT_EQ(AllocateOk(kHash, "c1"), "2");
  for (int c = 2; c <= 4; ++c) {
    ASSERT_THAT(store_.RefreshClient("2", kHash, absl::StrCat("c", c)), IsOk());
  }
  EXPECT_THAT(store_.RefreshClient("2", kHash, "c5"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  // A known client's event is always accepted, and moves its lease.
  Register("3");
  ASSERT_THAT(store_.RefreshClient("3", kHash, "c1"), IsOk());
  EXPECT_EQ(AllocateOk(kHash, "c1"), "3");
}

TEST_F(InMemoryStoreTest, LookupListsLiveServersWithTheirClients) {
  for (int i = 0; i < 3; ++i) Register(absl::StrCat(i), absl::StrCat("t", i));
  EXPECT_THAT(store_.ServersForToken(kHash), IsOkAndHolds(IsEmpty()));
  std::set<std::string> used;
  for (int c = 0; c < 4; ++c)
    used.insert(AllocateOk(kHash, absl::StrCat("c", c)));
  auto servers = store_.ServersForToken(kHash);
  ASSERT_THAT(servers, IsOk());
  ASSERT_EQ(servers->size(), 3U);
  std::int64_t total = 0;
  for (const TokenServer& server : *servers) {
    total += server.clients;
    EXPECT_EQ(server.internal_url,
              absl::StrCat("http://server-", server.id, ":7341"));
    EXPECT_EQ(server.tunnel_url, absl::StrCat("t", server.id));
  }
  EXPECT_EQ(total, 4);
  EXPECT_EQ(servers->front().id, "0");  // ordered by id
}

TEST_F(InMemoryStoreTest, RegistrationReportsWhetherTheServerWasNew) {
  ServerRegistration registration;
  registration.id = "0";
  EXPECT_THAT(store_.RegisterServer(registration), IsOkAndHolds(true));
  registration.tunnel_url = "grpc://new";
  EXPECT_THAT(store_.RegisterServer(registration), IsOkAndHolds(false));
  auto result = store_.Allocate(kHash, "c1");
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(result->tunnel_url, "grpc://new");
}

TEST_F(InMemoryStoreTest, RacingAllocationsAdmitExactlyTheCap) {
  for (int i = 0; i < 8; ++i) Register(absl::StrCat(i));
  constexpr int kThreads = 100;
  std::atomic<int> admitted{0};
  std::atomic<int> refused{0};
  absl::Notification go;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      go.WaitForNotification();
      auto result = store_.Allocate(kHash, absl::StrCat("client-", i));
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
}

TEST_F(InMemoryStoreTest, SameSequenceGivesSameAnswersInAFreshStore) {
  for (int i = 0; i < 5; ++i) Register(absl::StrCat(i));
  InMemoryStore other(Options(), clock_);
  for (int i = 0; i < 5; ++i) {
    ServerRegistration registration;
    registration.id = absl::StrCat(4 - i);  // another registration order
    ASSERT_THAT(other.RegisterServer(registration), IsOk());
  }
  for (int t = 0; t < 50; ++t) {
    const std::string hash = common::HashToken(absl::StrCat("t", t));
    for (int c = 0; c < 4; ++c) {
      const std::string client = absl::StrCat("c", c);
      auto a = store_.Allocate(hash, client);
      auto b = other.Allocate(hash, client);
      ASSERT_THAT(a, IsOk());
      ASSERT_THAT(b, IsOk());
      EXPECT_EQ(a->server_id, b->server_id);
    }
  }
}

}  // namespace
}  // namespace broker::dispatcher
