// The Snyk => You data path with real processes on loopback: a test origin,
// broker-server and broker-tunnel, driven over HTTP like the platform does.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/testing/test_origin.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <random>
#include <signal.h>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

constexpr char kToken[] = "7f9a8d7c-1b2e-4c3d-9e8f-0a1b2c3d4e5f";

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(gen() & 0xFF);
  return out;
}

class DataPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    const std::string origin_url =
        absl::StrCat("http://127.0.0.1:", origin_port_);

    // The server lets through everything but /secret.
    server_accept_ = dir_.Write("server-accept.json", R"json({"public": [
      {"method": "any", "path": "/echo*"},
      {"method": "GET", "path": "/bytes/:n"},
      {"method": "GET", "path": "/slow/:ms"},
      {"method": "GET", "path": "/status/:code"},
      {"method": "GET", "path": "/die-mid-body/:n"},
      {"method": "GET", "path": "/headers"},
      {"method": "GET", "path": "/down"},
      {"method": "GET", "path": "/client-blocked"},
      {"method": "GET", "path": "/repos/*"}
    ]})json");
    // The client lets through the same, minus /client-blocked.
    client_accept_ =
        dir_.Write("client-accept.json", absl::StrCat(R"json({"private": [
      {"method": "any", "path": "/echo*", "origin": ")json",
                                                      origin_url, R"json("},
      {"method": "GET", "path": "/bytes/:n", "origin": ")json",
                                                      origin_url, R"json("},
      {"method": "GET", "path": "/slow/:ms", "origin": ")json",
                                                      origin_url, R"json("},
      {"method": "GET", "path": "/status/:code", "origin": ")json",
                                                      origin_url, R"json("},
      {"method": "GET", "path": "/die-mid-body/:n", "origin": ")json",
                                                      origin_url, R"json("},
      {"method": "GET", "path": "/headers",
       "origin": "http://scm-user:scm-pass@127.0.0.1:)json",
                                                      origin_port_, R"json("},
      {"method": "GET", "path": "/down", "origin": "http://127.0.0.1:1"},
      {"method": "GET", "path": "/repos/:owner/:repo/contents/:path", "origin": ")json",
                                                      origin_url, R"json("}
    ]})json"));
    StartMesh();
  }

  void StartMesh(std::map<std::string, std::string> server_env = {}) {
    auto server = StartServer(server_accept_, std::move(server_env));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto tunnel = StartTunnel(kToken, server_.tunnel_port, client_accept_,
                              *server_.process);
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", tunnel_.process.get());
  }

  std::string BrokerUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                        kToken, path);
  }

  absl::StatusOr<Fetched> Get(absl::string_view path,
                              common::http::Headers headers = {}) {
    return fetcher_.Fetch("GET", BrokerUrl(path), std::move(headers));
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string server_accept_;
  std::string client_accept_;
  ServerProcess server_;
  TunnelProcess tunnel_;
};

TEST_F(DataPathTest, GetIsRelayedWithSnykHeaderHandling) {
  auto r = Get("/echo?x=1&connection_role=primary&y=2",
               {{"user-agent", "platform/1.0"},
                {"snyk-request-id", "0b5e7d2a-6f0c-4f4e-9b1a-2c3d4e5f6a7b"},
                {"x-forwarded-for", "10.0.0.1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->Header("snyk-request-id"),
            "0b5e7d2a-6f0c-4f4e-9b1a-2c3d4e5f6a7b");
  json echo = json::parse(r->body);
  EXPECT_EQ(echo["method"], "GET");
  EXPECT_EQ(echo["path"], "/echo");
  EXPECT_EQ(echo["query"], "x=1&y=2");  // connection_role is stripped
  const json& headers = echo["headers"];
  EXPECT_THAT(headers["user-agent"].get<std::string>(),
              HasSubstr("Snyk Broker Client"));
  EXPECT_EQ(headers["x-broker-origin-ua"], "platform/1.0");
  EXPECT_EQ(headers["x-request-id"], "0b5e7d2a-6f0c-4f4e-9b1a-2c3d4e5f6a7b");
  EXPECT_FALSE(headers.contains("x-forwarded-for"));
}

TEST_F(DataPathTest, GeneratesARequestIdWhenThePlatformSendsNone) {
  auto r = Get("/echo");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Header("snyk-request-id").size(), 36u);
}

TEST_F(DataPathTest, ThePlatformsTraceReachesTheOriginOneSpanPerHop) {
  constexpr char kTrace[] = "0af7651916cd43dd8448eb211c80319c";
  auto r =
      Get("/echo",
          {{"traceparent", absl::StrCat("00-", kTrace, "-b7ad6b7169203331-01")},
           {"tracestate", "vendor=1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  const json headers = json::parse(r->body)["headers"];
  const std::string traceparent = headers.value("traceparent", "");
  EXPECT_THAT(traceparent,
              MatchesRegex(absl::StrCat("00-", kTrace, "-[0-9a-f]{16}-01")));
  EXPECT_THAT(traceparent, Not(HasSubstr("b7ad6b7169203331")));
  EXPECT_EQ(headers.value("tracestate", ""), "vendor=1");
}

TEST_F(DataPathTest, ATraceStartsWhenThePlatformSendsNone) {
  auto first = Get("/echo");
  auto second = Get("/echo", {{"traceparent", "not-a-trace"}});
  ASSERT_TRUE(first.ok() && second.ok());
  const std::string a =
      json::parse(first->body)["headers"].value("traceparent", "");
  const std::string b =
      json::parse(second->body)["headers"].value("traceparent", "");
  EXPECT_THAT(a, MatchesRegex("00-[0-9a-f]{32}-[0-9a-f]{16}-00"));
  EXPECT_THAT(b, MatchesRegex("00-[0-9a-f]{32}-[0-9a-f]{16}-00"));
  EXPECT_NE(a.substr(3, 32), b.substr(3, 32));
}

TEST_F(DataPathTest, UserinfoInTheOriginBecomesBasicAuth) {
  auto r = Get("/headers");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  ASSERT_TRUE(r->body_status.ok()) << r->body_status;
  json headers = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(headers.is_discarded()) << "body: " << r->body;
  // base64("scm-user:scm-pass")
  EXPECT_EQ(headers["authorization"], "Basic c2NtLXVzZXI6c2NtLXBhc3M=");
}

TEST_F(DataPathTest, PostBodiesArriveByteForByte) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{65536}, size_t{3} << 20}) {
    SCOPED_TRACE(size);
    const std::string body = RandomBytes(size, static_cast<unsigned>(size));
    for (bool chunked : {false, true}) {
      auto r = fetcher_.Fetch("POST", BrokerUrl("/echo-body"),
                              {{"content-type", "application/octet-stream"}},
                              body, chunked);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->status, 200);
      EXPECT_TRUE(r->body_status.ok()) << r->body_status;
      EXPECT_EQ(r->body.size(), body.size());
      EXPECT_TRUE(r->body == body) << "bytes differ, chunked=" << chunked;
    }
  }
}

TEST_F(DataPathTest, LargeUploadStreams) {
  // /echo reads the whole body and answers its size and SHA-256.
  const std::string body = RandomBytes(32 << 20, 7);
  auto r = fetcher_.Fetch("PUT", BrokerUrl("/echo"), {}, body);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["body_bytes"], body.size());
}

// Byte for byte: while the stream is busy, the worker joins origin chunks
// into larger tunnel messages, and the order must survive that.
TEST_F(DataPathTest, LargeDownloadStreams) {
  constexpr size_t kSize = 64 << 20;
  auto r = Get(absl::StrCat("/bytes/", kSize));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200);
  EXPECT_TRUE(r->body_status.ok()) << r->body_status;
  ASSERT_EQ(r->body.size(), kSize);
  EXPECT_TRUE(r->body == broker::testing::TestPattern(0, kSize))
      << "the bytes differ from the origin's";
}

// Lanes are reused after a clean exchange and dropped after any other: a
// long mixed sequence from several platform connections at once, where
// every kind of ending (small answer in one message, streamed answer,
// upload, origin status, block, origin cut mid-body) is followed by more
// requests on whatever lanes are left, and every answer must be exact.
TEST_F(DataPathTest, MixedRequestsOnReusedLanesAllAnswerExactly) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 15;
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Fetcher fetcher;
      std::string& failure = failures[t];
      auto expect = [&](bool ok, absl::string_view what) {
        if (!ok && failure.empty()) failure = std::string(what);
      };
      for (int i = 0; i < kRounds && failure.empty(); ++i) {
        auto small = fetcher.Fetch("GET", BrokerUrl("/bytes/100"));
        expect(small.ok() && small->status == 200 &&
                   small->body.size() == 100 && small->body_status.ok(),
               "small GET");
        auto big = fetcher.Fetch("GET", BrokerUrl("/bytes/300000"));
        expect(big.ok() && big->status == 200 && big->body.size() == 300000 &&
                   big->body_status.ok(),
               "streamed GET");
        const std::string body = RandomBytes(70000 + i, i);
        auto echo = fetcher.Fetch("POST", BrokerUrl("/echo-body"),
                                  {{"content-type", "application/x-test"}},
                                  body, /*chunked=*/i % 2 == 1);
        expect(echo.ok() && echo->status == 200 && echo->body == body,
               "upload");
        auto status = fetcher.Fetch("GET", BrokerUrl("/status/404"));
        expect(status.ok() && status->status == 404, "origin 404");
        auto blocked = fetcher.Fetch("GET", BrokerUrl("/client-blocked"));
        expect(blocked.ok() && blocked->status == 401, "blocked");
        if (i % 5 == 0) {
          auto cut = fetcher.Fetch("GET", BrokerUrl("/die-mid-body/200000"));
          expect(cut.ok() && cut->status == 200 && !cut->body_status.ok(),
                 "cut body");
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], "")
        << "connection " << t << " failed: " << failures[t];
  }
  // And the worker is still fine afterwards.
  auto r = Get("/bytes/10");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
}

TEST_F(DataPathTest, StatusCodesAreRelayed) {
  for (int code : {201, 204, 299, 404, 500, 503}) {
    auto r = Get(absl::StrCat("/status/", code));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, code);
  }
}

TEST_F(DataPathTest, UnknownTokenIs404NoConnection) {
  auto r = fetcher_.Fetch(
      "GET", absl::StrCat("http://127.0.0.1:", server_.http_port,
                          "/broker/11111111-2222-3333-4444-555555555555/echo"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->Header("x-broker-failure"), "no-connection");
  EXPECT_EQ(json::parse(r->body), json({{"ok", false}}));
}

TEST_F(DataPathTest, ServerPublicRulesBlockWithTheHttpFlowReason) {
  auto r = Get("/secret");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401);
  json body = json::parse(r->body);
  EXPECT_EQ(body["code"], "FILTER_BLOCKED");
  EXPECT_EQ(body["reason"],
            "Request does not match any accept rule, blocking HTTP request");
  EXPECT_EQ(body["url"], "/secret");
}

TEST_F(DataPathTest, ClientPrivateRulesBlockWithTheTunnelFlowReason) {
  auto r = Get("/client-blocked");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401);
  json body = json::parse(r->body);
  EXPECT_EQ(body["code"], "FILTER_BLOCKED");
  EXPECT_EQ(body["reason"],
            "[Websocket Flow][Blocked Request] Does not match any accept rule");
}

TEST_F(DataPathTest, EncodedTraversalIsBlockedBeforeTheOrigin) {
  auto r = Get("/repos/acme/app/contents/%2e%2e%2f.env");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("path traversal"));
}

TEST_F(DataPathTest, DeadOriginIs502Unreachable) {
  auto r = Get("/down");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(json::parse(r->body)["code"], "DOWNSTREAM_UNREACHABLE");
}

TEST_F(DataPathTest, SlowOriginPastTheDeadlineIs504) {
  // A mesh whose requests have a 1 s deadline.
  tunnel_.process->Signal(SIGKILL);
  server_.process->Signal(SIGKILL);
  ASSERT_TRUE(tunnel_.process->Wait(absl::Seconds(10)).ok());
  ASSERT_TRUE(server_.process->Wait(absl::Seconds(10)).ok());
  StartMesh({{"BROKER_REQUEST_TIMEOUT_MS", "1000"}});
  const absl::Time start = absl::Now();
  auto r = Get("/slow/10000");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 504) << r->body;
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
}

TEST_F(DataPathTest, OriginDyingMidBodyAbortsTheTransfer) {
  // A first answer leaves a kept-alive origin connection in the worker's
  // pool: the baseline.
  ASSERT_TRUE(Get("/bytes/10").ok());
  const int files = OpenFiles(tunnel_.process->pid());
  for (int i = 0; i < 3; ++i) {
    auto r = Get("/die-mid-body/1048576");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
    EXPECT_FALSE(r->body_status.ok()) << "a cut body must not end cleanly";
    EXPECT_LT(r->body.size(), 1048576u);
  }
  // The broken origin connections are not kept.
  EXPECT_LE(
      WaitForOpenFilesAtMost(tunnel_.process->pid(), files, absl::Seconds(10)),
      files);
}

TEST_F(DataPathTest, HealthchecksAnswer) {
  auto server = fetcher_.Fetch(
      "GET",
      absl::StrCat("http://127.0.0.1:", server_.http_port, "/healthcheck"));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->status, 200);
  EXPECT_EQ(json::parse(server->body)["ok"], true);
  auto tunnel = fetcher_.Fetch(
      "GET",
      absl::StrCat("http://127.0.0.1:", tunnel_.http_port, "/healthcheck"));
  ASSERT_TRUE(tunnel.ok()) << tunnel.status();
  EXPECT_EQ(tunnel->status, 200);
  EXPECT_EQ(json::parse(tunnel->body)["websocketConnectionOpen"], true);
  auto status =
      fetcher_.Fetch("GET", absl::StrCat("http://127.0.0.1:", server_.http_port,
                                         "/connection-status/", kToken));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->status, 200);
}

TEST_F(DataPathTest, PlatformLeavingCancelsTheOriginCall) {
  // The platform gives up after 1 s; the origin would answer after 30 s.
  const absl::Time start = absl::Now();
  auto r = fetcher_.Fetch("GET", BrokerUrl("/slow/30000"), {}, "", false,
                          absl::Seconds(1));
  EXPECT_FALSE(r.ok());
  // The worker drops the origin call at once, not at the request deadline.
  ASSERT_TRUE(origin_->WaitForLine("gone /slow/30000", absl::Seconds(10)).ok())
      << origin_->Output();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST_F(DataPathTest, TunnelKilledMidRequestFailsFast) {
  absl::StatusOr<Fetched> result;
  std::thread request([&] { result = Get("/slow/20000"); });
  // The origin has the request once the worker relayed it.
  ASSERT_TRUE(
      origin_->WaitForLine("request GET /slow/20000", absl::Seconds(10)).ok());
  const absl::Time killed = absl::Now();
  tunnel_.process->Signal(SIGKILL);
  request.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 502);
  EXPECT_FALSE(result->Header("x-broker-failure").empty());
  EXPECT_LT(absl::Now() - killed, absl::Seconds(15));
}

// The same GET forwarded here by another server (HA): with no worker of
// the token left here, the answer says so (404 no-connection), which makes
// the forwarding server wait for the workers at home instead of failing.
TEST_F(DataPathTest, ForwardedRequestWhoseWorkersAllLeftIs404NoConnection) {
  absl::StatusOr<Fetched> result;
  std::thread request([&] {
    result = Get("/slow/20000", {{"x-broker-forwarded-by", "1"}});
  });
  ASSERT_TRUE(
      origin_->WaitForLine("request GET /slow/20000", absl::Seconds(10)).ok());
  tunnel_.process->Signal(SIGKILL);
  request.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 404) << result->body;
  EXPECT_EQ(result->Header("x-broker-failure"), "no-connection");
}

TEST_F(DataPathTest, WorkerReconnectsAfterAServerRestart) {
  const int tunnel_port = server_.tunnel_port;
  const int files = OpenFiles(tunnel_.process->pid());
  server_.process->Signal(SIGKILL);
  ASSERT_TRUE(server_.process->Wait(absl::Seconds(10)).ok());
  auto server = StartServer(
      server_accept_, {{"BROKER_TUNNEL_PORT", std::to_string(tunnel_port)}});
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  ASSERT_TRUE(
      server_.process->WaitForLine("broker client connected", absl::Seconds(20))
          .ok());
  auto r = Get("/echo");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  // The dead server's connection is not kept beside the new one (the
  // /echo above may leave one origin connection in the pool).
  EXPECT_LE(WaitForOpenFilesAtMost(tunnel_.process->pid(), files + 1,
                                   absl::Seconds(10)),
            files + 1);
}

TEST_F(DataPathTest, ServerSigtermFinishesInFlightRequestsThenExitsPromptly) {
  absl::StatusOr<Fetched> result;
  std::thread request([&] { result = Get("/slow/1000"); });
  ASSERT_TRUE(
      origin_->WaitForLine("request GET /slow/1000", absl::Seconds(10)).ok());
  server_.process->Signal(SIGTERM);
  request.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->status, 200) << "the in-flight request must finish";
  // The worker's Control call and parked lanes do not hold the exit back
  // until the grace period (30 s) ends.
  auto server_exit = server_.process->Wait(absl::Seconds(10));
  ASSERT_TRUE(server_exit.ok()) << server_exit.status();
  EXPECT_EQ(*server_exit, 0);
}

// The worker retries a server that is gone; stopping it then ends its
// last calls before the process exits (under AddressSanitizer, an exit
// that tears gRPC down while a call is still being released is a double
// free: exit status 134).
TEST_F(DataPathTest, WorkerWhoseServerIsGoneExitsCleanlyOnSigterm) {
  server_.process->Signal(SIGKILL);
  ASSERT_TRUE(server_.process->Wait(absl::Seconds(10)).ok());
  ASSERT_TRUE(tunnel_.process
                  ->WaitForLine("was closed; reconnecting", absl::Seconds(10))
                  .ok());
  tunnel_.process->Signal(SIGTERM);
  auto tunnel_exit = tunnel_.process->Wait(absl::Seconds(20));
  ASSERT_TRUE(tunnel_exit.ok()) << tunnel_exit.status();
  EXPECT_EQ(*tunnel_exit, 0);
}

TEST_F(DataPathTest, SigtermExitsCleanly) {
  tunnel_.process->Signal(SIGTERM);
  auto tunnel_exit = tunnel_.process->Wait(absl::Seconds(20));
  ASSERT_TRUE(tunnel_exit.ok()) << tunnel_exit.status();
  EXPECT_EQ(*tunnel_exit, 0);
  server_.process->Signal(SIGTERM);
  auto server_exit = server_.process->Wait(absl::Seconds(20));
  ASSERT_TRUE(server_exit.ok()) << server_exit.status();
  EXPECT_EQ(*server_exit, 0);
}

}  // namespace
}  // namespace broker::testing
