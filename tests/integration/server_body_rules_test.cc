// broker-server's public rules with body checks, through the real binaries:
// the body is read (bounded) to decide, then relayed unchanged; requests no
// body rule concerns keep streaming.

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"
#include "tests/testing/test_origin.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <string>
#include <vector>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr char kToken[] = "b0d1b0d1-1b2e-4c3d-9e8f-0a1b2c3d4e5f";

class ServerBodyRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    // The server allows POST /graphql only for the Viewer operation; the
    // origin's /echo-body answers the body it received.
    auto server = StartServer(dir_.Write("server-accept.json", R"json(
      {"public": [
        {"method": "POST", "path": "/graphql", "valid": [
          {"path": "operationName", "value": "Viewer"}]},
        {"method": "POST", "path": "/echo"}
      ]})json"));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    const std::string origin_url =
        absl::StrCat("http://127.0.0.1:", origin_port_);
    // The worker sends /graphql to the origin's /echo-body.
    auto tunnel =
        StartTunnel(kToken, server_.tunnel_port,
                    dir_.Write("client-accept.json",
                               absl::StrCat(R"json({"private": [
          {"method": "POST", "path": "/graphql",
           "origin": ")json",
                                            origin_url, R"json(/echo-body?x="},
          {"method": "POST", "path": "/echo", "origin": ")json",
                                            origin_url, R"json("}]})json")),
                    *server_.process);
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
  }

  void TearDown() override {
    if (!HasFailure()) return;
    PrintOutput("broker-server", server_.process.get());
    PrintOutput("broker-tunnel", tunnel_.process.get());
  }

  absl::StatusOr<Fetched> Post(absl::string_view path, std::string body,
                               bool chunked = false) {
    return fetcher_.Fetch("POST",
                          absl::StrCat("http://127.0.0.1:", server_.http_port,
                                       "/broker/", kToken, path),
                          {{"content-type", "application/json"}},
                          std::move(body), chunked);
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  ServerProcess server_;
  TunnelProcess tunnel_;
};

TEST_F(ServerBodyRulesTest, AMatchingBodyReachesTheOriginUnchanged) {
  const std::string body =
      R"({"operationName":"Viewer","query":"{ viewer { login } }"})";
  for (const bool chunked : {false, true}) {
    SCOPED_TRACE(chunked ? "chunked" : "content-length");
    auto r = Post("/graphql", body, chunked);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(r->body, body);
    EXPECT_TRUE(r->body_status.ok()) << r->body_status;
  }
}

TEST_F(ServerBodyRulesTest, ANonMatchingBodyIsBlocked) {
  for (const std::string& body : std::vector<std::string>{
           R"({"operationName":"DeleteRepo","query":"mutation { x }"})",
           "not json", ""}) {
    SCOPED_TRACE(body);
    auto r = Post("/graphql", body);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 401) << r->body;
    json blocked = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(blocked.is_object()) << r->body;
    EXPECT_EQ(blocked["code"], "FILTER_BLOCKED");
    EXPECT_THAT(blocked["reason"].get<std::string>(),
                HasSubstr("Request does not match any accept rule"));
  }
}

TEST_F(ServerBodyRulesTest, ABodyTooLargeToInspectIs413) {
  std::string body = R"({"operationName":"Viewer","pad":")";
  body.append(10 * 1024 * 1024, 'x');
  body += "\"}";
  auto r = Post("/graphql", body, /*chunked=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 413) << r->body.substr(0, 200);
  EXPECT_THAT(r->body, HasSubstr("PAYLOAD_TOO_LARGE"));
}

TEST_F(ServerBodyRulesTest, OtherRequestsStillStream) {
  // No body rule for /echo: a body over the inspection limit passes. (The
  // origin's /echo reads it whole and answers its size and digest; an echo
  // streamed back while the client still sends could fill every buffer.)
  std::string body(11 * 1024 * 1024, 'y');
  for (size_t i = 0; i < body.size(); i += 4096) body[i] = 'z';
  Sha256 digest;
  digest.Update(body);
  auto r = Post("/echo", body, /*chunked=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  json echo = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(echo.is_object()) << r->body;
  EXPECT_EQ(echo["body_bytes"], body.size());
  EXPECT_EQ(echo["body_sha256"], digest.HexDigest());
}

}  // namespace
}  // namespace broker::testing
