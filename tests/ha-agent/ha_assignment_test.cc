// The worker's client of the ha-agent: the pure helpers, and the watcher
// against a real agent (on 127.0.0.1:0) with a scripted dispatcher.

#include "services/tunnel/ha_assignment.h"

#include "services/ha-agent/ha_agent.h"
#include "tests/ha-agent/fake_dispatcher.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace broker::tunnel {
namespace {

using ::broker::ha::testing::FakeDispatcher;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(10);

ha::v1::Assignment Assigned(const std::string& server_id,
                            const std::string& url) {
  ha::v1::Assignment a;
  a.set_state(ha::v1::Assignment::ASSIGNED);
  a.set_client_id("c-1");
  a.set_server_id(server_id);
  a.set_tunnel_url(url);
  return a;
}

TEST(EndpointFor, SplitsTheTunnelUrl) {
  auto e =
      EndpointFor(Assigned("0", "https://broker-server-0.broker-server:7342"));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->grpc_target, "broker-server-0.broker-server:7342");
  EXPECT_TRUE(e->tls);
  EXPECT_EQ(e->server_url, "https://broker-server-0.broker-server:7342");
  EXPECT_EQ(e->query, "");
  EXPECT_EQ(e->server_id, "0");
  EXPECT_EQ(e->client_id, "c-1");
}

TEST(EndpointFor, KeepsARoutingQueryApart) {
  auto e = EndpointFor(Assigned("3", "http://broker.example.com?server_id=3"));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->grpc_target, "broker.example.com:80");
  EXPECT_FALSE(e->tls);
  EXPECT_EQ(e->server_url, "http://broker.example.com");
  EXPECT_EQ(e->query, "server_id=3");
  EXPECT_EQ(e->url, "http://broker.example.com?server_id=3");
}

TEST(EndpointFor, HaOffIsDialledToo) {
  ha::v1::Assignment a;
  a.set_state(ha::v1::Assignment::HA_DISABLED);
  a.set_tunnel_url("http://127.0.0.1:7342");
  auto e = EndpointFor(a);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->grpc_target, "127.0.0.1:7342");
  EXPECT_EQ(e->server_id, "");
}

TEST(EndpointFor, WaitingAndBadUrlsAreErrors) {
  ha::v1::Assignment waiting;
  waiting.set_state(ha::v1::Assignment::WAITING);
  waiting.set_detail("refused");
  EXPECT_THAT(
      EndpointFor(waiting),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("WAITING")));
  EXPECT_THAT(
      EndpointFor(Assigned("0", "")),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("tunnel_url")));
  EXPECT_THAT(
      EndpointFor(Assigned("0", "grpc://x:1")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tunnel_url")));
}

TEST(SameTunnel, IgnoresGenerationChecksAndDetail) {
  ha::v1::Assignment a = Assigned("0", "http://s:1");
  ha::v1::Assignment b = a;
  b.set_generation(7);
  b.set_detail("other");
  b.add_checks()->set_name("x");
  EXPECT_TRUE(SameTunnel(a, b));
  b.set_server_id("1");
  EXPECT_FALSE(SameTunnel(a, b));
  ha::v1::Assignment c = a;
  c.set_client_id("c-2");
  EXPECT_FALSE(SameTunnel(a, c));
}

TEST(AssignmentWatcher, NeedsAnAddressAndACallback) {
  EXPECT_THAT(AssignmentWatcher::Create({}, [](const ha::v1::Assignment&) {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("BROKER_HA_AGENT_ADDR")));
  AssignmentWatcherOptions options;
  options.agent_address = "127.0.0.1:1";
  EXPECT_THAT(
      AssignmentWatcher::Create(options, nullptr),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("callback")));
}

// What the callback saw.
class Seen {
 public:
  void Add(const ha::v1::Assignment& a) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    all_.push_back(a);
  }
  std::optional<ha::v1::Assignment> WaitFor(
      const std::function<bool(const ha::v1::Assignment&)>& want)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::optional<ha::v1::Assignment> found;
    auto match = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& a : all_) {
        if (want(a)) {
          found = a;
          return true;
        }
      }
      return false;
    };
    mu_.AwaitWithTimeout(absl::Condition(&match), kWait);
    return found;
  }

 private:
  absl::Mutex mu_;
  std::vector<ha::v1::Assignment> all_ ABSL_GUARDED_BY(mu_);
};

TEST(AssignmentWatcher, FollowsTheAgentAndReports) {
  std::atomic<bool> moved{false};
  ha::HaAgentConfig config;
  config.token = "abc";
  config.ha_enabled = true;
  config.dispatcher = ha::ResolveDispatcherBase("http://127.0.0.1:9", "", "");
  config.server_url_template = "http://server-{server_id}:7342";
  config.port = 0;
  config.backoff_initial = absl::Milliseconds(10);
  config.backoff_max = absl::Milliseconds(100);
  auto agent = ha::HaAgent::Create(
      config,
      std::make_unique<FakeDispatcher>(
          [&moved](const std::string&) -> absl::StatusOr<ha::Allocation> {
            return ha::Allocation{moved ? "1" : "0", ""};
          }));
  ASSERT_TRUE(agent.ok()) << agent.status();
  auto port = (*agent)->Start();
  ASSERT_TRUE(port.ok()) << port.status();

  Seen seen;
  AssignmentWatcherOptions options;
  options.agent_address = absl::StrCat("127.0.0.1:", *port);
  auto watcher = AssignmentWatcher::Create(
      options, [&seen](const ha::v1::Assignment& a) { seen.Add(a); });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  auto first = seen.WaitFor([](const ha::v1::Assignment& a) {
    return a.state() == ha::v1::Assignment::ASSIGNED;
  });
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->server_id(), "0");
  ASSERT_TRUE((*watcher)->Current().has_value());
  EXPECT_TRUE(SameTunnel(*(*watcher)->Current(), *first));

  (*watcher)->Report(ha::v1::ReportRequest::CONNECTING, "0", "");
  (*watcher)->Report(ha::v1::ReportRequest::CONNECTED, "0", "");
  moved = true;
  (*watcher)->Report(ha::v1::ReportRequest::DRAINING, "0", "server draining");
  auto second = seen.WaitFor(
      [](const ha::v1::Assignment& a) { return a.server_id() == "1"; });
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->client_id(), first->client_id());
  EXPECT_EQ(second->tunnel_url(), "http://server-1:7342");

  (*watcher)->Shutdown();
  (*watcher)->Report(ha::v1::ReportRequest::CONNECTED, "1", "");  // ignored
  watcher->reset();
  (*agent)->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST(AssignmentWatcher, ShutsDownWhileTheAgentIsAway) {
  // Nothing listens there: the stream waits for the agent; Shutdown ends it.
  AssignmentWatcherOptions options;
  options.agent_address = "127.0.0.1:1";
  std::atomic<int> calls{0};
  auto watcher = AssignmentWatcher::Create(
      options, [&calls](const ha::v1::Assignment&) { ++calls; });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  (*watcher)->Report(ha::v1::ReportRequest::CONNECTING, "", "");
  (*watcher)->Shutdown();
  EXPECT_EQ(calls.load(), 0);
  EXPECT_FALSE((*watcher)->Current().has_value());
}

}  // namespace
}  // namespace broker::tunnel
