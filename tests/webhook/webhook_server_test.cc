// Component tests of broker-webhook: the real library (and, for start-up,
// the real binary) on loopback, against fake tunnel workers (in-process
// gRPC servers with Egress and the standard health service) and the real
// test origin as the API fallback's target.

#include "services/webhook/webhook_server.h"

#include "common/token.h"
#include "common/uuid.h"
#include "filters/blocked.h"
#include "services/webhook/webhook_config.h"
#include "tests/integration/http_fetch.h"
#include "tests/testing/child_process.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/scoped_log_capture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_origin.h"
#include "tests/webhook/fake_worker.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <algorithm>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <poll.h>
#include <set>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace broker::webhook {
namespace {

using ::broker::testing::FakeWorker;
using ::broker::testing::Fetched;
using ::broker::testing::IsOk;
using ::testing::Contains;
using ::testing::Each;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using Mode = FakeWorker::Mode;

constexpr absl::Duration kWait = absl::Seconds(20);
constexpr char kToken[] = "01234567-89ab-cdef-0123-456789abcdef";

std::string Sha256Hex(absl::string_view data) {
  broker::testing::Sha256 sha;
  sha.Update(data);
  return sha.HexDigest();
}

std::string Target(const std::vector<const FakeWorker*>& workers) {
  std::vector<std::string> addresses;
  addresses.reserve(workers.size());
  for (const FakeWorker* w : workers) addresses.push_back(w->address());
  return absl::StrCat("ipv4:", absl::StrJoin(addresses, ","));
}

std::unique_ptr<FakeWorker> StartWorker(const std::string& name,
                                        Mode mode = Mode::kAnswer) {
  auto worker = FakeWorker::Start(name, mode);
  EXPECT_THAT(worker, IsOk());
  return worker.ok() ? *std::move(worker) : nullptr;
}

// The value of one series in a Prometheus text page (-1 when absent).
double MetricValue(const std::string& page, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(page, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(series, " "))) {
      double value = 0;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) {
        return value;
      }
    }
  }
  return -1;
}

// A TCP connection to 127.0.0.1:<port> (-1 on failure).
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Sends `request` as it is and reads until the server closes or `timeout`.
std::string RawExchange(int port, absl::string_view request,
                        absl::Duration timeout) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  std::string response;
  if (WriteAll(fd, request)) {
    const absl::Time deadline = absl::Now() + timeout;
    char buffer[4096];
    while (absl::Now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      const int left =
          static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (poll(&p, 1, std::max(left, 1)) <= 0) break;
      const ssize_t n = read(fd, buffer, sizeof(buffer));
      if (n <= 0) break;
      response.append(buffer, static_cast<std::size_t>(n));
    }
  }
  close(fd);
  return response;
}

class WebhookServerTest : public ::testing::Test {
 protected:
  void StartWebhook(const std::string& target,
                    const std::function<void(WebhookConfig&)>& tweak = {}) {
    WebhookConfig config;
    config.address = "127.0.0.1";
    config.port = 0;
    config.accept_path = broker::testing::FixturePath("webhook/accept.json");
    config.egress_target = target;
    config.timeout = absl::Seconds(10);
    if (tweak) tweak(config);
    auto server = WebhookServer::Create(std::move(config));
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
    auto port = server_->Start();
    ASSERT_THAT(port, IsOk());
    port_ = *port;
  }

  void TearDown() override {
    if (server_) server_->Shutdown(absl::Now() + absl::Seconds(2));
  }

  std::string Url(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", port_, path);
  }

  absl::StatusOr<Fetched> Post(const std::string& path, std::string body,
                               common::http::Headers headers = {},
                               bool chunked = false) {
    headers.push_back({"content-type", "application/json"});
    return fetcher_.Fetch("POST", Url(path), std::move(headers),
                          std::move(body), chunked, kWait);
  }

  // Polls /healthcheck (every 10 ms) until it answers `status`.
  bool WaitForHealth(int status, absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      auto got = fetcher_.Fetch("GET", Url("/healthcheck"));
      if (got.ok() && got->status == status) return true;
      absl::SleepFor(absl::Milliseconds(10));  // poll interval
    }
    return false;
  }

  std::string Metrics() {
    auto got = fetcher_.Fetch("GET", Url("/metrics"));
    EXPECT_THAT(got, IsOk());
    return got.ok() ? got->body : "";
  }

  // A delivery's metrics are recorded when its call ended, just after the
  // SCM had its answer: polls (every 10 ms) until `series` is `value` (or
  // more, with `at_least`).
  bool WaitForMetric(const std::string& series, double value,
                     bool at_least = false, absl::Duration timeout = kWait) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const double now = MetricValue(Metrics(), series);
      if (now == value || (at_least && now > value)) return true;
      absl::SleepFor(absl::Milliseconds(10));  // poll interval
    }
    return false;
  }

  broker::testing::Fetcher fetcher_;
  std::unique_ptr<WebhookServer> server_;
  int port_ = 0;
};

TEST_F(WebhookServerTest, EventPassesThroughAWorkerAndTheAnswerComesBack) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  const std::string body = R"({"action":"opened","number":7})";
  const std::string github_id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
  const absl::Time before = absl::Now();
  auto got = Post("/webhook/github/1234?installation=9", body,
                  {{"x-github-delivery", github_id},
                   {"x-github-event", "pull_request"},
                   {"x-hub-signature-256", "sha256=abc"},
                   {"user-agent", "GitHub-Hookshot/1"}});
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 202);
  EXPECT_EQ(got->Header("x-fake-worker"), "a");
  EXPECT_EQ(got->Header("content-type"), "application/json");
  EXPECT_EQ(got->Header("snyk-request-id"), github_id);
  const json answer = json::parse(got->body, nullptr, false);
  ASSERT_FALSE(answer.is_discarded()) << got->body;
  EXPECT_EQ(answer["worker"], "a");

  ASSERT_TRUE(worker->WaitForEnded(1, kWait));
  const std::vector<FakeWorker::Seen> seen = worker->seen();
  ASSERT_EQ(seen.size(), 1U);
  const FakeWorker::Seen& event = seen[0];
  EXPECT_TRUE(event.complete);
  EXPECT_TRUE(common::IsUuid(event.delivery_id)) << event.delivery_id;
  EXPECT_EQ(answer["delivery_id"], event.delivery_id);
  EXPECT_EQ(event.attempt, "1");
  EXPECT_EQ(event.head.method(), "POST");
  EXPECT_EQ(event.head.url(), "/webhook/github/1234?installation=9");
  EXPECT_EQ(event.head.request_id(), github_id);
  EXPECT_EQ(event.head.body_length(), static_cast<std::int64_t>(body.size()));
  EXPECT_EQ(event.body_bytes, body.size());
  EXPECT_EQ(event.body_sha256, Sha256Hex(body));
  // Deadline: the event's, in the future, within BROKER_WEBHOOK_TIMEOUT_MS.
  const absl::Time deadline =
      absl::FromUnixMicros(event.head.deadline_unix_micros());
  EXPECT_GT(deadline, before);
  EXPECT_LE(deadline, absl::Now() + absl::Seconds(10));
  std::map<std::string, std::string> headers;
  for (const auto& h : event.head.headers()) headers[h.name()] = h.value();
  EXPECT_EQ(headers["x-github-delivery"], github_id);
  EXPECT_EQ(headers["x-github-event"], "pull_request");
  EXPECT_EQ(headers["x-hub-signature-256"], "sha256=abc");
  EXPECT_EQ(headers["user-agent"], "GitHub-Hookshot/1");
  EXPECT_EQ(headers["content-type"], "application/json");
  for (const char* dropped : {"host", "Host", "content-length",
                              "Content-Length", "connection", "Connection"}) {
    EXPECT_EQ(headers.count(dropped), 0U) << dropped;
  }

  EXPECT_TRUE(WaitForMetric("broker_webhook_in_flight", 0));
  const std::string metrics = Metrics();
  EXPECT_EQ(MetricValue(metrics,
                        "broker_webhook_events_total{outcome=\"delivered\"}"),
            1);
  EXPECT_EQ(MetricValue(metrics, "broker_webhook_delivery_seconds_count"), 1);
  EXPECT_EQ(MetricValue(metrics, "broker_webhook_tunnel_available"), 1);
}

TEST_F(WebhookServerTest, RequestIdsArePreserved) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  const std::string gitlab_id = "b1a5bbde-6a27-4d9c-8f0e-5a7d8a7c3e11";
  auto gitlab =
      Post("/webhook/gitlab/5", "{}", {{"x-gitlab-event-uuid", gitlab_id}});
  ASSERT_THAT(gitlab, IsOk());
  EXPECT_EQ(gitlab->status, 202);
  EXPECT_EQ(gitlab->Header("snyk-request-id"), gitlab_id);

  auto snyk = Post("/webhook/test/x", "{}", {{"snyk-request-id", "req-42"}});
  ASSERT_THAT(snyk, IsOk());
  EXPECT_EQ(snyk->Header("snyk-request-id"), "req-42");

  auto none = Post("/webhook/test/y", "{}");
  ASSERT_THAT(none, IsOk());
  ASSERT_TRUE(worker->WaitForEnded(3, kWait));
  const std::vector<FakeWorker::Seen> seen = worker->seen();
  ASSERT_EQ(seen.size(), 3U);
  std::set<std::string> ids;
  for (const auto& s : seen) ids.insert(s.head.request_id());
  EXPECT_THAT(ids, Contains(gitlab_id));
  EXPECT_THAT(ids, Contains("req-42"));
  // Without an id of its own, the event's id is its delivery id.
  const std::string own = none->Header("snyk-request-id");
  EXPECT_TRUE(common::IsUuid(own)) << own;
  EXPECT_EQ(worker->CompleteWithId(own), 1);
}

TEST_F(WebhookServerTest, BlockedByThePublicRulesAndNoWorkerSeesIt) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  for (const auto& [method, path] :
       std::vector<std::pair<std::string, std::string>>{
           {"POST", "/not/a/webhook"},
           {"GET", "/webhook/github/1"},  // the rule is POST only
           {"POST", "/webhook/bitbucket/1"},
           {"POST", "/webhook/github/1/../../admin"}}) {
    auto got = fetcher_.Fetch(method, Url(path), {{"snyk-request-id", "r-1"}},
                              method == "POST" ? "{}" : "");
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->status, 401) << path;
    EXPECT_EQ(got->Header("snyk-request-id"), "r-1");
    EXPECT_THAT(got->Header("content-type"), HasSubstr("application/json"));
    const json body = json::parse(got->body, nullptr, false);
    ASSERT_FALSE(body.is_discarded()) << got->body;
    EXPECT_EQ(body["code"], "FILTER_BLOCKED");
    EXPECT_EQ(body["message"], "blocked");
    EXPECT_THAT(body["reason"].get<std::string>(),
                HasSubstr(std::string(filters::kHttpFlowNoMatchReason)));
    EXPECT_EQ(body["url"], path);
  }
  EXPECT_EQ(worker->calls(), 0);
  EXPECT_EQ(MetricValue(Metrics(),
                        "broker_webhook_events_total{outcome=\"blocked\"}"),
            4);
}

TEST_F(WebhookServerTest, BodyRulesOfTheGithubTemplateDecideByTheBody) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.accept_path =
        broker::testing::FixturePath("accept-templates/github-com.json");
  });
  ASSERT_TRUE(WaitForHealth(200));

  const std::string manifest =
      broker::testing::ReadFixture("bodies/github-push-package-json.json");
  const std::string readme =
      broker::testing::ReadFixture("bodies/github-push-readme.json");
  const std::string opened =
      broker::testing::ReadFixture("bodies/github-pull-request-opened.json");
  ASSERT_FALSE(manifest.empty());
  ASSERT_FALSE(readme.empty());
  ASSERT_FALSE(opened.empty());

  auto allowed = Post("/webhook/github", manifest);
  ASSERT_THAT(allowed, IsOk());
  EXPECT_EQ(allowed->status, 202);
  auto pull = Post("/webhook/github", opened, {}, /*chunked=*/true);
  ASSERT_THAT(pull, IsOk());
  EXPECT_EQ(pull->status, 202);
  auto blocked = Post("/webhook/github", readme);
  ASSERT_THAT(blocked, IsOk());
  EXPECT_EQ(blocked->status, 401);
  EXPECT_THAT(blocked->body, HasSubstr("FILTER_BLOCKED"));

  ASSERT_TRUE(worker->WaitForEnded(2, kWait));
  EXPECT_EQ(worker->calls(), 2);
  const std::vector<FakeWorker::Seen> seen = worker->seen();
  std::set<std::string> shas;
  for (const auto& s : seen) shas.insert(s.body_sha256);
  EXPECT_THAT(shas, Contains(Sha256Hex(manifest)));
  EXPECT_THAT(shas, Contains(Sha256Hex(opened)));
  // The body read whole for the rules travels with its length.
  for (const auto& s : seen) EXPECT_GT(s.head.body_length(), 0);
}

TEST_F(WebhookServerTest, UnavailableWorkerIsRetriedOnAnotherOne) {
  auto failing = StartWorker("a", Mode::kFailAtOnce);
  auto good = StartWorker("b");
  ASSERT_NE(failing, nullptr);
  ASSERT_NE(good, nullptr);
  StartWebhook(Target({failing.get(), good.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  // round_robin alternates over both once both are ready: send events
  // until one went to the failing worker first.
  std::vector<std::string> answered_ids;
  for (int i = 0; i < 40 && failing->calls() == 0; ++i) {
    const absl::Time start = absl::Now();
    auto got = Post("/webhook/test/retry", absl::StrCat("{\"n\":", i, "}"));
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->status, 202);
    EXPECT_EQ(got->Header("x-fake-worker"), "b");
    EXPECT_LT(absl::Now() - start, absl::Seconds(2));
    answered_ids.push_back(json::parse(got->body)["delivery_id"]);
  }
  ASSERT_GE(failing->calls(), 1);
  ASSERT_TRUE(good->WaitForEnded(static_cast<int>(answered_ids.size()), kWait));
  // Each event reached the good worker exactly once.
  for (const std::string& id : answered_ids) {
    EXPECT_EQ(good->CompleteWithId(id), 1) << id;
  }
  // (Usually attempt 2; round_robin may also pick the failing worker
  // twice in a row while its list of ready workers changes.)
  bool retried = false;
  for (const auto& s : good->seen()) retried = retried || s.attempt != "1";
  EXPECT_TRUE(retried);
  EXPECT_GE(MetricValue(Metrics(), "broker_webhook_retries_total"), 1);
}

TEST_F(WebhookServerTest, EventIsReplayedAfterAWorkerFailedWithItsBody) {
  auto failing = StartWorker("a", Mode::kFailAfterBody);
  auto good = StartWorker("b");
  ASSERT_NE(failing, nullptr);
  ASSERT_NE(good, nullptr);
  StartWebhook(Target({failing.get(), good.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  // Several body messages, under the 1 MiB retry buffer.
  const std::string body =
      broker::testing::TestPattern(0, std::size_t{300} * 1024);
  for (int i = 0; i < 40 && failing->calls() == 0; ++i) {
    auto got = Post("/webhook/test/replay", body, {}, /*chunked=*/i % 2 == 1);
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->status, 202);
  }
  ASSERT_GE(failing->calls(), 1);
  ASSERT_TRUE(failing->WaitForEnded(1, kWait));
  const FakeWorker::Seen first = failing->seen()[0];
  EXPECT_EQ(first.body_sha256, Sha256Hex(body));
  // The retry carried the same delivery id and the whole body again.
  ASSERT_TRUE(good->WaitForDelivery(first.delivery_id, kWait));
  int matches = 0;
  for (const auto& s : good->seen()) {
    if (s.delivery_id != first.delivery_id) continue;
    ++matches;
    EXPECT_NE(s.attempt, "1");
    EXPECT_EQ(s.body_sha256, Sha256Hex(body));
  }
  EXPECT_EQ(matches, 1);
}

TEST_F(WebhookServerTest, BodyPastTheRetryBufferIsNotRetried) {
  auto worker = StartWorker("a", Mode::kFailMidBody);
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.retry_buffer_bytes = std::uint64_t{64} * 1024;
  });
  ASSERT_TRUE(WaitForHealth(200));

  auto got =
      Post("/webhook/test/big", std::string(std::size_t{1024} * 1024, 'x'));
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 502);
  EXPECT_EQ(got->Header("x-broker-failure"), "delivery-failed");
  EXPECT_THAT(got->body, HasSubstr("DELIVERY_FAILED"));
  EXPECT_EQ(worker->calls(), 1);
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_events_total{outcome=\"failed\"}", 1));
}

TEST_F(WebhookServerTest, NotServingWorkerGetsNoEvents) {
  auto serving = StartWorker("a");
  auto idle = StartWorker("b");
  ASSERT_NE(serving, nullptr);
  ASSERT_NE(idle, nullptr);
  idle->SetServing(false);
  StartWebhook(Target({serving.get(), idle.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  for (int i = 0; i < 10; ++i) {
    auto got = Post("/webhook/test/serving", "{}");
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->status, 202);
    EXPECT_EQ(got->Header("x-fake-worker"), "a");
  }
  EXPECT_EQ(idle->calls(), 0);

  // The other way round: b comes up (events reach it), a goes down, and
  // once that is seen events go to b only. Never a moment without one.
  idle->SetServing(true);
  const absl::Time deadline = absl::Now() + kWait;
  while (idle->calls() == 0 && absl::Now() < deadline) {
    auto got = Post("/webhook/test/serving", "{}");
    ASSERT_THAT(got, IsOk());
    ASSERT_EQ(got->status, 202);
  }
  ASSERT_GE(idle->calls(), 1);
  serving->SetServing(false);
  int in_a_row = 0;
  while (in_a_row < 5 && absl::Now() < deadline) {
    auto got = Post("/webhook/test/serving", "{}");
    ASSERT_THAT(got, IsOk());
    ASSERT_EQ(got->status, 202);
    in_a_row = got->Header("x-fake-worker") == "b" ? in_a_row + 1 : 0;
  }
  EXPECT_EQ(in_a_row, 5);
  const int a_calls = serving->calls();
  for (int i = 0; i < 5; ++i) {
    auto got = Post("/webhook/test/serving", "{}");
    ASSERT_THAT(got, IsOk());
    EXPECT_EQ(got->Header("x-fake-worker"), "b");
  }
  EXPECT_EQ(serving->calls(), a_calls);
}

TEST_F(WebhookServerTest, NoServingWorkerAnswers503WithRetryAfter) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  worker->SetServing(false);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.no_tunnel_wait = absl::Milliseconds(300);
  });
  ASSERT_TRUE(WaitForHealth(503));

  const absl::Time start = absl::Now();
  auto got = Post("/webhook/github/1", "{}", {{"x-github-delivery", "gh-1"}});
  ASSERT_THAT(got, IsOk());
  // It waited BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS for a worker, not longer.
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(300));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(got->status, 503);
  EXPECT_EQ(got->Header("retry-after"), "5");
  EXPECT_EQ(got->Header("x-broker-failure"), "no-connection");
  EXPECT_EQ(got->Header("snyk-request-id"), "gh-1");
  const json body = json::parse(got->body, nullptr, false);
  ASSERT_FALSE(body.is_discarded()) << got->body;
  EXPECT_EQ(body["ok"], false);
  EXPECT_EQ(body["code"], "NO_TUNNEL");
  EXPECT_EQ(worker->calls(), 0);

  auto health = fetcher_.Fetch("GET", Url("/healthcheck"));
  ASSERT_THAT(health, IsOk());
  const json status = json::parse(health->body, nullptr, false);
  EXPECT_EQ(status["ok"], false);
  EXPECT_EQ(status["channelState"], "TRANSIENT_FAILURE");
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_events_total{outcome=\"no_tunnel\"}", 1));
  EXPECT_EQ(MetricValue(Metrics(), "broker_webhook_tunnel_available"), 0);
}

TEST_F(WebhookServerTest, NoWorkerUpAnswersWithinTheDeadline) {
  auto gone = StartWorker("gone");
  ASSERT_NE(gone, nullptr);
  const std::string target = Target({gone.get()});
  gone->Stop();  // its port is closed now
  StartWebhook(target, [](WebhookConfig& config) {
    config.timeout = absl::Milliseconds(1500);
  });

  const absl::Time start = absl::Now();
  auto got = Post("/webhook/test/nobody", "{}");
  ASSERT_THAT(got, IsOk());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500));
  EXPECT_EQ(got->status, 503);
  EXPECT_FALSE(got->Header("retry-after").empty());
}

TEST_F(WebhookServerTest, WorkerThatComesUpWhileAnEventWaitsTakesIt) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  worker->SetServing(false);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.no_tunnel_wait = absl::Seconds(8);
  });
  ASSERT_TRUE(WaitForHealth(503));
  // The tunnel comes back while the event waits.
  auto got = std::async(std::launch::async,
                        [this] { return Post("/webhook/test/late", "{}"); });
  ASSERT_TRUE(
      WaitForMetric("broker_webhook_retries_total", 1, /*at_least=*/true));
  worker->SetServing(true);
  auto answer = got.get();
  ASSERT_THAT(answer, IsOk());
  EXPECT_EQ(answer->status, 202);
}

TEST_F(WebhookServerTest, DnsNameTargetReachesTheWorker) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  auto target =
      NormalizeEgressTarget(absl::StrCat("localhost:", worker->port()));
  ASSERT_THAT(target, IsOk());
  EXPECT_TRUE(absl::StartsWith(*target, "dns:///")) << *target;
  StartWebhook(*target);
  ASSERT_TRUE(WaitForHealth(200));
  auto got = Post("/webhook/test/dns", "{}");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 202);
  EXPECT_EQ(got->Header("x-fake-worker"), "a");
}

TEST_F(WebhookServerTest, WorkerHealthIsReported) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));
  auto health = fetcher_.Fetch("GET", Url("/healthcheck"));
  ASSERT_THAT(health, IsOk());
  const json up = json::parse(health->body, nullptr, false);
  EXPECT_EQ(up["ok"], true);
  EXPECT_EQ(up["websocketConnectionOpen"], true);
  EXPECT_EQ(up["channelState"], "READY");
  EXPECT_EQ(up["transport"], "grpc");
  worker->SetServing(false);
  EXPECT_TRUE(WaitForHealth(503));
  worker->SetServing(true);
  EXPECT_TRUE(WaitForHealth(200));
}

TEST_F(WebhookServerTest, FallbackPostsToTheApiWithTheMaskedToken) {
  broker::testing::ScopedLogCapture logs;
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  worker->SetServing(false);
  auto origin = broker::testing::TestOrigin::Start({});
  ASSERT_THAT(origin, IsOk());
  StartWebhook(Target({worker.get()}), [&](WebhookConfig& config) {
    config.api_fallback = true;
    config.api_base_url = (*origin)->Url("");
    config.token = kToken;
    config.no_tunnel_wait = absl::ZeroDuration();
  });
  ASSERT_TRUE(WaitForHealth(503));

  const std::string body = R"({"object_kind":"push"})";
  const std::string gitlab_id = "0b6c0c6e-1a33-4d0e-9f57-0d1d5bd6b0f2";
  auto got = Post("/webhook/gitlab/77?x=1", body,
                  {{"x-gitlab-event-uuid", gitlab_id},
                   {"x-gitlab-token", "scm-secret"},
                   {"x-snyk-broker", "forged"}});
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 200) << got->body;
  EXPECT_EQ(got->Header("snyk-request-id"), gitlab_id);
  const json echo = json::parse(got->body, nullptr, false);
  ASSERT_FALSE(echo.is_discarded()) << got->body;
  EXPECT_EQ(echo["method"], "POST");
  EXPECT_EQ(echo["path"], "/webhook/gitlab/77");
  EXPECT_EQ(echo["query"], "x=1");
  EXPECT_EQ(echo["headers"]["x-snyk-broker"], common::MaskToken(kToken));
  EXPECT_EQ(echo["headers"]["x-gitlab-event-uuid"], gitlab_id);
  EXPECT_EQ(echo["headers"]["x-gitlab-token"], "scm-secret");
  EXPECT_EQ(echo["body_sha256"], Sha256Hex(body));
  EXPECT_EQ(worker->calls(), 0);

  // Only /webhook/* falls back, as in Snyk's client.
  auto callback = Post("/api/v2/import/done", "{}");
  ASSERT_THAT(callback, IsOk());
  EXPECT_EQ(callback->status, 503);

  EXPECT_THAT(logs.Messages(),
              Contains("tunnel unavailable, forwarding via API."));
  EXPECT_THAT(logs.Lines(), Each(Not(HasSubstr(kToken))));
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_fallback_total{result=\"delivered\"}", 1));
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_events_total{outcome=\"fallback\"}", 1));
}

TEST_F(WebhookServerTest, LargeBodyStreamsThroughBothWays) {
  auto worker = StartWorker("a", Mode::kEcho);
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.timeout = absl::Seconds(60);
  });
  ASSERT_TRUE(WaitForHealth(200));

  const std::string body =
      broker::testing::TestPattern(0, std::size_t{25} * 1024 * 1024);
  auto got = Post("/webhook/test/large", body);
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 200);
  EXPECT_THAT(got->body_status, IsOk());
  EXPECT_EQ(got->body.size(), body.size());
  EXPECT_EQ(Sha256Hex(got->body), Sha256Hex(body));
  ASSERT_TRUE(worker->WaitForEnded(1, kWait));
  EXPECT_EQ(worker->seen()[0].body_sha256, Sha256Hex(body));
  EXPECT_EQ(worker->seen()[0].body_bytes, body.size());
}

TEST_F(WebhookServerTest, OversizedBodyIs413) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}), [](WebhookConfig& config) {
    config.max_body_bytes = std::uint64_t{1024} * 1024;
    config.retry_buffer_bytes = std::uint64_t{64} * 1024;
  });
  ASSERT_TRUE(WaitForHealth(200));

  // Declared: answered from the head alone (a client still writing its
  // body may see the connection close first, so this one sends none).
  const std::string answer = RawExchange(
      port_,
      "POST /webhook/test/too-big HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n",
      kWait);
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 413")) << answer;
  EXPECT_EQ(worker->calls(), 0);

  const std::string body(std::size_t{2} * 1024 * 1024, 'x');

  // Chunked: found out while streaming; the worker's call is dropped.
  auto chunked = Post("/webhook/test/too-big", body, {}, /*chunked=*/true);
  if (chunked.ok()) {
    EXPECT_EQ(chunked->status, 413);
  }
  if (worker->calls() > 0) {
    ASSERT_TRUE(worker->WaitForEnded(worker->calls(), kWait));
    for (const auto& s : worker->seen()) EXPECT_FALSE(s.complete);
  }
  // The service is fine afterwards.
  auto small = Post("/webhook/test/fine", "{}");
  ASSERT_THAT(small, IsOk());
  EXPECT_EQ(small->status, 202);
}

TEST_F(WebhookServerTest, WorkerDyingMidAnswerCutsTheAnswerAndIsNotRetried) {
  auto worker = StartWorker("a", Mode::kHeadThenDie);
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  auto got = Post("/webhook/test/die", "{}");
  if (got.ok()) {  // else the cut came before the head was read
    EXPECT_EQ(got->status, 200);
    EXPECT_THAT(got->body_status, Not(IsOk()));
  }
  ASSERT_TRUE(worker->WaitForEnded(1, kWait));
  EXPECT_EQ(worker->calls(), 1);
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_events_total{outcome=\"aborted\"}", 1));
}

TEST_F(WebhookServerTest, FailureFromTheServerIsPassedOn) {
  auto worker = StartWorker("a", Mode::kFailure);
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));
  auto got = Post("/webhook/test/blocked-upstream", "{}",
                  {{"snyk-request-id", "r-9"}});
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 401);
  EXPECT_THAT(got->body, HasSubstr("FILTER_BLOCKED"));
  EXPECT_EQ(got->Header("snyk-request-id"), "r-9");
  EXPECT_EQ(worker->calls(), 1);  // an answer: never retried
}

TEST_F(WebhookServerTest, AnswerThatIsNotHttpBecomes502) {
  auto worker = StartWorker("a", Mode::kBadHead);
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));
  auto got = Post("/webhook/test/bad", "{}");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 502);
  EXPECT_EQ(got->Header("x-broker-failure"), "bad-answer");
  EXPECT_TRUE(
      WaitForMetric("broker_webhook_events_total{outcome=\"failed\"}", 1));
  EXPECT_EQ(worker->calls(), 1);
}

// The SCM sends part of a body and disconnects: the worker's call is
// cancelled and the delivery ends.
TEST_F(WebhookServerTest, ScmLeavingMidBodyCancelsTheCall) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  StartWebhook(Target({worker.get()}));
  ASSERT_TRUE(WaitForHealth(200));

  const int fd = Connect(port_);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(WriteAll(
      fd,
      "POST /webhook/test/gone HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"));
  ASSERT_TRUE(WriteAll(fd, std::string(std::size_t{100} * 1024, 'x')));
  // Wait for the worker to have the call, then leave.
  const absl::Time deadline = absl::Now() + kWait;
  while (worker->calls() == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));  // poll interval
  }
  ASSERT_EQ(worker->calls(), 1);
  close(fd);
  ASSERT_TRUE(worker->WaitForEnded(1, kWait));
  EXPECT_FALSE(worker->seen()[0].complete);

  EXPECT_TRUE(WaitForMetric("broker_webhook_in_flight", 0));
  EXPECT_EQ(MetricValue(Metrics(),
                        "broker_webhook_events_total{outcome=\"cancelled\"}"),
            1);
}

TEST(WebhookBinaryTest, StartsServesAndStops) {
  auto worker = StartWorker("a");
  ASSERT_NE(worker, nullptr);
  auto child = broker::testing::ChildProcess::Start(
      BROKER_WEBHOOK_BIN, {},
      {{"BROKER_TUNNEL_EGRESS_TARGET", worker->address()},
       {"ACCEPT", broker::testing::FixturePath("webhook/accept.json")},
       {"PORT", "0"},
       {"LOG_LEVEL", "warn"}});
  ASSERT_THAT(child, IsOk());
  auto line = (*child)->WaitForLine("broker-webhook listening", kWait);
  ASSERT_THAT(line, IsOk()) << (*child)->Output();
  const json listening = json::parse(*line, nullptr, false);
  ASSERT_FALSE(listening.is_discarded()) << *line;
  const int port = listening["port"];
  broker::testing::Fetcher fetcher;
  auto got = fetcher.Fetch(
      "POST", absl::StrCat("http://127.0.0.1:", port, "/webhook/test/bin"),
      {{"content-type", "application/json"}}, "{}");
  ASSERT_THAT(got, IsOk());
  EXPECT_EQ(got->status, 202) << got->body << "\n" << (*child)->Output();
  (*child)->Signal(SIGTERM);
  auto exit = (*child)->Wait(kWait);
  ASSERT_THAT(exit, IsOk());
  EXPECT_EQ(*exit, 0);
}

TEST(WebhookBinaryTest, BadValueStopsStartUpWithOneLine) {
  auto child = broker::testing::ChildProcess::Start(
      BROKER_WEBHOOK_BIN, {},
      {{"BROKER_TUNNEL_EGRESS_TARGET", "127.0.0.1:1"},
       {"ACCEPT", broker::testing::FixturePath("webhook/accept.json")},
       {"BROKER_WEBHOOK_TIMEOUT_MS", "soon"}});
  ASSERT_THAT(child, IsOk());
  auto exit = (*child)->Wait(kWait);
  ASSERT_THAT(exit, IsOk());
  EXPECT_EQ(*exit, 2);
}

}  // namespace
}  // namespace broker::webhook
