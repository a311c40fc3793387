#include "services/ha-agent/config.h"

#include "tests/testing/status_matchers.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace broker::ha {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;

TEST(DispatcherBase, BrokerDispatcherBaseUrlComesFirst) {
  DispatcherBase base = ResolveDispatcherBase(
      "https://api.eu.snyk.io/", "https://api.other", "https://broker.snyk.io");
  EXPECT_EQ(base.url, "https://api.eu.snyk.io");
  EXPECT_EQ(base.source, DispatcherBaseSource::kDispatcherBaseUrl);
  EXPECT_EQ(DispatcherBaseSourceName(base.source),
            "BROKER_DISPATCHER_BASE_URL");
}

TEST(DispatcherBase, ThenApiBaseUrl) {
  DispatcherBase base = ResolveDispatcherBase("", "https://api.other//",
                                              "https://broker.snyk.io");
  EXPECT_EQ(base.url, "https://api.other");
  EXPECT_EQ(base.source, DispatcherBaseSource::kApiBaseUrl);
}

TEST(DispatcherBase, ThenDerivedFromTheServerUrl) {
  EXPECT_EQ(ResolveDispatcherBase("", "", "https://broker.snyk.io").url,
            "https://api.snyk.io");
  EXPECT_EQ(ResolveDispatcherBase("", "", "https://broker.eu.snyk.io/").url,
            "https://api.eu.snyk.io");
  DispatcherBase base =
      ResolveDispatcherBase("", "", "https://broker2.us.snyk.io");
  EXPECT_EQ(base.url, "https://api.us.snyk.io");
  EXPECT_EQ(base.source, DispatcherBaseSource::kServerUrl);
}

TEST(DispatcherBase, ThenTheDefault) {
  // Unlike Snyk, a server URL that does not name a broker host is not used
  // as the dispatcher.
  for (const char* server : {"", "http://127.0.0.1:7342"}) {
    DispatcherBase base = ResolveDispatcherBase("", "", server);
    EXPECT_EQ(base.url, "https://api.snyk.io") << server;
    EXPECT_EQ(base.source, DispatcherBaseSource::kDefault);
  }
}

TEST(TunnelUrl, TheDispatchersAttributeWins) {
  EXPECT_EQ(ResolveTunnelUrl("3", "https://pod-3:7342",
                             "https://broker-server-{server_id}:7342",
                             "https://broker.example.com"),
            "https://pod-3:7342");
}

TEST(TunnelUrl, ThenTheTemplate) {
  EXPECT_EQ(ResolveTunnelUrl(
                "2", "", "https://broker-server-{server_id}.broker-server:7342",
                "https://broker.example.com"),
            "https://broker-server-2.broker-server:7342");
  EXPECT_EQ(ResolveTunnelUrl("7", "", "http://{server_id}.{server_id}:1", ""),
            "http://7.7:1");
}

TEST(TunnelUrl, ThenTheServerUrlWithAQueryParameter) {
  EXPECT_EQ(ResolveTunnelUrl("0", "", "", "https://broker.example.com"),
            "https://broker.example.com?server_id=0");
  EXPECT_EQ(ResolveTunnelUrl("0", "", "", "https://broker.example.com/?a=b"),
            "https://broker.example.com/?a=b&server_id=0");
  EXPECT_EQ(ResolveTunnelUrl("a b", "", "", "http://h:1/p?"),
            "http://h:1/p?server_id=a%20b");
}

TEST(TunnelUrl, EmptyWhenNothingIsKnown) {
  EXPECT_EQ(ResolveTunnelUrl("0", "", "", ""), "");
}

HaAgentConfig GoodConfig() {
  HaAgentConfig config;
  config.token = "abc";
  config.ha_enabled = true;
  config.dispatcher = ResolveDispatcherBase("http://127.0.0.1:1", "", "");
  return config;
}

TEST(Validate, AcceptsAMinimalHaConfig) {
  EXPECT_THAT(Validate(GoodConfig()), IsOk());
}

TEST(Validate, NamesTheVariableOfABadDispatcherUrl) {
  HaAgentConfig config = GoodConfig();
  config.dispatcher = ResolveDispatcherBase("", "ftp://x", "");
  EXPECT_THAT(Validate(config), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("API_BASE_URL: ")));
}

TEST(Validate, RejectsATemplateWithoutThePlaceholder) {
  HaAgentConfig config = GoodConfig();
  config.server_url_template = "https://broker-server:7342";
  EXPECT_THAT(Validate(config),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("BROKER_SERVER_URL_TEMPLATE")));
}

TEST(Validate, HaOffNeedsTheServerUrl) {
  HaAgentConfig config = GoodConfig();
  config.ha_enabled = false;
  EXPECT_THAT(Validate(config), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("BROKER_SERVER_URL")));
  config.server_url = "http://127.0.0.1:7342";
  EXPECT_THAT(Validate(config), IsOk());
}

TEST(Validate, PrefixStartsWithASlash) {
  HaAgentConfig config = GoodConfig();
  config.dispatcher_url_prefix = "hidden/broker";
  EXPECT_THAT(Validate(config), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("DISPATCHER_URL_PREFIX")));
}

}  // namespace
}  // namespace broker::ha
