// TLS on every hop with certificates made at test time: the platform calls
// broker-server over HTTPS, the worker reaches the server's gRPC endpoint
// over TLS, and the worker calls an HTTPS origin. Each listener speaks TLS
// only, so an answer from the origin proves the whole path was encrypted;
// the negative tests prove certificates are verified on both of the
// worker's outbound hops.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/integration/test_certs.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <random>
#include <string>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "4c0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr char kUntrustingToken[] = "5d0ffee0-1b2e-4c3d-9e8f-0a1b2c3d4e5f";
constexpr absl::Duration kWait = absl::Seconds(20);
constexpr char kReconnecting[] =
    "tunnel connection to the broker server was closed; reconnecting";

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(gen() & 0xFF);
  return out;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = MakeTestPki(dir_.path(), "trusted", "broker test CA");
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
    // The same kind of certificate from a CA nobody trusts.
    auto stranger = MakeTestPki(dir_.path(), "stranger", "unrelated test CA");
    ASSERT_TRUE(stranger.ok()) << stranger.status();

    auto origin = StartOrigin(&origin_port_,
                              {"0", pki_.leaf_cert_file, pki_.leaf_key_file});
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    auto untrusted =
        StartOrigin(&untrusted_port_,
                    {"0", stranger->leaf_cert_file, stranger->leaf_key_file});
    ASSERT_TRUE(untrusted.ok()) << untrusted.status();
    untrusted_origin_ = *std::move(untrusted);

    const std::string server_accept =
        dir_.Write("server-accept.json", R"json({"public": [
      {"method": "any", "path": "/echo*"},
      {"method": "GET", "path": "/untrusted"}
    ]})json");
    client_accept_ =
        dir_.Write("client-accept.json", absl::StrCat(R"json({"private": [
      {"method": "any", "path": "/echo*",
       "origin": "https://127.0.0.1:)json",
                                                      origin_port_, R"json("},
      {"method": "GET", "path": "/untrusted",
       "origin": "https://127.0.0.1:)json",
                                                      untrusted_port_, R"json("}
    ]})json"));
    auto server =
        StartServer(server_accept, {{"HTTPS_CERT", pki_.leaf_cert_file},
                                    {"HTTPS_KEY", pki_.leaf_key_file}});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto tunnel = StartTunnel(
        kToken, server_.tunnel_port, client_accept_, *server_.process,
        {{"BROKER_SERVER_URL",
          absl::StrCat("https://127.0.0.1:", server_.tunnel_port)},
         {"CA_CERT", pki_.ca_cert_file}});
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", tunnel_.process.get());
  }

  std::string BrokerUrl(absl::string_view token, absl::string_view path) const {
    return absl::StrCat("https://127.0.0.1:", server_.http_port, "/broker/",
                        token, path);
  }

  static common::http::ClientOptions TrustingOptions(const std::string& ca) {
    common::http::ClientOptions options;
    options.ca_file = ca;
    return options;
  }

  TempDir dir_;
  TestPki pki_;
  std::unique_ptr<Fetcher> fetcher_;  // trusts pki_'s CA; made on first use
  int origin_port_ = 0;
  int untrusted_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  std::unique_ptr<ChildProcess> untrusted_origin_;
  std::string client_accept_;
  ServerProcess server_;
  TunnelProcess tunnel_;

  Fetcher& fetcher() {
    if (fetcher_ == nullptr) {
      fetcher_ = std::make_unique<Fetcher>(TrustingOptions(pki_.ca_cert_file));
    }
    return *fetcher_;
  }
};

TEST_F(TlsTest, RequestsAndBodiesCrossEveryHopOverTls) {
  auto get = fetcher().Fetch("GET", BrokerUrl(kToken, "/echo?hop=tls"));
  ASSERT_TRUE(get.ok()) << get.status();
  ASSERT_EQ(get->status, 200) << get->body;
  json echo = json::parse(get->body, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(echo.is_discarded()) << get->body;
  EXPECT_EQ(echo["path"], "/echo");
  EXPECT_EQ(echo["query"], "hop=tls");

  // 1 MiB up and back down, across three TLS connections each way.
  const std::string body = RandomBytes(1 << 20, 11);
  auto post =
      fetcher().Fetch("POST", BrokerUrl(kToken, "/echo-body"),
                      {{"content-type", "application/octet-stream"}}, body);
  ASSERT_TRUE(post.ok()) << post.status();
  ASSERT_EQ(post->status, 200);
  EXPECT_TRUE(post->body_status.ok()) << post->body_status;
  EXPECT_EQ(post->body.size(), body.size());
  EXPECT_TRUE(post->body == body) << "the echoed bytes differ";
  // The TLS-only origin served it.
  EXPECT_TRUE(
      origin_->WaitForLine("request POST /echo-body", absl::Seconds(10)).ok());
}

TEST_F(TlsTest, ListenersSpeakOnlyTls) {
  // Plain HTTP to the platform listener and to the origin gets no answer:
  // a TLS server reads the request as a broken ClientHello.
  Fetcher plain;
  for (int port : {server_.http_port, origin_port_}) {
    SCOPED_TRACE(port);
    auto r = plain.Fetch(
        "GET",
        absl::StrCat("http://127.0.0.1:", port, "/broker/", kToken, "/echo"),
        {}, "", false, absl::Seconds(10));
    EXPECT_FALSE(r.ok() && r->status == 200);
  }
  // And the platform listener's certificate is checked by the client too:
  // without the CA the platform cannot call it.
  auto untrusting = plain.Fetch("GET", BrokerUrl(kToken, "/echo"));
  EXPECT_FALSE(untrusting.ok());
}

TEST_F(TlsTest, WorkerWithoutTheCaNeverConnects) {
  // A worker that trusts only the system store cannot verify the server's
  // certificate: every attempt fails and the server never registers it.
  auto worker = ChildProcess::Start(
      BROKER_TUNNEL_BIN, {},
      {{"BROKER_TOKEN", kUntrustingToken},
       {"BROKER_SERVER_URL",
        absl::StrCat("https://127.0.0.1:", server_.tunnel_port)},
       {"ACCEPT", client_accept_},
       {"PORT", "0"},
       {"LOG_LEVEL", "info"}});
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto lines = (*worker)->WaitForLines(
      {"broker-tunnel listening", kReconnecting}, kWait);
  ASSERT_TRUE(lines.ok()) << lines.status() << "\n" << (*worker)->Output();
  auto port = JsonInt(lines->front(), "port");
  ASSERT_TRUE(port.ok()) << port.status();
  json failure = json::parse((*lines)[1], nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(failure.is_discarded()) << (*lines)[1];
  EXPECT_EQ(failure["grpc_status"], 14) << (*lines)[1];  // UNAVAILABLE
  EXPECT_THAT(failure["error"].get<std::string>(),
              HasSubstr("certificate verify failed"));
  // A second attempt fails the same way (it is not a start-up race).
  auto again = (*worker)->WaitForLine(kReconnecting, kWait);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT((*worker)->Output(),
              Not(HasSubstr("tunnel connected to the broker server")));

  auto health = fetcher().Fetch(
      "GET", absl::StrCat("http://127.0.0.1:", *port, "/healthcheck"));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->status, 500);
  EXPECT_EQ(json::parse(health->body)["websocketConnectionOpen"], false);

  // The server has no tunnel for that token.
  auto r = fetcher().Fetch("GET", BrokerUrl(kUntrustingToken, "/echo"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->Header("x-broker-failure"), "no-connection");
  // ... while the worker that has the CA still works.
  auto ok = fetcher().Fetch("GET", BrokerUrl(kToken, "/echo"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->status, 200);
}

TEST_F(TlsTest, UntrustedOriginCertificateIs502) {
  auto r = fetcher().Fetch("GET", BrokerUrl(kToken, "/untrusted"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 502) << r->body;
  json body = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(body.is_discarded()) << r->body;
  EXPECT_THAT(body["code"].get<std::string>(), HasSubstr("DOWNSTREAM"));
  EXPECT_THAT(r->body, HasSubstr("certificate verify failed"));
  // The handshake failed, so no request head ever reached that origin.
  EXPECT_THAT(untrusted_origin_->Output(), Not(HasSubstr("request ")));
}

}  // namespace
}  // namespace broker::testing
