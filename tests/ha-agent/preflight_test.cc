#include "services/ha-agent/preflight.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace broker::ha {
namespace {

using ::testing::HasSubstr;

TEST(ServerHealthTarget, PrefersTheHttpUrl) {
  HealthTarget t =
      ServerHealthTarget("http://10.0.0.1:7341/", "https://x:7342");
  EXPECT_EQ(t.url, "http://10.0.0.1:7341/healthcheck");
}

TEST(ServerHealthTarget, UsesAnIngressServerUrl) {
  EXPECT_EQ(ServerHealthTarget("", "https://broker.snyk.io").url,
            "https://broker.snyk.io/healthcheck");
  EXPECT_EQ(ServerHealthTarget("", "https://broker.snyk.io/?a=b").url,
            "https://broker.snyk.io/healthcheck");
}

TEST(ServerHealthTarget, SkipsATunnelPort) {
  HealthTarget t = ServerHealthTarget("", "http://127.0.0.1:7342");
  EXPECT_EQ(t.url, "");
  EXPECT_THAT(t.skip_reason, HasSubstr("BROKER_SERVER_HTTP_URL"));
  EXPECT_EQ(ServerHealthTarget("", "http://[::1]:7342").url, "");
  EXPECT_EQ(ServerHealthTarget("", "http://[::1]").url,
            "http://[::1]/healthcheck");
  EXPECT_THAT(ServerHealthTarget("", "").skip_reason, HasSubstr("not set"));
}

TEST(CheckClientUrl, Results) {
  v1::PreflightCheck unset = CheckClientUrl("");
  EXPECT_EQ(unset.result(), v1::PreflightCheck::SKIPPED);
  EXPECT_TRUE(unset.ok());
  EXPECT_EQ(unset.name(), "broker-client-url");

  v1::PreflightCheck good = CheckClientUrl("https://broker.corp.example:8000");
  EXPECT_EQ(good.result(), v1::PreflightCheck::PASSED);
  EXPECT_TRUE(good.ok());

  v1::PreflightCheck loopback = CheckClientUrl("http://localhost:8000");
  EXPECT_TRUE(loopback.ok());
  EXPECT_THAT(loopback.detail(), HasSubstr("loopback"));

  for (const char* bad : {"broker.corp:8000", "ftp://x", "http://"}) {
    v1::PreflightCheck check = CheckClientUrl(bad);
    EXPECT_EQ(check.result(), v1::PreflightCheck::FAILED) << bad;
    EXPECT_FALSE(check.ok());
    EXPECT_THAT(check.detail(), HasSubstr("BROKER_CLIENT_URL"));
  }
}

std::string WriteTemp(const std::string& name, const std::string& text) {
  std::string path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << text;
  return path;
}

TEST(CheckAcceptRules, Results) {
  EXPECT_EQ(CheckAcceptRules("").result(), v1::PreflightCheck::SKIPPED);
  const std::string good = WriteTemp(
      "ha-preflight-good.json",
      R"({"private":[{"method":"GET","path":"/x","origin":"http://o"}]})");
  EXPECT_EQ(CheckAcceptRules(good).result(), v1::PreflightCheck::PASSED);
  const std::string bad =
      WriteTemp("ha-preflight-bad.json", R"({"private":[{"method":1}]})");
  v1::PreflightCheck failed = CheckAcceptRules(bad);
  EXPECT_EQ(failed.result(), v1::PreflightCheck::FAILED);
  EXPECT_FALSE(failed.detail().empty());
  EXPECT_EQ(CheckAcceptRules("/nonexistent/accept.json").result(),
            v1::PreflightCheck::FAILED);
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

TEST(OneLine, IsPrintableAsciiAndBounded) {
  EXPECT_EQ(OneLine("a\nb\xc3\xa9"), "a b??");
  EXPECT_EQ(OneLine(std::string(500, 'x'), 10), "xxxxxxxxxx...");
}

}  // namespace
}  // namespace broker::ha
