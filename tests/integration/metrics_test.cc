// /metrics of broker-server and broker-tunnel after real traffic: Snyk's
// names and labels, ours, the gRPC interceptors' families, the hashed
// token label (the token itself never appears), and BROKER_METRICS_ENABLED.
// Real processes on loopback.

#include "common/token.h"
#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/prometheus_text.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <csignal>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace broker::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "5b2e8c1d-7a4f-4e3b-9c6d-1f0a2b3c4d5e";
constexpr absl::Duration kWait = absl::Seconds(20);
constexpr int kRequests = 5;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    // The server lets /bytes/:n and /worker-blocked through; the workers
    // only /bytes/:n.
    server_accept_ = dir_.Write("server-accept.json", R"json({"public": [
      {"method": "GET", "path": "/bytes/:n"},
      {"method": "GET", "path": "/worker-blocked"}
    ]})json");
    client_accept_ = dir_.Write("client-accept.json",
                                absl::StrCat(R"json({"private": [
      {"method": "GET", "path": "/bytes/:n", "origin": "http://127.0.0.1:)json",
                                             origin_port_, R"json("}]})json"));
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-tunnel ", i), workers_[i].process.get());
    }
  }

  void StartMesh(int workers, std::map<std::string, std::string> env = {}) {
    auto server = StartServer(server_accept_, env);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    env["BROKER_CLIENT_URL"] = "http://w:1";  // a token's workers agree
    for (int i = 0; i < workers; ++i) {
      auto worker = StartTunnel(kToken, server_.tunnel_port, client_accept_,
                                *server_.process, env);
      ASSERT_TRUE(worker.ok()) << worker.status();
      workers_.push_back(*std::move(worker));
    }
  }

  std::string BrokerUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", server_.http_port, "/broker/",
                        kToken, path);
  }

  absl::StatusOr<Fetched> Scrape(int port) {
    return fetcher_.Fetch("GET",
                          absl::StrCat("http://127.0.0.1:", port, "/metrics"));
  }

  // Scrapes until `check` holds for the samples (the counters of an
  // answered request are final a moment after its last byte), or the
  // deadline; returns the last scrape's text.
  template <typename Check>
  std::string ScrapeUntil(int port, Check check) {
    const absl::Time deadline = absl::Now() + kWait;
    std::string text;
    while (true) {
      auto scraped = Scrape(port);
      if (scraped.ok() && scraped->status == 200) {
        text = scraped->body;
        if (check(ParseSamples(text))) return text;
      }
      if (absl::Now() > deadline) return text;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  TempDir dir_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string server_accept_;
  std::string client_accept_;
  std::unique_ptr<ChildProcess> dispatcher_;
  ServerProcess server_;
  std::vector<TunnelProcess> workers_;
  Fetcher fetcher_;
};

TEST_F(MetricsTest, ServerAndTunnelCountTraffic) {
  ASSERT_NO_FATAL_FAILURE(StartMesh(2));
  for (int i = 0; i < kRequests; ++i) {
    auto r = fetcher_.Fetch("GET", BrokerUrl("/bytes/100"));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 200) << r->body;
  }
  auto blocked = fetcher_.Fetch("GET", BrokerUrl("/not-allowed"));
  ASSERT_TRUE(blocked.ok()) << blocked.status();
  EXPECT_EQ(blocked->status, 401);
  auto worker_blocked = fetcher_.Fetch("GET", BrokerUrl("/worker-blocked"));
  ASSERT_TRUE(worker_blocked.ok()) << worker_blocked.status();
  EXPECT_EQ(worker_blocked->status, 401);

  const std::string text = ScrapeUntil(
      server_.http_port, [](const std::map<std::string, double>& s) {
        // Lanes closed by a failed request are replaced a moment later.
        return Sum(s, "http_request_duration_seconds_count") >= kRequests + 2 &&
               Sum(s, "broker_server_lanes", {"state=\"idle\""}) >= 2;
      });
  const std::map<std::string, double> s = ParseSamples(text);
  // Snyk's names. The request the workers blocked passed the server's rules.
  EXPECT_EQ(s.at("http_request_total{rejectedByFilter=\"false\","
                 "flowDirection=\"inbound-request\"}"),
            kRequests + 1)
      << text;
  EXPECT_EQ(s.at("http_request_total{rejectedByFilter=\"true\","
                 "flowDirection=\"inbound-request\"}"),
            1);
  EXPECT_EQ(s.at("broker_filter_blocks_total{list=\"public\"}"), 1);
  EXPECT_EQ(s.at("broker_socket_connection_total"), 2);
  EXPECT_EQ(s.at("up"), 1);
  EXPECT_EQ(Sum(s, "broker_response_size_bytes_count"), kRequests);
  EXPECT_EQ(Sum(s, "broker_response_size_bytes_sum"), kRequests * 100);
  EXPECT_EQ(s.at("http_request_duration_seconds_count{method=\"GET\","
                 "status_code=\"200\"}"),
            kRequests);
  EXPECT_EQ(s.at("http_request_duration_seconds_count{method=\"GET\","
                 "status_code=\"401\"}"),
            2);
  EXPECT_THAT(text, HasSubstr("http_request_duration_seconds_bucket{method="
                              "\"GET\",status_code=\"200\",le=\"300\"} 5"));
  // Ours: tunnels per token under the hashed token, never the token.
  EXPECT_EQ(s.at(absl::StrCat("broker_server_tunnels{hashed_token=\"",
                              common::HashToken(kToken), "\"}")),
            2);
  EXPECT_THAT(text, Not(HasSubstr(kToken)));
  EXPECT_GE(s.at("broker_server_lanes{state=\"idle\"}"), 2);
  EXPECT_EQ(s.at("broker_server_lanes{state=\"busy\"}"), 0);
  EXPECT_EQ(s.at("broker_server_outstanding_requests"), 0);
  EXPECT_EQ(s.at("broker_server_failovers_total{kind=\"resend\"}"), 0);
  // The interceptors on the tunnel endpoint.
  EXPECT_EQ(s.at("grpc_server_started_total{grpc_service=\"broker.tunnel.v1."
                 "Tunnel\",grpc_method=\"Control\",grpc_type=\"bidi_stream\"}"),
            2);
  EXPECT_GE(Sum(s, "grpc_server_started_total", {"grpc_method=\"Serve\""}), 2);

  // The workers: requests relayed, the private block, their client side.
  double relayed = 0;
  double private_blocks = 0;
  for (const TunnelProcess& worker : workers_) {
    auto scraped = Scrape(worker.http_port);
    ASSERT_TRUE(scraped.ok()) << scraped.status();
    ASSERT_EQ(scraped->status, 200);
    EXPECT_THAT(scraped->body, Not(HasSubstr(kToken)));
    const std::map<std::string, double> w = ParseSamples(scraped->body);
    relayed += w.at("broker_tunnel_requests_total");
    private_blocks += w.at("broker_filter_blocks_total{list=\"private\"}");
    EXPECT_EQ(w.at("broker_tunnel_connected"), 1);
    EXPECT_EQ(w.at("grpc_client_started_total{grpc_service=\"broker.tunnel."
                   "v1.Tunnel\",grpc_method=\"Control\",grpc_type=\"bidi_"
                   "stream\"}"),
              1)
        << scraped->body;
    EXPECT_GE(w.at("broker_tunnel_lanes{state=\"idle\"}"), 1);
  }
  EXPECT_EQ(relayed, kRequests + 1);
  EXPECT_EQ(private_blocks, 1);

  // One worker leaves: its tunnel's end is counted, with a reason, and its
  // Control call's status.
  workers_.back().process->Signal(SIGTERM);
  auto exited = workers_.back().process->Wait(kWait);
  ASSERT_TRUE(exited.ok()) << exited.status();
  const std::string after = ScrapeUntil(
      server_.http_port, [](const std::map<std::string, double>& now) {
        return Sum(now, "broker_socket_close_reason_total") == 1 &&
               Sum(now, "grpc_server_handled_total",
                   {"grpc_method=\"Control\""}) == 1;
      });
  const std::map<std::string, double> a = ParseSamples(after);
  EXPECT_EQ(Sum(a, "broker_socket_close_reason_total"), 1) << after;
  EXPECT_EQ(Sum(a, "grpc_server_handled_total", {"grpc_method=\"Control\""}), 1)
      << after;
  EXPECT_EQ(a.at("broker_socket_connection_total"), 1);
  EXPECT_EQ(a.at(absl::StrCat("broker_server_tunnels{hashed_token=\"",
                              common::HashToken(kToken), "\"}")),
            1);
}

// HA: the server's dispatcher calls, and a request forwarded from a server
// without a tunnel of the token to the one that has it.
TEST_F(MetricsTest, CountsDispatcherWritesAndForwarding) {
  auto dispatcher = ChildProcess::Start(BROKER_DISPATCHER_BIN, {},
                                        {{"PORT", "0"}, {"LOG_LEVEL", "info"}});
  ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
  dispatcher_ = *std::move(dispatcher);
  auto line = dispatcher_->WaitForLine("broker-dispatcher listening", kWait);
  ASSERT_TRUE(line.ok()) << line.status();
  auto port = JsonInt(*line, "port");
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string dispatcher_url = absl::StrCat("http://127.0.0.1:", *port);
  std::vector<ServerProcess> servers;
  for (int id = 0; id < 2; ++id) {
    auto server = StartServer(server_accept_,
                              {{"DISPATCHER_URL", dispatcher_url},
                               {"HOSTNAME", absl::StrCat("broker-server-", id)},
                               {"BROKER_SERVER_ADVERTISE_HOST", "127.0.0.1"}});
    ASSERT_TRUE(server.ok()) << server.status();
    servers.push_back(*std::move(server));
  }
  auto worker = StartTunnel(kToken, servers[0].tunnel_port, client_accept_,
                            *servers[0].process);
  ASSERT_TRUE(worker.ok()) << worker.status();
  workers_.push_back(*std::move(worker));
  // Registered, and the worker's lease reported.
  const std::string writes = ScrapeUntil(
      servers[0].http_port, [](const std::map<std::string, double>& now) {
        return Sum(now, "broker_dispatcher_write_total",
                   {"result=\"success\""}) >= 2;
      });
  EXPECT_GE(Sum(ParseSamples(writes), "broker_dispatcher_write_total",
                {"target=\"node-dispatcher\"", "result=\"success\""}),
            2)
      << writes;

  auto r = fetcher_.Fetch(
      "GET", absl::StrCat("http://127.0.0.1:", servers[1].http_port, "/broker/",
                          kToken, "/bytes/10"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  auto scraped = Scrape(servers[1].http_port);
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  const std::map<std::string, double> s = ParseSamples(scraped->body);
  EXPECT_EQ(s.at("broker_server_failovers_total{kind=\"forward\"}"), 1)
      << scraped->body;
  EXPECT_EQ(s.at("broker_socket_connection_total"), 0);
  // The server that relayed it checked its rules.
  const std::string relayed = ScrapeUntil(
      servers[0].http_port, [](const std::map<std::string, double>& now) {
        return Sum(now, "http_request_total",
                   {"rejectedByFilter=\"false\"",
                    "flowDirection=\"inbound-request\""}) == 1;
      });
  EXPECT_EQ(
      Sum(ParseSamples(relayed), "http_request_total",
          {"rejectedByFilter=\"false\"", "flowDirection=\"inbound-request\""}),
      1)
      << relayed;
}

TEST_F(MetricsTest, DisabledServesNoMetrics) {
  ASSERT_NO_FATAL_FAILURE(StartMesh(1, {{"BROKER_METRICS_ENABLED", "false"}}));
  auto r = fetcher_.Fetch("GET", BrokerUrl("/bytes/10"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  auto server = Scrape(server_.http_port);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(server->status, 404);
  auto worker = Scrape(workers_[0].http_port);
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ(worker->status, 404);
}

}  // namespace
}  // namespace broker::testing
