#include "services/server/server_metrics.h"

#include "services/server/tunnel_registry.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <memory>
#include <string>

namespace broker::server {
namespace {

namespace http = common::http;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(CloseReasonNameTest, MapsEveryCauseToASnykReason) {
  EXPECT_EQ(CloseReasonName(CloseCause::kWorkerEnded), "end");
  EXPECT_EQ(CloseReasonName(CloseCause::kDrained), "close");
  EXPECT_EQ(CloseReasonName(CloseCause::kConnectionLost), "disconnection");
  EXPECT_EQ(CloseReasonName(CloseCause::kRefused), "destroy");
  EXPECT_EQ(CloseReasonName(CloseCause::kServerStopping), "destroy");
}

TEST(MethodLabelTest, KeepsStandardMethodsAndFoldsTheRest) {
  EXPECT_EQ(MethodLabel("GET"), "GET");
  EXPECT_EQ(MethodLabel("PATCH"), "PATCH");
  EXPECT_EQ(MethodLabel("OPTIONS"), "OPTIONS");
  EXPECT_EQ(MethodLabel("get"), "other");  // methods are case-sensitive
  EXPECT_EQ(MethodLabel("PROPFIND"), "other");
  EXPECT_EQ(MethodLabel(""), "other");
}

TEST(RefusalReasonTest, NamesTheRegistrysRefusals) {
  EXPECT_EQ(RefusalReason(absl::StatusCode::kResourceExhausted), "cap");
  EXPECT_EQ(RefusalReason(absl::StatusCode::kFailedPrecondition),
            "fingerprint");
  EXPECT_EQ(RefusalReason(absl::StatusCode::kUnauthenticated),
            "token_mismatch");
  EXPECT_EQ(RefusalReason(absl::StatusCode::kInternal), "other");
}

TEST(ServerMetricsTest, CountsRequestsBlocksAndSizesUnderSnyksNames) {
  ServerMetrics metrics;
  metrics.CountRequest(ServerMetrics::Flow::kInbound, /*rejected=*/false);
  metrics.CountRequest(ServerMetrics::Flow::kInbound, /*rejected=*/false);
  metrics.CountRequest(ServerMetrics::Flow::kInbound, /*rejected=*/true);
  metrics.CountRequest(ServerMetrics::Flow::kOutbound, /*rejected=*/true);
  metrics.ObserveResponse(2048, /*streaming=*/false);
  metrics.ObserveResponse(std::nullopt, /*streaming=*/true);
  metrics.CountClose(CloseCause::kConnectionLost);
  metrics.CountDispatcherWrite(true);
  metrics.CountDrain(3);
  const std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("http_request_total{rejectedByFilter=\"false\","
                              "flowDirection=\"inbound-request\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("http_request_total{rejectedByFilter=\"true\","
                              "flowDirection=\"inbound-request\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("http_request_total{rejectedByFilter=\"true\","
                              "flowDirection=\"outbound-request\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("broker_filter_blocks_total{list=\"public\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("broker_filter_blocks_total{list=\"private\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("broker_response_size_bytes_bucket{isStreaming="
                              "\"false\",le=\"4096\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("broker_unable_to_size_response_count 1\n"));
  EXPECT_THAT(text, HasSubstr("broker_socket_close_reason_total{reason="
                              "\"disconnection\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("broker_dispatcher_write_total{target=\"node-"
                              "dispatcher\",result=\"success\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("broker_server_drains_total{kind=\"server\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("broker_server_drains_total{kind=\"worker\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("up 1\n"));
}

TEST(ServerMetricsTest, TunnelsPerTokenUseTheHashOnly) {
  TunnelRegistry tunnels;
  ServerMetrics metrics;
  metrics.Watch(tunnels);
  TunnelRegistry::WorkerInfo info;
  info.client_id = "worker-1";
  ASSERT_TRUE(tunnels.AddWorker("hash-a", info).ok());
  info.client_id = "worker-2";
  ASSERT_TRUE(tunnels.AddWorker("hash-a", info).ok());
  const std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("broker_server_tunnels{hashed_token=\"hash-a\"} "
                              "2\n"));
  EXPECT_THAT(text, HasSubstr("broker_socket_connection_total 2\n"));
  EXPECT_THAT(text, HasSubstr("broker_server_lanes{state=\"idle\"} 0\n"));
}

// Answers through RespondSimple only; the rest is never called here.
class FakeExchange final : public http::Exchange {
 public:
  explicit FakeExchange(int* answered) : answered_(answered) {
    head_.method = "POST";
  }
  const http::RequestHead& request() const override { return head_; }
  std::string remote_address() const override { return "127.0.0.1"; }
  http::BodyReader& body() override { std::abort(); }
  http::BodyWriter& Respond(http::ResponseHead /*head*/,
                            http::BodyWriter::DoneHandler /*done*/) override {
    std::abort();
  }
  void RespondWhole(http::ResponseHead /*head*/, std::string /*body*/,
                    http::BodyWriter::DoneHandler /*done*/) override {
    std::abort();
  }
  void RespondSimple(int status, http::Headers /*headers*/,
                     std::string /*body*/) override {
    *answered_ = status;
  }
  void OnCancel(absl::AnyInvocable<void() &&> /*callback*/) override {}

 private:
  http::RequestHead head_;
  int* answered_;
};

TEST(ServerMetricsTest, TrackTimesAnExchangeUntilItGoes) {
  ServerMetrics metrics;
  int answered = 0;
  std::shared_ptr<http::Exchange> exchange =
      metrics.Track(std::make_shared<FakeExchange>(&answered));
  EXPECT_THAT(metrics.Render(),
              HasSubstr("broker_server_outstanding_requests 1\n"));
  exchange->RespondSimple(404, {}, "");
  exchange->RespondSimple(500, {}, "");  // ignored by a real exchange
  EXPECT_EQ(answered, 500);              // passed on all the same
  exchange.reset();
  const std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("broker_server_outstanding_requests 0\n"));
  EXPECT_THAT(text, HasSubstr("http_request_duration_seconds_count{method="
                              "\"POST\",status_code=\"404\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("status_code=\"500\"")));
}

TEST(ServerMetricsTest, DisabledTracksNothing) {
  ServerMetrics metrics(/*enabled=*/false);
  int answered = 0;
  auto inner = std::make_shared<FakeExchange>(&answered);
  EXPECT_EQ(metrics.Track(inner), inner);
  EXPECT_FALSE(metrics.enabled());
}

}  // namespace
}  // namespace broker::server
