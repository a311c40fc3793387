// The agent's logic over gRPC (a real grpc::Server, in-process channel)
// with a scripted dispatcher: assignment, refusal and admission, moves,
// dispatcher outages, HA mode off, health.

#include "services/ha-agent/ha_agent.h"

#include "common/uuid.h"
#include "tests/ha-agent/fake_dispatcher.h"
#include "tests/ha-agent/watch_reader.h"
#include "tests/testing/scoped_log_capture.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>

namespace broker::ha {
namespace {

using ::broker::ha::testing::FakeDispatcher;
using ::broker::ha::testing::WatchReader;
using ::testing::Contains;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(10);

HaAgentConfig FastConfig() {
  HaAgentConfig config;
  config.token = "abc";
  config.ha_enabled = true;
  config.dispatcher = ResolveDispatcherBase("http://127.0.0.1:9", "", "");
  config.server_url_template = "http://server-{server_id}:7342";
  config.port = 0;
  config.refused_poll_min = absl::Milliseconds(20);
  config.refused_poll_max = absl::Milliseconds(40);
  config.backoff_initial = absl::Milliseconds(10);
  config.backoff_max = absl::Milliseconds(100);
  config.forget_after = absl::Milliseconds(200);
  config.unreachable_after = absl::Milliseconds(300);
  config.move_timeout = absl::Seconds(5);
  config.preflight_timeout = absl::Milliseconds(500);
  return config;
}

absl::Status Refused() {
  return absl::ResourceExhaustedError(
      "refused by the dispatcher - 409: TOO_MANY_CLIENTS");
}

class HaAgentTest : public ::testing::Test {
 protected:
  void StartAgent(HaAgentConfig config, FakeDispatcher::Policy policy) {
    auto fake = std::make_unique<FakeDispatcher>(std::move(policy));
    fake_ = fake.get();
    auto agent = HaAgent::Create(std::move(config), std::move(fake));
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = *std::move(agent);
    auto port = agent_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    channel_ = agent_->InProcessChannel();
  }

  grpc::Status Report(const std::string& worker_id, const std::string& client,
                      v1::ReportRequest::TunnelState state,
                      const std::string& server_id) {
    auto stub = v1::HaAgent::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
    v1::ReportRequest request;
    request.set_worker_id(worker_id);
    request.set_client_id(client);
    request.set_state(state);
    request.set_server_id(server_id);
    v1::ReportResponse response;
    return stub->Report(&context, request, &response);
  }

  void TearDown() override {
    if (agent_ != nullptr) agent_->Shutdown(absl::Now() + absl::Seconds(5));
  }

  broker::testing::ScopedLogCapture logs_;
  FakeDispatcher* fake_ = nullptr;  // owned by agent_
  std::unique_ptr<HaAgent> agent_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(HaAgentTest, AWatchGetsItsServer) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->server_id(), "0");
  EXPECT_EQ(a->tunnel_url(), "http://server-0:7342");
  EXPECT_TRUE(common::IsUuid(a->client_id())) << a->client_id();
  EXPECT_EQ(a->generation(), 1);
  std::set<std::string> names;
  for (const auto& check : a->checks()) names.insert(check.name());
  EXPECT_EQ(names, (std::set<std::string>{"accept-rules", "broker-client-url",
                                          "broker-server-healthcheck",
                                          "dispatcher-reachable"}));
  EXPECT_THAT(logs_.Messages(),
              Contains("checking for HA mode (enabled=true)"));
  EXPECT_THAT(logs_.Messages(), Contains("received server id (serverId=0)"));
  for (const std::string& line : logs_.Lines()) {
    EXPECT_THAT(line, ::testing::Not(HasSubstr("\"abc\""))) << line;
  }
}

TEST_F(HaAgentTest, TheDispatchersTunnelUrlWins) {
  StartAgent(FastConfig(), FakeDispatcher::Always("7", "https://pod-7:1234"));
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->tunnel_url(), "https://pod-7:1234");
}

TEST_F(HaAgentTest, EachWorkerHasItsOwnClientId) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  WatchReader one(channel_, "worker-1");
  WatchReader two(channel_, "worker-2");
  auto a = one.WaitForState(v1::Assignment::ASSIGNED, kWait);
  auto b = two.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_NE(a->client_id(), b->client_id());
  // The same worker watching again keeps its client id.
  WatchReader again(channel_, "worker-1");
  auto c = again.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->client_id(), a->client_id());
  // ... and the older stream of that worker is ended.
  auto ended = one.WaitDone(kWait);
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->error_code(), grpc::StatusCode::ABORTED);
}

TEST_F(HaAgentTest, ARefusedWorkerWaitsThenIsAdmitted) {
  StartAgent(FastConfig(),
             [](const std::string&) -> absl::StatusOr<Allocation> {
               return Refused();
             });
  WatchReader watch(channel_, "worker-5");
  auto waiting = watch.WaitForState(v1::Assignment::WAITING, kWait);
  ASSERT_TRUE(waiting.has_value());
  EXPECT_EQ(waiting->server_id(), "");
  EXPECT_EQ(waiting->tunnel_url(), "");
  EXPECT_THAT(waiting->detail(), HasSubstr("TOO_MANY_CLIENTS"));
  // It keeps polling, fast.
  const std::string client = waiting->client_id();
  EXPECT_TRUE(fake_->WaitForCalls(client, 5, kWait));
  const absl::Time freed = absl::Now();
  fake_->SetPolicy(FakeDispatcher::Always("2"));
  absl::Time at;
  auto admitted = watch.WaitFor(
      [](const v1::Assignment& a) {
        return a.state() == v1::Assignment::ASSIGNED;
      },
      kWait, 0, &at);
  ASSERT_TRUE(admitted.has_value());
  EXPECT_EQ(admitted->server_id(), "2");
  EXPECT_EQ(admitted->client_id(), client);
  EXPECT_GT(admitted->generation(), waiting->generation());
  EXPECT_LT(at - freed, absl::Milliseconds(500));
}

TEST_F(HaAgentTest, AnOutageKeepsAssignmentsAndParksNewcomers) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  WatchReader first(channel_, "worker-1");
  ASSERT_TRUE(first.WaitForState(v1::Assignment::ASSIGNED, kWait).has_value());
  const size_t before = first.count();
  fake_->SetPolicy([](const std::string&) -> absl::StatusOr<Allocation> {
    return absl::UnavailableError("dispatcher call failed: refused");
  });
  WatchReader second(channel_, "worker-2");
  auto waiting = second.WaitForState(v1::Assignment::WAITING, kWait);
  ASSERT_TRUE(waiting.has_value());
  EXPECT_THAT(waiting->detail(), HasSubstr("dispatcher unreachable"));
  // A report of trouble during the outage does not take the first worker's
  // server away either.
  const std::string client = first.received().back().client_id();
  EXPECT_TRUE(
      Report("worker-1", client, v1::ReportRequest::DRAINING, "0").ok());
  fake_->SetPolicy(FakeDispatcher::Always("1"));
  auto back = second.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->server_id(), "1");
  for (size_t i = 0; i < before; ++i) {
    EXPECT_EQ(first.received()[i].state(), v1::Assignment::ASSIGNED);
  }
  for (const auto& a : first.received()) {
    EXPECT_NE(a.state(), v1::Assignment::WAITING);
  }
}

TEST_F(HaAgentTest, DrainingMovesTheWorkerOnceTheServerLeft) {
  std::atomic<bool> zero_gone{false};
  StartAgent(FastConfig(),
             [&zero_gone](const std::string&) -> absl::StatusOr<Allocation> {
               return Allocation{zero_gone ? "1" : "0", ""};
             });
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  ASSERT_EQ(a->server_id(), "0");
  // The dispatcher still answers "0" at first: the agent asks again.
  ASSERT_TRUE(
      Report("worker-1", a->client_id(), v1::ReportRequest::DRAINING, "0")
          .ok());
  EXPECT_TRUE(fake_->WaitForCalls(a->client_id(), 3, kWait));
  // Meanwhile the worker stays where it is (a preflight result may have
  // come in the meantime, with the same server).
  for (const v1::Assignment& m : watch.received()) {
    EXPECT_EQ(m.server_id(), "0");
  }
  zero_gone = true;
  auto moved = watch.WaitFor(
      [](const v1::Assignment& m) { return m.server_id() == "1"; }, kWait);
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->state(), v1::Assignment::ASSIGNED);
  EXPECT_EQ(moved->client_id(), a->client_id());
  EXPECT_EQ(moved->tunnel_url(), "http://server-1:7342");
  EXPECT_THAT(logs_.Messages(), Contains("received server id (serverId=1)"));
}

TEST_F(HaAgentTest, AWorkerWithoutATunnelForTooLongIsMoved) {
  std::atomic<int> next{0};
  StartAgent(FastConfig(),
             [&next](const std::string&) -> absl::StatusOr<Allocation> {
               return Allocation{std::to_string(next.load()), ""};
             });
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  next = 1;
  ASSERT_TRUE(
      Report("worker-1", a->client_id(), v1::ReportRequest::CONNECTING, "0")
          .ok());
  // unreachable_after is 300 ms.
  auto moved = watch.WaitFor(
      [](const v1::Assignment& m) { return m.server_id() == "1"; }, kWait);
  ASSERT_TRUE(moved.has_value());
}

TEST_F(HaAgentTest, ConnectedReportsKeepTheWorkerWhereItIs) {
  std::atomic<int> next{0};
  StartAgent(FastConfig(),
             [&next](const std::string&) -> absl::StatusOr<Allocation> {
               return Allocation{std::to_string(next.load()), ""};
             });
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  next = 1;
  ASSERT_TRUE(
      Report("worker-1", a->client_id(), v1::ReportRequest::CONNECTING, "0")
          .ok());
  ASSERT_TRUE(
      Report("worker-1", a->client_id(), v1::ReportRequest::CONNECTED, "0")
          .ok());
  // A stale report about another server is ignored.
  ASSERT_TRUE(
      Report("worker-1", a->client_id(), v1::ReportRequest::DRAINING, "9")
          .ok());
  EXPECT_FALSE(
      watch
          .WaitFor([](const v1::Assignment& m) { return m.server_id() == "1"; },
                   absl::Milliseconds(800))
          .has_value());
}

TEST_F(HaAgentTest, ReportErrors) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  EXPECT_EQ(Report("", "", v1::ReportRequest::CONNECTED, "0").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      Report("nobody", "", v1::ReportRequest::CONNECTED, "0").error_code(),
      grpc::StatusCode::NOT_FOUND);
  WatchReader watch(channel_, "worker-1");
  ASSERT_TRUE(watch.WaitForState(v1::Assignment::ASSIGNED, kWait).has_value());
  EXPECT_EQ(
      Report("worker-1", "someone-else", v1::ReportRequest::CONNECTED, "0")
          .error_code(),
      grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(HaAgentTest, AWatchWithoutWorkerIdIsRejected) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  WatchReader watch(channel_, "");
  auto status = watch.WaitDone(kWait);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(HaAgentTest, AWorkerBackFromAnEarlierAgentKeepsItsIds) {
  StartAgent(FastConfig(),
             [](const std::string&) -> absl::StatusOr<Allocation> {
               return absl::UnavailableError("down");
             });
  v1::WatchRequest request = WatchReader::Request("worker-1");
  request.set_client_id("11111111-2222-4333-8444-555555555555");
  request.set_server_id("3");
  request.set_tunnel_url("http://server-3:7342");
  WatchReader watch(channel_, request);
  auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->client_id(), "11111111-2222-4333-8444-555555555555");
  EXPECT_EQ(a->server_id(), "3");
  EXPECT_EQ(a->tunnel_url(), "http://server-3:7342");
  // The dispatcher comes back and confirms.
  fake_->SetPolicy(FakeDispatcher::Always("3"));
  auto confirmed = watch.WaitFor(
      [](const v1::Assignment& m) {
        return m.detail() == "allocated by the dispatcher";
      },
      kWait);
  ASSERT_TRUE(confirmed.has_value());
  EXPECT_EQ(confirmed->server_id(), "3");
}

// Notifies when a log line containing `needle` is written.
class LogWaiter final : public common::LogSink {
 public:
  explicit LogWaiter(std::string needle) : needle_(std::move(needle)) {
    common::AddLogSink(*this);
  }
  ~LogWaiter() override { common::RemoveLogSink(*this); }
  void Write(absl::string_view line) override {
    if (absl::StrContains(line, needle_) && !seen.HasBeenNotified()) {
      seen.Notify();
    }
  }

  absl::Notification seen;

 private:
  const std::string needle_;
};

TEST_F(HaAgentTest, AForgottenWorkerGetsANewClientId) {
  LogWaiter forgotten("forgot a tunnel worker");
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  std::string first_client;
  {
    WatchReader watch(channel_, "worker-1");
    auto a = watch.WaitForState(v1::Assignment::ASSIGNED, kWait);
    ASSERT_TRUE(a.has_value());
    first_client = a->client_id();
  }
  // forget_after is 200 ms.
  ASSERT_TRUE(forgotten.seen.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(
      Report("worker-1", "", v1::ReportRequest::CONNECTED, "0").error_code(),
      grpc::StatusCode::NOT_FOUND);
  WatchReader again(channel_, "worker-1");
  auto b = again.WaitForState(v1::Assignment::ASSIGNED, kWait);
  ASSERT_TRUE(b.has_value());
  EXPECT_NE(b->client_id(), first_client);
}

TEST_F(HaAgentTest, HaOffSendsWorkersToTheServerUrl) {
  HaAgentConfig config = FastConfig();
  config.ha_enabled = false;
  config.server_url = "http://127.0.0.1:7342";
  StartAgent(std::move(config), FakeDispatcher::Always("0"));
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitForState(v1::Assignment::HA_DISABLED, kWait);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->server_id(), "");
  EXPECT_EQ(a->tunnel_url(), "http://127.0.0.1:7342");
  EXPECT_FALSE(a->client_id().empty());
  EXPECT_EQ(fake_->calls(a->client_id()), 0);
  EXPECT_THAT(logs_.Messages(),
              Contains("checking for HA mode (enabled=false)"));
}

TEST_F(HaAgentTest, ShutdownEndsWatchesWithUnavailable) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  WatchReader watch(channel_, "worker-1");
  ASSERT_TRUE(watch.WaitForState(v1::Assignment::ASSIGNED, kWait).has_value());
  agent_->Shutdown(absl::Now() + absl::Seconds(5));
  auto status = watch.WaitDone(kWait);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->error_code(), grpc::StatusCode::UNAVAILABLE);
}

// grpc.health.v1.Health/Check without the health proto: the request is an
// empty HealthCheckRequest (service ""), the answer field 1 the status
// (SERVING = 1).
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                 const std::string& service) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0A);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1);
  grpc::ByteBuffer out;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &in, &out, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  std::vector<grpc::Slice> slices;
  (void)out.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return 0;  // UNKNOWN (field omitted)
}

TEST_F(HaAgentTest, HealthIsServing) {
  StartAgent(FastConfig(), FakeDispatcher::Always("0"));
  EXPECT_EQ(HealthStatus(channel_, ""), 1);
  EXPECT_EQ(HealthStatus(channel_, "broker.ha.v1.HaAgent"), 1);
}

}  // namespace
}  // namespace broker::ha
