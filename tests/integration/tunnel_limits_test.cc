// broker-server's tunnel endpoint against a worker that opens 10,000 lanes
// (bench/idle_workers: one Control call, then 10,000 Serve calls, all held
// open): the server parks at most Welcome.max_lanes of them, refuses the
// rest, stays within a bounded memory, and another token's traffic and the
// health check go on as before.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <cstdint>
#include <fstream>
#include <string>

namespace broker::testing {
namespace {

constexpr char kToken[] = "cccccccc-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr absl::Duration kWait = absl::Seconds(60);

std::int64_t RssKib(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "VmRSS:")) {
      std::int64_t kib = 0;
      if (absl::SimpleAtoi(
              absl::StripSuffix(absl::StripAsciiWhitespace(rest), " kB"),
              &kib)) {
        return kib;
      }
    }
  }
  return -1;
}

TEST(TunnelLimitsTest, TenThousandLanesFromOneWorkerAreCappedAndServingGoesOn) {
  TempDir dir;
  int origin_port = 0;
  auto origin = StartOrigin(&origin_port);
  ASSERT_TRUE(origin.ok()) << origin.status();
  const std::string server_accept = dir.Write(
      "server-accept.json",
      R"json({"public": [{"method": "GET", "path": "/bytes/:n"}]})json");
  const std::string client_accept = dir.Write(
      "client-accept.json",
      absl::StrCat(R"json({"private": [{"method": "GET", "path": "/bytes/:n",
        "origin": "http://127.0.0.1:)json",
                   origin_port, R"json("}]})json"));
  auto server = StartServer(server_accept);
  ASSERT_TRUE(server.ok()) << server.status();
  auto worker =
      StartTunnel(kToken, server->tunnel_port, client_accept, *server->process);
  ASSERT_TRUE(worker.ok()) << worker.status();
  Fetcher fetcher;
  const std::string url = absl::StrCat("http://127.0.0.1:", server->http_port,
                                       "/broker/", kToken, "/bytes/100");
  auto before = fetcher.Fetch("GET", url);
  ASSERT_TRUE(before.ok() && before->status == 200);
  const std::int64_t rss_before = RssKib(server->process->pid());

  auto hostile = ChildProcess::Start(
      IDLE_WORKERS_BIN,
      {"--target", absl::StrCat("127.0.0.1:", server->tunnel_port), "--workers",
       "1", "--lanes", "10000", "--hold-seconds", "120"},
      {});
  ASSERT_TRUE(hostile.ok()) << hostile.status();
  auto ready = (*hostile)->WaitForLine("\"ready\":true", kWait);
  ASSERT_TRUE(ready.ok()) << ready.status();
  const nlohmann::json fleet = nlohmann::json::parse(*ready);
  EXPECT_EQ(fleet["welcomed"], 1) << *ready;

  // The server parks at most the cap for the hostile worker (the real
  // worker parks a handful of its own).
  auto metrics = fetcher.Fetch(
      "GET", absl::StrCat("http://127.0.0.1:", server->http_port, "/metrics"));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  double idle = -1;
  for (absl::string_view line : absl::StrSplit(metrics->body, '\n')) {
    if (absl::ConsumePrefix(&line, "broker_server_lanes{state=\"idle\"} ")) {
      ASSERT_TRUE(absl::SimpleAtod(line, &idle)) << line;
    }
  }
  EXPECT_GE(idle, 1024);
  EXPECT_LE(idle, 1024 + 64) << metrics->body;

  // Serving goes on, and the server's memory stays bounded.
  for (int i = 0; i < 20; ++i) {
    auto r = fetcher.Fetch("GET", url);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->body;
  }
  auto health = fetcher.Fetch(
      "GET",
      absl::StrCat("http://127.0.0.1:", server->http_port, "/healthcheck"));
  ASSERT_TRUE(health.ok() && health->status == 200);
  const std::int64_t rss_after = RssKib(server->process->pid());
  EXPECT_LT(rss_after - rss_before, 96 * 1024)
      << rss_before << " KiB before, " << rss_after << " KiB with the lanes";
  std::cout << "server RSS " << rss_before << " -> " << rss_after
            << " KiB; idle lanes " << idle << "; " << *ready << "\n";
}

}  // namespace
}  // namespace broker::testing
