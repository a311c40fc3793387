// The real broker-ha-agent against the real broker-dispatcher, each a
// process on loopback: assignment and the Snyk log lines, the fifth client
// waiting and its admission time, a dispatcher outage, a move off a
// draining server, and the worker's AssignmentWatcher across an agent
// restart.

#include "common/token.h"
#include "services/tunnel/ha_assignment.h"
#include "tests/ha-agent/watch_reader.h"
#include "tests/integration/http_fetch.h"
#include "tests/testing/child_process.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <csignal>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace broker::ha {
namespace {

using ::broker::ha::testing::WatchReader;
using ::broker::testing::ChildProcess;
using ::broker::testing::Fetcher;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::Duration kStart = absl::Seconds(20);
constexpr absl::Duration kWait = absl::Seconds(15);
constexpr char kToken[] = "5c5c5c5c-1b2e-4c3d-9e8f-0a1b2c3d4e5f";

absl::StatusOr<int> JsonInt(const std::string& line, const std::string& key) {
  auto parsed = nlohmann::json::parse(line, nullptr, false);
  if (parsed.is_discarded() || !parsed.contains(key) ||
      !parsed[key].is_number_integer()) {
    return absl::InternalError(absl::StrCat("no \"", key, "\" in: ", line));
  }
  return parsed[key].get<int>();
}

// The whole stdout line containing `needle` ("" when none): for lines
// written before the "listening" line that StartProcess() consumed.
std::string LineWith(const std::string& output, const std::string& needle) {
  size_t at = output.find(needle);
  if (at == std::string::npos) return "";
  const size_t begin = output.rfind('\n', at);
  const size_t end = output.find('\n', at);
  return output.substr(
      begin == std::string::npos ? 0 : begin + 1,
      end == std::string::npos ? std::string::npos : end - (begin + 1));
}

struct Proc {
  std::unique_ptr<ChildProcess> process;
  int port = 0;
};

absl::StatusOr<Proc> StartProcess(const std::string& binary,
                                  const std::map<std::string, std::string>& env,
                                  const std::string& listening) {
  auto process = ChildProcess::Start(binary, {}, env);
  if (!process.ok()) return process.status();
  auto line = (*process)->WaitForLine(listening, kStart);
  if (!line.ok()) return line.status();
  auto port = JsonInt(*line, "port");
  if (!port.ok()) return port.status();
  return Proc{*std::move(process), *port};
}

absl::StatusOr<Proc> StartDispatcher(int port = 0) {
  return StartProcess(BROKER_DISPATCHER_BIN,
                      {{"PORT", std::to_string(port)},
                       {"LOG_LEVEL", "info"},
                       // No broker server heartbeats here: nothing expires
                       // during a test.
                       {"BROKER_DISPATCHER_SERVER_TTL_MS", "600000"},
                       {"BROKER_DISPATCHER_LEASE_TTL_MS", "600000"}},
                      "broker-dispatcher listening");
}

absl::StatusOr<Proc> StartAgent(int dispatcher_port, int port = 0,
                                std::map<std::string, std::string> env = {}) {
  env.emplace("BROKER_TOKEN", kToken);
  env.emplace("BROKER_HA_MODE_ENABLED", "true");
  env.emplace("BROKER_DISPATCHER_BASE_URL",
              absl::StrCat("http://127.0.0.1:", dispatcher_port));
  env.emplace("BROKER_HA_AGENT_PORT", std::to_string(port));
  env.emplace("BROKER_HA_AGENT_BACKOFF_MAX_MS", "500");
  env.emplace("LOG_LEVEL", "info");
  return StartProcess(BROKER_HA_AGENT_BIN, env, "broker-ha-agent listening");
}

std::string TunnelUrlOf(const std::string& server_id) {
  return absl::StrCat("http://127.0.0.1:", 17000 + std::stoi(server_id));
}

class HaAgentIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dispatcher = StartDispatcher();
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    dispatcher_ = *std::move(dispatcher);
    RegisterServers();
  }

  void RegisterServers() {
    for (const std::string id : {"0", "1"}) {
      nlohmann::json body = {
          {"data",
           {{"attributes",
             {{"tunnel_url", TunnelUrlOf(id)},
              {"internal_url", absl::StrCat("http://127.0.0.1:1800", id)},
              {"health_check_link",
               absl::StrCat("http://broker-server-", id, "/healthcheck")}}}}}};
      auto r = fetcher_.Fetch(
          "POST",
          DispatcherUrl(absl::StrCat("/internal/brokerservers/", id,
                                     "?version=2022-12-02~experimental")),
          {{"content-type", "application/vnd.api+json"}}, body.dump());
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->status == 200 || r->status == 201) << r->body;
    }
  }

  void StartTheAgent() {
    auto agent = StartAgent(dispatcher_.port);
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = *std::move(agent);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", agent_.port),
                                   grpc::InsecureChannelCredentials());
  }

  std::string DispatcherUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", dispatcher_.port, path);
  }

  // The server's client-disconnected event: frees the client's slot.
  void Disconnect(const v1::Assignment& a) {
    auto r = fetcher_.Fetch(
        "DELETE",
        DispatcherUrl(absl::StrCat("/internal/brokerservers/", a.server_id(),
                                   "/connections/", common::HashToken(kToken),
                                   "?broker_client_id=", a.client_id())));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 204) << r->body;
  }

  grpc::Status Report(const std::string& worker_id, const v1::Assignment& a,
                      v1::ReportRequest::TunnelState state) {
    auto stub = v1::HaAgent::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
    v1::ReportRequest request;
    request.set_worker_id(worker_id);
    request.set_client_id(a.client_id());
    request.set_server_id(a.server_id());
    request.set_state(state);
    v1::ReportResponse response;
    return stub->Report(&context, request, &response);
  }

  void TearDown() override {
    if (HasFailure()) {
      for (auto* p : {&dispatcher_, &agent_}) {
        if (p->process != nullptr) {
          std::cerr << "--- pid " << p->process->pid() << " stdout\n"
                    << p->process->Output();
        }
      }
    }
  }

  Fetcher fetcher_;
  Proc dispatcher_;
  Proc agent_;
  std::shared_ptr<grpc::Channel> channel_;
};

bool IsAssigned(const v1::Assignment& a) {
  return a.state() == v1::Assignment::ASSIGNED;
}

TEST_F(HaAgentIntegrationTest, AssignsARegisteredServerAndLogsLikeSnyk) {
  StartTheAgent();
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitFor(IsAssigned, kWait);
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(a->server_id() == "0" || a->server_id() == "1") << a->server_id();
  EXPECT_EQ(a->tunnel_url(), TunnelUrlOf(a->server_id()));
  EXPECT_EQ(a->client_id().size(), 36U);
  auto received = agent_.process->WaitForLine(
      absl::StrCat("received server id (serverId=", a->server_id(), ")"),
      kWait);
  ASSERT_TRUE(received.ok()) << received.status();
  // Logged at start, before the "listening" line.
  const std::string checking =
      LineWith(agent_.process->Output(), "checking for HA mode (enabled=true)");
  ASSERT_FALSE(checking.empty());
  for (const std::string& line : {*received, checking}) {
    EXPECT_THAT(line, HasSubstr("\"level\":\"info\"")) << line;
  }
  EXPECT_THAT(agent_.process->Output(), Not(HasSubstr(kToken)));
  // The dispatcher's preflight check passed.
  bool dispatcher_checked = false;
  auto checked = watch.WaitFor(
      [&](const v1::Assignment& m) {
        for (const auto& c : m.checks()) {
          if (c.name() == "dispatcher-reachable" &&
              c.result() == v1::PreflightCheck::PASSED) {
            dispatcher_checked = true;
          }
        }
        return dispatcher_checked;
      },
      kWait);
  EXPECT_TRUE(checked.has_value());
}

TEST_F(HaAgentIntegrationTest, TheFifthWorkerWaitsAndIsAdmittedWithinASecond) {
  StartTheAgent();
  std::vector<std::unique_ptr<WatchReader>> workers;
  for (int i = 1; i <= 5; ++i) {
    workers.push_back(
        std::make_unique<WatchReader>(channel_, absl::StrCat("worker-", i)));
  }
  std::vector<v1::Assignment> first;
  int waiting = -1;
  for (size_t i = 0; i < workers.size(); ++i) {
    auto a =
        workers[i]->WaitFor([](const v1::Assignment&) { return true; }, kWait);
    ASSERT_TRUE(a.has_value()) << "worker " << i;
    first.push_back(*a);
    if (a->state() == v1::Assignment::WAITING) {
      ASSERT_EQ(waiting, -1) << "two workers waiting";
      waiting = static_cast<int>(i);
    } else {
      ASSERT_EQ(a->state(), v1::Assignment::ASSIGNED);
    }
  }
  ASSERT_NE(waiting, -1) << "no worker waiting: 5 were assigned";
  EXPECT_THAT(first[waiting].detail(), HasSubstr("TOO_MANY_CLIENTS"));
  EXPECT_EQ(first[waiting].server_id(), "");

  // One assigned worker's server reports it gone: its slot frees.
  const v1::Assignment& leaving = first[waiting == 0 ? 1 : 0];
  const absl::Time freed = absl::Now();
  Disconnect(leaving);
  const absl::Time answered = absl::Now();
  absl::Time at;
  auto admitted = workers[waiting]->WaitFor(IsAssigned, kWait, /*from=*/0, &at);
  ASSERT_TRUE(admitted.has_value());
  const absl::Duration after = at - freed;
  std::cout << "[ figure ] fifth worker admitted "
            << absl::ToDoubleMilliseconds(after)
            << " ms after the slot was freed (the DELETE took "
            << absl::ToDoubleMilliseconds(answered - freed) << " ms)"
            << std::endl;
  EXPECT_LT(after, absl::Seconds(1));
  EXPECT_EQ(admitted->client_id(), first[waiting].client_id());
  EXPECT_EQ(admitted->tunnel_url(), TunnelUrlOf(admitted->server_id()));
}

TEST_F(HaAgentIntegrationTest, ADispatcherOutageKeepsAssignments) {
  StartTheAgent();
  WatchReader kept(channel_, "worker-1");
  auto a = kept.WaitFor(IsAssigned, kWait);
  ASSERT_TRUE(a.has_value());

  const int port = dispatcher_.port;
  dispatcher_.process->Signal(SIGKILL);
  ASSERT_TRUE(dispatcher_.process->Wait(kWait).ok());
  dispatcher_.process.reset();

  WatchReader newcomer(channel_, "worker-2");
  auto waiting = newcomer.WaitFor(
      [](const v1::Assignment& m) {
        return m.state() == v1::Assignment::WAITING;
      },
      kWait);
  ASSERT_TRUE(waiting.has_value());
  EXPECT_THAT(waiting->detail(), HasSubstr("dispatcher unreachable"));
  // The assigned worker was not disturbed.
  for (const v1::Assignment& m : kept.received()) {
    EXPECT_TRUE(IsAssigned(m));
    EXPECT_EQ(m.server_id(), a->server_id());
  }
  // A worker reporting trouble keeps its server during the outage too.
  EXPECT_TRUE(Report("worker-1", *a, v1::ReportRequest::DRAINING).ok());

  auto restarted = StartDispatcher(port);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  dispatcher_ = *std::move(restarted);
  RegisterServers();
  auto admitted = newcomer.WaitFor(IsAssigned, kWait);
  ASSERT_TRUE(admitted.has_value());
  EXPECT_EQ(admitted->client_id(), waiting->client_id());
  EXPECT_EQ(admitted->tunnel_url(), TunnelUrlOf(admitted->server_id()));
  for (const v1::Assignment& m : kept.received()) {
    EXPECT_TRUE(IsAssigned(m));
  }
}

TEST_F(HaAgentIntegrationTest, ADrainingWorkerMovesToTheOtherServer) {
  StartTheAgent();
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitFor(IsAssigned, kWait);
  ASSERT_TRUE(a.has_value());
  const std::string other = a->server_id() == "0" ? "1" : "0";
  // The server drains: it deregisters, then tells its workers to move.
  auto r = fetcher_.Fetch(
      "DELETE",
      DispatcherUrl(absl::StrCat("/internal/brokerservers/", a->server_id())));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 204) << r->body;
  ASSERT_TRUE(Report("worker-1", *a, v1::ReportRequest::DRAINING).ok());
  auto moved = watch.WaitFor(
      [&](const v1::Assignment& m) { return m.server_id() == other; }, kWait);
  ASSERT_TRUE(moved.has_value());
  EXPECT_TRUE(IsAssigned(*moved));
  EXPECT_EQ(moved->client_id(), a->client_id());
  EXPECT_EQ(moved->tunnel_url(), TunnelUrlOf(other));
  EXPECT_EQ(moved->generation(), a->generation() + 1);
  ASSERT_TRUE(
      agent_.process
          ->WaitForLine(
              absl::StrCat("received server id (serverId=", other, ")"), kWait)
          .ok());
}

// The worker's watcher's view: every assignment its callback got.
class Callbacks {
 public:
  void Add(const v1::Assignment& a) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    all_.push_back(a);
  }
  size_t count() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return all_.size();
  }
  // The first at index >= from that is ASSIGNED.
  std::optional<v1::Assignment> WaitAssigned(size_t from)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    std::optional<v1::Assignment> found;
    auto match = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (size_t i = from; i < all_.size(); ++i) {
        if (IsAssigned(all_[i])) {
          found = all_[i];
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
  std::vector<v1::Assignment> all_ ABSL_GUARDED_BY(mu_);
};

TEST_F(HaAgentIntegrationTest, TheWorkersWatcherSurvivesAnAgentRestart) {
  StartTheAgent();
  Callbacks callbacks;
  tunnel::AssignmentWatcherOptions options;
  options.agent_address = absl::StrCat("127.0.0.1:", agent_.port);
  auto watcher = tunnel::AssignmentWatcher::Create(
      options, [&](const v1::Assignment& a) { callbacks.Add(a); });
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  auto first = callbacks.WaitAssigned(0);
  ASSERT_TRUE(first.has_value());
  (*watcher)->Report(v1::ReportRequest::CONNECTED, first->server_id(), "");

  const int port = agent_.port;
  agent_.process->Signal(SIGTERM);
  auto code = agent_.process->Wait(kWait);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0);
  const size_t before = callbacks.count();

  auto restarted = StartAgent(dispatcher_.port, port);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  agent_ = *std::move(restarted);
  auto again = callbacks.WaitAssigned(before);
  ASSERT_TRUE(again.has_value());
  // The new agent adopted the worker: same client id, same server, so the
  // token's slots are not used twice.
  EXPECT_EQ(again->client_id(), first->client_id());
  EXPECT_EQ(again->server_id(), first->server_id());
  EXPECT_TRUE(tunnel::SameTunnel(*again, *first));
  auto adopted = agent_.process->WaitForLine("\"adopted\":true", kWait);
  EXPECT_TRUE(adopted.ok()) << adopted.status();
  (*watcher)->Shutdown();
}

TEST_F(HaAgentIntegrationTest, HaOffAnswersTheServerUrl) {
  auto agent = StartAgent(dispatcher_.port, 0,
                          {{"BROKER_HA_MODE_ENABLED", "false"},
                           {"BROKER_SERVER_URL", "http://127.0.0.1:7342"}});
  ASSERT_TRUE(agent.ok()) << agent.status();
  agent_ = *std::move(agent);
  channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", agent_.port),
                                 grpc::InsecureChannelCredentials());
  WatchReader watch(channel_, "worker-1");
  auto a = watch.WaitFor([](const v1::Assignment&) { return true; }, kWait);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->state(), v1::Assignment::HA_DISABLED);
  EXPECT_EQ(a->tunnel_url(), "http://127.0.0.1:7342");
  EXPECT_EQ(a->server_id(), "");
  EXPECT_THAT(LineWith(agent_.process->Output(),
                       "checking for HA mode (enabled=false)"),
              HasSubstr("\"level\":\"info\""));
}

TEST(HaAgentBinary, ABadValueStopsStartUpNamingTheVariable) {
  auto agent = ChildProcess::Start(
      BROKER_HA_AGENT_BIN, {},
      {{"BROKER_TOKEN", kToken}, {"BROKER_HA_AGENT_PORT", "99999"}});
  ASSERT_TRUE(agent.ok()) << agent.status();
  auto code = (*agent)->Wait(kWait);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 2);
  auto missing = ChildProcess::Start(BROKER_HA_AGENT_BIN, {}, {});
  ASSERT_TRUE(missing.ok()) << missing.status();
  code = (*missing)->Wait(kWait);
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 2);
}

TEST(HaAgentBinary, HelpListsEveryVariable) {
  auto help = ChildProcess::Start(BROKER_HA_AGENT_BIN, {"--help"}, {});
  ASSERT_TRUE(help.ok()) << help.status();
  ASSERT_TRUE((*help)->WaitForLine("LOG_LEVEL", kWait).ok());
  const std::string text = (*help)->Output();
  for (const char* name :
       {"BROKER_TOKEN", "BROKER_HA_MODE_ENABLED", "BROKER_DISPATCHER_BASE_URL",
        "API_BASE_URL", "BROKER_SERVER_URL", "BROKER_SERVER_URL_TEMPLATE",
        "BROKER_HA_AGENT_PORT", "BROKER_HA_AGENT_ADDRESS", "BROKER_CLIENT_URL",
        "ACCEPT", "BROKER_CLIENT_LOCATION", "DISPATCHER_URL_PREFIX", "CA_CERT",
        "LOG_LEVEL"}) {
    EXPECT_THAT(text, HasSubstr(name));
  }
}

}  // namespace
}  // namespace broker::ha
