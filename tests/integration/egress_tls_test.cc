// TLS on the webhook egress hop, with certificates made at test time: the
// worker serves its egress endpoint with BROKER_TUNNEL_EGRESS_CERT/_KEY and
// broker-webhook, trusting BROKER_TUNNEL_EGRESS_CA, hands events over TLS.
// The endpoint speaks TLS only, so an event reaching the platform proves
// the hop was encrypted; a plaintext broker-webhook, or one trusting
// another CA, never gets a worker. Bad settings stop the binaries at
// start-up with one line naming the variable.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/test_certs.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <map>
#include <string>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "8e4d3c2b-1a09-4f8e-9d7c-6b5a4f3e2d1c";
constexpr absl::Duration kWait = absl::Seconds(20);

class EgressTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = MakeTestPki(dir_.path(), "trusted", "broker test CA");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
    auto stranger = MakeTestPki(dir_.path(), "stranger", "unrelated test CA");
    ASSERT_TRUE(stranger.ok()) << stranger.status();
    stranger_ = *stranger;

    auto platform = StartOrigin(&platform_port_);
    ASSERT_TRUE(platform.ok()) << platform.status();
    platform_ = *std::move(platform);
    const std::string server_accept = dir_.Write(
        "server-accept.json",
        absl::StrCat(R"json({"public": [{"method": "GET", "path": "/x"}],
          "private": [{"method": "POST", "path": "/webhook/github/:id",
                       "origin": "http://127.0.0.1:)json",
                     platform_port_, R"json("}]})json"));
    client_accept_ = dir_.Write("client-accept.json", R"json({
      "public": [{"method": "POST", "path": "/webhook/github/:id"}],
      "private": [{"method": "GET", "path": "/x",
                   "origin": "http://127.0.0.1:1"}]})json");
    auto server = StartServer(server_accept);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto worker = StartTunnel(
        kToken, server_.tunnel_port, client_accept_, *server_.process,
        {{"BROKER_TUNNEL_EGRESS_PORT", "0"},
         {"BROKER_TUNNEL_EGRESS_CERT", pki_.leaf_cert_file},
         {"BROKER_TUNNEL_EGRESS_KEY", pki_.leaf_key_file},
         {"BROKER_CLIENT_URL", "http://webhook:1"}});
    ASSERT_TRUE(worker.ok()) << worker.status();
    ASSERT_GT(worker->egress_port, 0);
    worker_ = *std::move(worker);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", worker_.process.get());
    PrintOutput("broker-webhook", webhook_.get());
  }

  // broker-webhook over the worker's egress, trusting `ca` (empty:
  // plaintext), logging its channel's states.
  void StartWebhook(const std::string& ca) {
    std::map<std::string, std::string> env = {
        {"PORT", "0"},
        {"ACCEPT", client_accept_},
        {"BROKER_TUNNEL_EGRESS_TARGET",
         absl::StrCat("127.0.0.1:", worker_.egress_port)},
        {"BROKER_TOKEN", kToken},
        {"BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS", "500"},
        {"LOG_LEVEL", "debug"}};
    if (!ca.empty()) env.emplace("BROKER_TUNNEL_EGRESS_CA", ca);
    auto webhook = ChildProcess::Start(BROKER_WEBHOOK_BIN, {}, env);
    ASSERT_TRUE(webhook.ok()) << webhook.status();
    webhook_ = *std::move(webhook);
    auto line = webhook_->WaitForLine("broker-webhook listening", kWait);
    ASSERT_TRUE(line.ok()) << line.status();
    auto port = JsonInt(*line, "port");
    ASSERT_TRUE(port.ok()) << port.status();
    webhook_port_ = *port;
  }

  // Waits for a line of broker-webhook's with `needle`, which may have come
  // before its "listening" line (already consumed).
  absl::Status WaitForWebhookLine(const std::string& needle) {
    if (absl::StrContains(webhook_->Output(), needle)) return absl::OkStatus();
    return webhook_->WaitForLine(needle, kWait).status();
  }

  absl::StatusOr<Fetched> Post(absl::string_view path) {
    return fetcher_.Fetch(
        "POST", absl::StrCat("http://127.0.0.1:", webhook_port_, path),
        {{"content-type", "application/json"},
         {"x-github-event", "push"},
         {"x-github-delivery", "d-1"}},
        R"({"ref":"refs/heads/main"})");
  }

  // The channel never gets a worker: it fails to connect, the event gets
  // the no-tunnel 503, and the platform sees nothing.
  void ExpectNoWorker() {
    absl::Status failed = WaitForWebhookLine(
        "tunnel workers' egress channel is TRANSIENT_FAILURE");
    ASSERT_TRUE(failed.ok()) << failed;
    auto r = Post("/webhook/github/9");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 503) << r->body;
    EXPECT_THAT(webhook_->Output(),
                Not(HasSubstr("tunnel workers' egress channel is READY")));
    EXPECT_THAT(platform_->Output(), Not(HasSubstr("POST /webhook/github/9")));
  }

  TempDir dir_;
  TestPki pki_;
  TestPki stranger_;
  Fetcher fetcher_;
  int platform_port_ = 0;
  std::unique_ptr<ChildProcess> platform_;
  std::string client_accept_;
  ServerProcess server_;
  TunnelProcess worker_;
  std::unique_ptr<ChildProcess> webhook_;
  int webhook_port_ = 0;
};

TEST_F(EgressTlsTest, EventCrossesTheEgressOverTls) {
  EXPECT_THAT(worker_.process->Output(), HasSubstr("webhook egress: TLS"));
  StartWebhook(pki_.ca_cert_file);
  ASSERT_FALSE(HasFatalFailure());
  absl::Status ready =
      WaitForWebhookLine("tunnel workers' egress channel is READY");
  ASSERT_TRUE(ready.ok()) << ready;
  auto r = Post("/webhook/github/42");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200) << r->body;
  json echo = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(echo.is_object()) << r->body;
  EXPECT_EQ(echo["path"], "/webhook/github/42");
  EXPECT_EQ(echo["headers"]["x-github-delivery"], "d-1");
}

TEST_F(EgressTlsTest, PlaintextWebhookGetsNoWorker) {
  StartWebhook("");
  ASSERT_FALSE(HasFatalFailure());
  ExpectNoWorker();
}

TEST_F(EgressTlsTest, WebhookTrustingAnotherCaGetsNoWorker) {
  StartWebhook(stranger_.ca_cert_file);
  ASSERT_FALSE(HasFatalFailure());
  ExpectNoWorker();
}

// Runs `binary` with `env` (stderr folded into stdout) until it exits with
// status 2; the line it printed containing `needle`.
std::string StartUpError(const std::string& binary, const std::string& needle,
                         const std::map<std::string, std::string>& env) {
  auto child =
      ChildProcess::Start("/bin/sh", {"-c", "exec \"$0\" 2>&1", binary}, env);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return "";
  auto line = (*child)->WaitForLine(needle, kWait);
  EXPECT_TRUE(line.ok()) << line.status() << "\n" << (*child)->Output();
  auto exit = (*child)->Wait(kWait);
  EXPECT_TRUE(exit.ok()) << exit.status();
  if (exit.ok()) {
    EXPECT_EQ(*exit, 2) << (*child)->Output();
  }
  return line.value_or("");
}

TEST(EgressTlsStartUpTest, BadSettingsStopWithOneLine) {
  TempDir dir;
  auto pki = MakeTestPki(dir.path(), "trusted", "broker test CA");
  ASSERT_TRUE(pki.ok()) << pki.status();
  const std::string accept =
      dir.Write("accept.json", R"json({"public": [], "private": []})json");
  const std::map<std::string, std::string> worker = {
      {"BROKER_TOKEN", kToken},
      {"BROKER_SERVER_URL", "http://127.0.0.1:1"},
      {"ACCEPT", accept},
      {"PORT", "0"}};
  auto with = [](std::map<std::string, std::string> env,
                 const std::map<std::string, std::string>& extra) {
    for (const auto& [name, value] : extra) env[name] = value;
    return env;
  };
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          with(worker, {{"BROKER_TUNNEL_EGRESS_PORT", "0"},
                        {"BROKER_TUNNEL_EGRESS_CERT", pki->leaf_cert_file}})),
      HasSubstr("BROKER_TUNNEL_EGRESS_KEY"));
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          with(worker, {{"BROKER_TUNNEL_EGRESS_CERT", pki->leaf_cert_file},
                        {"BROKER_TUNNEL_EGRESS_KEY", pki->leaf_key_file}})),
      HasSubstr("needs BROKER_TUNNEL_EGRESS_PORT"));
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          with(worker, {{"BROKER_TUNNEL_EGRESS_PORT", "0"},
                        {"BROKER_TUNNEL_EGRESS_CERT", pki->leaf_cert_file},
                        {"BROKER_TUNNEL_EGRESS_KEY", pki->client_key_file}})),
      HasSubstr("does not match"));
  EXPECT_THAT(StartUpError(BROKER_WEBHOOK_BIN, "BROKER_TUNNEL_EGRESS_CA",
                           {{"BROKER_TUNNEL_EGRESS_TARGET", "127.0.0.1:1"},
                            {"ACCEPT", accept},
                            {"PORT", "0"},
                            {"BROKER_TUNNEL_EGRESS_CA", pki->leaf_key_file}}),
              HasSubstr("not a PEM certificate"));
}

}  // namespace
}  // namespace broker::testing
