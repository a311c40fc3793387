#include "services/webhook/webhook_config.h"

#include "common/env_config.h"
#include "tests/testing/status_matchers.h"

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>
#include <utility>

namespace broker::webhook {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

common::EnvReader::Map Minimal() {
  return {{"BROKER_TUNNEL_EGRESS_TARGET", "127.0.0.1:7344"},
          {"ACCEPT", "/etc/broker/accept.json"}};
}

absl::StatusOr<WebhookConfig> Parse(common::EnvReader::Map vars) {
  return WebhookConfigFromEnv(common::EnvReader(std::move(vars)));
}

absl::StatusOr<WebhookConfig> ParseWith(const std::string& name,
                                        const std::string& value) {
  common::EnvReader::Map vars = Minimal();
  vars[name] = value;
  return Parse(std::move(vars));
}

TEST(WebhookConfigTest, DefaultsWithTheRequiredVariablesOnly) {
  absl::StatusOr<WebhookConfig> config = Parse(Minimal());
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->port, 8001);
  EXPECT_EQ(config->egress_target, "ipv4:127.0.0.1:7344");
  EXPECT_EQ(config->accept_path, "/etc/broker/accept.json");
  EXPECT_EQ(config->timeout, absl::Seconds(30));
  EXPECT_EQ(config->max_body_bytes, 32U * 1024 * 1024);
  EXPECT_EQ(config->retry_buffer_bytes, 1024U * 1024);
  EXPECT_FALSE(config->api_fallback);
  EXPECT_EQ(config->api_base_url, "https://api.snyk.io");
  EXPECT_EQ(config->healthcheck_path, "/healthcheck");
  EXPECT_EQ(config->no_tunnel_wait, absl::Seconds(2));
  EXPECT_TRUE(config->tls_cert_file.empty());
  EXPECT_EQ(config->log_level, "info");
}

TEST(WebhookConfigTest, ReadsEveryVariable) {
  common::EnvReader::Map vars = Minimal();
  vars["PORT"] = "0";
  vars["HTTPS_CERT"] = "/tls/cert.pem";
  vars["HTTPS_KEY"] = "/tls/key.pem";
  vars["BROKER_WEBHOOK_TIMEOUT_MS"] = "1500";
  vars["BROKER_WEBHOOK_MAX_BODY_BYTES"] = "2048";
  vars["BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS"] = "0";
  vars["BROKER_WEBHOOK_RETRY_BUFFER_BYTES"] = "1024";
  vars["BROKER_WEBHOOK_API_FALLBACK"] = "yes";
  vars["API_BASE_URL"] = "https://api.eu.snyk.io/";
  vars["BROKER_TOKEN"] = "01234567-89ab-cdef-0123-456789abcdef";
  vars["CA_CERT"] = "/tls/ca.pem";
  vars["BROKER_HEALTHCHECK_PATH"] = "/health";
  vars["LOG_LEVEL"] = "debug";
  absl::StatusOr<WebhookConfig> config = Parse(std::move(vars));
  ASSERT_THAT(config, IsOk());
  EXPECT_EQ(config->port, 0);
  EXPECT_EQ(config->tls_cert_file, "/tls/cert.pem");
  EXPECT_EQ(config->tls_key_file, "/tls/key.pem");
  EXPECT_EQ(config->timeout, absl::Milliseconds(1500));
  EXPECT_EQ(config->max_body_bytes, 2048U);
  EXPECT_EQ(config->no_tunnel_wait, absl::ZeroDuration());
  EXPECT_EQ(config->retry_buffer_bytes, 1024U);
  EXPECT_TRUE(config->api_fallback);
  EXPECT_EQ(config->api_base_url, "https://api.eu.snyk.io");
  EXPECT_EQ(config->token, "01234567-89ab-cdef-0123-456789abcdef");
  EXPECT_EQ(config->ca_file, "/tls/ca.pem");
  EXPECT_EQ(config->healthcheck_path, "/health");
  EXPECT_EQ(config->log_level, "debug");
}

TEST(WebhookConfigTest, RequiredVariablesAreNamed) {
  EXPECT_THAT(Parse({{"ACCEPT", "a.json"}}),
              StatusIs(kInvalid,
                       "BROKER_TUNNEL_EGRESS_TARGET: required but "
                       "not set"));
  EXPECT_THAT(Parse({{"BROKER_TUNNEL_EGRESS_TARGET", "127.0.0.1:1"}}),
              StatusIs(kInvalid, StartsWith("ACCEPT: ")));
}

TEST(WebhookConfigTest, BadValuesNameTheirVariable) {
  EXPECT_THAT(ParseWith("PORT", "70000"),
              StatusIs(kInvalid, StartsWith("PORT: ")));
  EXPECT_THAT(ParseWith("BROKER_WEBHOOK_TIMEOUT_MS", "soon"),
              StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_TIMEOUT_MS: ")));
  EXPECT_THAT(ParseWith("BROKER_WEBHOOK_TIMEOUT_MS", "0"),
              StatusIs(kInvalid,
                       "BROKER_WEBHOOK_TIMEOUT_MS: must be more "
                       "than 0"));
  EXPECT_THAT(
      ParseWith("BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS", "-5"),
      StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS: ")));
  EXPECT_THAT(
      ParseWith("BROKER_WEBHOOK_MAX_BODY_BYTES", "-1"),
      StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_MAX_BODY_BYTES: ")));
  EXPECT_THAT(
      ParseWith("BROKER_WEBHOOK_MAX_BODY_BYTES", "0"),
      StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_MAX_BODY_BYTES: ")));
  EXPECT_THAT(
      ParseWith("BROKER_WEBHOOK_RETRY_BUFFER_BYTES", "99999999999"),
      StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_RETRY_BUFFER_BYTES: ")));
  EXPECT_THAT(ParseWith("BROKER_WEBHOOK_API_FALLBACK", "maybe"),
              StatusIs(kInvalid, StartsWith("BROKER_WEBHOOK_API_FALLBACK: ")));
  EXPECT_THAT(ParseWith("LOG_LEVEL", "verbose"),
              StatusIs(kInvalid, StartsWith("LOG_LEVEL: ")));
  EXPECT_THAT(ParseWith("BROKER_HEALTHCHECK_PATH", "health"),
              StatusIs(kInvalid, StartsWith("BROKER_HEALTHCHECK_PATH: ")));
  EXPECT_THAT(ParseWith("HTTPS_CERT", "/tls/cert.pem"),
              StatusIs(kInvalid, StartsWith("HTTPS_KEY: ")));
  EXPECT_THAT(ParseWith("HTTPS_KEY", "/tls/key.pem"),
              StatusIs(kInvalid, StartsWith("HTTPS_CERT: ")));
  EXPECT_THAT(ParseWith("BROKER_TUNNEL_EGRESS_TARGET", "a:1,b:2"),
              StatusIs(kInvalid, StartsWith("BROKER_TUNNEL_EGRESS_TARGET: ")));
}

TEST(WebhookConfigTest, FallbackNeedsTheTokenAndAUrl) {
  common::EnvReader::Map vars = Minimal();
  vars["BROKER_WEBHOOK_API_FALLBACK"] = "true";
  EXPECT_THAT(Parse(vars), StatusIs(kInvalid, StartsWith("BROKER_TOKEN: ")));
  const std::string token = "01234567-89ab-cdef-0123-456789abcdef";
  vars["BROKER_TOKEN"] = token;
  vars["API_BASE_URL"] = "api.snyk.io";
  absl::StatusOr<WebhookConfig> config = Parse(vars);
  EXPECT_THAT(config, StatusIs(kInvalid, StartsWith("API_BASE_URL: ")));
  EXPECT_THAT(std::string(config.status().message()), Not(HasSubstr(token)));
  vars.erase("API_BASE_URL");
  EXPECT_THAT(Parse(vars), IsOk());
}

TEST(WebhookConfigTest, WithoutTheFallbackNoTokenIsNeeded) {
  common::EnvReader::Map vars = Minimal();
  vars["BROKER_WEBHOOK_API_FALLBACK"] = "false";
  vars["API_BASE_URL"] = "not a url";  // unused
  EXPECT_THAT(Parse(vars), IsOk());
}

TEST(NormalizeEgressTargetTest, ListsOfAddressesBecomeSockaddrTargets) {
  EXPECT_EQ(*NormalizeEgressTarget("127.0.0.1:1,127.0.0.1:2"),
            "ipv4:127.0.0.1:1,127.0.0.1:2");
  EXPECT_EQ(*NormalizeEgressTarget(" 10.0.0.1:7344 , 10.0.0.2:7344 ,"),
            "ipv4:10.0.0.1:7344,10.0.0.2:7344");
  EXPECT_EQ(*NormalizeEgressTarget("[::1]:1,[fe80::1]:2"),
            "ipv6:[::1]:1,[fe80::1]:2");
}

TEST(NormalizeEgressTargetTest, OneHostNameIsResolvedByDns) {
  EXPECT_EQ(*NormalizeEgressTarget("broker-tunnel-egress.broker.svc:7344"),
            "dns:///broker-tunnel-egress.broker.svc:7344");
  EXPECT_EQ(*NormalizeEgressTarget("localhost:7344"), "dns:///localhost:7344");
}

TEST(NormalizeEgressTargetTest, TargetsWithASchemeAreKept) {
  for (const char* target :
       {"dns:///workers:7344", "dns://10.0.0.53/workers:7344",
        "ipv4:127.0.0.1:1,127.0.0.1:2", "ipv6:[::1]:1", "unix:/run/w.sock"}) {
    EXPECT_EQ(*NormalizeEgressTarget(target), target);
  }
}

TEST(NormalizeEgressTargetTest, RefusesWhatGrpcCannotResolve) {
  for (const char* target :
       {"", "  ", ",", "dns:", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
        "127.0.0.1:x", ":7344", "a:1,b:2", "127.0.0.1:1,[::1]:2",
        "127.0.0.1:1,workers:2", "[::1:7344", "[zz]:7344", "bad host:1"}) {
    EXPECT_THAT(NormalizeEgressTarget(target),
                StatusIs(kInvalid, StartsWith("BROKER_TUNNEL_EGRESS_TARGET: ")))
        << "target: \"" << target << "\"";
  }
}

TEST(WebhookConfigTest, HelpNamesEveryVariable) {
  for (const char* name :
       {"BROKER_TUNNEL_EGRESS_TARGET", "ACCEPT", "PORT", "HTTPS_CERT",
        "HTTPS_KEY", "BROKER_WEBHOOK_TIMEOUT_MS",
        "BROKER_WEBHOOK_MAX_BODY_BYTES", "BROKER_WEBHOOK_RETRY_BUFFER_BYTES",
        "BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS", "BROKER_WEBHOOK_API_FALLBACK",
        "API_BASE_URL", "BROKER_TOKEN", "CA_CERT", "BROKER_HEALTHCHECK_PATH",
        "LOG_LEVEL"}) {
    EXPECT_THAT(std::string(kWebhookHelp), HasSubstr(name));
  }
}

}  // namespace
}  // namespace broker::webhook
