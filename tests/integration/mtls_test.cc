// Mutual TLS on the tunnel, with certificates made at test time: the server
// (BROKER_TUNNEL_CLIENT_CA) admits only workers that present a client
// certificate its CA signed (BROKER_TUNNEL_CLIENT_CERT/_KEY); a worker
// without one, or with one from another CA, never gets past the handshake.
// The platform ingress stays plain server-side TLS. Bad settings stop
// either binary at start-up with one line naming the variable.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/test_certs.h"

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

constexpr char kToken[] = "6c0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr char kRefusedToken[] = "7d0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr absl::Duration kWait = absl::Seconds(20);
constexpr char kReconnecting[] =
    "tunnel connection to the broker server was closed; reconnecting";

class MtlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = MakeTestPki(dir_.path(), "trusted", "broker test CA");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
    // A client certificate just as good, from a CA the server does not
    // trust for workers.
    auto stranger = MakeTestPki(dir_.path(), "stranger", "unrelated test CA");
    ASSERT_TRUE(stranger.ok()) << stranger.status();
    stranger_ = *stranger;

    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    const std::string server_accept = dir_.Write(
        "server-accept.json",
        R"json({"public": [{"method": "any", "path": "/echo*"}]})json");
    client_accept_ =
        dir_.Write("client-accept.json", absl::StrCat(R"json({"private": [
      {"method": "any", "path": "/echo*",
       "origin": "http://127.0.0.1:)json",
                                                      origin_port_, R"json("}
    ]})json"));
    auto server = StartServer(server_accept,
                              {{"HTTPS_CERT", pki_.leaf_cert_file},
                               {"HTTPS_KEY", pki_.leaf_key_file},
                               {"BROKER_TUNNEL_CLIENT_CA", pki_.ca_cert_file}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", tunnel_.process.get());
    PrintOutput("refused broker-tunnel", refused_.get());
  }

  std::string ServerUrl() const {
    return absl::StrCat("https://127.0.0.1:", server_.tunnel_port);
  }

  std::string BrokerUrl(absl::string_view token, absl::string_view path) const {
    return absl::StrCat("https://127.0.0.1:", server_.http_port, "/broker/",
                        token, path);
  }

  Fetcher& fetcher() {
    if (fetcher_ == nullptr) {
      common::http::ClientOptions options;
      options.ca_file = pki_.ca_cert_file;
      fetcher_ = std::make_unique<Fetcher>(options);
    }
    return *fetcher_;
  }

  // Starts a worker under kRefusedToken with `client_env` (its client
  // certificate settings, if any) and checks the server never admits it:
  // two connection attempts fail (not a start-up race), its /healthcheck
  // says no tunnel, and the platform gets the no-connection answer.
  void ExpectRefused(const std::map<std::string, std::string>& client_env) {
    std::map<std::string, std::string> env = client_env;
    env.emplace("BROKER_TOKEN", kRefusedToken);
    env.emplace("BROKER_SERVER_URL", ServerUrl());
    env.emplace("CA_CERT", pki_.ca_cert_file);
    env.emplace("ACCEPT", client_accept_);
    env.emplace("PORT", "0");
    env.emplace("LOG_LEVEL", "info");
    auto worker = ChildProcess::Start(BROKER_TUNNEL_BIN, {}, env);
    ASSERT_TRUE(worker.ok()) << worker.status();
    refused_ = *std::move(worker);
    auto lines = refused_->WaitForLines(
        {"broker-tunnel listening", kReconnecting}, kWait);
    ASSERT_TRUE(lines.ok()) << lines.status();
    auto port = JsonInt(lines->front(), "port");
    ASSERT_TRUE(port.ok()) << port.status();
    json failure =
        json::parse((*lines)[1], nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(failure.is_discarded()) << (*lines)[1];
    EXPECT_EQ(failure["grpc_status"], 14) << (*lines)[1];  // UNAVAILABLE
    auto again = refused_->WaitForLine(kReconnecting, kWait);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_THAT(refused_->Output(),
                Not(HasSubstr("tunnel connected to the broker server")));

    auto health = fetcher().Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", *port, "/healthcheck"));
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_EQ(health->status, 500);
    EXPECT_EQ(json::parse(health->body)["websocketConnectionOpen"], false);

    auto r = fetcher().Fetch("GET", BrokerUrl(kRefusedToken, "/echo"));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(r->Header("x-broker-failure"), "no-connection");
    EXPECT_THAT(server_.process->Output(),
                Not(HasSubstr("broker client connected")));
  }

  TempDir dir_;
  TestPki pki_;
  TestPki stranger_;
  std::unique_ptr<Fetcher> fetcher_;  // trusts pki_'s CA; made on first use
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::string client_accept_;
  ServerProcess server_;
  TunnelProcess tunnel_;
  std::unique_ptr<ChildProcess> refused_;
};

TEST_F(MtlsTest, WorkerWithClientCertificateFromTheCaConnects) {
  auto tunnel =
      StartTunnel(kToken, server_.tunnel_port, client_accept_, *server_.process,
                  {{"BROKER_SERVER_URL", ServerUrl()},
                   {"CA_CERT", pki_.ca_cert_file},
                   {"BROKER_TUNNEL_CLIENT_CERT", pki_.client_cert_file},
                   {"BROKER_TUNNEL_CLIENT_KEY", pki_.client_key_file}});
  ASSERT_TRUE(tunnel.ok()) << tunnel.status();
  tunnel_ = *std::move(tunnel);
  // Both ends said at start-up what they do (and no key material).
  EXPECT_THAT(server_.process->Output(), HasSubstr("mutual TLS"));
  EXPECT_THAT(tunnel_.process->Output(),
              HasSubstr("the tunnel presents a client certificate"));
  EXPECT_THAT(tunnel_.process->Output(), Not(HasSubstr("PRIVATE KEY")));

  // The platform ingress asks for no client certificate: the fetcher has
  // none.
  auto get = fetcher().Fetch("GET", BrokerUrl(kToken, "/echo?hop=mtls"));
  ASSERT_TRUE(get.ok()) << get.status();
  ASSERT_EQ(get->status, 200) << get->body;
  json echo = json::parse(get->body, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(echo.is_discarded()) << get->body;
  EXPECT_EQ(echo["path"], "/echo");
  EXPECT_EQ(echo["query"], "hop=mtls");
}

TEST_F(MtlsTest, WorkerWithoutClientCertificateIsNeverAdmitted) {
  ExpectRefused({});
}

TEST_F(MtlsTest, WorkerWithCertificateFromAnotherCaIsNeverAdmitted) {
  ExpectRefused({{"BROKER_TUNNEL_CLIENT_CERT", stranger_.client_cert_file},
                 {"BROKER_TUNNEL_CLIENT_KEY", stranger_.client_key_file}});
}

// Runs `binary` with `env` (stderr folded into stdout) until it exits; the
// line it printed starting with `prefix`, and checks the exit status is 2.
std::string StartUpError(const std::string& binary, const std::string& prefix,
                         const std::map<std::string, std::string>& env) {
  auto child =
      ChildProcess::Start("/bin/sh", {"-c", "exec \"$0\" 2>&1", binary}, env);
  EXPECT_TRUE(child.ok()) << child.status();
  if (!child.ok()) return "";
  auto line = (*child)->WaitForLine(prefix, kWait);
  EXPECT_TRUE(line.ok()) << line.status() << "\n" << (*child)->Output();
  auto exit = (*child)->Wait(kWait);
  EXPECT_TRUE(exit.ok()) << exit.status();
  if (exit.ok()) {
    EXPECT_EQ(*exit, 2) << (*child)->Output();
  }
  return line.value_or("");
}

class MtlsStartUpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = MakeTestPki(dir_.path(), "trusted", "broker test CA");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
    auto stranger = MakeTestPki(dir_.path(), "stranger", "unrelated test CA");
    ASSERT_TRUE(stranger.ok()) << stranger.status();
    stranger_ = *stranger;
    accept_ =
        dir_.Write("accept.json", R"json({"public": [], "private": []})json");
    not_pem_ = dir_.Write("not-pem.txt", "this is not a certificate\n");
  }

  // A worker's settings but for `extra` (which wins).
  std::map<std::string, std::string> WorkerEnv(
      std::map<std::string, std::string> extra) const {
    extra.emplace("BROKER_TOKEN", kToken);
    extra.emplace("BROKER_SERVER_URL", "https://127.0.0.1:1");
    extra.emplace("ACCEPT", accept_);
    extra.emplace("PORT", "0");
    return extra;
  }

  std::map<std::string, std::string> ServerEnv(
      std::map<std::string, std::string> extra) const {
    extra.emplace("ACCEPT", accept_);
    extra.emplace("PORT", "0");
    extra.emplace("BROKER_TUNNEL_PORT", "0");
    return extra;
  }

  TempDir dir_;
  TestPki pki_;
  TestPki stranger_;
  std::string accept_;
  std::string not_pem_;
};

TEST_F(MtlsStartUpTest, WorkerNeedsBothCertificateAndKey) {
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          WorkerEnv({{"BROKER_TUNNEL_CLIENT_CERT", pki_.client_cert_file}})),
      HasSubstr("BROKER_TUNNEL_CLIENT_KEY"));
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          WorkerEnv({{"BROKER_TUNNEL_CLIENT_KEY", pki_.client_key_file}})),
      HasSubstr("BROKER_TUNNEL_CLIENT_CERT"));
}

TEST_F(MtlsStartUpTest, WorkerClientCertificateNeedsHttps) {
  EXPECT_THAT(
      StartUpError(
          BROKER_TUNNEL_BIN, "broker-tunnel:",
          WorkerEnv({{"BROKER_SERVER_URL", "http://127.0.0.1:1"},
                     {"BROKER_TUNNEL_CLIENT_CERT", pki_.client_cert_file},
                     {"BROKER_TUNNEL_CLIENT_KEY", pki_.client_key_file}})),
      HasSubstr("BROKER_TUNNEL_CLIENT_CERT needs an https BROKER_SERVER_URL"));
}

TEST_F(MtlsStartUpTest, WorkerRejectsUnusableCertificateFiles) {
  const std::string missing = dir_.path() + "/missing.pem";
  struct Case {
    std::string cert;
    std::string key;
    std::string says;
  };
  for (const Case& c : {
           Case{missing, pki_.client_key_file, "cannot open " + missing},
           Case{pki_.client_cert_file, missing, "cannot open " + missing},
           Case{not_pem_, pki_.client_key_file, "not a PEM certificate"},
           Case{pki_.client_cert_file, not_pem_, "not an unencrypted PEM"},
           Case{pki_.client_cert_file, stranger_.client_key_file,
                "does not match"},
       }) {
    SCOPED_TRACE(c.says);
    const std::string line =
        StartUpError(BROKER_TUNNEL_BIN, "broker-tunnel:",
                     WorkerEnv({{"BROKER_TUNNEL_CLIENT_CERT", c.cert},
                                {"BROKER_TUNNEL_CLIENT_KEY", c.key}}));
    EXPECT_THAT(line, HasSubstr("BROKER_TUNNEL_CLIENT_CERT"));
    EXPECT_THAT(line, HasSubstr(c.says));
    EXPECT_THAT(line, Not(HasSubstr("BEGIN")));  // no file contents
  }
}

TEST_F(MtlsStartUpTest, ServerClientCaNeedsTlsAndCertificates) {
  EXPECT_THAT(
      StartUpError(BROKER_SERVER_BIN, "broker-server:",
                   ServerEnv({{"BROKER_TUNNEL_CLIENT_CA", pki_.ca_cert_file}})),
      HasSubstr("BROKER_TUNNEL_CLIENT_CA needs TLS"));
  for (const std::string& bad :
       {dir_.path() + "/missing.pem", not_pem_, pki_.client_key_file}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(StartUpError(BROKER_SERVER_BIN, "broker-server:",
                             ServerEnv({{"HTTPS_CERT", pki_.leaf_cert_file},
                                        {"HTTPS_KEY", pki_.leaf_key_file},
                                        {"BROKER_TUNNEL_CLIENT_CA", bad}})),
                HasSubstr("BROKER_TUNNEL_CLIENT_CA: "));
  }
}

}  // namespace
}  // namespace broker::testing
