#include "common/http/trace_context.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>

namespace broker::common::http {
namespace {

using ::testing::MatchesRegex;
using ::testing::Optional;
using ::testing::SizeIs;

constexpr char kExample[] =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

std::string TraceparentOf(const Headers& headers) {
  std::string value;
  int count = 0;
  for (const Header& h : headers) {
    if (h.name == "traceparent") {
      value = h.value;
      ++count;
    }
  }
  EXPECT_EQ(count, 1);
  return value;
}

TEST(TraceContextTest, ParsesTheSpecificationsExample) {
  std::optional<TraceParent> parsed = ParseTraceParent(kExample);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(parsed->parent_id, "00f067aa0ba902b7");
  EXPECT_EQ(parsed->flags, "01");
  EXPECT_EQ(parsed->ToHeader(), kExample);
}

TEST(TraceContextTest, RejectsWhatTheSpecificationRejects) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
           "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
       }) {
    EXPECT_EQ(ParseTraceParent(bad), std::nullopt) << bad;
  }
}

TEST(TraceContextTest, ALaterVersionIsReadByItsFirstFields) {
  EXPECT_THAT(
      ParseTraceParent(
          "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next"),
      Optional(testing::Field(&TraceParent::trace_id,
                              "4bf92f3577b34da6a3ce929d0e0e4736")));
}

TEST(TraceContextTest, NewTracesAreWellFormedAndDistinct) {
  TraceParent a = NewTrace();
  TraceParent b = NewTrace();
  EXPECT_THAT(a.ToHeader(), MatchesRegex("00-[0-9a-f]{32}-[0-9a-f]{16}-00"));
  EXPECT_TRUE(ParseTraceParent(a.ToHeader()).has_value());
  EXPECT_NE(a.trace_id, b.trace_id);
}

TEST(TraceContextTest, AHopKeepsTheTraceAndSampledBitWithANewParent) {
  Headers headers = {{"Accept", "*/*"}, {"TraceParent", kExample}};
  const std::string trace_id = ContinueTrace(headers);
  EXPECT_EQ(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  std::optional<TraceParent> next = ParseTraceParent(TraceparentOf(headers));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->trace_id, trace_id);
  EXPECT_NE(next->parent_id, "00f067aa0ba902b7");
  EXPECT_EQ(next->flags, "01");
  EXPECT_THAT(headers, SizeIs(2));
}

TEST(TraceContextTest, MissingOrInvalidStartsATraceAndDropsTheState) {
  Headers none = {{"accept", "*/*"}};
  const std::string started = ContinueTrace(none);
  EXPECT_THAT(started, MatchesRegex("[0-9a-f]{32}"));
  EXPECT_EQ(ParseTraceParent(TraceparentOf(none))->trace_id, started);

  Headers invalid = {{"traceparent", "garbage"}, {"tracestate", "k=v"}};
  const std::string fresh = ContinueTrace(invalid);
  EXPECT_EQ(ParseTraceParent(TraceparentOf(invalid))->trace_id, fresh);
  EXPECT_THAT(invalid, SizeIs(1));

  Headers twice = {{"traceparent", kExample}, {"traceparent", kExample}};
  EXPECT_NE(ContinueTrace(twice), "4bf92f3577b34da6a3ce929d0e0e4736");
}

TEST(TraceContextTest, ValidStateIsKept) {
  Headers headers = {{"traceparent", kExample}, {"tracestate", "k=v"}};
  ContinueTrace(headers);
  EXPECT_THAT(headers, SizeIs(2));
}

}  // namespace
}  // namespace broker::common::http
