#include "common/env_config.h"

#include "tests/testing/status_matchers.h"

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <cstdlib>
#include <string>
#include <utility>

namespace broker::common {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

EnvReader Env(EnvReader::Map vars) { return EnvReader(std::move(vars)); }

TEST(EnvReaderTest, RequiredReturnsTheValueAsIs) {
  const EnvReader env = Env({{"BROKER_TOKEN", " abc "}});
  auto value = env.Required("BROKER_TOKEN");
  ASSERT_THAT(value, IsOk());
  EXPECT_EQ(*value, " abc ");
}

TEST(EnvReaderTest, RequiredMissingOrEmptyNamesTheVariable) {
  const EnvReader env = Env({{"EMPTY", ""}});
  EXPECT_THAT(env.Required("BROKER_TOKEN"),
              StatusIs(kInvalid, "BROKER_TOKEN: required but not set"));
  EXPECT_THAT(env.Required("EMPTY"),
              StatusIs(kInvalid, "EMPTY: required but empty"));
}

TEST(EnvReaderTest, RequiredNeverEchoesTheValue) {
  // Nothing to echo on success, but a lookup of another name must not leak
  // a neighbouring secret either.
  const EnvReader env = Env({{"SECRET", "s3cr3t-value"}});
  EXPECT_THAT(env.Required("OTHER"),
              StatusIs(kInvalid, Not(HasSubstr("s3cr3t"))));
}

TEST(EnvReaderTest, OptionalFallsBackWhenUnsetOrEmpty) {
  const EnvReader env = Env({{"SET", "value"}, {"EMPTY", ""}});
  EXPECT_EQ(env.Optional("SET", "default"), "value");
  EXPECT_EQ(env.Optional("EMPTY", "default"), "default");
  EXPECT_EQ(env.Optional("UNSET", "default"), "default");
}

TEST(EnvReaderTest, PortAcceptsTheRange) {
  const EnvReader env = Env({{"LOW", "1"},
                             {"HIGH", "65535"},
                             {"SPACED", " 8000\n"},
                             {"EMPTY", ""},
                             {"ZERO", "0"}});
  EXPECT_EQ(*env.Port("LOW", 7341), 1);
  EXPECT_EQ(*env.Port("HIGH", 7341), 65535);
  EXPECT_EQ(*env.Port("SPACED", 7341), 8000);
  EXPECT_EQ(*env.Port("UNSET", 7341), 7341);
  EXPECT_EQ(*env.Port("EMPTY", 7341), 7341);
  EXPECT_EQ(*env.Port("ZERO", 7341, PortZero::kAllowed), 0);
}

TEST(EnvReaderTest, PortErrorsNameTheVariableAndValue) {
  const EnvReader env = Env({{"PORT", "abc"},
                             {"NEG", "-1"},
                             {"PLUS", "+80"},
                             {"BIG", "65536"},
                             {"HUGE", "99999999999999999999999"},
                             {"ZERO", "0"},
                             {"FRACTION", "80.5"}});
  EXPECT_THAT(
      env.Port("PORT", 1),
      StatusIs(kInvalid, "PORT: \"abc\" is not a port number (1..65535)"));
  for (const char* name : {"NEG", "PLUS", "BIG", "HUGE", "ZERO", "FRACTION"}) {
    EXPECT_THAT(env.Port(name, 1),
                StatusIs(kInvalid, AllOf(StartsWith(std::string(name) + ": "),
                                         HasSubstr("not a port number"))))
        << name;
  }
  EXPECT_THAT(
      env.Port("BIG", 1, PortZero::kAllowed),
      StatusIs(kInvalid, "BIG: \"65536\" is not a port number (0..65535)"));
}

TEST(EnvReaderTest, BoolParsesTrueYesFalseNoAndEmpty) {
  const EnvReader env = Env({{"T1", "true"},
                             {"T2", "TRUE"},
                             {"T3", "yes"},
                             {"T4", " Yes "},
                             {"F1", "false"},
                             {"F2", "No"},
                             {"F3", ""}});
  for (const char* name : {"T1", "T2", "T3", "T4"}) {
    auto value = env.Bool(name, false);
    ASSERT_THAT(value, IsOk()) << name;
    EXPECT_TRUE(*value) << name;
  }
  for (const char* name : {"F1", "F2", "F3"}) {
    auto value = env.Bool(name, true);
    ASSERT_THAT(value, IsOk()) << name;
    EXPECT_FALSE(*value) << name;
  }
  EXPECT_TRUE(*env.Bool("UNSET", true));
  EXPECT_FALSE(*env.Bool("UNSET", false));
}

TEST(EnvReaderTest, BoolErrorNamesTheVariable) {
  const EnvReader env = Env({{"BROKER_HA_MODE_ENABLED", "1"}, {"Y", "y"}});
  EXPECT_THAT(env.Bool("BROKER_HA_MODE_ENABLED", false),
              StatusIs(kInvalid,
                       "BROKER_HA_MODE_ENABLED: \"1\" is not a "
                       "boolean (want true, yes, false or no)"));
  EXPECT_THAT(env.Bool("Y", false), StatusIs(kInvalid, StartsWith("Y: ")));
}

TEST(EnvReaderTest, IntegerIsBoundedAndNamesTheVariable) {
  const EnvReader env = Env({{"MAX", "4"},
                             {"SP", " 0 "},
                             {"EMPTY", ""},
                             {"HIGH", "65"},
                             {"WORD", "four"}});
  EXPECT_EQ(*env.Integer("MAX", 9, 0, 64), 4);
  EXPECT_EQ(*env.Integer("SP", 9, 0, 64), 0);
  EXPECT_EQ(*env.Integer("EMPTY", 9, 0, 64), 9);
  EXPECT_EQ(*env.Integer("UNSET", 9, 0, 64), 9);
  EXPECT_THAT(
      env.Integer("HIGH", 4, 0, 64),
      StatusIs(kInvalid, "HIGH: \"65\" is not a whole number from 0 to 64"));
  EXPECT_THAT(env.Integer("WORD", 4, 0, 64),
              StatusIs(kInvalid, StartsWith("WORD: ")));
}

TEST(EnvReaderTest, DurationMsParsesWholeMilliseconds) {
  const EnvReader env =
      Env({{"PING", "25000"}, {"ZERO", "0"}, {"EMPTY", ""}, {"SP", " 5 "}});
  EXPECT_EQ(*env.DurationMs("PING", absl::Seconds(1)), absl::Seconds(25));
  EXPECT_EQ(*env.DurationMs("ZERO", absl::Seconds(1)), absl::ZeroDuration());
  EXPECT_EQ(*env.DurationMs("SP", absl::Seconds(1)), absl::Milliseconds(5));
  EXPECT_EQ(*env.DurationMs("EMPTY", absl::Seconds(1)), absl::Seconds(1));
  EXPECT_EQ(*env.DurationMs("UNSET", absl::Minutes(20)), absl::Minutes(20));
}

TEST(EnvReaderTest, DurationMsErrorsNameTheVariable) {
  const EnvReader env = Env({{"SOCKET_PING_INTERVAL", "25s"},
                             {"NEG", "-5"},
                             {"FRACTION", "1.5"},
                             {"HUGE", "99999999999999999999"}});
  EXPECT_THAT(env.DurationMs("SOCKET_PING_INTERVAL", absl::Seconds(25)),
              StatusIs(kInvalid,
                       "SOCKET_PING_INTERVAL: \"25s\" is not a whole number "
                       "of milliseconds"));
  for (const char* name : {"NEG", "FRACTION", "HUGE"}) {
    EXPECT_THAT(env.DurationMs(name, absl::Seconds(1)),
                StatusIs(kInvalid, StartsWith(std::string(name) + ": ")))
        << name;
  }
}

TEST(EnvReaderTest, ErrorValuesAreEscapedAndTruncated) {
  const EnvReader env =
      Env({{"CTRL", "a\nb\"c"}, {"LONG", std::string(500, 'x')}});
  EXPECT_THAT(env.Port("CTRL", 1),
              StatusIs(kInvalid, HasSubstr(R"("a\nb\"c")")));
  auto status = env.Port("LONG", 1).status();
  EXPECT_THAT(status, StatusIs(kInvalid, HasSubstr("...\"")));
  EXPECT_LT(status.message().size(), 150U);
}

TEST(EnvReaderTest, HttpUrlParsesSchemeHostPortAndPath) {
  const EnvReader env = Env({
      {"A", "https://broker.snyk.io"},
      {"B", "http://127.0.0.1:8110/"},
      {"C", "HTTPS://API.Example.COM:8443/hidden/broker"},
      {"D", "http://[::1]:9000/x"},
      {"E", "http://broker-server.ns.svc.cluster.local"},
      {"F", "https://[2001:db8::1]"},
  });
  EXPECT_EQ(*env.HttpUrl("A"), (Url{"https", "broker.snyk.io", 443, ""}));
  EXPECT_EQ(*env.HttpUrl("B"), (Url{"http", "127.0.0.1", 8110, "/"}));
  EXPECT_EQ(*env.HttpUrl("C"),
            (Url{"https", "api.example.com", 8443, "/hidden/broker"}));
  EXPECT_EQ(*env.HttpUrl("D"), (Url{"http", "[::1]", 9000, "/x"}));
  EXPECT_EQ(*env.HttpUrl("E"),
            (Url{"http", "broker-server.ns.svc.cluster.local", 80, ""}));
  EXPECT_EQ(*env.HttpUrl("F"), (Url{"https", "[2001:db8::1]", 443, ""}));
}

TEST(EnvReaderTest, HttpUrlErrorsNameTheVariable) {
  const EnvReader env = Env({
      {"EMPTY", ""},
      {"FTP", "ftp://example.com"},
      {"NO_SCHEME", "broker.snyk.io"},
      {"NO_HOST", "https://"},
      {"NO_HOST_PORT", "https://:443/x"},
      {"PORT_ZERO", "http://h:0"},
      {"PORT_BIG", "http://h:70000"},
      {"PORT_TEXT", "http://h:http"},
      {"PORT_EMPTY", "http://h:"},
      {"QUERY", "http://h/x?a=1"},
      {"FRAGMENT", "http://h/#top"},
      {"SPACE", "http://h /x"},
      {"BAD_HOST", "http://h%41/"},
      {"TWO_COLONS", "http://h:1:2"},
      {"V6_OPEN", "http://[::1"},
      {"V6_BAD", "http://[zz]/"},
      {"V6_TAIL", "http://[::1]x/"},
  });
  EXPECT_THAT(env.HttpUrl("UNSET"),
              StatusIs(kInvalid, "UNSET: required but not set"));
  EXPECT_THAT(env.HttpUrl("EMPTY"),
              StatusIs(kInvalid, "EMPTY: required but empty"));
  EXPECT_THAT(
      env.HttpUrl("FTP"),
      StatusIs(kInvalid, "FTP: scheme must be http or https, got \"ftp\""));
  for (const char* name :
       {"NO_SCHEME", "NO_HOST", "NO_HOST_PORT", "PORT_ZERO", "PORT_BIG",
        "PORT_TEXT", "PORT_EMPTY", "QUERY", "FRAGMENT", "SPACE", "BAD_HOST",
        "TWO_COLONS", "V6_OPEN", "V6_BAD", "V6_TAIL"}) {
    EXPECT_THAT(env.HttpUrl(name),
                StatusIs(kInvalid, StartsWith(std::string(name) + ": ")))
        << name;
  }
}

TEST(EnvReaderTest, HttpUrlWithCredentialsIsRejectedWithoutEchoingThem) {
  const EnvReader env = Env({{"URL", "https://user:hunter2@example.com/"},
                             {"URL2", "ftp://user:hunter2@example.com/"},
                             {"URL3", "user:hunter2@example.com"}});
  for (const char* name : {"URL", "URL2", "URL3"}) {
    EXPECT_THAT(env.HttpUrl(name),
                StatusIs(kInvalid, AllOf(StartsWith(std::string(name) + ": "),
                                         Not(HasSubstr("hunter2")))))
        << name;
  }
}

TEST(EnvReaderTest, FromEnvironReadsTheProcessEnvironment) {
  ASSERT_EQ(setenv("BROKER_ENV_CONFIG_TEST_VAR", "a=b", /*overwrite=*/1), 0);
  const EnvReader env = EnvReader::FromEnviron();
  unsetenv("BROKER_ENV_CONFIG_TEST_VAR");
  // Split at the first '=' only.
  EXPECT_EQ(*env.Required("BROKER_ENV_CONFIG_TEST_VAR"), "a=b");
  // A snapshot: later changes are not seen.
  EXPECT_THAT(EnvReader::FromEnviron().Required("BROKER_ENV_CONFIG_TEST_VAR"),
              Not(IsOk()));
}

}  // namespace
}  // namespace broker::common
