// The server side of webhooks (You => Snyk): the real broker-server and a
// test origin playing the platform, with the test itself acting as the
// worker: a Control call with Hello, then Tunnel.Deliver calls. Covers the
// server's private rules, the headers toward the platform, streaming, the
// delivery ledger (at most once per x-broker-delivery-id) and the errors.

#include "filters/blocked.h"
#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/testing/test_origin.h"

#include "broker/tunnel/v1/tunnel.grpc.pb.h"

#include "grpcpp/grpcpp.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>

namespace broker::testing {
namespace {

namespace v1 = ::broker::tunnel::v1;
using ::testing::HasSubstr;

constexpr char kToken[] = "5d2e8f7a-1b3c-4d5e-8f90-a1b2c3d4e5f6";
constexpr char kMaskedToken[] = "5d2e-...-e5f6";  // common::MaskToken
constexpr char kClientId[] = "7f0c2b1e-9a8d-4c3b-a2e1-0f9e8d7c6b5a";
constexpr absl::Duration kWait = absl::Seconds(20);

// Counts `needle` in `text`.
int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// The worker's Control call: Hello, Welcome, then open until destroyed.
class FakeWorker {
 public:
  FakeWorker(v1::Tunnel::Stub& stub, const std::string& token,
             const std::string& client_id) {
    context_.AddMetadata("authorization", "Bearer " + token);
    context_.AddMetadata("x-broker-client-id", client_id);
    context_.set_deadline(In(absl::Minutes(4)));
    stream_ = stub.Control(&context_);
    v1::WorkerControl hello;
    hello.mutable_hello()->set_client_id(client_id);
    hello.mutable_hello()->set_role("primary");
    hello.mutable_hello()->set_version("test");
    hello.mutable_hello()->set_lane_pool_size(0);
    if (!stream_->Write(hello)) return;
    v1::ServerControl in;
    while (stream_->Read(&in)) {
      if (in.has_welcome()) {
        welcomed_ = true;
        return;
      }
    }
  }
  ~FakeWorker() {
    context_.TryCancel();
    v1::ServerControl in;
    while (stream_->Read(&in)) {
    }
    stream_->Finish().ok();
  }
  FakeWorker(const FakeWorker&) = delete;
  FakeWorker& operator=(const FakeWorker&) = delete;

  bool welcomed() const { return welcomed_; }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<v1::WorkerControl, v1::ServerControl>>
      stream_;
  bool welcomed_ = false;
};

// What came back down a Deliver call.
struct Answer {
  grpc::Status status;
  std::vector<v1::DeliverDown> messages;

  bool failed() const {
    return !messages.empty() && messages.front().has_failure();
  }
  const v1::Failure& failure() const { return messages.front().failure(); }
  bool has_head() const {
    return !messages.empty() && messages.front().has_head();
  }
  int http_status() const {
    return has_head() ? messages.front().head().status() : 0;
  }
  std::string Header(const std::string& name) const {
    if (!has_head()) return "";
    for (const v1::Header& h : messages.front().head().headers()) {
      if (absl::EqualsIgnoreCase(h.name(), name)) return h.value();
    }
    return "";
  }
  // Head body plus body chunks.
  std::string body() const {
    std::string out;
    for (const v1::DeliverDown& m : messages) {
      if (m.has_head()) out += m.head().body();
      if (m.has_body()) out += m.body();
    }
    return out;
  }
  // Ended with a clean end (in the head or as the last message).
  bool ended_cleanly() const {
    if (messages.empty()) return false;
    const v1::DeliverDown& last = messages.back();
    if (last.has_head()) return last.head().has_end();
    return last.has_end() && !last.end().aborted();
  }
};

struct DeliverMetadata {
  std::string token = kToken;
  std::string client_id = kClientId;
  std::string delivery_id;  // "" none
  int attempt = 1;
};

DeliverMetadata WithId(std::string id, int attempt = 1) {
  DeliverMetadata metadata;
  metadata.delivery_id = std::move(id);
  metadata.attempt = attempt;
  return metadata;
}

DeliverMetadata WithToken(std::string token) {
  DeliverMetadata metadata;
  metadata.token = std::move(token);
  return metadata;
}

DeliverMetadata WithClientId(std::string client_id) {
  DeliverMetadata metadata;
  metadata.client_id = std::move(client_id);
  return metadata;
}

// One Deliver call, driven by the test as a worker would.
class DeliverCall {
 public:
  DeliverCall(v1::Tunnel::Stub& stub, const DeliverMetadata& metadata) {
    if (!metadata.token.empty()) {
      context_.AddMetadata("authorization", "Bearer " + metadata.token);
    }
    context_.AddMetadata("x-broker-client-id", metadata.client_id);
    if (!metadata.delivery_id.empty()) {
      context_.AddMetadata("x-broker-delivery-id", metadata.delivery_id);
      context_.AddMetadata("x-broker-delivery-attempt",
                           std::to_string(metadata.attempt));
    }
    context_.set_deadline(In(absl::Seconds(60)));
    stream_ = stub.Deliver(&context_);
  }

  bool Head(
      const std::string& method, const std::string& url,
      std::int64_t body_length,
      const std::vector<std::pair<std::string, std::string>>& headers = {},
      absl::Duration deadline = absl::Seconds(30)) {
    v1::DeliverUp message;
    v1::RequestHead* head = message.mutable_head();
    head->set_method(method);
    head->set_url(url);
    head->set_body_length(body_length);
    head->set_deadline_unix_micros(absl::ToUnixMicros(absl::Now() + deadline));
    for (const auto& [name, value] : headers) {
      v1::Header* h = head->add_headers();
      h->set_name(name);
      h->set_value(value);
    }
    return stream_->Write(message);
  }
  bool Body(std::string data) {
    v1::DeliverUp message;
    message.set_body(std::move(data));
    return stream_->Write(message);
  }
  bool End() {
    v1::DeliverUp message;
    message.mutable_end();
    return stream_->Write(message);
  }
  void Cancel() { context_.TryCancel(); }

  // Half-closes, then reads the whole answer and the call's status.
  Answer Finish() {
    stream_->WritesDone();
    Answer answer;
    v1::DeliverDown message;
    while (stream_->Read(&message)) answer.messages.push_back(message);
    answer.status = stream_->Finish();
    return answer;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::DeliverUp, v1::DeliverDown>>
      stream_;
};

class WebhookServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    dead_port_ = BoundButNotListening();
    ASSERT_GT(dead_port_, 0);
    // The platform's URL comes from the environment, as ${VAR}.
    const std::string accept = dir_.Write(
        "server-accept.json", absl::StrCat(R"json({"public": [], "private": [
          {"method": "POST", "path": "/echo", "origin": "${PLATFORM_URL}"},
          {"method": "POST", "path": "/slow/:ms", "origin": "${PLATFORM_URL}"},
          {"method": "POST", "path": "/bytes/:n", "origin": "${PLATFORM_URL}"},
          {"method": "POST", "path": "/headers", "origin": "${PLATFORM_URL}",
           "valid": [{"path": "event", "value": "push"}]},
          {"method": "POST", "path": "/dead",
           "origin": "http://127.0.0.1:)json",
                                           dead_port_, R"json("}]})json"));
    auto server = StartServer(
        accept,
        {{"PLATFORM_URL", absl::StrCat("http://127.0.0.1:", origin_port_)},
         {"LOG_LEVEL", "debug"}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_.tunnel_port),
                            grpc::InsecureChannelCredentials());
    stub_ = v1::Tunnel::NewStub(channel_);
    worker_ = std::make_unique<FakeWorker>(*stub_, kToken, kClientId);
    ASSERT_TRUE(worker_->welcomed());
  }

  void TearDown() override {
    worker_.reset();
    if (dead_fd_ >= 0) close(dead_fd_);
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("test-origin", origin_.get());
  }

  // A port with a socket bound to it but no listener: connecting is
  // refused, and no other test can take the port meanwhile.
  int BoundButNotListening() {
    dead_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (dead_fd_ < 0) return -1;
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    auto* raw = reinterpret_cast<sockaddr*>(&address);
    if (bind(dead_fd_, raw, sizeof(address)) != 0) return -1;
    socklen_t length = sizeof(address);
    if (getsockname(dead_fd_, raw, &length) != 0) return -1;
    return ntohs(address.sin_port);
  }

  // Everything the origin printed up to now: a request the origin gets
  // directly after all the test's deliveries ended is printed after every
  // request they caused.
  std::string OriginRequests() {
    const std::string sentinel =
        absl::StrCat("sentinel=", sentinels_.fetch_add(1));
    auto fetched =
        fetcher_.Fetch("GET", absl::StrCat("http://127.0.0.1:", origin_port_,
                                           "/status/204?", sentinel));
    EXPECT_TRUE(fetched.ok()) << fetched.status();
    EXPECT_TRUE(origin_->WaitForLine(sentinel, kWait).ok());
    return origin_->Output();
  }

  // A whole delivery: head, body (when not empty) and end, then the answer.
  Answer Deliver(
      const DeliverMetadata& metadata, const std::string& url,
      const std::string& body,
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    DeliverCall call(*stub_, metadata);
    const auto length = static_cast<std::int64_t>(body.size());
    if (call.Head("POST", url, length, headers) && !body.empty()) {
      if (call.Body(body)) call.End();
    }
    return call.Finish();
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  int dead_fd_ = -1;
  int dead_port_ = 0;
  ServerProcess server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Tunnel::Stub> stub_;
  std::unique_ptr<FakeWorker> worker_;
  std::atomic<int> sentinels_{0};
};

TEST_F(WebhookServerTest, AllowedWebhookReachesThePlatform) {
  const std::string body = R"({"ref":"refs/heads/main","commits":[]})";
  Answer answer = Deliver(WithId("0b7c3f4e-0001-4222-8333-944455556666"),
                          "/echo?case=allowed", body,
                          {{"content-type", "application/json"},
                           {"x-github-event", "push"},
                           {"host", "evil.example"},
                           {"x-broker-token", "spoofed"},
                           {"x-snyk-broker", "spoofed"}});
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  ASSERT_TRUE(answer.has_head())
      << (answer.failed() ? answer.failure().body() : "no answer");
  EXPECT_EQ(answer.http_status(), 200);
  // A small answer travels whole in its head.
  ASSERT_EQ(answer.messages.size(), 1U);
  EXPECT_TRUE(answer.ended_cleanly());
  EXPECT_THAT(answer.Header("content-type"), HasSubstr("application/json"));
  auto echo = nlohmann::json::parse(answer.body());
  EXPECT_EQ(echo["method"], "POST");
  EXPECT_EQ(echo["path"], "/echo");
  EXPECT_EQ(echo["query"], "case=allowed");
  EXPECT_EQ(echo["body_bytes"], body.size());
  Sha256 sha;
  sha.Update(body);
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
  const auto& headers = echo["headers"];
  EXPECT_EQ(headers["content-type"], "application/json");
  EXPECT_EQ(headers["x-github-event"], "push");
  EXPECT_EQ(headers["x-snyk-broker"], kMaskedToken);
  EXPECT_EQ(headers["x-broker-token"], kToken);
  EXPECT_EQ(headers["host"], absl::StrCat("127.0.0.1:", origin_port_));
}

TEST_F(WebhookServerTest, BlockedByTheServersPrivateRules) {
  Answer answer = Deliver({}, "/blocked?case=blocked", "{}");
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  ASSERT_TRUE(answer.failed());
  EXPECT_EQ(answer.failure().status(), 401);
  EXPECT_EQ(answer.failure().code(), "FILTER_BLOCKED");
  EXPECT_EQ(answer.failure().body(),
            filters::BlockedBody(filters::kTunnelFlowNoMatchReason,
                                 "/blocked?case=blocked"));
  auto warned = server_.process->WaitForLine("webhook blocked", kWait);
  ASSERT_TRUE(warned.ok()) << warned.status();
  EXPECT_THAT(*warned, HasSubstr("\"level\":\"warn\""));
  EXPECT_THAT(*warned, ::testing::Not(HasSubstr(kToken)));
  EXPECT_EQ(Count(OriginRequests(), "case=blocked"), 0);
}

TEST_F(WebhookServerTest, BodyRulesHoldTheBody) {
  Answer allowed = Deliver({}, "/headers?case=push", R"({"event":"push"})");
  ASSERT_TRUE(allowed.has_head());
  EXPECT_EQ(allowed.http_status(), 200);
  Answer blocked = Deliver({}, "/headers?case=pull", R"({"event":"pull"})");
  ASSERT_TRUE(blocked.failed());
  EXPECT_EQ(blocked.failure().code(), "FILTER_BLOCKED");
  const std::string seen = OriginRequests();
  EXPECT_EQ(Count(seen, "case=push"), 1);
  EXPECT_EQ(Count(seen, "case=pull"), 0);
}

TEST_F(WebhookServerTest, LargeChunkedBodyStreamsThrough) {
  constexpr std::size_t kBytes = std::size_t{25} << 20;
  constexpr std::size_t kChunk = std::size_t{64} << 10;
  DeliverCall call(*stub_, WithId("0b7c3f4e-0002-4222-8333-9444555"));
  ASSERT_TRUE(call.Head("POST", "/echo?case=large", -1,
                        {{"content-type", "application/octet-stream"}}));
  Sha256 sha;
  for (std::size_t sent = 0; sent < kBytes; sent += kChunk) {
    const std::string chunk(TestPatternSlice(sent, kChunk));
    sha.Update(chunk);
    ASSERT_TRUE(call.Body(chunk));
  }
  ASSERT_TRUE(call.End());
  Answer answer = call.Finish();
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  ASSERT_TRUE(answer.has_head());
  EXPECT_EQ(answer.http_status(), 200);
  auto echo = nlohmann::json::parse(answer.body());
  EXPECT_EQ(echo["body_bytes"], kBytes);
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
}

TEST_F(WebhookServerTest, SameDeliveryIdTwiceReachesThePlatformOnce) {
  const std::string id = "0b7c3f4e-0003-4222-8333-944455556666";
  Answer first = Deliver(WithId(id, 1), "/echo?case=twice", R"({"n":1})");
  Answer second = Deliver(WithId(id, 2), "/echo?case=twice", R"({"n":1})");
  ASSERT_TRUE(first.has_head());
  ASSERT_TRUE(second.has_head());
  EXPECT_EQ(first.http_status(), 200);
  EXPECT_EQ(second.http_status(), first.http_status());
  EXPECT_EQ(second.body(), first.body());
  ASSERT_EQ(second.messages.size(), 1U);
  EXPECT_EQ(second.messages[0].head().headers_size(),
            first.messages[0].head().headers_size());
  EXPECT_EQ(second.Header("content-type"), first.Header("content-type"));
  EXPECT_TRUE(second.ended_cleanly());
  EXPECT_EQ(Count(OriginRequests(), "case=twice"), 1);

  // Without a delivery id nothing is deduplicated.
  Deliver({}, "/echo?case=no-id", "{}");
  Deliver({}, "/echo?case=no-id", "{}");
  EXPECT_EQ(Count(OriginRequests(), "case=no-id"), 2);
}

TEST_F(WebhookServerTest, BigAnswerIsNotReplayed) {
  const std::string id = "0b7c3f4e-0004-4222-8333-944455556666";
  Answer first = Deliver(WithId(id), "/bytes/200000?case=big", "");
  ASSERT_TRUE(first.has_head());
  EXPECT_EQ(first.http_status(), 200);
  EXPECT_EQ(first.body(), TestPattern(0, 200000));
  EXPECT_TRUE(first.ended_cleanly());
  for (const v1::DeliverDown& m : first.messages) {
    EXPECT_LE(m.ByteSizeLong(), (256U << 10) + 64U);
  }
  Answer retry = Deliver(WithId(id, 2), "/bytes/200000?case=big", "");
  ASSERT_TRUE(retry.failed());
  EXPECT_EQ(retry.failure().status(), 502);
  EXPECT_EQ(retry.failure().code(), "DUPLICATE_DELIVERY");
  EXPECT_EQ(Count(OriginRequests(), "case=big"), 1);
}

TEST_F(WebhookServerTest,
       RetryAfterTheFirstAttemptLeftWithItsBodyGetsTheAnswer) {
  const std::string id = "0b7c3f4e-0005-4222-8333-944455556666";
  // The platform takes 1.5 s to answer: the first attempt leaves before.
  DeliverCall first(*stub_, WithId(id, 1));
  ASSERT_TRUE(first.Head("POST", "/slow/1500?case=left-whole", 7));
  ASSERT_TRUE(first.Body("payload"));
  ASSERT_TRUE(first.End());
  auto whole = server_.process->WaitForLine(
      "webhook request body received whole", kWait);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_THAT(*whole, HasSubstr(id));
  first.Cancel();
  EXPECT_EQ(first.Finish().status.error_code(), grpc::StatusCode::CANCELLED);

  Answer retry =
      Deliver(WithId(id, 2), "/slow/1500?case=left-whole", "payload");
  ASSERT_TRUE(retry.status.ok()) << retry.status.error_message();
  ASSERT_TRUE(retry.has_head())
      << (retry.failed() ? retry.failure().body() : "no answer");
  EXPECT_EQ(retry.http_status(), 200);
  EXPECT_EQ(retry.body(), "slow");
  const std::string seen = OriginRequests();
  EXPECT_EQ(Count(seen, "request POST /slow/1500?case=left-whole"), 1);
  // The platform call went on: the origin never saw its client leave.
  EXPECT_EQ(Count(seen, "gone /slow/1500?case=left-whole"), 0);
}

TEST_F(WebhookServerTest, RetryAfterTheFirstAttemptLeftMidBodyGoesThrough) {
  const std::string id = "0b7c3f4e-0006-4222-8333-944455556666";
  DeliverCall first(*stub_, WithId(id, 1));
  ASSERT_TRUE(first.Head("POST", "/echo?case=left-mid", -1));
  ASSERT_TRUE(first.Body(std::string(1000, 'a')));
  // The platform call has started (its head reached the origin), the body
  // is still incomplete.
  ASSERT_TRUE(
      origin_->WaitForLine("request POST /echo?case=left-mid", kWait).ok());
  first.Cancel();
  EXPECT_EQ(first.Finish().status.error_code(), grpc::StatusCode::CANCELLED);

  const std::string body(3000, 'b');
  Answer retry = Deliver(WithId(id, 2), "/echo?case=left-mid", body);
  ASSERT_TRUE(retry.has_head())
      << (retry.failed() ? retry.failure().body() : "no answer");
  EXPECT_EQ(retry.http_status(), 200);
  auto echo = nlohmann::json::parse(retry.body());
  EXPECT_EQ(echo["body_bytes"], body.size());
  Sha256 sha;
  sha.Update(body);
  EXPECT_EQ(echo["body_sha256"], sha.HexDigest());
  // The first (incomplete) request and the retry.
  EXPECT_EQ(Count(OriginRequests(), "request POST /echo?case=left-mid"), 2);
}

TEST_F(WebhookServerTest, DeadPlatformIsUnreachable) {
  const absl::Time start = absl::Now();
  DeliverCall call(*stub_, WithId("0b7c3f4e-0007-4222-8333-94445555"));
  ASSERT_TRUE(call.Head("POST", "/dead", 2, {}, absl::Seconds(10)));
  ASSERT_TRUE(call.Body("{}"));
  ASSERT_TRUE(call.End());
  Answer answer = call.Finish();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  ASSERT_TRUE(answer.failed());
  EXPECT_EQ(answer.failure().status(), 502);
  EXPECT_EQ(answer.failure().code(), "DOWNSTREAM_UNREACHABLE");
  auto body = nlohmann::json::parse(answer.failure().body());
  EXPECT_EQ(body["code"], "DOWNSTREAM_UNREACHABLE");
}

TEST_F(WebhookServerTest, CallersMustBeAdmittedWorkers) {
  Answer wrong_token = Deliver(WithToken("not-the-token-of-any-worker"),
                               "/echo?case=wrong-token", "{}");
  EXPECT_EQ(wrong_token.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(wrong_token.messages.empty());

  Answer no_token = Deliver(WithToken(""), "/echo?case=no-token", "{}");
  EXPECT_EQ(no_token.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  Answer no_control =
      Deliver(WithClientId("1e2d3c4b-0000-4000-8000-000000000000"),
              "/echo?case=no-control", "{}");
  EXPECT_EQ(no_control.status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  const std::string seen = OriginRequests();
  EXPECT_EQ(Count(seen, "case=wrong-token"), 0);
  EXPECT_EQ(Count(seen, "case=no-token"), 0);
  EXPECT_EQ(Count(seen, "case=no-control"), 0);
}

}  // namespace
}  // namespace broker::testing
