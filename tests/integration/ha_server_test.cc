// broker-server with several workers of one token, as in HA mode: the cap
// on Control, the configuration fingerprint, spreading, and failover when
// a worker dies or freezes. Real processes on loopback.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/steady_load.h"
#include "tests/testing/sanitizers.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <atomic>
#include <csignal>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kToken[] = "3c1f2e4d-5a6b-4c7d-8e9f-a0b1c2d3e4f5";
constexpr absl::Duration kWait = absl::Seconds(20);

class HaServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    server_accept_ = dir_.Write("server-accept.json", R"json({"public": [
      {"method": "GET", "path": "/bytes/:n"},
      {"method": "GET", "path": "/slow/:ms"},
      {"method": "POST", "path": "/slow/:ms"},
      {"method": "POST", "path": "/echo"}
    ]})json");
    client_accept_ = ClientRules("client-accept.json", "");
    auto server = StartServer(server_accept_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  void TearDown() override {
    for (TunnelProcess& worker : workers_) {
      if (worker.process) worker.process->Signal(SIGCONT);
    }
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-tunnel ", i), workers_[i].process.get());
    }
  }

  // The client rules; `extra` adds a rule (a different fingerprint).
  std::string ClientRules(const std::string& name, const std::string& extra) {
    const std::string origin = absl::StrCat("http://127.0.0.1:", origin_port_);
    return dir_.Write(
        name,
        absl::StrCat(
            R"json({"private": [)json", extra,
            R"json({"method": "GET", "path": "/bytes/:n", "origin": ")json",
            origin, R"json("},
      {"method": "GET", "path": "/slow/:ms", "origin": ")json",
            origin, R"json("},
      {"method": "POST", "path": "/slow/:ms", "origin": ")json",
            origin, R"json("},
      {"method": "POST", "path": "/echo", "origin": ")json",
            origin, R"json("}]})json"));
  }

  // Starts a worker the server admits (waits for both sides to say so).
  void AddWorker() {
    auto worker =
        StartTunnel(kToken, server_.tunnel_port, client_accept_,
                    *server_.process, {{"BROKER_CLIENT_URL", "http://w:1"}});
    ASSERT_TRUE(worker.ok()) << worker.status();
    workers_.push_back(*std::move(worker));
  }

  // Starts a worker without waiting for its tunnel; returns its HTTP port.
  absl::StatusOr<std::unique_ptr<ChildProcess>> StartUnadmitted(
      const std::string& accept, int* http_port) const {
    auto process = ChildProcess::Start(
        BROKER_TUNNEL_BIN, {},
        {{"BROKER_TOKEN", kToken},
         {"BROKER_SERVER_URL",
          absl::StrCat("http://127.0.0.1:", server_.tunnel_port)},
         {"ACCEPT", accept},
         {"PORT", "0"},
         {"BROKER_CLIENT_URL", "http://w:1"},
         {"LOG_LEVEL", "info"}});
    if (!process.ok()) return process.status();
    auto line = (*process)->WaitForLine("broker-tunnel listening", kWait);
    if (!line.ok()) return line.status();
    auto port = JsonInt(*line, "port");
    if (!port.ok()) return port.status();
    *http_port = *port;
    return process;
  }

  std::string BrokerUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                        kToken, path);
  }

  int Healthcheck(int http_port) {
    auto r = fetcher_.Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", http_port, "/healthcheck"));
    return r.ok() ? r->status : 0;
  }

  // broker_tunnel_requests_total of a worker's /metrics, or -1.
  int64_t RelayedBy(const TunnelProcess& worker) {
    auto r = fetcher_.Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", worker.http_port, "/metrics"));
    if (!r.ok() || r->status != 200) return -1;
    for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
      if (absl::ConsumePrefix(&line, "broker_tunnel_requests_total ")) {
        int64_t n = 0;
        if (absl::SimpleAtoi(line, &n)) return n;
      }
    }
    return -1;
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string server_accept_;
  std::string client_accept_;
  ServerProcess server_;
  std::vector<TunnelProcess> workers_;
};

TEST_F(HaServerTest, FifthWorkerIsRefusedUntilASlotFrees) {
  for (int i = 0; i < 4; ++i) AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  int fifth_port = 0;
  auto fifth = StartUnadmitted(client_accept_, &fifth_port);
  ASSERT_TRUE(fifth.ok()) << fifth.status();
  auto refused = server_.process->WaitForLine("broker client refused", kWait);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_THAT(*refused, HasSubstr("BROKER_MAX_CLIENTS_PER_TOKEN"));
  ASSERT_TRUE((*fifth)
                  ->WaitForLine("the broker server refused this client", kWait)
                  .ok());
  EXPECT_EQ(Healthcheck(fifth_port), 500);

  auto status =
      fetcher_.Fetch("GET", absl::StrCat("http://127.0.0.1:", server_.http_port,
                                         "/connection-status/", kToken));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->status, 200);
  EXPECT_EQ(nlohmann::json::parse(status->body)["clients"].size(), 4U);

  // One of the four leaves: the fifth gets in on its next attempt.
  workers_[0].process->Signal(SIGKILL);
  ASSERT_TRUE(
      server_.process->WaitForLine("broker client disconnected", kWait).ok());
  ASSERT_TRUE((*fifth)
                  ->WaitForLine("tunnel connected to the broker server", kWait)
                  .ok());
  EXPECT_EQ(Healthcheck(fifth_port), 200);
}

TEST_F(HaServerTest, WorkerWithDifferentRulesIsRefusedNamingTheSetting) {
  AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  const std::string other_rules = ClientRules(
      "other-accept.json",
      R"json({"method": "GET", "path": "/extra", "origin": "http://127.0.0.1:1"},)json");
  int port = 0;
  auto odd = StartUnadmitted(other_rules, &port);
  ASSERT_TRUE(odd.ok()) << odd.status();
  auto refused = server_.process->WaitForLine("broker client refused", kWait);
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_THAT(*refused, HasSubstr("accept rules (ACCEPT) differ"));
  ASSERT_TRUE(
      (*odd)->WaitForLine("the broker server refused this client", kWait).ok());
  EXPECT_EQ(Healthcheck(port), 500);
}

TEST_F(HaServerTest, RequestsSpreadEvenlyOverFourWorkers) {
  for (int i = 0; i < 4; ++i) AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      Fetcher fetcher;
      for (int i = 0; i < kPerThread; ++i) {
        auto r = fetcher.Fetch("GET", BrokerUrl("/bytes/64"));
        if (!r.ok() || r->status != 200) failed.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  constexpr double kTotal = kThreads * kPerThread;
  for (const TunnelProcess& worker : workers_) {
    const double share = static_cast<double>(RelayedBy(worker)) / kTotal;
    EXPECT_NEAR(share, 0.25, 0.02);
  }
}

TEST_F(HaServerTest, KilledWorkerCostsNoGet) {
  AddWorker();
  AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  const int files = OpenFiles(server_.process->pid());
  {
    SteadyLoad fast({BrokerUrl("/bytes/1024")}, 4);
    SteadyLoad slow({BrokerUrl("/slow/300")}, 4);  // in flight when one dies
    EXPECT_TRUE(fast.WaitForMore(200, kWait)) << "the load never started";
    workers_[1].process->Signal(SIGKILL);
    // Keep the load on until the survivor has served plenty more.
    EXPECT_TRUE(fast.WaitForMore(500, kWait)) << "the load stalled";
    fast.Stop();
    slow.Stop();
    EXPECT_EQ(fast.failed(), 0) << fast.first_failure();
    EXPECT_EQ(slow.failed(), 0) << slow.first_failure();
    EXPECT_GT(slow.ok(), 0);
  }
  // Nothing of the dead worker is left: its connection is gone, and the
  // load's with it.
  EXPECT_LE(WaitForOpenFilesAtMost(server_.process->pid(), files - 1, kWait),
            files - 1);
}

// A rolling restart of every worker, one at a time (SIGTERM, wait for the
// exit, start a new one, wait until it is connected), under steady GETs:
// none fails, and each worker exits 0.
TEST_F(HaServerTest, RollingRestartOfEveryWorkerCostsNoGet) {
  for (int i = 0; i < 3; ++i) AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  const pid_t server = server_.process->pid();
  const int files = OpenFiles(server);
  SteadyLoad load({BrokerUrl("/bytes/1024")}, 4);
  EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load never started";
  // Memory after a warm-up: what the serving itself settles at.
  EXPECT_TRUE(load.WaitForMore(500, kWait)) << "the load stalled";
  const long resident = ResidentKiB(server);
  for (std::size_t i = 0; i < 3; ++i) {
    workers_[i].process->Signal(SIGTERM);
    auto exited = workers_[i].process->Wait(kWait);
    ASSERT_TRUE(exited.ok()) << exited.status();
    EXPECT_EQ(*exited, 0) << "worker " << i;
    auto again =
        StartTunnel(kToken, server_.tunnel_port, client_accept_,
                    *server_.process, {{"BROKER_CLIENT_URL", "http://w:1"}});
    ASSERT_TRUE(again.ok()) << again.status();
    workers_[i] = *std::move(again);
    EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load stalled";
  }
  EXPECT_TRUE(load.WaitForMore(500, kWait)) << "the load stalled";
  const long resident_after = ResidentKiB(server);
  load.Stop();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  // Three workers replaced: as many descriptors as with the first three,
  // and memory where the warm-up left it (the allocator's caches aside).
  EXPECT_LE(WaitForOpenFilesAtMost(server, files, kWait), files);
  std::cout << "server resident memory " << resident << " KiB after the "
            << "warm-up, " << resident_after << " KiB after the restarts\n";
  // Under AddressSanitizer memory only grows (its quarantine keeps freed
  // blocks), so the figure means something in the optimised build only.
  if (!kUnderSanitizer) {
    EXPECT_LE(resident_after, resident + 4096);
  }
}

TEST_F(HaServerTest, FrozenWorkerIsDroppedWithinTwoSecondsAndNoGetIsLost) {
  AddWorker();
  AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  SteadyLoad load({BrokerUrl("/slow/100")}, 4);
  EXPECT_TRUE(load.WaitForMore(40, kWait)) << "the load never started";
  const absl::Time frozen = absl::Now();
  workers_[1].process->Signal(SIGSTOP);
  ASSERT_TRUE(
      server_.process->WaitForLine("broker client disconnected", kWait).ok());
  const absl::Duration detected = absl::Now() - frozen;
  EXPECT_TRUE(load.WaitForMore(40, kWait)) << "the load stalled";
  load.Stop();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  // The keepalive is 500 ms + 1 s; allow the loaded machine a margin.
  EXPECT_LT(detected, absl::Milliseconds(2500)) << detected;
  std::cout << "frozen worker dropped after " << detected << "\n";
}

// A POST is re-sent only when the server still holds its whole body (a
// small one with Content-Length); a streamed body fails fast instead.
TEST_F(HaServerTest, SmallPostIsResentWhenItsWorkerDiesAStreamedOneFails) {
  AddWorker();
  AddWorker();
  ASSERT_FALSE(HasFatalFailure());
  const std::string body(1000, 'x');
  for (const bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "content-length");
    std::vector<int64_t> before;
    for (const TunnelProcess& worker : workers_) {
      before.push_back(RelayedBy(worker));
    }
    absl::StatusOr<Fetched> answer;
    std::thread poster([&] {
      Fetcher fetcher;
      answer = fetcher.Fetch("POST", BrokerUrl("/slow/3000"),
                             {{"content-type", "text/plain"}}, body, chunked);
    });
    // Kill the worker the POST went to, while the origin holds it.
    int victim = -1;
    const absl::Time start = absl::Now();
    while (victim < 0 && absl::Now() - start < kWait) {
      for (std::size_t i = 0; i < workers_.size(); ++i) {
        if (workers_[i].process && RelayedBy(workers_[i]) > before[i]) {
          victim = static_cast<int>(i);
        }
      }
    }
    ASSERT_GE(victim, 0) << "the POST reached no worker";
    workers_[victim].process->Signal(SIGKILL);
    poster.join();
    ASSERT_TRUE(answer.ok()) << answer.status();
    if (chunked) {
      EXPECT_EQ(answer->status, 502);
      EXPECT_EQ(answer->Header("x-broker-failure"), "tunnel-error");
    } else {
      EXPECT_EQ(answer->status, 200) << answer->body;
      EXPECT_EQ(answer->body, "slow");
    }
    // Replace the dead worker for the next round.
    workers_[victim].process.reset();
    workers_.erase(workers_.begin() + victim);
    AddWorker();
    ASSERT_FALSE(HasFatalFailure());
  }
}

}  // namespace
}  // namespace broker::testing
