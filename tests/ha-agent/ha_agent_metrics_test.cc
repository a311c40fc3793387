// The real broker-ha-agent's optional HTTP listener
// (BROKER_HA_AGENT_HTTP_PORT): /healthcheck, and /metrics after a worker's
// Watch, with the gRPC server's RPC metrics; and the worker's AssignmentWatcher
// counting its own calls.

#include "common/grpc/rpc_metrics.h"
#include "common/metrics.h"
#include "services/tunnel/ha_assignment.h"
#include "tests/integration/http_fetch.h"
#include "tests/testing/child_process.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <map>
#include <memory>
#include <string>
#include <thread>

namespace broker::ha {
namespace {

using ::broker::testing::ChildProcess;
using ::broker::testing::Fetcher;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);
constexpr char kToken[] = "6d6d6d6d-1b2e-4c3d-9e8f-0a1b2c3d4e5f";

struct Agent {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
  int http_port = 0;
};

// An agent with HA mode off (no dispatcher needed); `extra` adds variables.
absl::StatusOr<Agent> StartAgent(std::map<std::string, std::string> extra) {
  extra.emplace("BROKER_TOKEN", kToken);
  extra.emplace("BROKER_HA_MODE_ENABLED", "false");
  extra.emplace("BROKER_SERVER_URL", "http://127.0.0.1:1");
  extra.emplace("BROKER_HA_AGENT_PORT", "0");
  extra.emplace("LOG_LEVEL", "info");
  auto process = ChildProcess::Start(BROKER_HA_AGENT_BIN, {}, extra);
  if (!process.ok()) return process.status();
  auto line = (*process)->WaitForLine("broker-ha-agent listening", kWait);
  if (!line.ok()) return line.status();
  auto parsed = nlohmann::json::parse(*line, nullptr, false);
  if (parsed.is_discarded() || !parsed.contains("port") ||
      !parsed.contains("http_port")) {
    return absl::InternalError(absl::StrCat("bad listening line: ", *line));
  }
  return Agent{*std::move(process), parsed["port"].get<int>(),
               parsed["http_port"].get<int>()};
}

TEST(HaAgentMetricsTest, ServesHealthAndMetricsOnItsHttpPort) {
  auto agent = StartAgent({{"BROKER_HA_AGENT_HTTP_PORT", "0"}});
  ASSERT_TRUE(agent.ok()) << agent.status();
  ASSERT_GT(agent->http_port, 0);
  Fetcher fetcher;
  const std::string base = absl::StrCat("http://127.0.0.1:", agent->http_port);
  auto health = fetcher.Fetch("GET", base + "/healthcheck");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 200);
  EXPECT_THAT(health->body, HasSubstr("\"ok\":true"));

  // A worker's watcher, counting its calls on the client side.
  common::metrics::Registry worker_metrics;
  common::rpc::RpcMetrics client_rpcs(worker_metrics,
                                      common::rpc::RpcMetrics::Side::kClient);
  tunnel::AssignmentWatcherOptions options;
  options.agent_address = absl::StrCat("127.0.0.1:", agent->port);
  options.rpc_metrics = &client_rpcs;
  absl::Notification assigned;
  auto watcher = tunnel::AssignmentWatcher::Create(
      options, [&assigned](const v1::Assignment& a) {
        if (a.state() == v1::Assignment::HA_DISABLED &&
            !assigned.HasBeenNotified()) {
          assigned.Notify();
        }
      });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_TRUE(assigned.WaitForNotificationWithTimeout(kWait));
  EXPECT_THAT(worker_metrics.Render(),
              HasSubstr("grpc_client_started_total{grpc_service=\"broker.ha."
                        "v1.HaAgent\",grpc_method=\"Watch\",grpc_type=\"server_"
                        "stream\"} 1\n"));

  auto metrics = fetcher.Fetch("GET", base + "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body,
              HasSubstr("broker_ha_agent_assignments_total{state=\"ha_"
                        "disabled\"} 1\n"));
  EXPECT_THAT(metrics->body, HasSubstr("broker_ha_agent_workers 1\n"));
  EXPECT_THAT(metrics->body,
              HasSubstr("grpc_server_started_total{grpc_service=\"broker.ha."
                        "v1.HaAgent\",grpc_method=\"Watch\",grpc_type=\"server_"
                        "stream\"} 1\n"));
  EXPECT_THAT(metrics->body, ::testing::Not(HasSubstr(kToken)));
  (*watcher)->Shutdown();
}

TEST(HaAgentMetricsTest, NoHttpListenerByDefault) {
  auto agent = StartAgent({});
  ASSERT_TRUE(agent.ok()) << agent.status();
  EXPECT_EQ(agent->http_port, 0);
}

}  // namespace
}  // namespace broker::ha
