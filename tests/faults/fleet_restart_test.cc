// A broker-server restarted (kill -9, then started again on the same tunnel
// port) with 1,000 real workers attached (tests/faults/worker_fleet.cc):
//   - 99% of them are back within 2 s of the new server listening, every
//     one soon after, and they serve again;
//   - with an admission cap (BROKER_TUNNEL_ADMIT_PER_SECOND) the herd is
//     admitted no faster than the cap, the rest told to retry, and all get
//     in all the same;
//   - nothing leaks: the fleet holds as many descriptors after the
//     reconnection as before it, the new server as many as the old one.
// Real processes on loopback; the figures are printed.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/prometheus_text.h"
#include "tests/testing/sanitizers.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace broker::testing {
namespace {

// The figure is for the optimised build; under AddressSanitizer a fleet of
// 1,000 in one process is several times slower than 1,000 real workers
// would be, so a fifth of it checks the same behaviour there.
constexpr int kWorkers = kUnderSanitizer ? 200 : 1000;
constexpr char kTokenPrefix[] = "fleet-5d1c7a9e-3b2f-4f60-8e41-6a0c2d9b7e13";

// One reading of the server's /metrics, taken at `at`.
struct Sample {
  absl::Time at;
  int connected = 0;
  int refused_for_rate = 0;
};

class FleetRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Whatever the processes log, no worker's token.
    ForbidInChildOutput(kTokenPrefix);
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    server_accept_ =
        dir_.Write("server-accept.json",
                   R"({"public": [{"method": "GET", "path": "/echo"}]})");
    const std::string client_accept = dir_.Write(
        "client-accept.json",
        absl::StrCat(R"({"private": [{"method": "GET", "path": "/echo", )",
                     R"("origin": "http://127.0.0.1:)", origin_port_,
                     R"("}]})"));
    auto server = StartServer(server_accept_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto fleet = ChildProcess::Start(
        WORKER_FLEET_BIN,
        {"--server", absl::StrCat("http://127.0.0.1:", server_.tunnel_port),
         "--accept", client_accept, "--workers", std::to_string(kWorkers),
         "--token-prefix", kTokenPrefix},
        // Each refused or failed try of each worker is a warn line.
        {{"LOG_LEVEL", "error"}});
    ASSERT_TRUE(fleet.ok()) << fleet.status();
    fleet_ = *std::move(fleet);
    ASSERT_TRUE(
        fleet_->WaitForLine("worker fleet started", absl::Seconds(60)).ok());
    ASSERT_TRUE(WaitForConnected(kWorkers, absl::Seconds(60)).ok())
        << "the fleet never connected";
  }

  void TearDown() override {
    if (HasFailure()) {
      PrintOutput("broker-server", server_.process.get());
      PrintOutput("worker-fleet", fleet_.get());
    }
  }

  Sample Read() {
    Sample sample;
    auto metrics = fetcher_.Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", server_.http_port, "/metrics"),
        {}, "", false, absl::Seconds(5));
    sample.at = absl::Now();
    if (!metrics.ok() || metrics->status != 200) return sample;
    const auto samples = ParseSamples(metrics->body);
    sample.connected =
        static_cast<int>(Sum(samples, "broker_socket_connection_total"));
    sample.refused_for_rate = static_cast<int>(
        Sum(samples, "broker_server_refusals_total", {"reason=\"rate\""}));
    return sample;
  }

  // Reads /metrics every 20 ms until `workers` are connected; every
  // reading is kept in samples_.
  absl::Status WaitForConnected(int workers, absl::Duration timeout) {
    samples_.clear();
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      samples_.push_back(Read());
      if (samples_.back().connected >= workers) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(samples_.back().connected, " of ", workers,
                         " connected at the deadline"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // When the count first reached `workers`, after `since`.
  absl::Duration Reached(int workers, absl::Time since) const {
    for (const Sample& s : samples_) {
      if (s.connected >= workers) return s.at - since;
    }
    return absl::InfiniteDuration();
  }

  // kill -9 of the server, and a new one on the same tunnel port (the
  // fleet's URL); returns when the new one listens.
  absl::Time RestartServer(std::map<std::string, std::string> env = {}) {
    const int tunnel_port = server_.tunnel_port;
    server_.process->Signal(SIGKILL);
    EXPECT_TRUE(server_.process->Wait(absl::Seconds(10)).ok());
    env["BROKER_TUNNEL_PORT"] = std::to_string(tunnel_port);
    auto server = StartServer(server_accept_, std::move(env));
    EXPECT_TRUE(server.ok()) << server.status();
    if (server.ok()) server_ = *std::move(server);
    return absl::Now();
  }

  // A GET through each of 20 tokens spread over the fleet: all answer.
  void ExpectSampleServes() {
    for (int worker = 0; worker < kWorkers; worker += kWorkers / 20) {
      auto answer = fetcher_.Fetch(
          "GET",
          absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                       kTokenPrefix, "-", worker, "/echo"),
          {}, "", false, absl::Seconds(10));
      ASSERT_TRUE(answer.ok())
          << "worker " << worker << ": " << answer.status();
      EXPECT_EQ(answer->status, 200) << "worker " << worker;
    }
  }

  TempDir dir_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string server_accept_;
  ServerProcess server_;
  std::unique_ptr<ChildProcess> fleet_;
  Fetcher fetcher_;
  std::vector<Sample> samples_;
};

TEST_F(FleetRestartTest, NinetyNinePercentAreBackWithinTwoSeconds) {
  // The baseline after a first round of GETs: the sample's workers then
  // hold a kept-alive connection to the origin, before and after.
  ExpectSampleServes();
  const int fleet_files = OpenFiles(fleet_->pid());
  const int server_files = OpenFiles(server_.process->pid());
  const absl::Time listening = RestartServer();
  ASSERT_TRUE(WaitForConnected(kWorkers, absl::Seconds(30)).ok());
  const absl::Duration p99 = Reached(kWorkers * 99 / 100, listening);
  const absl::Duration all = Reached(kWorkers, listening);
  std::printf(
      "fleet restart: %d workers, 99%% back in %lld ms, all in %lld ms"
      " (server listening -> admitted)\n",
      kWorkers, static_cast<long long>(absl::ToInt64Milliseconds(p99)),
      static_cast<long long>(absl::ToInt64Milliseconds(all)));
  EXPECT_LE(p99, FigureBound(absl::Seconds(2)));
  ExpectSampleServes();
  // Nothing left behind by the reconnection (a few descriptors of slack
  // for gRPC's own, which come and go).
  EXPECT_LE(OpenFiles(fleet_->pid()), fleet_files + 10);
  EXPECT_LE(OpenFiles(server_.process->pid()), server_files + 10);
}

TEST_F(FleetRestartTest, TheHerdIsAdmittedNoFasterThanTheCap) {
  // A burst of a quarter of the fleet, then a quarter per second.
  constexpr int kPerSecond = kWorkers / 4;
  const absl::Time listening = RestartServer(
      {{"BROKER_TUNNEL_ADMIT_PER_SECOND", std::to_string(kPerSecond)}});
  // Refused workers back off up to 10 s between tries.
  ASSERT_TRUE(WaitForConnected(kWorkers, absl::Seconds(60)).ok());
  const absl::Duration all = Reached(kWorkers, listening);
  std::printf(
      "capped fleet restart: %d workers at %d/s, all in %lld ms, "
      "%d refusals to retry\n",
      kWorkers, kPerSecond,
      static_cast<long long>(absl::ToInt64Milliseconds(all)),
      samples_.back().refused_for_rate);
  EXPECT_GT(samples_.back().refused_for_rate, 0);
  // Between any two readings, no more admitted than the bucket allows
  // (the first reading after the restart is the start; a reading's count
  // may be up to one polling step stale, hence the slack).
  for (std::size_t i = 0; i < samples_.size(); ++i) {
    for (std::size_t j = i + 1; j < samples_.size(); ++j) {
      const double allowed =
          kPerSecond +
          kPerSecond * absl::ToDoubleSeconds(samples_[j].at - samples_[i].at) +
          kPerSecond * 0.1;
      ASSERT_LE(samples_[j].connected - samples_[i].connected, allowed)
          << "between readings " << i << " and " << j;
    }
  }
  // At the cap, the fleet takes at least (4 - 1) quarters = 3 s.
  EXPECT_GE(all, absl::Seconds(2.5));
  ExpectSampleServes();
}

}  // namespace
}  // namespace broker::testing
