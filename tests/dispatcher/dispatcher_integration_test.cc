// The real broker-dispatcher binary on loopback, driven over HTTP the way
// the Snyk broker client, our ha-agent and broker-server call it; in
// memory and with a real redis-server shared by two replicas.

#include "common/status.h"
#include "common/token.h"
#include "tests/dispatcher/is_ok_and_holds.h"
#include "tests/dispatcher/redis_server.h"
#include "tests/integration/http_fetch.h"
#include "tests/integration/test_certs.h"
#include "tests/testing/child_process.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);
// sha256_hex("abc"), the Snyk client's unit-test vector.
constexpr char kAbcHash[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kSnykBody[] =
    R"({"data":{"attributes":{"deployment_location":"snyk-broker-client",)"
    R"("broker_token_first_char":"a"}}})";

std::string ClientId(int i) {
  return absl::StrFormat("00000000-0000-4000-8000-%012d", i);
}

struct Dispatcher {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port, path);
  }
};

absl::StatusOr<Dispatcher> StartDispatcher(
    std::map<std::string, std::string> env = {}) {
  env.emplace("PORT", "0");
  env.emplace("LOG_LEVEL", "info");
  BROKER_ASSIGN_OR_RETURN(auto process,
                          ChildProcess::Start(BROKER_DISPATCHER_BIN, {}, env));
  BROKER_ASSIGN_OR_RETURN(
      std::string line,
      process->WaitForLine("broker-dispatcher listening", kWait));
  json parsed = json::parse(line, nullptr, false);
  if (parsed.is_discarded() || !parsed["port"].is_number_integer()) {
    return absl::InternalError(absl::StrCat("no port in: ", line));
  }
  Dispatcher dispatcher;
  dispatcher.port = parsed["port"].get<int>();
  dispatcher.process = std::move(process);
  return dispatcher;
}

class DispatcherTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure()) {
      for (size_t i = 0; i < dispatchers_.size(); ++i) {
        if (dispatchers_[i].process == nullptr) continue;
        std::cerr << "--- dispatcher " << i << " stdout\n"
                  << dispatchers_[i].process->Output();
      }
    }
  }

  // Starts a dispatcher kept in dispatchers_; returns its index.
  size_t Start(std::map<std::string, std::string> env = {}) {
    auto dispatcher = StartDispatcher(std::move(env));
    EXPECT_THAT(dispatcher, IsOk());
    if (!dispatcher.ok()) return 0;
    dispatchers_.push_back(*std::move(dispatcher));
    return dispatchers_.size() - 1;
  }
  const Dispatcher& D(size_t i) const { return dispatchers_.at(i); }

  absl::StatusOr<Fetched> Call(size_t d, const std::string& method,
                               const std::string& path,
                               const std::string& body = "",
                               bool chunked = false) {
    return fetcher_.Fetch(method, D(d).Url(path),
                          {{"content-type", "application/vnd.api+json"},
                           {"user-agent", "Snyk Broker Client 4.200.0"}},
                          body, chunked);
  }

  // POST /hidden/broker/{hash}/connections/{client}: status and server id.
  std::pair<int, std::string> Allocate(size_t d, const std::string& hash,
                                       const std::string& client) {
    auto response =
        Call(d, "POST",
             absl::StrCat("/hidden/broker/", hash, "/connections/", client,
                          "?version=2022-12-01~experimental"),
             kSnykBody, /*chunked=*/true);
    if (!response.ok()) return {0, response.status().ToString()};
    if (response->status != 201) return {response->status, response->body};
    json body = json::parse(response->body, nullptr, false);
    if (body.is_discarded() ||
        !body["data"]["attributes"]["server_id"].is_string()) {
      return {-1, response->body};
    }
    return {201, body["data"]["attributes"]["server_id"].get<std::string>()};
  }

  void Register(size_t d, const std::string& id) {
    auto response = Call(
        d, "POST",
        absl::StrCat("/internal/brokerservers/", id,
                     "?version=2022-12-02~experimental"),
        absl::StrCat(R"({"data":{"attributes":{"health_check_link":)",
                     R"("http://broker-server-)", id,
                     R"(/healthcheck","tunnel_url":"grpc://s)", id,
                     R"(:7342","internal_url":"http://s)", id, R"(:7341"}}})"));
    ASSERT_THAT(response, IsOk());
    ASSERT_TRUE(response->status == 201 || response->status == 200)
        << response->status << " " << response->body;
  }

  int Disconnect(size_t d, const std::string& server, const std::string& hash,
                 const std::string& client) {
    auto response =
        Call(d, "DELETE",
             absl::StrCat("/internal/brokerservers/", server, "/connections/",
                          hash, "?broker_client_id=", client,
                          "&version=2022-12-02~experimental"));
    return response.ok() ? response->status : 0;
  }

  // 100 concurrent allocations of distinct clients of one token, spread
  // over `targets`: how many were admitted (the rest must be 409).
  int Race(const std::vector<size_t>& targets) {
    constexpr int kRacers = 100;
    std::atomic<int> admitted{0};
    std::atomic<int> refused{0};
    absl::Notification go;
    std::vector<std::thread> threads;
    threads.reserve(kRacers);
    for (int i = 0; i < kRacers; ++i) {
      threads.emplace_back([&, i] {
        go.WaitForNotification();
        auto [status, server] =
            Allocate(targets[i % targets.size()], kAbcHash, ClientId(i));
        if (status == 201) ++admitted;
        if (status == 409) ++refused;
      });
    }
    go.Notify();
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(admitted.load() + refused.load(), kRacers);
    return admitted.load();
  }

  // The allocation sequence used for determinism: 12 tokens x 4 clients.
  std::vector<std::string> Sequence(size_t d) {
    std::vector<std::string> servers;
    for (int t = 0; t < 12; ++t) {
      const std::string hash = common::HashToken(absl::StrCat("token-", t));
      for (int c = 0; c < 4; ++c) {
        auto [status, server] = Allocate(d, hash, ClientId(t * 10 + c));
        EXPECT_EQ(status, 201) << server;
        servers.push_back(server);
      }
    }
    return servers;
  }

  Fetcher fetcher_;
  std::vector<Dispatcher> dispatchers_;
};

TEST_F(DispatcherTest, HelpListsEverySetting) {
  auto help = ChildProcess::Start(BROKER_DISPATCHER_BIN, {"--help"}, {});
  ASSERT_THAT(help, IsOk());
  ASSERT_THAT((*help)->Wait(kWait), IsOkAndHolds(0));
  // The exit may come before the reader thread drained the pipe.
  ASSERT_THAT((*help)->WaitForLine("LOG_LEVEL", kWait), IsOk());
  const std::string text = (*help)->Output();
  for (const char* name :
       {"PORT", "HTTPS_CERT", "HTTPS_KEY", "BROKER_DISPATCHER_REDIS_URL",
        "BROKER_DISPATCHER_REDIS_TIMEOUT_MS",
        "BROKER_DISPATCHER_REDIS_KEY_PREFIX", "BROKER_MAX_CLIENTS_PER_TOKEN",
        "BROKER_DISPATCHER_LEASE_TTL_MS", "BROKER_DISPATCHER_SERVER_TTL_MS",
        "LOG_LEVEL"}) {
    EXPECT_THAT(text, HasSubstr(name));
  }
}

TEST_F(DispatcherTest, ABadSettingStopsStartUp) {
  for (const auto& [name, value] : std::map<std::string, std::string>{
           {"BROKER_MAX_CLIENTS_PER_TOKEN", "0"},
           {"BROKER_DISPATCHER_REDIS_URL", "http://redis:6379"},
           {"BROKER_DISPATCHER_LEASE_TTL_MS", "soon"},
           {"LOG_LEVEL", "loud"}}) {
    auto process = ChildProcess::Start(BROKER_DISPATCHER_BIN, {},
                                       {{"PORT", "0"}, {name, value}});
    ASSERT_THAT(process, IsOk());
    EXPECT_THAT((*process)->Wait(kWait), IsOkAndHolds(2)) << name;
  }
}

TEST_F(DispatcherTest, AllocationContractWithTheSnykTestVector) {
  const size_t d = Start();
  ASSERT_EQ(common::HashToken("abc"), kAbcHash);
  Register(d, "0");
  const std::string client = "4c0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
  for (const char* prefix : {"/hidden/broker/", "/hidden/brokers/"}) {
    // As the Snyk client sends it: chunked, with the `version` parameter.
    auto response = Call(d, "POST",
                         absl::StrCat(prefix, kAbcHash, "/connections/", client,
                                      "?version=2022-12-01%7Eexperimental"),
                         kSnykBody, /*chunked=*/true);
    ASSERT_THAT(response, IsOk());
    EXPECT_EQ(response->status, 201);
    EXPECT_EQ(response->Header("content-type"), "application/vnd.api+json");
    EXPECT_EQ(response->body,
              absl::StrCat(R"({"jsonapi":{"version":"1.0"},"data":{"type":)",
                           R"("broker_connection","id":")", client,
                           R"(","attributes":{"server_id":"0",)",
                           R"("tunnel_url":"grpc://s0:7342"}}})"));
  }
  // Content-Length bodies and no body at all are fine too.
  auto plain =
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/other"),
           kSnykBody);
  ASSERT_THAT(plain, IsOk());
  EXPECT_EQ(plain->status, 201);
  auto empty =
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/third"));
  ASSERT_THAT(empty, IsOk());
  EXPECT_EQ(empty->status, 201);
}

TEST_F(DispatcherTest, FifthClientIsRefusedThenAdmittedWhenASlotFrees) {
  const size_t d = Start();
  for (int i = 0; i < 8; ++i) Register(d, absl::StrCat(i));
  std::vector<std::string> servers;
  for (int c = 0; c < 4; ++c) {
    auto [status, server] = Allocate(d, kAbcHash, ClientId(c));
    ASSERT_EQ(status, 201) << server;
    servers.push_back(server);
  }
  EXPECT_EQ(std::set<std::string>(servers.begin(), servers.end()).size(), 4U);

  auto refused =
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/",
                        ClientId(4), "?version=2022-12-01~experimental"),
           kSnykBody, /*chunked=*/true);
  ASSERT_THAT(refused, IsOk());
  EXPECT_EQ(refused->status, 409);
  EXPECT_EQ(refused->Header("content-type"), "application/vnd.api+json");
  json body = json::parse(refused->body);
  ASSERT_TRUE(body["errors"].is_array());
  EXPECT_EQ(body["errors"][0]["status"], "409");
  EXPECT_EQ(body["errors"][0]["code"], "TOO_MANY_CLIENTS");
  // What the Snyk client tests for: no data.attributes.
  EXPECT_FALSE(body.contains("data"));

  EXPECT_EQ(Disconnect(d, servers[2], kAbcHash, ClientId(2)), 204);
  auto [status, server] = Allocate(d, kAbcHash, ClientId(4));
  EXPECT_EQ(status, 201);
  EXPECT_EQ(server, servers[2]);  // the freed slot's server
  EXPECT_EQ(Allocate(d, kAbcHash, ClientId(2)).first, 409);
}

TEST_F(DispatcherTest, PlacementIsTheSameAfterARestart) {
  const size_t first = Start();
  for (int i = 0; i < 6; ++i) Register(first, absl::StrCat(i));
  const std::vector<std::string> before = Sequence(first);
  dispatchers_[first].process->Signal(SIGTERM);
  ASSERT_THAT(dispatchers_[first].process->Wait(kWait), IsOkAndHolds(0));

  const size_t second = Start();
  for (int i = 5; i >= 0; --i) Register(second, absl::StrCat(i));
  EXPECT_EQ(Sequence(second), before);
  // And not trivially: the clients are spread over every server.
  EXPECT_EQ(std::set<std::string>(before.begin(), before.end()).size(), 6U);
}

TEST_F(DispatcherTest, HundredRacingAllocationsAdmitExactlyFour) {
  const size_t d = Start();
  for (int i = 0; i < 8; ++i) Register(d, absl::StrCat(i));
  EXPECT_EQ(Race({d}), 4);
}

TEST_F(DispatcherTest, BadInputIsAJsonApiError) {
  const size_t d = Start();
  Register(d, "0");
  auto expect_error = [&](const absl::StatusOr<Fetched>& response, int status,
                          const std::string& code) {
    ASSERT_THAT(response, IsOk());
    EXPECT_EQ(response->status, status) << response->body;
    EXPECT_EQ(response->Header("content-type"), "application/vnd.api+json");
    json body = json::parse(response->body, nullptr, false);
    ASSERT_FALSE(body.is_discarded()) << response->body;
    EXPECT_EQ(body["errors"][0]["status"], absl::StrCat(status));
    EXPECT_EQ(body["errors"][0]["code"], code);
  };
  expect_error(
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/c1"),
           R"({"data":)", /*chunked=*/true),
      400, "INVALID_BODY");
  expect_error(Call(d, "POST", "/hidden/broker/abc/connections/c1", kSnykBody),
               400, "INVALID_TOKEN_HASH");
  expect_error(Call(d, "GET", "/no/such/route"), 404, "NOT_FOUND");
  expect_error(
      Call(d, "GET",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/c1")),
      405, "METHOD_NOT_ALLOWED");
  expect_error(Call(d, "POST", "/internal/brokerservers/1", "[1,2"), 400,
               "INVALID_BODY");
  expect_error(
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/c1"),
           std::string(size_t{100} * 1024, ' '), /*chunked=*/true),
      413, "BODY_TOO_LARGE");
  expect_error(
      Call(d, "POST",
           absl::StrCat("/hidden/broker/", kAbcHash, "/connections/c1"),
           std::string(size_t{100} * 1024, ' ')),
      413, "BODY_TOO_LARGE");
  // The connection, or a new one, still serves.
  auto health = Call(d, "GET", "/healthcheck");
  ASSERT_THAT(health, IsOk());
  EXPECT_EQ(health->status, 200);
}

TEST_F(DispatcherTest, LookupListsTheServersHoldingAToken) {
  const size_t d = Start();
  for (int i = 0; i < 3; ++i) Register(d, absl::StrCat(i));
  const std::string lookup =
      absl::StrCat("/internal/tokens/", kAbcHash, "/brokerservers");
  auto empty = Call(d, "GET", lookup);
  ASSERT_THAT(empty, IsOk());
  EXPECT_EQ(empty->status, 200);
  EXPECT_EQ(empty->body, R"({"jsonapi":{"version":"1.0"},"data":[]})");

  auto [status, server] = Allocate(d, kAbcHash, ClientId(1));
  ASSERT_EQ(status, 201);
  auto found = Call(d, "GET", lookup + "?version=2022-12-02~experimental");
  ASSERT_THAT(found, IsOk());
  EXPECT_EQ(found->status, 200);
  EXPECT_EQ(found->body,
            absl::StrCat(R"({"jsonapi":{"version":"1.0"},"data":[{"type":)",
                         R"("brokerserver","id":")", server,
                         R"(","attributes":{"internal_url":"http://s)", server,
                         R"(:7341","tunnel_url":"grpc://s)", server,
                         R"(:7342","clients":1}}]})"));

  // A server that says goodbye leaves the lookup, and its clients move.
  auto removed = Call(d, "DELETE", "/internal/brokerservers/" + server);
  ASSERT_THAT(removed, IsOk());
  EXPECT_EQ(removed->status, 204);
  auto after = Call(d, "GET", lookup);
  ASSERT_THAT(after, IsOk());
  EXPECT_EQ(after->body, R"({"jsonapi":{"version":"1.0"},"data":[]})");
  auto moved = Allocate(d, kAbcHash, ClientId(1));
  EXPECT_EQ(moved.first, 201);
  EXPECT_NE(moved.second, server);
}

TEST_F(DispatcherTest, ServerEventsKeepLeasesAndShortLeasesExpire) {
  const size_t d = Start({{"BROKER_DISPATCHER_LEASE_TTL_MS", "1500"}});
  Register(d, "0");
  for (int c = 0; c < 4; ++c) {
    ASSERT_EQ(Allocate(d, kAbcHash, ClientId(c)).first, 201);
  }
  // The pinged events (as broker-server sends them) keep c0..c2; nothing
  // refreshes c3, whose slot must free by itself.
  auto ping = [&](int c) {
    auto response =
        Call(d, "POST",
             absl::StrCat("/internal/brokerservers/0/connections/", kAbcHash,
                          "?broker_client_id=", ClientId(c),
                          "&latency=3&request_type=client-pinged"
                          "&version=2022-12-02~experimental"),
             R"({"data":{"attributes":{"broker_client_version":"4"}}})");
    return response.ok() ? response->status : 0;
  };
  const absl::Time deadline = absl::Now() + kWait;
  bool admitted = false;
  while (!admitted && absl::Now() < deadline) {
    for (int c = 0; c < 3; ++c) ASSERT_EQ(ping(c), 204);
    auto [status, server] = Allocate(d, kAbcHash, ClientId(4));
    ASSERT_TRUE(status == 201 || status == 409) << status << " " << server;
    admitted = status == 201;
    if (!admitted) absl::SleepFor(absl::Milliseconds(50));  // poll interval
  }
  EXPECT_TRUE(admitted) << "c3's lease never expired";
  // c3 lost its slot; the pinged ones kept theirs, so the token is full.
  EXPECT_EQ(Allocate(d, kAbcHash, ClientId(3)).first, 409);
}

TEST_F(DispatcherTest, HealthcheckAnswersLikeTheOtherServices) {
  const size_t d = Start();
  auto health = Call(d, "GET", "/healthcheck");
  ASSERT_THAT(health, IsOk());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, R"({"ok":true,"version":"0.1.0"})");
}

TEST_F(DispatcherTest, ServesOverTlsWithHttpsCertAndKey) {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "dispatcher-tls-XXXXXX")
          .string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string dir = pattern;
  auto pki = MakeTestPki(dir, "dispatcher", "dispatcher test CA");
  ASSERT_THAT(pki, IsOk());
  const size_t d = Start(
      {{"HTTPS_CERT", pki->leaf_cert_file}, {"HTTPS_KEY", pki->leaf_key_file}});
  common::http::ClientOptions options;
  options.ca_file = pki->ca_cert_file;
  Fetcher tls(options);
  const std::string base = absl::StrCat("https://127.0.0.1:", D(d).port);
  auto registered = tls.Fetch("POST", base + "/internal/brokerservers/0");
  ASSERT_THAT(registered, IsOk());
  EXPECT_EQ(registered->status, 201);
  auto allocated =
      tls.Fetch("POST",
                absl::StrCat(base, "/hidden/broker/", kAbcHash,
                             "/connections/c1?version=2022-12-01~experimental"),
                {{"content-type", "application/vnd.api+json"}}, kSnykBody,
                /*chunked=*/true);
  ASSERT_THAT(allocated, IsOk());
  EXPECT_EQ(allocated->status, 201);
  EXPECT_THAT(allocated->body, HasSubstr(R"("server_id":"0")"));
  // Plain HTTP is not served on the TLS port.
  auto plain = Call(d, "GET", "/healthcheck");
  EXPECT_FALSE(plain.ok() && plain->status == 200);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

class DispatcherRedisTest : public DispatcherTest {
 protected:
  void SetUp() override {
    auto redis = RedisServer::Start();
    ASSERT_THAT(redis, IsOk());
    redis_ = *std::move(redis);
  }
  void TearDown() override {
    DispatcherTest::TearDown();
    if (HasFailure() && redis_ != nullptr && redis_->process() != nullptr) {
      std::cerr << "--- redis stdout\n" << redis_->process()->Output();
    }
  }
  size_t StartReplica() {
    return Start({{"BROKER_DISPATCHER_REDIS_URL", redis_->url()}});
  }

  std::unique_ptr<RedisServer> redis_;
};

TEST_F(DispatcherRedisTest, TwoReplicasGiveConsistentAnswers) {
  const size_t a = StartReplica();
  const size_t b = StartReplica();
  for (int i = 0; i < 8; ++i) Register(i % 2 == 0 ? a : b, absl::StrCat(i));
  std::vector<std::string> servers;
  for (int c = 0; c < 4; ++c) {
    auto [status, server] = Allocate(a, kAbcHash, ClientId(c));
    ASSERT_EQ(status, 201) << server;
    servers.push_back(server);
    // B sees A's allocation: the same server for the same client.
    EXPECT_EQ(Allocate(b, kAbcHash, ClientId(c)), std::make_pair(201, server));
  }
  EXPECT_EQ(Allocate(b, kAbcHash, ClientId(4)).first, 409);
  EXPECT_EQ(Disconnect(b, servers[0], kAbcHash, ClientId(0)), 204);
  EXPECT_EQ(Allocate(a, kAbcHash, ClientId(4)),
            std::make_pair(201, servers[0]));
  EXPECT_EQ(Allocate(b, kAbcHash, ClientId(0)).first, 409);
  auto lookup = Call(
      b, "GET", absl::StrCat("/internal/tokens/", kAbcHash, "/brokerservers"));
  ASSERT_THAT(lookup, IsOk());
  EXPECT_EQ(json::parse(lookup->body)["data"].size(), 4U);
}

TEST_F(DispatcherRedisTest, HundredRacingAllocationsOverTwoReplicasAdmitFour) {
  const size_t a = StartReplica();
  const size_t b = StartReplica();
  for (int i = 0; i < 8; ++i) Register(a, absl::StrCat(i));
  EXPECT_EQ(Race({a, b}), 4);
}

TEST_F(DispatcherRedisTest, PlacementMatchesTheInMemoryDispatcher) {
  const size_t memory = Start();
  const size_t redis = StartReplica();
  for (int i = 0; i < 6; ++i) {
    Register(memory, absl::StrCat(i));
    Register(redis, absl::StrCat(i));
  }
  EXPECT_EQ(Sequence(redis), Sequence(memory));
}

TEST_F(DispatcherRedisTest, OneReplicaKilledTheOtherKeepsServing) {
  const size_t a = StartReplica();
  const size_t b = StartReplica();
  for (int i = 0; i < 4; ++i) Register(a, absl::StrCat(i));
  auto [status, server] = Allocate(a, kAbcHash, ClientId(0));
  ASSERT_EQ(status, 201);
  dispatchers_[a].process->Signal(SIGKILL);
  ASSERT_THAT(dispatchers_[a].process->Wait(kWait), IsOkAndHolds(137));
  EXPECT_EQ(Allocate(b, kAbcHash, ClientId(0)), std::make_pair(201, server));
  for (int c = 1; c < 4; ++c) {
    EXPECT_EQ(Allocate(b, kAbcHash, ClientId(c)).first, 201);
  }
  EXPECT_EQ(Allocate(b, kAbcHash, ClientId(4)).first, 409);
}

TEST_F(DispatcherRedisTest, RedisDownIs503AndALogLineThenServesAgain) {
  const size_t d = StartReplica();
  Register(d, "0");
  ASSERT_EQ(Allocate(d, kAbcHash, ClientId(0)).first, 201);

  redis_->Kill();
  for (int i = 0; i < 5; ++i) {
    auto response = Call(
        d, "POST",
        absl::StrCat("/hidden/broker/", kAbcHash, "/connections/", ClientId(0)),
        kSnykBody, /*chunked=*/true);
    ASSERT_THAT(response, IsOk());
    EXPECT_EQ(response->status, 503);
    EXPECT_EQ(response->Header("content-type"), "application/vnd.api+json");
    json body = json::parse(response->body, nullptr, false);
    ASSERT_FALSE(body.is_discarded());
    EXPECT_EQ(body["errors"][0]["code"], "STORE_UNAVAILABLE");
  }
  auto health = Call(d, "GET", "/healthcheck");
  ASSERT_THAT(health, IsOk());
  EXPECT_EQ(health->status, 503);
  EXPECT_EQ(health->body, R"({"ok":false,"version":"0.1.0"})");
  ASSERT_THAT(dispatchers_[d].process->WaitForLine(
                  "dispatcher store unreachable", kWait),
              IsOk());
  // One line for the outage, not one per request.
  EXPECT_THAT(dispatchers_[d].process->WaitForLine(
                  "dispatcher store unreachable", absl::ZeroDuration()),
              ::testing::Not(IsOk()));

  ASSERT_THAT(redis_->Restart(), IsOk());
  const absl::Time deadline = absl::Now() + kWait;
  int status = 0;
  while (status != 200 && absl::Now() < deadline) {
    auto again = Call(d, "GET", "/healthcheck");
    status = again.ok() ? again->status : 0;
    if (status != 200) absl::SleepFor(absl::Milliseconds(20));  // poll
  }
  ASSERT_EQ(status, 200);
  ASSERT_THAT(dispatchers_[d].process->WaitForLine(
                  "dispatcher store reachable again", kWait),
              IsOk());
  // Redis came back empty: the server registers again (it does every 10 s).
  Register(d, "0");
  EXPECT_EQ(Allocate(d, kAbcHash, ClientId(0)),
            std::make_pair(201, std::string("0")));
}

}  // namespace
}  // namespace broker::testing
