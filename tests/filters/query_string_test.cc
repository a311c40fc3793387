// Table-driven tests of ParseQueryString against qs.parse.
//
// Expectations were produced with the npm package qs@6.13.0 (the `qs.parse`
// Snyk Broker calls) under node 20. A qs result that is a string is one value;
// an array of strings from a repeated plain name is `count` values, the first
// one kept; a name sent with brackets ("a[]", "a[b]", also percent-encoded)
// makes qs build an array or object, which is `structured` here.

#include "filters/query_string.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include <string>
#include <vector>

namespace broker::filters {
namespace {

using ::testing::IsEmpty;

// One parameter the query must yield.
struct Expected {
  absl::string_view name;
  absl::string_view value;  // ignored when structured
  int count;                // ignored when structured
  bool structured;
};

struct QueryCase {
  absl::string_view query;
  std::vector<Expected> params;  // all of them: no other name may appear
};

const std::vector<QueryCase>& Cases() {
  static const auto* const kCases = new std::vector<QueryCase>{
      // qs.parse("") => {}
      {"", {}},
      {"a=1", {{"a", "1", 1, false}}},
      {"a=1&b=2", {{"a", "1", 1, false}, {"b", "2", 1, false}}},
      // "+" is a space, in values and names.
      {"a=b+c", {{"a", "b c", 1, false}}},
      {"a+b=c", {{"a b", "c", 1, false}}},
      {"a=+", {{"a", " ", 1, false}}},
      {"a=%2b+", {{"a", "+ ", 1, false}}},
      {"a=%2B", {{"a", "+", 1, false}}},
      // Percent-decoding.
      {"a=%20x", {{"a", " x", 1, false}}},
      {"a=%41%42", {{"a", "AB", 1, false}}},
      {"a=x%26y", {{"a", "x&y", 1, false}}},
      {"a=1%26b%3D2", {{"a", "1&b=2", 1, false}}},
      {"a=%2F..%2Fx", {{"a", "/../x", 1, false}}},
      {"file_path=src%2Fpackage.json",
       {{"file_path", "src/package.json", 1, false}}},
      {"file_path=..%2Fpackage.json",
       {{"file_path", "../package.json", 1, false}}},
      {"file_path=a%2F..%2Fb", {{"file_path", "a/../b", 1, false}}},
      {"ref=main&file_path=**%2Fx",
       {{"ref", "main", 1, false}, {"file_path", "**/x", 1, false}}},
      {"a=**%2F*.json", {{"a", "**/*.json", 1, false}}},
      {"a=%C3%A9", {{"a", "\xc3\xa9", 1, false}}},
      {"a=%E2%82%AC", {{"a", "\xe2\x82\xac", 1, false}}},
      {"a=%F0%9F%98%80", {{"a", "\xf0\x9f\x98\x80", 1, false}}},
      // Decoded once only.
      {"a=%2525", {{"a", "%25", 1, false}}},
      {"a=%252e%252e", {{"a", "%2e%2e", 1, false}}},
      // Names are decoded too, and case-sensitive.
      {"%61=1", {{"a", "1", 1, false}}},
      {"a%20b=1", {{"a b", "1", 1, false}}},
      {"a=1&A=2", {{"a", "1", 1, false}, {"A", "2", 1, false}}},
      // A malformed escape keeps the whole string raw (decodeURIComponent
      // throws), "+" still becoming a space.
      {"a=%zz", {{"a", "%zz", 1, false}}},
      {"a=%41%zz", {{"a", "%41%zz", 1, false}}},
      {"a=%41+%zz", {{"a", "%41 %zz", 1, false}}},
      {"a=%4", {{"a", "%4", 1, false}}},
      {"a=%", {{"a", "%", 1, false}}},
      {"a=100%", {{"a", "100%", 1, false}}},
      {"a%zz=1", {{"a%zz", "1", 1, false}}},
      // Escapes that are not UTF-8 are malformed for decodeURIComponent.
      {"a=%e9", {{"a", "%e9", 1, false}}},
      {"a=%ff", {{"a", "%ff", 1, false}}},
      {"a=%c3", {{"a", "%c3", 1, false}}},
      {"a=%ED%A0%80", {{"a", "%ED%A0%80", 1, false}}},  // a surrogate
      {"a=%C0%AE", {{"a", "%C0%AE", 1, false}}},        // overlong "."
      {"a=%E0%80%AE", {{"a", "%E0%80%AE", 1, false}}},  // overlong "."
      {"a=%F0%80%80%80", {{"a", "%F0%80%80%80", 1, false}}},
      {"a=%F4%90%80%80", {{"a", "%F4%90%80%80", 1, false}}},  // > U+10FFFF
      {"a=%80", {{"a", "%80", 1, false}}},
      {"a=%C3%28", {{"a", "%C3%28", 1, false}}},
      {"a=%E9%zz", {{"a", "%E9%zz", 1, false}}},
      // One bad escape keeps every escape of the value raw, "%2F" included.
      {"file_path=x%2F%ED%A0%80%2Fpackage.json",
       {{"file_path", "x%2F%ED%A0%80%2Fpackage.json", 1, false}}},
      // Valid UTF-8 at the edges is decoded.
      {"a=%C2%80", {{"a", "\xc2\x80", 1, false}}},
      {"a=%ED%9F%BF", {{"a", "\xed\x9f\xbf", 1, false}}},
      {"a=%EE%80%80", {{"a", "\xee\x80\x80", 1, false}}},
      {"a=%EF%BF%BF", {{"a", "\xef\xbf\xbf", 1, false}}},
      {"a=%F4%8F%BF%BF", {{"a", "\xf4\x8f\xbf\xbf", 1, false}}},
      // No "=": the value is "".
      {"a", {{"a", "", 1, false}}},
      {"a&b", {{"a", "", 1, false}, {"b", "", 1, false}}},
      {"a=", {{"a", "", 1, false}}},
      // Only the first "=" splits.
      {"a==1", {{"a", "=1", 1, false}}},
      {"a=1=2", {{"a", "1=2", 1, false}}},
      // "&" is the only separator; empty pieces are skipped.
      {"a=1;b=2", {{"a", "1;b=2", 1, false}}},
      {"&&a=1&&", {{"a", "1", 1, false}}},
      {"a=1&&", {{"a", "1", 1, false}}},
      {"a= x", {{"a", " x", 1, false}}},
      // Repeated names: the first value, counted.
      {"a=1&a=2", {{"a", "1", 2, false}}},
      {"a=1&a=2&a=3", {{"a", "1", 3, false}}},
      {"a=&a=2", {{"a", "", 2, false}}},
      {"a=1&a", {{"a", "1", 2, false}}},
      {"a=1&b=2&a=3", {{"a", "1", 2, false}, {"b", "2", 1, false}}},
      // Brackets make the parameter structured.
      {"a[]=1", {{"a", "", 0, true}}},
      {"a[]", {{"a", "", 0, true}}},
      {"b=1&a[]=", {{"b", "1", 1, false}, {"a", "", 0, true}}},
      {"a[b]=1", {{"a", "", 0, true}}},
      {"a[0]=1", {{"a", "", 0, true}}},
      {"a%5B%5D=1", {{"a", "", 0, true}}},
      {"a%5b%5d=1", {{"a", "", 0, true}}},
      {"a%5Bb%5D=1", {{"a", "", 0, true}}},
      {"a=1&a[]=2", {{"a", "", 0, true}}},
      {"a[]=1&a=2", {{"a", "", 0, true}}},
      {"a=1&a[b]=2", {{"a", "", 0, true}}},
      {"a[b]=1&a=2", {{"a", "", 0, true}}},
      {"a[b][c][d][e][f][g]=1", {{"a", "", 0, true}}},
      {"a[100]=1", {{"a", "", 0, true}}},
      {"a[b]=1&a[c]=2", {{"a", "", 0, true}}},
      {"a[]=1&a[]=2&b=3", {{"a", "", 0, true}, {"b", "3", 1, false}}},
      // Unbalanced brackets are part of a plain name.
      {"a[=1", {{"a[", "1", 1, false}}},
      {"a]=1", {{"a]", "1", 1, false}}},
      {"a.b=1", {{"a.b", "1", 1, false}}},
      // An empty name is ignored.
      {"=1", {}},
      {"=", {}},
      {"=1&a=2", {{"a", "2", 1, false}}},
  };
  return *kCases;
}

TEST(QueryStringTest, ParsesLikeQs) {
  int checked = 0;
  for (const QueryCase& c : Cases()) {
    SCOPED_TRACE(absl::StrCat("qs.parse(\"", absl::CHexEscape(c.query), "\")"));
    const QueryParams params = ParseQueryString(c.query);
    for (const Expected& e : c.params) {
      ++checked;
      auto it = params.find(std::string(e.name));
      if (it == params.end()) {
        ADD_FAILURE() << "missing parameter \"" << absl::CHexEscape(e.name)
                      << "\"";
        continue;
      }
      const QueryValue& got = it->second;
      EXPECT_EQ(got.structured, e.structured) << "name " << e.name;
      if (e.structured) {
        EXPECT_GE(got.count, 1) << "name " << e.name;
        continue;
      }
      EXPECT_EQ(absl::CHexEscape(got.value), absl::CHexEscape(e.value))
          << "name " << e.name;
      EXPECT_EQ(got.count, e.count) << "name " << e.name;
    }
    EXPECT_EQ(params.size(), c.params.size());
    for (const auto& [name, value] : params) {
      bool expected = false;
      for (const Expected& e : c.params) expected |= e.name == name;
      EXPECT_TRUE(expected)
          << "unexpected parameter \"" << absl::CHexEscape(name) << "\"";
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(QueryStringTest, DecodesNulByte) {
  // qs.parse("a=%00") => {a: "\u0000"}
  const QueryParams params = ParseQueryString("a=%00&b=x%00y");
  ASSERT_TRUE(params.contains("a"));
  EXPECT_EQ(params.at("a").value, std::string(1, '\0'));
  ASSERT_TRUE(params.contains("b"));
  EXPECT_EQ(params.at("b").value, std::string("x\0y", 3));
}

TEST(QueryStringTest, OnlyTheFirstThousandPiecesAreParsed) {
  // qs.parse has parameterLimit 1000: it splits on "&" into at most 1000
  // pieces (empty ones count) and ignores the rest.
  std::string thousand;
  for (int i = 0; i < 1000; ++i) {
    absl::StrAppend(&thousand, i == 0 ? "" : "&", "p", i, "=", i);
  }
  {
    // qs.parse(thousand + "&file_path=x"): 1000 keys, no file_path.
    const QueryParams params =
        ParseQueryString(absl::StrCat(thousand, "&file_path=x"));
    EXPECT_FALSE(params.contains("file_path"));
    EXPECT_TRUE(params.contains("p999"));
    EXPECT_EQ(params.size(), 1000u);
  }
  {
    // qs.parse("file_path=x&" + thousand): file_path kept, p999 dropped.
    const QueryParams params =
        ParseQueryString(absl::StrCat("file_path=x&", thousand));
    ASSERT_TRUE(params.contains("file_path"));
    EXPECT_EQ(params.at("file_path").value, "x");
    EXPECT_TRUE(params.contains("p998"));
    EXPECT_FALSE(params.contains("p999"));
  }
  {
    // An empty piece counts towards the limit.
    std::string pieces;
    for (int i = 0; i < 999; ++i) {
      absl::StrAppend(&pieces, i == 0 ? "" : "&", "p", i, "=", i);
    }
    const QueryParams params =
        ParseQueryString(absl::StrCat(pieces, "&&file_path=x"));
    EXPECT_FALSE(params.contains("file_path"));
    EXPECT_EQ(params.size(), 999u);
  }
}

TEST(QueryStringTest, EmptyQueryHasNoParameters) {
  EXPECT_THAT(ParseQueryString(""), IsEmpty());
  EXPECT_THAT(ParseQueryString("&"), IsEmpty());
  EXPECT_THAT(ParseQueryString("&&&"), IsEmpty());
}

}  // namespace
}  // namespace broker::filters
