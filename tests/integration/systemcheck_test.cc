// GET /systemcheck of the real broker-tunnel binary, validating credentials
// against a real origin: the answer's shape and status, and that no
// credential leaves in clear (neither in the answer nor in the logs).

#include "tests/integration/http_fetch.h"
#include "tests/integration/mesh.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <map>
#include <string>
#include <vector>

namespace broker::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "5c5c5c5c-1b2e-4c3d-9e8f-0a1b2c3d4e5f";

class SystemCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto origin = StartOrigin(&origin_port_);
    ASSERT_TRUE(origin.ok()) << origin.status();
    origin_ = *std::move(origin);
    auto server = StartServer(dir_.Write(
        "server-accept.json",
        R"json({"public": [{"method": "GET", "path": "/headers"}]})json"));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  void StartWorker(std::map<std::string, std::string> env) {
    const std::string accept = dir_.Write(
        "client-accept.json",
        absl::StrCat(R"json({"private": [{"method": "GET", "path": "/headers",
            "origin": "http://127.0.0.1:)json",
                     origin_port_, R"json("}]})json"));
    auto tunnel = StartTunnel(kToken, server_.tunnel_port, accept,
                              *server_.process, std::move(env));
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    tunnel_ = *std::move(tunnel);
  }

  std::string OriginUrl(absl::string_view path) const {
    return absl::StrCat("http://127.0.0.1:", origin_port_, path);
  }

  absl::StatusOr<Fetched> Check(absl::string_view path) {
    return fetcher_.Fetch(
        "GET", absl::StrCat("http://127.0.0.1:", tunnel_.http_port, path));
  }

  void TearDown() override {
    if (HasFailure()) PrintOutput("broker-tunnel", tunnel_.process.get());
  }

  TempDir dir_;
  Fetcher fetcher_;
  int origin_port_ = 0;
  std::unique_ptr<ChildProcess> origin_;
  ServerProcess server_;
  TunnelProcess tunnel_;
};

TEST_F(SystemCheckTest, AGoodCredentialAnswers200OnTheConfiguredPath) {
  StartWorker(
      {{"BROKER_CLIENT_VALIDATION_URL", OriginUrl("/headers")},
       {"BROKER_CLIENT_VALIDATION_AUTHORIZATION_HEADER", "token $SCM_TOKEN"},
       {"SCM_TOKEN", "ghp_GoodSecretToken42"},
       {"BROKER_SYSTEMCHECK_PATH", "/custom-systemcheck"}});
  auto r = Check("/custom-systemcheck");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200) << r->body;
  json body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_array()) << r->body;
  ASSERT_EQ(body.size(), 1u);
  EXPECT_EQ(body[0]["brokerClientValidationUrl"], OriginUrl("/headers"));
  EXPECT_EQ(body[0]["brokerClientValidationMethod"], "GET");
  EXPECT_EQ(body[0]["brokerClientValidationTimeoutMs"], 5000);
  EXPECT_EQ(body[0]["brokerClientValidationUrlStatusCode"], 200);
  EXPECT_EQ(body[0]["ok"], true);
  EXPECT_EQ(body[0]["maskedCredentials"], "ghp***n42");
  EXPECT_THAT(r->body, Not(HasSubstr("GoodSecret")));
  // The default path is not served once it is moved.
  auto moved = Check("/systemcheck");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->status, 404);
  EXPECT_THAT(tunnel_.process->Output(), Not(HasSubstr("GoodSecret")));
}

TEST_F(SystemCheckTest, ARejectedCredentialAnswers500AndStaysMasked) {
  // The origin answers 401 to both; the answer lists both, in order.
  StartWorker({{"BROKER_CLIENT_VALIDATION_URL", OriginUrl("/status/401")},
               {"BROKER_CLIENT_VALIDATION_BASIC_AUTH_POOL",
                "alice:FirstSecretPw1, bob:SecondSecretPw2"}});
  auto r = Check("/systemcheck");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 500) << r->body;
  json body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_array()) << r->body;
  ASSERT_EQ(body.size(), 2u);
  for (const json& entry : body) {
    EXPECT_EQ(entry["ok"], false);
    EXPECT_EQ(entry["brokerClientValidationUrlStatusCode"], 401);
    EXPECT_EQ(entry["error"], "Failed due to invalid credentials");
  }
  EXPECT_EQ(body[0]["maskedCredentials"], "ali***Pw1");
  EXPECT_EQ(body[1]["maskedCredentials"], "bob***Pw2");
  // The failure is logged (masked): wait for the line, then look at all
  // of stdout for the secrets, in clear and as sent (base64).
  auto logged =
      tunnel_.process->WaitForLine("systemcheck failed", absl::Seconds(20));
  ASSERT_TRUE(logged.ok()) << logged.status();
  const std::string output = tunnel_.process->Output();
  for (const std::string& secret :
       std::vector<std::string>{"FirstSecretPw1", "SecondSecretPw2",
                                absl::Base64Escape("alice:FirstSecretPw1")}) {
    EXPECT_THAT(r->body, Not(HasSubstr(secret)));
    EXPECT_THAT(output, Not(HasSubstr(secret)));
  }
}

}  // namespace
}  // namespace broker::testing
