// HA mode end to end with real processes on loopback: broker-dispatcher,
// two broker-servers registered with it, one broker-ha-agent and two
// broker-tunnel workers that take their server from the agent. Checks the
// documented log lines, that each server relays through the worker placed
// on it, that a server's SIGTERM moves its worker to the other server while
// GETs keep succeeding, and that the death (kill -9) of the dispatcher, of
// one of its replicas (Redis) or of a server costs no GET through what is
// left.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/service_proxy.h"
#include "tests/integration/steady_load.h"
#ifdef REDIS_SERVER_BIN
#include "tests/dispatcher/redis_server.h"
#endif

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <csignal>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace broker::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kToken[] = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
constexpr absl::Duration kWait = absl::Seconds(20);

class HaMeshTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    server_accept_ = dir_.Write("server-accept.json", R"json({"public": [
      {"method": "GET", "path": "/bytes/:n"}]})json");
    client_accept_ = dir_.Write(
        "client-accept.json",
        absl::StrCat(
            R"json({"private": [{"method": "GET", "path": "/bytes/:n", "origin": "http://127.0.0.1:)json",
            origin_port_, R"json("}]})json"));

    ASSERT_NO_FATAL_FAILURE(StartDispatcher());

    for (int id = 0; id < 2; ++id) {
      auto server = StartMeshServer(id);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
    }
    // Both registered before the first allocation, so placement can
    // spread the two workers: the servers register asynchronously, so the
    // test sends the same registrations itself and waits for the answers.
    for (int id = 0; id < 2; ++id) {
      ASSERT_NO_FATAL_FAILURE(Register(id));
    }

    auto agent =
        ChildProcess::Start(BROKER_HA_AGENT_BIN, {},
                            {{"BROKER_TOKEN", kToken},
                             {"BROKER_HA_MODE_ENABLED", "true"},
                             {"BROKER_DISPATCHER_BASE_URL", dispatcher_url_},
                             {"BROKER_HA_AGENT_PORT", "0"},
                             {"BROKER_HA_AGENT_UNREACHABLE_AFTER_MS", "1000"},
                             {"ACCEPT", client_accept_},
                             {"BROKER_CLIENT_URL", "http://worker:8000"},
                             {"LOG_LEVEL", "info"}});
    ASSERT_TRUE(agent.ok()) << agent.status();
    agent_ = *std::move(agent);
    auto agent_line = agent_->WaitForLine("broker-ha-agent listening", kWait);
    ASSERT_TRUE(agent_line.ok()) << agent_line.status();
    auto agent_port = JsonInt(*agent_line, "port");
    ASSERT_TRUE(agent_port.ok()) << agent_port.status();
    agent_address_ = absl::StrCat("127.0.0.1:", *agent_port);

    for (int i = 0; i < 2; ++i) {
      auto worker = ChildProcess::Start(
          BROKER_TUNNEL_BIN, {},
          {{"BROKER_TOKEN", kToken},
           {"BROKER_HA_MODE_ENABLED", "true"},
           {"BROKER_HA_AGENT_ADDR", agent_address_},
           // Only the agent's fallback; the assignment says where to go.
           {"BROKER_SERVER_URL", "http://127.0.0.1:1"},
           {"ACCEPT", client_accept_},
           {"BROKER_CLIENT_URL", "http://worker:8000"},
           {"PORT", "0"},
           {"LOG_LEVEL", "info"}});
      ASSERT_TRUE(worker.ok()) << worker.status();
      auto lines = (*worker)->WaitForLines(
          {"broker-tunnel listening", "tunnel connected to the broker server"},
          kWait);
      ASSERT_TRUE(lines.ok()) << lines.status();
      auto http_port = JsonInt(lines->front(), "port");
      ASSERT_TRUE(http_port.ok()) << http_port.status();
      worker_ports_.push_back(*http_port);
      workers_.push_back(*std::move(worker));
    }
    // One worker on each server (the dispatcher spreads a token's clients).
    for (auto& server : servers_) {
      ASSERT_TRUE(
          server.process->WaitForLine("broker client connected", kWait).ok());
    }
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-dispatcher", dispatcher_.get());
    for (std::size_t i = 0; i < servers_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-server ", i), servers_[i].process.get());
    }
    PrintOutput("broker-ha-agent", agent_.get());
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-tunnel ", i), workers_[i].get());
    }
  }

  // Sets dispatcher_url_. Detection of a dead server, tightened from the
  // defaults (refresh 10 s, TTL 30 s, unreachable after 30 s) so the kill -9
  // test recovers in seconds: the servers refresh every 300 ms, the
  // dispatcher calls a server dead 2 s after its last refresh, and the
  // agent moves a worker whose tunnel has been down for 1 s.
  virtual void StartDispatcher() {
    auto dispatcher = StartDispatcherProcess({});
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    dispatcher_ = std::move(dispatcher->first);
    dispatcher_url_ = absl::StrCat("http://127.0.0.1:", dispatcher->second);
  }

  // A broker-dispatcher with the mesh's TTL and `env`, and its port.
  static absl::StatusOr<std::pair<std::unique_ptr<ChildProcess>, int>>
  StartDispatcherProcess(std::map<std::string, std::string> env) {
    env.emplace("PORT", "0");
    env.emplace("BROKER_DISPATCHER_SERVER_TTL_MS", "2000");
    env.emplace("LOG_LEVEL", "info");
    auto dispatcher = ChildProcess::Start(BROKER_DISPATCHER_BIN, {}, env);
    if (!dispatcher.ok()) return dispatcher.status();
    auto line =
        (*dispatcher)->WaitForLine("broker-dispatcher listening", kWait);
    if (!line.ok()) return line.status();
    auto port = JsonInt(*line, "port");
    if (!port.ok()) return port.status();
    return std::make_pair(*std::move(dispatcher), *port);
  }

  // broker-server `id` of the mesh (HOSTNAME broker-server-<id>, so a
  // restarted one keeps its id), registering with the dispatcher.
  absl::StatusOr<ServerProcess> StartMeshServer(int id) {
    return StartServer(server_accept_,
                       {{"DISPATCHER_URL", dispatcher_url_},
                        {"HOSTNAME", absl::StrCat("broker-server-", id)},
                        {"BROKER_SERVER_ADVERTISE_HOST", "127.0.0.1"},
                        {"BROKER_DISPATCHER_REFRESH_MS", "300"},
                        {"BROKER_DRAIN_WAIT_MS", "10000"}});
  }

  // Sends server `id`'s registration itself and waits for the answer (the
  // server's own is asynchronous).
  void Register(int id) {
    auto r = fetcher_.Fetch(
        "POST", absl::StrCat(dispatcher_url_, "/internal/brokerservers/", id),
        {{"content-type", "application/vnd.api+json"}},
        absl::StrCat(
            R"({"data":{"attributes":{"tunnel_url":"http://127.0.0.1:)",
            servers_[id].tunnel_port, R"(","internal_url":"http://127.0.0.1:)",
            servers_[id].http_port, R"("}}})"));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_LT(r->status, 300) << r->body;
  }

  // Polls ClientsOn(server) until it is `want`; false after kWait.
  bool WaitForClientsOn(int server, int want) {
    const absl::Time deadline = absl::Now() + kWait;
    while (absl::Now() < deadline) {
      if (ClientsOn(server) == want) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  std::string BrokerUrl(int server, absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", servers_[server].http_port,
                        "/broker/", kToken, path);
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string server_accept_;
  std::string client_accept_;
  std::unique_ptr<ChildProcess> dispatcher_;
  std::string dispatcher_url_;
  std::vector<ServerProcess> servers_;
  std::unique_ptr<ChildProcess> agent_;
  std::string agent_address_;
  std::vector<std::unique_ptr<ChildProcess>> workers_;
  std::vector<int> worker_ports_;

  // kill -9 of `victim` (off the data path) under steady GETs through both
  // servers: none fails.
  void ExpectKillCostsNoGet(ChildProcess& victim) {
    SteadyLoad load({BrokerUrl(0, "/bytes/512"), BrokerUrl(1, "/bytes/512")},
                    4);
    EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load never started";
    victim.Signal(SIGKILL);
    ASSERT_TRUE(victim.Wait(kWait).ok());
    EXPECT_TRUE(load.WaitForMore(600, kWait)) << "the load stalled";
    load.Stop();
    EXPECT_EQ(load.failed(), 0) << load.first_failure();
  }

  // Sends `signal` to server 0 under steady GETs through server 1: none
  // fails, and server 0's worker is connected to server 1 within 10 s.
  void ExpectTheOtherServerCarriesOn(int signal) {
    SteadyLoad load({BrokerUrl(1, "/bytes/512")}, 4);
    EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load never started";
    const absl::Time lost = absl::Now();
    servers_[0].process->Signal(signal);
    auto moved =
        servers_[1].process->WaitForLine("broker client connected", kWait);
    const absl::Duration recovered = absl::Now() - lost;
    EXPECT_TRUE(load.WaitForMore(300, kWait)) << "the load stalled";
    load.Stop();
    EXPECT_EQ(load.failed(), 0) << load.first_failure();
    ASSERT_TRUE(moved.ok()) << moved.status();
    std::cout << "after signal " << signal << ", the worker of server 0 "
              << "reconnected to server 1 in " << recovered << "\n";
    EXPECT_LT(recovered, absl::Seconds(10));
    EXPECT_EQ(ClientsOn(1), 2);
  }

  // The clients `server` holds for the token (/connection-status), -1 if
  // it does not answer.
  int ClientsOn(int server) {
    auto status = fetcher_.Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", servers_[server].http_port,
                            "/connection-status/", kToken));
    if (!status.ok() || status->status != 200) return -1;
    const nlohmann::json body =
        nlohmann::json::parse(status->body, nullptr, false);
    if (!body.is_object() || !body.contains("clients")) return -1;
    return static_cast<int>(body["clients"].size());
  }

  // The worker whose tunnel goes to `server`, from its /healthcheck.
  int WorkerOn(int server) {
    const std::string url =
        absl::StrCat("http://127.0.0.1:", servers_[server].tunnel_port);
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      auto r = fetcher_.Fetch(
          "GET",
          absl::StrCat("http://127.0.0.1:", worker_ports_[i], "/healthcheck"));
      if (r.ok() && absl::StrContains(r->body, url)) return static_cast<int>(i);
    }
    return -1;
  }
};

TEST_F(HaMeshTest, LogsTheDocumentedLinesAndServesThroughBothServers) {
  EXPECT_THAT(agent_->Output(),
              HasSubstr("checking for HA mode (enabled=true)"));
  EXPECT_THAT(agent_->Output(), HasSubstr("received server id (serverId="));
  for (auto& worker : workers_) {
    EXPECT_THAT(worker->Output(),
                HasSubstr("broker client is connecting to broker server "
                          "(url=http://127.0.0.1:"));
  }
  // The agent's preflight checks show on each worker's /systemcheck.
  auto check = fetcher_.Fetch(
      "GET",
      absl::StrCat("http://127.0.0.1:", worker_ports_[0], "/systemcheck"));
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_THAT(check->body,
              HasSubstr(R"("haPreflightCheck":"dispatcher-reachable")"));
  EXPECT_THAT(check->body, HasSubstr(R"("haPreflightCheck":"accept-rules")"));
  // The two workers were placed on distinct servers: each relays.
  for (int server = 0; server < 2; ++server) {
    auto r = fetcher_.Fetch("GET", BrokerUrl(server, "/bytes/100"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << "server " << server << ": " << r->body;
  }
}

TEST_F(HaMeshTest, ServerSigtermMovesItsWorkerAndNoGetFails) {
  SteadyLoad load({BrokerUrl(1, "/bytes/512")}, 4);
  // Each wait is bounded: a broken mesh fails the test, never hangs it.
  EXPECT_TRUE(load.WaitForMore(50, kWait)) << "the load never started";
  servers_[0].process->Signal(SIGTERM);
  // Server 1 admits the moved worker: its second client.
  auto moved =
      servers_[1].process->WaitForLine("broker client connected", kWait);
  auto exited = servers_[0].process->Wait(kWait);
  EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load stalled";
  load.Stop();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  ASSERT_TRUE(moved.ok()) << moved.status();
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_EQ(*exited, 0);
  EXPECT_THAT(servers_[0].process->Output(),
              HasSubstr("draining: asked the workers to move"));
  std::string workers_output;
  for (auto& worker : workers_) workers_output += worker->Output();
  EXPECT_THAT(workers_output,
              HasSubstr("the broker server asked this client to move"));
  // And both workers now serve through server 1.
  EXPECT_EQ(ClientsOn(1), 2);
}

// The dispatcher is on the control path only: its death (kill -9) costs no
// GET through either server, and the servers stay healthy without it.
TEST_F(HaMeshTest, DispatcherKilledUnderLoadCostsNoGet) {
  ASSERT_NO_FATAL_FAILURE(ExpectKillCostsNoGet(*dispatcher_));
  for (auto& server : servers_) {
    auto health = fetcher_.Fetch(
        "GET",
        absl::StrCat("http://127.0.0.1:", server.http_port, "/healthcheck"));
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(health->status, 200) << health->body;
  }
}

// kill -9 of a server (no drain, no goodbye), or SIGSTOP (half-open: its
// sockets stay, nothing answers): GETs through the other server never fail,
// and the lost server's worker serves through the other once the worker
// notices (keepalive), the dispatcher stops calling the lost server live and
// the agent moves the worker (SetUp's timings: 2-4 s; with the defaults,
// 30-60 s).
TEST_F(HaMeshTest, ServerKilledUnderLoadCostsNoGetOnTheOther) {
  ExpectTheOtherServerCarriesOn(SIGKILL);
}

TEST_F(HaMeshTest, ServerFrozenUnderLoadCostsNoGetOnTheOther) {
  ExpectTheOtherServerCarriesOn(SIGSTOP);
  servers_[0].process->Signal(SIGCONT);
}

// A rolling restart of every server, one at a time, as a deployment does
// it: SIGTERM drains a server's workers to the other one, a new process
// takes its place (same id, new ports) and registers, then the next. GETs
// sent to the server that stays up meanwhile never fail, and afterwards
// both new servers answer for the token (one by forwarding to the other).
TEST_F(HaMeshTest, RollingRestartOfEveryServerCostsNoGet) {
  for (int restarting = 0; restarting < 2; ++restarting) {
    SCOPED_TRACE(absl::StrCat("restarting server ", restarting));
    const int other = 1 - restarting;
    SteadyLoad load({BrokerUrl(other, "/bytes/512")}, 4);
    EXPECT_TRUE(load.WaitForMore(50, kWait)) << "the load never started";
    const absl::Time start = absl::Now();
    servers_[restarting].process->Signal(SIGTERM);
    auto exited = servers_[restarting].process->Wait(kWait);
    ASSERT_TRUE(exited.ok()) << exited.status();
    EXPECT_EQ(*exited, 0);
    EXPECT_TRUE(WaitForClientsOn(other, 2)) << "the workers did not move";
    auto server = StartMeshServer(restarting);
    ASSERT_TRUE(server.ok()) << server.status();
    servers_[restarting] = *std::move(server);
    ASSERT_NO_FATAL_FAILURE(Register(restarting));
    std::cout << "server " << restarting << " drained, exited and was back in "
              << absl::Now() - start << "\n";
    EXPECT_TRUE(load.WaitForMore(100, kWait)) << "the load stalled";
    load.Stop();
    EXPECT_EQ(load.failed(), 0) << load.first_failure();
  }
  for (int server = 0; server < 2; ++server) {
    auto r = fetcher_.Fetch("GET", BrokerUrl(server, "/bytes/100"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << "server " << server << ": " << r->body;
  }
}

TEST_F(HaMeshTest, ServerWithoutTheTunnelForwardsToOneThatHasIt) {
  const int on_zero = WorkerOn(0);
  ASSERT_GE(on_zero, 0);
  workers_[on_zero]->Signal(SIGKILL);
  ASSERT_TRUE(servers_[0]
                  .process->WaitForLine("broker client disconnected", kWait)
                  .ok());
  // Server 0 has no tunnel for the token now; server 1 does.
  for (int i = 0; i < 20; ++i) {
    auto r = fetcher_.Fetch("GET", BrokerUrl(0, "/bytes/2000"));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->status, 200) << r->body << r->Header("x-broker-failure");
    EXPECT_EQ(r->body.size(), 2000U);
  }
  // A request already forwarded once is never forwarded again.
  auto r = fetcher_.Fetch("GET", BrokerUrl(0, "/bytes/10"),
                          {{"x-broker-forwarded-by", "1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->Header("x-broker-failure"), "no-connection");
}

#ifdef REDIS_SERVER_BIN
// The dispatcher replicated: two replicas sharing Redis behind a Service
// (service_proxy.h), which the servers and the agent call.
class HaMeshReplicatedTest : public HaMeshTest {
 protected:
  void StartDispatcher() override {
    auto redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    std::vector<int> ports;
    for (int i = 0; i < 2; ++i) {
      auto replica = StartDispatcherProcess(
          {{"BROKER_DISPATCHER_REDIS_URL", redis_->url()}});
      ASSERT_TRUE(replica.ok()) << replica.status();
      replicas_.push_back(std::move(replica->first));
      ports.push_back(replica->second);
    }
    auto service = ServiceProxy::Start(ports);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    dispatcher_url_ = absl::StrCat("http://127.0.0.1:", service_->port());
  }

  void TearDown() override {
    HaMeshTest::TearDown();
    if (!HasFailure()) return;
    for (std::size_t i = 0; i < replicas_.size(); ++i) {
      PrintOutput(absl::StrCat("broker-dispatcher replica ", i),
                  replicas_[i].get());
    }
  }

  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<ChildProcess>> replicas_;
  std::unique_ptr<ServiceProxy> service_;
};

// kill -9 of a dispatcher replica under load costs no GET, and the control
// path carries on through the other: a server's SIGTERM still moves its
// worker, which needs a new placement from the dispatcher.
TEST_F(HaMeshReplicatedTest,
       ReplicaKilledUnderLoadCostsNoGetAndPlacementGoesOn) {
  ASSERT_NO_FATAL_FAILURE(ExpectKillCostsNoGet(*replicas_[0]));
  // The placement of the moved worker can only come from replica 1.
  constexpr char kPlaced[] = "allocated a broker client to server 1";
  auto placements = [&] {
    const std::string out = replicas_[1]->Output();
    int n = 0;
    for (std::size_t at = out.find(kPlaced); at != std::string::npos;
         at = out.find(kPlaced, at + 1)) {
      ++n;
    }
    return n;
  };
  const int placed_before = placements();
  ExpectTheOtherServerCarriesOn(SIGTERM);
  const absl::Time deadline = absl::Now() + kWait;
  while (placements() == placed_before && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GT(placements(), placed_before) << "replica 1 placed nothing";
}
#endif  // REDIS_SERVER_BIN

}  // namespace
}  // namespace broker::testing
