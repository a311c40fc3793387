// Webhooks (You => Snyk) end to end with real processes on loopback: the
// SCM posts to broker-webhook, which hands each event to one of several
// broker-tunnel workers (round_robin over their egress endpoints, gRPC
// health checking), which pass it through their tunnels to broker-server,
// which applies its private rules and posts it to the platform (a
// test-origin whose /webhook/ route answers like /echo).

#include "common/token.h"
#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/testing/test_origin.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <atomic>
#include <csignal>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using json = nlohmann::json;

constexpr char kToken[] = "5e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c";
constexpr absl::Duration kWait = absl::Seconds(20);

class WebhookMeshTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto platform = StartOrigin(&platform_port_);
    ASSERT_TRUE(platform.ok()) << platform.status();
    platform_ = *std::move(platform);
    const std::string platform_url =
        absl::StrCat("http://127.0.0.1:", platform_port_);
    // The server passes GitHub webhooks to the platform, not GitLab ones.
    server_accept_ = dir_.Write(
        "server-accept.json",
        absl::StrCat(R"json({"public": [{"method": "GET", "path": "/x"}],
          "private": [
            {"method": "POST", "path": "/webhook/github/:id", "origin": ")json",
                     platform_url, R"json("},
            {"method": "POST", "path": "/webhook/big", "origin": ")json",
                     platform_url, R"json("}]})json"));
    // The client lets GitHub and GitLab webhooks out, nothing else.
    client_accept_ = dir_.Write("client-accept.json", R"json({
      "public": [
        {"method": "POST", "path": "/webhook/github/:id"},
        {"method": "POST", "path": "/webhook/gitlab/:id"},
        {"method": "POST", "path": "/webhook/big"}],
      "private": [{"method": "GET", "path": "/x",
                   "origin": "http://127.0.0.1:1"}]})json");
    auto server = StartServer(server_accept_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-webhook", webhook_.get());
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-tunnel ", i), workers_[i].process.get());
    }
  }

  void StartWorkers(int n) {
    for (int i = 0; i < n; ++i) {
      auto worker = StartTunnel(kToken, server_.tunnel_port, client_accept_,
                                *server_.process,
                                {{"BROKER_TUNNEL_EGRESS_PORT", "0"},
                                 {"BROKER_CLIENT_URL", "http://webhook:1"}});
      ASSERT_TRUE(worker.ok()) << worker.status();
      ASSERT_GT(worker->egress_port, 0);
      workers_.push_back(*std::move(worker));
    }
  }

  // broker-webhook over the workers' egress endpoints (or `target`).
  void StartWebhook(std::string target = "") {
    if (target.empty()) {
      std::vector<std::string> addresses;
      for (const TunnelProcess& w : workers_) {
        addresses.push_back(absl::StrCat("127.0.0.1:", w.egress_port));
      }
      target = absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
    }
    auto webhook = ChildProcess::Start(BROKER_WEBHOOK_BIN, {},
                                       {{"PORT", "0"},
                                        {"ACCEPT", client_accept_},
                                        {"BROKER_TUNNEL_EGRESS_TARGET", target},
                                        {"BROKER_TOKEN", kToken},
                                        {"BROKER_WEBHOOK_TIMEOUT_MS", "3000"},
                                        {"LOG_LEVEL", "info"}});
    ASSERT_TRUE(webhook.ok()) << webhook.status();
    webhook_ = *std::move(webhook);
    auto line = webhook_->WaitForLine("broker-webhook listening", kWait);
    ASSERT_TRUE(line.ok()) << line.status();
    auto port = JsonInt(*line, "port");
    ASSERT_TRUE(port.ok()) << port.status();
    webhook_port_ = *port;
  }

  std::string WebhookUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", webhook_port_, path);
  }

  // Posts like GitHub does.
  absl::StatusOr<Fetched> Post(Fetcher& fetcher, absl::string_view path,
                               std::string body,
                               const std::string& delivery = "d-1",
                               common::http::Headers extra = {}) {
    common::http::Headers headers = {{"content-type", "application/json"},
                                     {"x-github-event", "push"},
                                     {"x-github-delivery", delivery}};
    for (common::http::Header& h : extra) headers.push_back(std::move(h));
    return fetcher.Fetch("POST", WebhookUrl(path), std::move(headers),
                         std::move(body));
  }

  // How often the platform saw each request target ("POST /webhook/..."):
  // heads (`whole` false), or requests that arrived complete, body and all
  // (a request whose worker died mid-body starts at the platform but never
  // completes, and is no delivery).
  std::map<std::string, int> PlatformSaw(bool whole = false) {
    std::map<std::string, int> seen;
    const absl::string_view prefix = whole ? "echoed " : "request ";
    for (absl::string_view line : absl::StrSplit(platform_->Output(), '\n')) {
      if (absl::ConsumePrefix(&line, prefix)) ++seen[std::string(line)];
    }
    return seen;
  }

  // PlatformSaw() once it counts at least `lines` lines in all (or at the
  // deadline): the platform prints each line before it answers, but its
  // output reaches the test through a pipe, racing the answer.
  std::map<std::string, int> PlatformSawAtLeast(int lines, bool whole = false) {
    const absl::Time deadline = absl::Now() + kWait;
    while (true) {
      std::map<std::string, int> seen = PlatformSaw(whole);
      int total = 0;
      for (const auto& [line, n] : seen) total += n;
      if (total >= lines || absl::Now() >= deadline) return seen;
      absl::SleepFor(absl::Milliseconds(5));
    }
  }

  // Waits until the webhook's /healthcheck says `ok`.
  bool WaitHealthy() {
    const absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      auto r = fetcher_.Fetch("GET", WebhookUrl("/healthcheck"));
      if (r.ok() && r->status == 200) return true;
    }
    return false;
  }

  TempDir dir_;
  Fetcher fetcher_;
  int platform_port_ = 0;
  std::unique_ptr<ChildProcess> platform_;
  std::string server_accept_;
  std::string client_accept_;
  ServerProcess server_;
  std::vector<TunnelProcess> workers_;
  std::unique_ptr<ChildProcess> webhook_;
  int webhook_port_ = 0;
};

TEST_F(WebhookMeshTest, ReachesThePlatformWithBodyAndHeadersIntact) {
  StartWorkers(2);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitHealthy());
  const std::string body = R"({"ref":"refs/heads/main","commits":[]})";
  auto r = Post(fetcher_, "/webhook/github/42", body, "delivery-42");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  // The SCM gets the platform's answer: what the platform received.
  json echo = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(echo.is_object()) << r->body;
  EXPECT_EQ(echo["method"], "POST");
  EXPECT_EQ(echo["path"], "/webhook/github/42");
  Sha256 sha;
  sha.Update(body);
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
  const json& headers = echo["headers"];
  EXPECT_EQ(headers["x-github-delivery"], "delivery-42");
  EXPECT_EQ(headers["x-github-event"], "push");
  EXPECT_EQ(headers["content-type"], "application/json");
  // As Snyk's server sends webhooks on: the masked token and the token.
  EXPECT_EQ(headers["x-snyk-broker"], common::MaskToken(kToken));
  EXPECT_EQ(headers["x-broker-token"], kToken);
  EXPECT_EQ(PlatformSawAtLeast(1)["POST /webhook/github/42"], 1);
}

TEST_F(WebhookMeshTest, TheScmsTraceReachesThePlatformOneSpanPerHop) {
  StartWorkers(1);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitHealthy());
  constexpr char kTrace[] = "4bf92f3577b34da6a3ce929d0e0e4736";
  auto r = Post(
      fetcher_, "/webhook/github/7", "{}", "delivery-7",
      {{"traceparent", absl::StrCat("00-", kTrace, "-00f067aa0ba902b7-01")}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  json echo = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(echo.is_object()) << r->body;
  const std::string traceparent = echo["headers"].value("traceparent", "");
  // Same trace, sampled, and a parent id of the broker's, not the SCM's.
  EXPECT_THAT(traceparent,
              MatchesRegex(absl::StrCat("00-", kTrace, "-[0-9a-f]{16}-01")));
  EXPECT_THAT(traceparent, Not(HasSubstr("00f067aa0ba902b7")));
  // broker-webhook's log line for the event names the trace.
  EXPECT_TRUE(webhook_->WaitForLine(kTrace, absl::Seconds(10)).ok());
}

TEST_F(WebhookMeshTest, ClientPublicRulesBlockBeforeAnyTunnel) {
  StartWorkers(1);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  auto r = Post(fetcher_, "/webhook/bitbucket/1", "{}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401) << r->body;
  EXPECT_THAT(r->body, HasSubstr("blocked"));
  EXPECT_TRUE(PlatformSaw().empty());
}

TEST_F(WebhookMeshTest, ServerPrivateRulesBlockAtTheServer) {
  StartWorkers(1);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitHealthy());
  auto r = Post(fetcher_, "/webhook/gitlab/7", "{}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401) << r->body;
  EXPECT_THAT(r->body, HasSubstr("blocked"));
  EXPECT_TRUE(PlatformSaw().empty());
}

TEST_F(WebhookMeshTest, NoWorkerUpIs503WithRetryAfterWithinTheDeadline) {
  // A worker that never had a tunnel: its egress says NOT_SERVING.
  StartWorkers(1);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  workers_[0].process->Signal(SIGKILL);
  ASSERT_TRUE(workers_[0].process->Wait(kWait).ok());
  const absl::Time start = absl::Now();
  auto r = Post(fetcher_, "/webhook/github/1", "{}");
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_FALSE(r->Header("retry-after").empty());
  // BROKER_WEBHOOK_TIMEOUT_MS is 3 s; a loaded machine gets a margin.
  EXPECT_LT(took, absl::Seconds(6)) << took;
  EXPECT_TRUE(PlatformSaw().empty());
  auto health = fetcher_.Fetch("GET", WebhookUrl("/healthcheck"));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_NE(health->status, 200);
}

TEST_F(WebhookMeshTest, TwentyFiveMebibytePayloadStreamsThrough) {
  StartWorkers(1);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitHealthy());
  std::string body(25 * 1024 * 1024, 'w');
  for (std::size_t i = 0; i < body.size(); i += 4093) {
    body[i] = static_cast<char>('a' + i % 26);
  }
  Sha256 sha;
  sha.Update(body);
  auto r = Post(fetcher_, "/webhook/big", body);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body.substr(0, 200);
  json echo = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(echo.is_object()) << r->body.substr(0, 200);
  EXPECT_EQ(echo["body_bytes"], body.size());
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
}

// The guarantee of docs/webhook.md: every event the SCM posts is answered
// 2xx and reaches the platform exactly once while one of four workers
// dies mid-stream (they share one server, which drops a retried event it
// already passed on).
TEST_F(WebhookMeshTest, KilledWorkerLosesAndDuplicatesNoWebhook) {
  StartWorkers(4);
  ASSERT_FALSE(HasFatalFailure());
  StartWebhook();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(WaitHealthy());
  constexpr int kEvents = 1000;
  constexpr int kThreads = 8;
  std::atomic<int> next{0};
  std::atomic<int> answered{0};
  absl::Mutex mu;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      Fetcher fetcher;
      for (int n = next.fetch_add(1); n < kEvents; n = next.fetch_add(1)) {
        auto r = Post(fetcher, absl::StrCat("/webhook/github/", n),
                      absl::StrCat(R"({"n":)", n, "}"), absl::StrCat("d-", n));
        answered.fetch_add(1);
        if (r.ok() && r->status / 100 == 2) continue;
        absl::MutexLock lock(&mu);
        failures.push_back(
            absl::StrCat(n, ": ",
                         r.ok() ? absl::StrCat(r->status, " ", r->body)
                                : r.status().ToString()));
      }
    });
  }
  const absl::Time start = absl::Now();
  while (answered.load() < kEvents / 4 && absl::Now() - start < kWait) {
    std::this_thread::yield();
  }
  workers_[2].process->Signal(SIGKILL);
  for (std::thread& t : threads) t.join();
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(failures.empty())
        << failures.size() << " failed, first: " << failures.front();
  }
  const std::map<std::string, int> seen =
      PlatformSawAtLeast(kEvents, /*whole=*/true);
  std::vector<int> missing;
  std::vector<int> duplicated;
  for (int n = 0; n < kEvents; ++n) {
    auto it = seen.find(absl::StrCat("POST /webhook/github/", n));
    if (it == seen.end()) {
      missing.push_back(n);
    } else if (it->second > 1) {
      duplicated.push_back(n);
    }
  }
  EXPECT_THAT(missing, ::testing::IsEmpty());
  EXPECT_THAT(duplicated, ::testing::IsEmpty());
}

}  // namespace
}  // namespace broker::testing
