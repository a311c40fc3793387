#include "common/logging.h"

#include "tests/testing/scoped_log_capture.h"
#include "tests/testing/status_matchers.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace broker::common {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::ScopedLogCapture;
using ::broker::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::SizeIs;

// Counts how often it is formatted, to prove disabled lines format nothing.
struct Counted {
  std::atomic<int>* count;
};

int g_field_evaluations = 0;

std::string ExpensiveField() {
  ++g_field_evaluations;
  return "expensive";
}

}  // namespace
}  // namespace broker::common

template <>
struct fmt::formatter<broker::common::Counted> : fmt::formatter<int> {
  template <typename FormatContext>
  auto format(const broker::common::Counted& c, FormatContext& ctx) const
      -> decltype(ctx.out()) {
    const int n = ++*c.count;
    return fmt::formatter<int>::format(n, ctx);
  }
};

namespace broker::common {
namespace {

nlohmann::json OnlyRecord(const ScopedLogCapture& capture) {
  std::vector<nlohmann::json> records = capture.Records();
  EXPECT_THAT(records, SizeIs(1));
  if (records.empty()) return nlohmann::json();
  return records.front();
}

TEST(LoggingTest, ParseLogLevelAcceptsTheFourNames) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("info"), LogLevel::kInfo);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
}

TEST(LoggingTest, InitLoggingRejectsOtherNamesNamingTheValue) {
  for (const char* bad : {"verbose", "INFO", "", "trace", "30"}) {
    EXPECT_THAT(InitLogging(bad),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr(absl::StrCat("\"", bad, "\""))))
        << bad;
  }
}

TEST(LoggingTest, InitLoggingSetsTheLevel) {
  const LogLevel before = GetLogLevel();
  ASSERT_THAT(InitLogging("warn"), IsOk());
  EXPECT_EQ(GetLogLevel(), LogLevel::kWarn);
  EXPECT_FALSE(ShouldLog(LogComponent::kTunnel, LogLevel::kInfo));
  EXPECT_TRUE(ShouldLog(LogComponent::kTunnel, LogLevel::kWarn));
  EXPECT_TRUE(ShouldLog(LogComponent::kTunnel, LogLevel::kError));
  ASSERT_THAT(InitLogging("debug"), IsOk());
  EXPECT_TRUE(ShouldLog(LogComponent::kHa, LogLevel::kDebug));
  SetLogLevel(before);
}

TEST(LoggingTest, InitLoggingNamesTheServiceOnEveryLine) {
  const LogLevel before = GetLogLevel();
  ASSERT_THAT(InitLogging("info", "broker-test"), IsOk());
  {
    ScopedLogCapture capture(LogLevel::kInfo);
    BROKER_LOG(kServer, kInfo, {{"service", "spoofed"}}, "one");
    const nlohmann::json record = OnlyRecord(capture);
    EXPECT_EQ(record["service"], "broker-test");
    EXPECT_EQ(record["field.service"], "spoofed");
  }
  ASSERT_THAT(InitLogging("info"), IsOk());
  {
    ScopedLogCapture capture(LogLevel::kInfo);
    BROKER_LOG(kServer, kInfo, {}, "two");
    EXPECT_FALSE(OnlyRecord(capture).contains("service"));
  }
  SetLogLevel(before);
}

TEST(LoggingTest, LineIsOneJsonObjectWithTheStandardMembers) {
  ScopedLogCapture capture(LogLevel::kInfo);
  BROKER_LOG(kTunnel, kInfo, {}, "Relayed {} bytes to {}", 512, "github");
  const nlohmann::json record = OnlyRecord(capture);
  ASSERT_TRUE(record.is_object()) << capture.Lines().front();
  EXPECT_EQ(record["msg"], "Relayed 512 bytes to github");
  EXPECT_EQ(record["level"], "info");
  EXPECT_EQ(record["component"], "tunnel");
  ASSERT_TRUE(record["time"].is_string());
  EXPECT_THAT(
      record["time"].get<std::string>(),
      MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                   "[.][0-9]{3}Z"));
  EXPECT_THAT(record, SizeIs(4));
  // Member order is fixed: time, level, component, msg.
  EXPECT_THAT(capture.Lines().front(),
              MatchesRegex(R"(\{"time":"[^"]*","level":"info",)"
                           R"("component":"tunnel","msg":.*\})"));
}

TEST(LoggingTest, EveryLevelAndComponentHasItsName) {
  ScopedLogCapture capture(LogLevel::kDebug);
  BROKER_LOG(kServer, kDebug, {}, "a");
  BROKER_LOG(kHa, kInfo, {}, "b");
  BROKER_LOG(kWebhook, kWarn, {}, "c");
  BROKER_LOG(kDispatcher, kError, {}, "d");
  BROKER_LOG(kGrpc, kInfo, {}, "e");
  BROKER_LOG(kFilters, kInfo, {}, "f");
  BROKER_LOG(kTunnel, kInfo, {}, "g");
  std::vector<std::string> levels;
  std::vector<std::string> components;
  for (const nlohmann::json& record : capture.Records()) {
    levels.push_back(record["level"]);
    components.push_back(record["component"]);
  }
  EXPECT_THAT(levels, ElementsAre("debug", "info", "warn", "error", "info",
                                  "info", "info"));
  EXPECT_THAT(components, ElementsAre("server", "ha", "webhook", "dispatcher",
                                      "grpc", "filters", "tunnel"));
}

TEST(LoggingTest, FieldsBecomeTypedMembers) {
  ScopedLogCapture capture(LogLevel::kInfo);
  const std::string request_id = "r-1";
  const std::vector<LogField> more = {{"extra", "x"}};
  BROKER_LOG(kServer, kInfo,
             {{"request_id", request_id},
              {"hashed_token", absl::string_view("9f86d0")},
              {"count", 3},
              {"big", std::uint64_t{18446744073709551615ULL}},
              {"negative", -7L},
              {"ratio", 0.5},
              {"ok", true},
              {"std_view", std::string_view("sv")},
              {"nan", std::nan("")}},
             "with fields");
  BROKER_LOG(kServer, kInfo, more, "fields from a vector");
  const std::vector<nlohmann::json> records = capture.Records();
  ASSERT_THAT(records, SizeIs(2));
  const nlohmann::json& record = records[0];
  EXPECT_EQ(record["request_id"], "r-1");
  EXPECT_EQ(record["hashed_token"], "9f86d0");
  EXPECT_EQ(record["count"], 3);
  EXPECT_EQ(record["big"].get<std::uint64_t>(), 18446744073709551615ULL);
  EXPECT_EQ(record["negative"], -7);
  EXPECT_EQ(record["ratio"], 0.5);
  EXPECT_EQ(record["ok"], true);
  EXPECT_EQ(record["std_view"], "sv");
  EXPECT_TRUE(record["nan"].is_null());
  EXPECT_EQ(records[1]["extra"], "x");
}

TEST(LoggingTest, FieldsCannotOverwriteTheStandardMembers) {
  ScopedLogCapture capture(LogLevel::kInfo);
  BROKER_LOG(kServer, kInfo,
             {{"msg", "spoofed"}, {"level", "error"}, {"time", "0"}},
             "real message");
  const nlohmann::json record = OnlyRecord(capture);
  EXPECT_EQ(record["msg"], "real message");
  EXPECT_EQ(record["level"], "info");
  EXPECT_EQ(record["field.msg"], "spoofed");
  EXPECT_EQ(record["field.level"], "error");
  EXPECT_EQ(record["field.time"], "0");
  // No duplicate keys: the raw line has exactly one "msg" member.
  const std::string line = capture.Lines().front();
  EXPECT_EQ(line.find("\"msg\""), line.rfind("\"msg\""));
}

TEST(LoggingTest, DisabledLevelFormatsNothingAndEvaluatesNoField) {
  ScopedLogCapture capture(LogLevel::kInfo);
  std::atomic<int> formatted{0};
  g_field_evaluations = 0;
  BROKER_LOG(kTunnel, kDebug, {{"f", ExpensiveField()}}, "value {}",
             Counted{&formatted});
  EXPECT_EQ(formatted.load(), 0);
  EXPECT_EQ(g_field_evaluations, 0);
  EXPECT_THAT(capture.Lines(), SizeIs(0));

  BROKER_LOG(kTunnel, kInfo, {{"f", ExpensiveField()}}, "value {}",
             Counted{&formatted});
  EXPECT_EQ(formatted.load(), 1);
  EXPECT_EQ(g_field_evaluations, 1);
  const nlohmann::json record = OnlyRecord(capture);
  EXPECT_EQ(record["msg"], "value 1");
  EXPECT_EQ(record["f"], "expensive");
}

TEST(LoggingTest, LevelFilteringAtWarn) {
  ScopedLogCapture capture(LogLevel::kWarn);
  BROKER_LOG(kHa, kDebug, {}, "debug");
  BROKER_LOG(kHa, kInfo, {}, "info");
  BROKER_LOG(kHa, kWarn, {}, "warn");
  BROKER_LOG(kHa, kError, {}, "error");
  EXPECT_THAT(capture.Messages(), ElementsAre("warn", "error"));
}

TEST(LoggingTest, CaptureRestoresTheLevel) {
  SetLogLevel(LogLevel::kInfo);
  {
    ScopedLogCapture capture(LogLevel::kDebug);
    EXPECT_EQ(GetLogLevel(), LogLevel::kDebug);
  }
  EXPECT_EQ(GetLogLevel(), LogLevel::kInfo);
}

TEST(LoggingTest, CaptureStopsWhenDestroyed) {
  ScopedLogCapture outer(LogLevel::kInfo);
  {
    ScopedLogCapture inner;
    BROKER_LOG(kServer, kInfo, {}, "both");
    EXPECT_THAT(inner.Messages(), ElementsAre("both"));
  }
  BROKER_LOG(kServer, kInfo, {}, "outer only");
  EXPECT_THAT(outer.Messages(), ElementsAre("both", "outer only"));
  EXPECT_THAT(outer.ExtractLines(), SizeIs(2));
  EXPECT_THAT(outer.Lines(), SizeIs(0));
}

TEST(LoggingTest, QuotesBackslashesAndControlCharactersAreEscaped) {
  ScopedLogCapture capture(LogLevel::kInfo);
  const std::string nasty =
      std::string("q\"b\\n\nr\rt\tb\bf\fnul") + '\0' + "\x01\x1f\x7f end";
  BROKER_LOG(kWebhook, kInfo, {{"value", nasty}, {"k\"ey\n", 1}}, "m {}",
             nasty);
  const std::vector<std::string> lines = capture.Lines();
  ASSERT_THAT(lines, SizeIs(1));
  // One physical line, no raw control characters.
  for (char c : lines[0]) {
    EXPECT_GE(static_cast<unsigned char>(c), 0x20) << lines[0];
  }
  EXPECT_THAT(lines[0], HasSubstr(R"(\u0000\u0001\u001f)"));
  EXPECT_THAT(lines[0], HasSubstr(R"(q\"b\\n\nr\rt\tb\bf\f)"));
  const nlohmann::json record = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(record["msg"], "m " + nasty);
  EXPECT_EQ(record["value"], nasty);
  EXPECT_EQ(record["k\"ey\n"], 1);
}

TEST(LoggingTest, InvalidUtf8IsReplacedAndValidUtf8Kept) {
  ScopedLogCapture capture(LogLevel::kInfo);
  struct Case {
    std::string input;
    std::string expected;
  };
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  const std::vector<Case> cases = {
      {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
       "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"},  // é € 😀 kept
      {"a\xFF"
       "b",
       "a" + r + "b"},  // never a lead byte
      {"a\x80"
       "b",
       "a" + r + "b"},  // stray continuation
      {"a\xC0\xAF"
       "b",
       "a" + r + r + "b"},  // overlong '/'
      {"a\xE0\x80\xAF"
       "b",
       "a" + r + r + r + "b"},  // overlong 3-byte
      {"a\xED\xA0\x80"
       "b",
       "a" + r + r + r + "b"},  // surrogate U+D800
      {"a\xF4\x90\x80\x80"
       "b",
       "a" + r + r + r + r + "b"},  // > U+10FFFF
      {"a\xE2\x82"
       "b",
       "a" + r + "b"},             // truncated: one replacement
      {"a\xF0\x9F\x98", "a" + r},  // truncated at the end
      {"\xC3", r},                 // lone lead byte
  };
  for (const Case& c : cases) {
    BROKER_LOG(kFilters, kInfo, {{"v", c.input}}, "{}", c.input);
  }
  const std::vector<std::string> lines = capture.Lines();
  ASSERT_EQ(lines.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    // nlohmann::json::parse throws on invalid UTF-8: parsing proves it.
    const nlohmann::json record =
        nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(record.is_discarded()) << lines[i];
    EXPECT_EQ(record["msg"], cases[i].expected) << i;
    EXPECT_EQ(record["v"], cases[i].expected) << i;
  }
}

TEST(LoggingTest, BadFormatStringIsLoggedNotThrown) {
  ScopedLogCapture capture(LogLevel::kInfo);
  const std::string format = "missing {} {}";  // two fields, one argument
  BROKER_LOG(kServer, kInfo, {}, fmt::runtime(format), 1);
  const nlohmann::json record = OnlyRecord(capture);
  EXPECT_EQ(record["msg"], format);
  EXPECT_TRUE(record["format_error"].is_string());
}

TEST(LoggingTest, LinesGoToStdout) {
  SetLogLevel(LogLevel::kInfo);
  ::testing::internal::CaptureStdout();
  BROKER_LOG(kGrpc, kInfo, {{"k", "v"}}, "to stdout");
  FlushLogs();
  const std::string out = ::testing::internal::GetCapturedStdout();
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  const nlohmann::json record =
      nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(record.is_discarded()) << out;
  EXPECT_EQ(record["msg"], "to stdout");
  EXPECT_EQ(record["component"], "grpc");
  EXPECT_EQ(record["k"], "v");
}

TEST(LoggingTest, LinesFromManyThreadsDoNotInterleave) {
  ScopedLogCapture capture(LogLevel::kInfo);
  constexpr int kThreads = 4;
  constexpr int kLinesPerThread = 50;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kLinesPerThread; ++i) {
        BROKER_LOG(kDispatcher, kInfo, {{"thread", t}, {"i", i}},
                   "line {} of thread {}", i, t);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const std::vector<nlohmann::json> records = capture.Records();
  ASSERT_THAT(records, SizeIs(kThreads * kLinesPerThread));
  for (const nlohmann::json& record : records) {
    ASSERT_FALSE(record.is_discarded());
    EXPECT_EQ(record["msg"],
              absl::StrCat("line ", record["i"].get<int>(), " of thread ",
                           record["thread"].get<int>()));
  }
}

}  // namespace
}  // namespace broker::common
