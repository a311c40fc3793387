// Semantics of RuleSet on small inline rule files, and how it reports bad
// input. The contract is docs/accept-rules.md.

#include "filters/rule_set.h"

#include "filters/diagnostic.h"
#include "filters/request.h"
#include "filters/rule.h"
#include "tests/testing/fixtures.h"
#include "tests/testing/status_matchers.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace broker::filters {
namespace {

using ::broker::testing::IsOk;
using ::broker::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::MatchesRegex;
using ::testing::Not;

constexpr RuleList kPrivate = RuleList::kPrivate;
constexpr RuleList kPublic = RuleList::kPublic;

// Loads `text` and fails the test when it does not load.
std::shared_ptr<const RuleSet> Load(absl::string_view text) {
  absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
      RuleSet::FromText(text, "accept.json");
  EXPECT_THAT(rules, IsOk()) << text;
  if (!rules.ok()) return nullptr;
  return *std::move(rules);
}

Decision Evaluate(const RuleSet& rules, RuleList list, absl::string_view method,
                  absl::string_view url,
                  const std::vector<HeaderField>& headers = {},
                  absl::string_view body = "") {
  return rules.Evaluate(list, RequestView{method, url, headers, body});
}

// Index of the rule that allows the request, or -1.
int Match(const RuleSet& rules, RuleList list, absl::string_view method,
          absl::string_view url, const std::vector<HeaderField>& headers = {},
          absl::string_view body = "") {
  const Decision decision = Evaluate(rules, list, method, url, headers, body);
  if (!decision.allowed()) return -1;
  return decision.rule->index;
}

int MatchGet(const RuleSet& rules, absl::string_view url) {
  return Match(rules, kPrivate, "GET", url);
}

// Errors (not warnings) of a load.
std::vector<Diagnostic> Errors(const LoadResult& result) {
  std::vector<Diagnostic> errors;
  for (const Diagnostic& d : result.diagnostics) {
    if (d.severity == Severity::kError) errors.push_back(d);
  }
  return errors;
}

// True when `result` has an error for `list`[`index`].
bool HasErrorAt(const LoadResult& result, absl::string_view list, int index) {
  for (const Diagnostic& d : Errors(result)) {
    if (d.list == list && d.index == index) return true;
  }
  return false;
}

std::string DiagnosticsToString(const LoadResult& result) {
  std::string out;
  for (const Diagnostic& d : result.diagnostics) {
    absl::StrAppend(&out, d.ToString(), "\n");
  }
  return out;
}

// --- Order and methods -------------------------------------------------------

TEST(RuleSetTest, FirstMatchingRuleInFileOrderWins) {
  auto rules = Load(R"json({"private": [
    {"method": "GET", "path": "/repos/:owner/:repo", "origin": "https://first"},
    {"method": "GET", "path": "/repos/acme/app", "origin": "https://second"},
    {"method": "any", "path": "/*", "origin": "https://third"}
  ]})json");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/repos/acme/app"), 0);
  EXPECT_EQ(MatchGet(*rules, "/repos/acme"), 2);
  EXPECT_EQ(Match(*rules, kPrivate, "POST", "/repos/acme/app"), 2);
  const Decision decision = Evaluate(*rules, kPrivate, "GET", "/repos/a/b");
  ASSERT_TRUE(decision.allowed());
  EXPECT_EQ(decision.rule->source.value("origin", ""), "https://first");
}

TEST(RuleSetTest, FirstMatchHoldsAcrossManyRules) {
  // Enough rules that a single-pass set match must still report the lowest.
  std::string text = R"({"private": [)";
  for (int i = 0; i < 300; ++i) {
    absl::StrAppend(&text, i == 0 ? "" : ",", R"({"path": "/filler/)", i,
                    R"("})");
  }
  absl::StrAppend(&text, R"(, {"path": "/target/:id"})",
                  R"(, {"path": "/target/*"})", R"(, {"path": "/*"}]})");
  auto rules = Load(text);
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/target/7"), 300);
  EXPECT_EQ(MatchGet(*rules, "/target/7/8"), 301);
  EXPECT_EQ(MatchGet(*rules, "/filler/299"), 299);
  EXPECT_EQ(MatchGet(*rules, "/filler/5"), 5);
  EXPECT_EQ(MatchGet(*rules, "/elsewhere"), 302);
}

TEST(RuleSetTest, MethodDefaultsToGet) {
  auto rules = Load(R"({"private": [{"path": "/a"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->rules(kPrivate)[0].method, "GET");
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/a"), 0);
  EXPECT_EQ(Match(*rules, kPrivate, "POST", "/a"), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "HEAD", "/a"), -1);
}

TEST(RuleSetTest, AnyMethodMatchesEveryMethod) {
  auto rules = Load(R"({"private": [{"method": "any", "path": "/a"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_TRUE(rules->rules(kPrivate)[0].AnyMethod());
  for (absl::string_view method :
       {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"}) {
    EXPECT_EQ(Match(*rules, kPrivate, method, "/a"), 0) << method;
  }
}

TEST(RuleSetTest, MethodsAreCaseInsensitive) {
  auto rules = Load(R"({"private": [
    {"method": "post", "path": "/a"},
    {"method": "Delete", "path": "/b"},
    {"method": "ANY", "path": "/c"}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->rules(kPrivate)[0].method, "POST");
  EXPECT_EQ(rules->rules(kPrivate)[1].method, "DELETE");
  EXPECT_TRUE(rules->rules(kPrivate)[2].AnyMethod());
  EXPECT_EQ(Match(*rules, kPrivate, "POST", "/a"), 0);
  EXPECT_EQ(Match(*rules, kPrivate, "pOsT", "/a"), 0);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/a"), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "delete", "/b"), 1);
  EXPECT_EQ(Match(*rules, kPrivate, "patch", "/c"), 2);
}

TEST(RuleSetTest, ListsAreIndependentAndMayBeMissing) {
  auto rules = Load(R"({"public": [{"method": "POST", "path": "/webhook"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_THAT(rules->rules(kPrivate), IsEmpty());
  EXPECT_EQ(Match(*rules, kPublic, "POST", "/webhook"), 0);
  const Decision decision = Evaluate(*rules, kPrivate, "POST", "/webhook");
  EXPECT_FALSE(decision.allowed());
  EXPECT_EQ(decision.cause, BlockCause::kNoMatchingRule);

  auto empty = Load("{}");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(MatchGet(*empty, "/"), -1);
}

// --- Paths: path-to-regexp 1.x
// -------------------------------------------------

TEST(RuleSetTest, PathsAreAnchoredCaseInsensitiveWithOptionalTrailingSlash) {
  auto rules = Load(R"({"private": [{"path": "/a/b"}, {"path": "/c/"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/a/b"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a/b/"), 0);
  EXPECT_EQ(MatchGet(*rules, "/A/B"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a/bc"), -1);
  EXPECT_EQ(MatchGet(*rules, "/a"), -1);
  EXPECT_EQ(MatchGet(*rules, "/x/a/b"), -1);
  EXPECT_EQ(MatchGet(*rules, "/c"), 1);
  EXPECT_EQ(MatchGet(*rules, "/c/"), 1);
}

TEST(RuleSetTest, LeadingSlashIsAdded) {
  auto rules = Load(R"({"private": [{"path": "a/:b"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->rules(kPrivate)[0].path.path(), "/a/:b");
  EXPECT_EQ(MatchGet(*rules, "/a/x"), 0);
}

TEST(RuleSetTest, NamedParameterIsOneRawSegment) {
  auto rules = Load(R"({"private": [{"path": "/repos/:owner"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/repos/acme"), 0);
  EXPECT_EQ(MatchGet(*rules, "/repos/acme/app"), -1);
  EXPECT_EQ(MatchGet(*rules, "/repos/"), -1);
  EXPECT_EQ(MatchGet(*rules, "/repos"), -1);
  // The path is matched raw: %2F is not "/".
  EXPECT_EQ(MatchGet(*rules, "/repos/acme%2Fapp"), 0);
}

TEST(RuleSetTest, EncodedSlashDoesNotSatisfyALiteralSlash) {
  auto rules = Load(R"({"private": [{"path": "/a/b/:c"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/a/b/x"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a%2Fb/x"), -1);
  EXPECT_EQ(MatchGet(*rules, "/a/b%2Fx"), -1);
}

TEST(RuleSetTest, OptionalParameter) {
  auto rules = Load(R"({"private": [{"path": "/files/:path?"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/files"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files/"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files/x"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files/x/y"), -1);
}

TEST(RuleSetTest, ZeroOrMoreAndOneOrMoreParameters) {
  auto rules = Load(R"({"private": [
    {"path": "/star/:path*"},
    {"path": "/plus/:path+"},
    {"path": "/contents/:path*/package.json"}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/star"), 0);
  EXPECT_EQ(MatchGet(*rules, "/star/a"), 0);
  EXPECT_EQ(MatchGet(*rules, "/star/a/b/c"), 0);
  EXPECT_EQ(MatchGet(*rules, "/plus"), -1);
  EXPECT_EQ(MatchGet(*rules, "/plus/a"), 1);
  EXPECT_EQ(MatchGet(*rules, "/plus/a/b/c"), 1);
  EXPECT_EQ(MatchGet(*rules, "/contents/package.json"), 2);
  EXPECT_EQ(MatchGet(*rules, "/contents/a/b/package.json"), 2);
  EXPECT_EQ(MatchGet(*rules, "/contents/a/b/package.json5"), -1);
}

TEST(RuleSetTest, AsteriskCrossesSlashes) {
  auto rules = Load(R"({"private": [
    {"path": "/raw/*"},
    {"path": "/files*/pom.xml"}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/raw/a/b/c.txt"), 0);
  EXPECT_EQ(MatchGet(*rules, "/raw/"), 0);
  EXPECT_EQ(MatchGet(*rules, "/raw"), -1);
  EXPECT_EQ(MatchGet(*rules, "/files/pom.xml"), 1);
  EXPECT_EQ(MatchGet(*rules, "/files/a/b/pom.xml"), 1);
  EXPECT_EQ(MatchGet(*rules, "/filesystem/pom.xml"), 1);
  EXPECT_EQ(MatchGet(*rules, "/files/pom.xml.bak"), -1);
}

TEST(RuleSetTest, RegexGroups) {
  auto rules = Load(R"json({"private": [
    {"path": "/items/:id(\\d+)"},
    {"path": "/blobs/([0-9a-f]{7,40})"},
    {"path": "/v:major(\\d+).:minor(\\d+)/x"}
  ]})json");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/items/42"), 0);
  EXPECT_EQ(MatchGet(*rules, "/items/abc"), -1);
  EXPECT_EQ(MatchGet(*rules, "/items/4a"), -1);
  EXPECT_EQ(MatchGet(*rules, "/blobs/9fceb02"), 1);
  EXPECT_EQ(MatchGet(*rules, "/blobs/9FCEB02"), 1);  // case-insensitive
  EXPECT_EQ(MatchGet(*rules, "/blobs/xyz1234"), -1);
  EXPECT_EQ(MatchGet(*rules, "/v1.2/x"), 2);
  EXPECT_EQ(MatchGet(*rules, "/v1/x"), -1);
}

TEST(RuleSetTest, LiteralCharactersAreNotRegexSyntax) {
  auto rules = Load(R"json({"private": [
    {"path": "/a.b"},
    {"path": "/c+d"},
    {"path": "/e|f"},
    {"path": "/g$h"},
    {"path": "/i\\(j\\)"},
    {"path": "/files/:name.json"},
    {"path": "/x*y"}
  ]})json");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/a.b"), 0);
  EXPECT_EQ(MatchGet(*rules, "/axb"), -1);
  EXPECT_EQ(MatchGet(*rules, "/c+d"), 1);
  EXPECT_EQ(MatchGet(*rules, "/ccd"), -1);
  EXPECT_EQ(MatchGet(*rules, "/e|f"), 2);
  EXPECT_EQ(MatchGet(*rules, "/e"), -1);
  EXPECT_EQ(MatchGet(*rules, "/f"), -1);
  EXPECT_EQ(MatchGet(*rules, "/g$h"), 3);
  EXPECT_EQ(MatchGet(*rules, "/i(j)"), 4);
  EXPECT_EQ(MatchGet(*rules, "/ij"), -1);
  EXPECT_EQ(MatchGet(*rules, "/files/a.json"), 5);
  EXPECT_EQ(MatchGet(*rules, "/files/a.b.json"), 5);
  EXPECT_EQ(MatchGet(*rules, "/files/ajson"), -1);
  EXPECT_EQ(MatchGet(*rules, "/xzzy"), 6);
  EXPECT_EQ(MatchGet(*rules, "/x/z/y"), 6);
}

TEST(RuleSetTest, EmptyValidAndEmptyValues) {
  auto rules = Load(R"({"private": [
    {"path": "/open", "valid": []},
    {"path": "/never", "valid": [{"queryParam": "q", "values": []}]},
    {"path": "/header", "valid": [{"header": "x-a", "values": []}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/open"), 0);
  EXPECT_EQ(MatchGet(*rules, "/never"), -1);
  EXPECT_EQ(MatchGet(*rules, "/never?q="), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/header", {{"x-a", ""}}), -1);
}

TEST(RuleSetTest, FragmentIsDroppedAndQuerySplitsAtFirstQuestionMark) {
  auto rules = Load(R"({"private": [
    {"path": "/a"},
    {"path": "/q", "valid": [{"queryParam": "x", "values": ["1*"]}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/a#section"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a?b=1#frag"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a#/../../etc/passwd"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a?next=/b?c"), 0);
  EXPECT_EQ(MatchGet(*rules, "/b#/a"), -1);
  // "x=1?y=2" is x's value: only the first "?" splits.
  EXPECT_EQ(MatchGet(*rules, "/q?x=1?y=2"), 1);
  EXPECT_EQ(MatchGet(*rules, "/q?y=2?x=1"), -1);
  EXPECT_EQ(MatchGet(*rules, "/q?x=1#x=2"), 1);
  EXPECT_EQ(MatchGet(*rules, "/q?x=2#x=1"), -1);
}

// --- Normalisation and traversal
// -------------------------------------------------

TEST(RuleSetTest, BlockCausesAndReasons) {
  auto rules = Load(R"({"private": [
    {"method": "any", "path": "/*"},
    {"path": "/search", "valid": [{"queryParam": "q", "values": ["*"]}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  struct Expected {
    absl::string_view url;
    BlockCause cause;
  };
  const Expected kCases[] = {
      {"/ok/path", BlockCause::kNone},
      {"/a//b", BlockCause::kNotNormalized},
      {"/a/./b", BlockCause::kNotNormalized},
      {"/a/../b", BlockCause::kNotNormalized},
      {"/a/..", BlockCause::kNotNormalized},
      {"/a/%2e%2e/b", BlockCause::kPathTraversal},
      {"/a/%2E%2E/b", BlockCause::kPathTraversal},
      {"/a/.%2e/b", BlockCause::kPathTraversal},
      {"/a/%2e/b", BlockCause::kPathTraversal},
      {"/a/..%2fb", BlockCause::kPathTraversal},
      {"/a/%2e%2e%2fb", BlockCause::kPathTraversal},
      {"/a/..%5cb", BlockCause::kPathTraversal},
      {"/a/..;/b", BlockCause::kPathTraversal},
      {"/a/..;jsessionid=1/b", BlockCause::kPathTraversal},
      {"/a/..\\b", BlockCause::kPathTraversal},
      {"/a/%252e%252e/b", BlockCause::kPathTraversal},
      {"/a/%252e%252e%252fb", BlockCause::kPathTraversal},
      {"/a/%2e%2e", BlockCause::kPathTraversal},
      {"/a/x\\..\\y", BlockCause::kPathTraversal},
      {"/a/..%3bx/b", BlockCause::kPathTraversal},
      {"/a/..%5C..%5Cb", BlockCause::kPathTraversal},
      {"/a/x%252F..%252Fb", BlockCause::kPathTraversal},
      {"//a", BlockCause::kNotNormalized},
      {"/./a", BlockCause::kNotNormalized},
      {"/a/b/.", BlockCause::kNotNormalized},
      {"/a/b/?x=1", BlockCause::kNone},
      {"/group%2Fproject/x", BlockCause::kNone},
      {"/a/..b/c", BlockCause::kNone},
      {"/a/.hidden", BlockCause::kNone},
      {"/a/...", BlockCause::kNone},
  };
  for (const Expected& e : kCases) {
    SCOPED_TRACE(e.url);
    const Decision decision = Evaluate(*rules, kPrivate, "GET", e.url);
    EXPECT_EQ(decision.cause, e.cause) << decision.reason;
    EXPECT_EQ(decision.allowed(), e.cause == BlockCause::kNone);
    if (!decision.allowed()) {
      EXPECT_FALSE(decision.reason.empty());
    }
  }

  const Decision none = Evaluate(*rules, kPrivate, "GET", "/search");
  EXPECT_EQ(none.cause, BlockCause::kNone);  // "/search" also matches "/*"

  auto strict = Load(R"({"private": [
    {"path": "/search", "valid": [{"queryParam": "q", "values": ["*"]}]}
  ]})");
  ASSERT_NE(strict, nullptr);
  const Decision repeated =
      Evaluate(*strict, kPrivate, "GET", "/search?q=a&q=b");
  EXPECT_FALSE(repeated.allowed());
  EXPECT_EQ(repeated.cause, BlockCause::kRepeatedQueryParameter);
  EXPECT_THAT(repeated.reason, HasSubstr("q"));
  const Decision unmatched = Evaluate(*strict, kPrivate, "GET", "/other");
  EXPECT_EQ(unmatched.cause, BlockCause::kNoMatchingRule);
  EXPECT_FALSE(unmatched.reason.empty());
}

TEST(RuleSetTest, QueryStringIsNotNormalisationChecked) {
  // Deviation: Snyk checks the whole URL and blocks this legitimate call.
  auto rules = Load(R"({"private": [
    {"method": "POST", "path": "/api/v4/projects/:project/statuses/:sha"}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(Match(*rules, kPrivate, "POST",
                  "/api/v4/projects/42/statuses/abc?state=success&"
                  "target_url=https://app.snyk.io/a/../b"),
            0);
  auto any = Load(R"({"private": [{"method": "any", "path": "/*"}]})");
  ASSERT_NE(any, nullptr);
  EXPECT_EQ(MatchGet(*any, "/a?path=../../etc/passwd"), 0);
  EXPECT_EQ(MatchGet(*any, "/a?path=%2e%2e%2f%2e%2e%2fetc"), 0);
  EXPECT_EQ(MatchGet(*any, "/a?x=//y"), 0);
}

// --- valid: body, regex, query and header checks
// ------------------------------

TEST(RuleSetTest, NeedsBodyOnlyWhereABodyCheckRuleMatchesMethodAndPath) {
  auto rules = Load(R"json({"public": [
    {"method": "GET", "path": "/repos/*"},
    {"method": "POST", "path": "/graphql", "valid": [
      {"path": "operationName", "value": "Viewer"}]},
    {"method": "any", "path": "/hooks/:id", "valid": [
      {"path": "title", "regex": "^snyk-"}]},
    {"method": "POST", "path": "/search", "valid": [
      {"queryParam": "q", "values": ["*"]}]}
  ], "private": [
    {"method": "POST", "path": "/graphql"}
  ]})json");
  ASSERT_NE(rules, nullptr);
  EXPECT_TRUE(rules->NeedsBody(kPublic, "POST", "/graphql"));
  EXPECT_TRUE(rules->NeedsBody(kPublic, "post", "/GraphQL/?x=1"));
  EXPECT_TRUE(rules->NeedsBody(kPublic, "PUT", "/hooks/7"));
  EXPECT_FALSE(rules->NeedsBody(kPublic, "GET", "/graphql"));
  EXPECT_FALSE(rules->NeedsBody(kPublic, "GET", "/repos/a/b"));
  EXPECT_FALSE(rules->NeedsBody(kPublic, "POST", "/search?q=x"));
  // A list without body checks never needs the body.
  EXPECT_FALSE(rules->NeedsBody(kPrivate, "POST", "/graphql"));
}

TEST(RuleSetTest, ValidIsAnyBodyOrAnyRegexOrAllQuery) {
  auto rules = Load(R"json({"private": [
    {"method": "POST", "path": "/hook", "valid": [
      {"path": "kind", "value": "push"},
      {"path": "kind", "value": "merge"},
      {"path": "title", "regex": "^snyk-"},
      {"queryParam": "a", "values": ["1"]},
      {"queryParam": "b", "values": ["2", "3"]}
    ]}
  ]})json");
  ASSERT_NE(rules, nullptr);
  auto match = [&](absl::string_view url, absl::string_view body) {
    return Match(*rules, kPrivate, "POST", url, {}, body);
  };
  EXPECT_EQ(match("/hook", R"({"kind": "push"})"), 0);
  EXPECT_EQ(match("/hook", R"({"kind": "merge"})"), 0);
  EXPECT_EQ(match("/hook", R"({"title": "snyk-fix-1"})"), 0);
  EXPECT_EQ(match("/hook", R"({"title": "fix snyk-1"})"), -1);
  EXPECT_EQ(match("/hook?a=1&b=3", R"({"kind": "other"})"), 0);
  EXPECT_EQ(match("/hook?a=1", R"({"kind": "other"})"), -1);
  EXPECT_EQ(match("/hook?b=2", R"({})"), -1);
  EXPECT_EQ(match("/hook?a=1&b=4", ""), -1);
  EXPECT_EQ(match("/hook?a=1&b=2", "not json"), 0);
  EXPECT_EQ(match("/hook", ""), -1);
}

TEST(RuleSetTest, HeaderChecksAreAndedWithTheRest) {
  auto rules = Load(R"({"private": [
    {"path": "/q", "valid": [
      {"queryParam": "a", "values": ["1"]},
      {"header": "Accept", "values": ["application/vnd.x", "text/plain"]},
      {"header": "x-snyk", "values": ["yes"]}
    ]},
    {"path": "/h", "valid": [{"header": "accept", "values": ["v1"]}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->rules(kPrivate)[0].header_checks[0].name, "accept");
  const std::vector<HeaderField> both = {{"accept", "text/plain"},
                                         {"X-Snyk", "yes"}};
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/q?a=1", both), 0);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/q?a=2", both), -1);
  EXPECT_EQ(
      Match(*rules, kPrivate, "GET", "/q?a=1", {{"accept", "text/plain"}}), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/q?a=1",
                  {{"ACCEPT", "application/vnd.x"}, {"x-snyk", "yes"}}),
            0);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/q?a=1",
                  {{"accept", "TEXT/PLAIN"}, {"x-snyk", "yes"}}),
            -1);

  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h", {{"Accept", "v1"}}), 1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h"), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h", {{"accept", "v2"}}), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h", {{"accept", "v1 "}}), -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h",
                  {{"accept", "v1"}, {"accept", "v1"}}),
            -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h",
                  {{"accept", "v1"}, {"Accept", "v2"}}),
            -1);
  EXPECT_EQ(Match(*rules, kPrivate, "GET", "/h",
                  {{"accept", "v1"}, {"accept-encoding", "gzip"}}),
            1);
}

TEST(RuleSetTest, BodyValueEqualityAndGlobs) {
  auto rules = Load(R"json({"public": [
    {"method": "POST", "path": "/eq", "valid": [
      {"path": "pull_request.state", "value": "open"}]},
    {"method": "POST", "path": "/num", "valid": [
      {"path": "count", "value": 5}]},
    {"method": "POST", "path": "/bool", "valid": [
      {"path": "flag", "value": true}]},
    {"method": "POST", "path": "/glob", "valid": [
      {"path": "commits.*.added.*", "value": "*req*.txt"},
      {"path": "commits.*.added.*", "value": "?.lock"}]},
    {"method": "POST", "path": "/index", "valid": [
      {"path": "commits.1.id", "value": "b"}]},
    {"method": "POST", "path": "/object", "valid": [
      {"path": "files.*.name", "value": "go.mod"}]}
  ]})json");
  ASSERT_NE(rules, nullptr);
  auto match = [&](absl::string_view url, absl::string_view body) {
    return Match(*rules, kPublic, "POST", url, {}, body);
  };
  EXPECT_EQ(match("/eq", R"({"pull_request": {"state": "open"}})"), 0);
  // Snyk only tests truthiness here; we compare the value (deviation).
  EXPECT_EQ(match("/eq", R"({"pull_request": {"state": "closed"}})"), -1);
  EXPECT_EQ(match("/eq", R"({"pull_request": {"state": "OPEN"}})"), -1);
  EXPECT_EQ(match("/eq", R"({"pull_request": {}})"), -1);
  EXPECT_EQ(match("/eq", R"({"pull_request": "open"})"), -1);

  EXPECT_EQ(match("/num", R"({"count": 5})"), 1);
  EXPECT_EQ(match("/num", R"({"count": "5"})"), -1);
  EXPECT_EQ(match("/num", R"({"count": 6})"), -1);
  EXPECT_EQ(match("/bool", R"({"flag": true})"), 2);
  EXPECT_EQ(match("/bool", R"({"flag": "true"})"), -1);
  EXPECT_EQ(match("/bool", R"({"flag": 1})"), -1);

  EXPECT_EQ(match("/glob", R"({"commits": [{"added": ["requirements.txt"]}]})"),
            3);
  EXPECT_EQ(match("/glob", R"({"commits": [{"added": ["a.md"]},
                                           {"added": ["x.lock"]}]})"),
            3);
  EXPECT_EQ(match("/glob", R"({"commits": [{"added": ["xy.lock"]}]})"), -1);
  EXPECT_EQ(match("/glob", R"({"commits": [{"added": ["*req*.txt"]}]})"), 3);
  EXPECT_EQ(match("/glob", R"({"commits": [{"added": ["docs/req.txt"]}]})"),
            -1);
  EXPECT_EQ(match("/glob", R"({"commits": []})"), -1);

  EXPECT_EQ(match("/index", R"({"commits": [{"id": "a"}, {"id": "b"}]})"), 4);
  EXPECT_EQ(match("/index", R"({"commits": [{"id": "b"}, {"id": "a"}]})"), -1);
  EXPECT_EQ(match("/index", R"({"commits": [{"id": "b"}]})"), -1);

  EXPECT_EQ(
      match("/object",
            R"({"files": {"x": {"name": "a"}, "y": {"name": "go.mod"}}})"),
      5);
}

TEST(RuleSetTest, BodyThatIsNotJsonFailsBodyChecksWithoutCrashing) {
  auto rules = Load(R"json({"public": [
    {"method": "POST", "path": "/hook", "valid": [
      {"path": "a.b", "value": "c"},
      {"path": "a.*", "regex": "c"}]}
  ]})json");
  ASSERT_NE(rules, nullptr);
  const absl::string_view kBodies[] = {
      "",
      "not json",
      "{",
      R"({"a": {"b": "c")",
      "[1, 2",
      "null",
      "42",
      R"("c")",
      "[]",
      R"([{"a": {"b": "c"}}])",
      "{\"a\": {\"b\": \"c\"}} trailing",
      absl::string_view("{\"a\":\0{}}", 9),
      "\xef\xbb\xbf",
  };
  for (absl::string_view body : kBodies) {
    SCOPED_TRACE(absl::StrCat("body: ", body));
    const Decision decision =
        Evaluate(*rules, kPublic, "POST", "/hook", {}, body);
    EXPECT_FALSE(decision.allowed());
    EXPECT_EQ(decision.cause, BlockCause::kNoMatchingRule);
  }
  EXPECT_EQ(Match(*rules, kPublic, "POST", "/hook", {}, R"({"a": {"b": "c"}})"),
            0);
  EXPECT_EQ(
      Match(*rules, kPublic, "POST", "/hook", {}, R"({"a": {"x": "abc"}})"), 0);
}

TEST(RuleSetTest, QueryValuesAreDecodedLikeQs) {
  auto rules = Load(R"({"private": [
    {"path": "/q", "valid": [{"queryParam": "v", "values": ["a b/c.json"]}]},
    {"path": "/empty", "valid": [{"queryParam": "v", "values": [""]}]},
    {"path": "/glob", "valid": [{"queryParam": "f", "values": ["**/package.json"]}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/q?v=a+b/c.json"), 0);
  EXPECT_EQ(MatchGet(*rules, "/q?v=a%20b%2Fc.json"), 0);
  EXPECT_EQ(MatchGet(*rules, "/q?v=a%20b%2fc%2Ejson"), 0);
  EXPECT_EQ(MatchGet(*rules, "/q?v=a+b/c.jsonx"), -1);
  EXPECT_EQ(MatchGet(*rules, "/empty"), 1);
  EXPECT_EQ(MatchGet(*rules, "/empty?v="), 1);
  EXPECT_EQ(MatchGet(*rules, "/empty?other=1&other=2"), 1);
  EXPECT_EQ(MatchGet(*rules, "/empty?v=x"), -1);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=package.json"), 2);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=/a/b/package.json"), 2);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=a/.hidden/package.json"), 2);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=a/../package.json"), -1);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=a%2F..%2Fpackage.json"), -1);
  EXPECT_EQ(MatchGet(*rules, "/glob?f=./package.json"), -1);
  EXPECT_EQ(MatchGet(*rules, "/glob?f[]=package.json"), -1);
  EXPECT_EQ(MatchGet(*rules, "/glob?f[a]=package.json"), -1);
  const Decision repeated =
      Evaluate(*rules, kPrivate, "GET", "/glob?f=package.json&f=package.json");
  EXPECT_FALSE(repeated.allowed());
  EXPECT_EQ(repeated.cause, BlockCause::kRepeatedQueryParameter);
}

TEST(RuleSetTest, QueryParameterNamesAreDecodedToo) {
  // qs decodes names, and so does the origin: "f%69le" is "file", so this is
  // the checked parameter sent twice.
  auto rules = Load(R"({"private": [
    {"path": "/files", "valid": [{"queryParam": "file", "values": ["*.json"]}]}
  ]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(MatchGet(*rules, "/files?f%69le=a.json"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files?fil%65=a.txt"), -1);
  const Decision decision =
      Evaluate(*rules, kPrivate, "GET", "/files?file=a.json&f%69le=secret.txt");
  EXPECT_FALSE(decision.allowed());
  EXPECT_EQ(decision.cause, BlockCause::kRepeatedQueryParameter);
  EXPECT_EQ(MatchGet(*rules, "/files?file=a.json&file[]=b.json"), -1);
  EXPECT_EQ(MatchGet(*rules, "/files?file=a.json&FILE=b.txt"), 0);
}

// --- File formats
// ------------------------------------------------------------------

constexpr absl::string_view kJsonRules = R"json({
  "private": [
    {"//": "a comment", "method": "GET", "path": "/repos/:owner/:repo",
     "origin": "https://${GITHUB_TOKEN}@${GITHUB_API}"},
    {"method": "POST", "path": "/graphql", "origin": "https://api.github.com",
     "stream": true},
    {"method": "GET", "path": "/items", "origin": "https://x",
     "valid": [{"queryParam": "path", "values": ["**/package.json"]}]},
    {"method": "GET", "path": "/commits/:ref", "origin": "https://x",
     "valid": [{"header": "accept", "values": ["application/vnd.github.v4.sha"]}]}
  ],
  "public": [
    {"//": "webhooks", "method": "POST", "path": "/webhook/github",
     "valid": [{"//": "state", "path": "pull_request.state", "value": "open"},
               {"path": "commits.*.added.*", "value": "package.json"}]}
  ]
})json";

constexpr absl::string_view kYamlRules = R"yaml(
# The same rules as kJsonRules.
private:
  - "//": a comment
    method: GET
    path: /repos/:owner/:repo
    origin: https://${GITHUB_TOKEN}@${GITHUB_API}
  - method: POST
    path: /graphql
    origin: https://api.github.com
    stream: true
  - method: GET
    path: /items
    origin: https://x
    valid:
      - queryParam: path
        values: ["**/package.json"]
  - method: GET
    path: /commits/:ref
    origin: https://x
    valid:
      - header: accept
        values:
          - application/vnd.github.v4.sha
public:
  - "//": webhooks
    method: POST
    path: /webhook/github
    valid:
      - "//": state
        path: pull_request.state
        value: open
      - path: commits.*.added.*
        value: package.json
)yaml";

TEST(RuleSetTest, YamlFileIsEquivalentToJson) {
  auto json = Load(kJsonRules);
  auto yaml = Load(kYamlRules);
  ASSERT_NE(json, nullptr);
  ASSERT_NE(yaml, nullptr);
  EXPECT_EQ(json->source(), yaml->source());
  ASSERT_EQ(yaml->rules(kPrivate).size(), 4u);
  ASSERT_EQ(yaml->rules(kPublic).size(), 1u);
  EXPECT_THAT(yaml->warnings(), IsEmpty());

  struct Probe {
    RuleList list;
    absl::string_view method;
    absl::string_view url;
    std::vector<HeaderField> headers;
    absl::string_view body;
  };
  const Probe kProbes[] = {
      {kPrivate, "GET", "/repos/acme/app", {}, ""},
      {kPrivate, "POST", "/graphql", {}, ""},
      {kPrivate, "GET", "/graphql", {}, ""},
      {kPrivate, "GET", "/items?path=src/package.json", {}, ""},
      {kPrivate, "GET", "/items?path=src/pom.xml", {}, ""},
      {kPrivate,
       "GET",
       "/commits/main",
       {{"Accept", "application/vnd.github.v4.sha"}},
       ""},
      {kPrivate, "GET", "/commits/main", {}, ""},
      {kPublic,
       "POST",
       "/webhook/github",
       {},
       R"({"pull_request": {"state": "open"}})"},
      {kPublic,
       "POST",
       "/webhook/github",
       {},
       R"({"commits": [{"added": ["package.json"]}]})"},
      {kPublic,
       "POST",
       "/webhook/github",
       {},
       R"({"pull_request": {"state": "closed"}})"},
  };
  for (const Probe& p : kProbes) {
    SCOPED_TRACE(absl::StrCat(p.method, " ", p.url, " ", p.body));
    const int from_json =
        Match(*json, p.list, p.method, p.url, p.headers, p.body);
    EXPECT_EQ(Match(*yaml, p.list, p.method, p.url, p.headers, p.body),
              from_json);
  }
  EXPECT_EQ(Match(*yaml, kPrivate, "GET", "/repos/acme/app"), 0);
  EXPECT_EQ(Match(*yaml, kPublic, "POST", "/webhook/github", {},
                  R"({"commits": [{"added": ["package.json"]}]})"),
            0);
}

TEST(RuleSetTest, YamlScalarsAreTypedLikeJsYaml) {
  // Snyk loads rule files with js-yaml (YAML 1.2 core schema): "yes" and
  // "on" are strings, "true" is a boolean, "10" a number.
  auto rules = Load(R"yaml(
private:
  - path: /a
    valid:
      - queryParam: flag
        values: [yes, on, "true", "10"]
public:
  - method: POST
    path: /b
    valid:
      - path: enabled
        value: true
      - path: mode
        value: on
      - path: count
        value: 10
)yaml");
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->source(), nlohmann::json::parse(R"json({
    "private": [{"path": "/a", "valid": [
      {"queryParam": "flag", "values": ["yes", "on", "true", "10"]}]}],
    "public": [{"method": "POST", "path": "/b", "valid": [
      {"path": "enabled", "value": true},
      {"path": "mode", "value": "on"},
      {"path": "count", "value": 10}]}]
  })json"));
  EXPECT_EQ(MatchGet(*rules, "/a?flag=yes"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a?flag=on"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a?flag=10"), 0);
  EXPECT_EQ(MatchGet(*rules, "/a?flag=1"), -1);
  auto body = [&](absl::string_view text) {
    return Match(*rules, kPublic, "POST", "/b", {}, text);
  };
  EXPECT_EQ(body(R"({"enabled": true})"), 0);
  EXPECT_EQ(body(R"({"enabled": "true"})"), -1);
  EXPECT_EQ(body(R"({"mode": "on"})"), 0);
  EXPECT_EQ(body(R"({"mode": true})"), -1);
  EXPECT_EQ(body(R"({"count": 10})"), 0);
  EXPECT_EQ(body(R"({"count": "10"})"), -1);
}

TEST(RuleSetTest, ByteOrderMarkAndCrlfAreAccepted) {
  // What editors on Windows write.
  auto json = Load("\xEF\xBB\xBF{\"private\": [{\"path\": \"/a\"}]}\r\n");
  ASSERT_NE(json, nullptr);
  EXPECT_EQ(MatchGet(*json, "/a"), 0);
  auto yaml = Load("private:\r\n  - path: /a\r\n    method: POST\r\n");
  ASSERT_NE(yaml, nullptr);
  EXPECT_EQ(Match(*yaml, kPrivate, "POST", "/a"), 0);
  EXPECT_EQ(yaml->rules(kPrivate)[0].path.path(), "/a");
}

TEST(RuleSetTest, CommentAndStreamFieldsAreIgnoredUnknownFieldsWarn) {
  auto clean = Load(kJsonRules);
  ASSERT_NE(clean, nullptr);
  EXPECT_THAT(clean->warnings(), IsEmpty());

  const LoadResult result = RuleSet::Parse(R"({
    "private": [
      {"path": "/a"},
      {"methods": "POST", "path": "/b", "//": "typo above"}
    ],
    "public": [{"method": "POST", "path": "/c", "orign": "https://x"}]
  })",
                                           "accept.json");
  ASSERT_NE(result.rule_set, nullptr) << DiagnosticsToString(result);
  EXPECT_THAT(Errors(result), IsEmpty());
  const std::vector<Diagnostic>& warnings = result.rule_set->warnings();
  ASSERT_EQ(warnings.size(), 2u) << DiagnosticsToString(result);
  EXPECT_EQ(warnings[0].severity, Severity::kWarning);
  EXPECT_EQ(warnings[0].list, "private");
  EXPECT_EQ(warnings[0].index, 1);
  EXPECT_THAT(warnings[0].message, HasSubstr("methods"));
  EXPECT_THAT(warnings[0].ToString(), HasSubstr("private[1]"));
  EXPECT_EQ(warnings[1].list, "public");
  EXPECT_EQ(warnings[1].index, 0);
  EXPECT_THAT(warnings[1].message, HasSubstr("orign"));
  // The typo leaves the default method in force.
  EXPECT_EQ(Match(*result.rule_set, kPrivate, "GET", "/b"), 1);
  EXPECT_EQ(Match(*result.rule_set, kPrivate, "POST", "/b"), -1);
}

// --- Errors
// ----------------------------------------------------------------------

TEST(RuleSetTest, MalformedJsonNamesLineAndColumn) {
  const LoadResult result = RuleSet::Parse(
      "{\n"
      "  \"private\": [\n"
      "    {\"method\": \"GET\", \"path\": \"/a\",}\n"
      "  ]\n"
      "}\n",
      "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  const std::vector<Diagnostic> errors = Errors(result);
  ASSERT_FALSE(errors.empty());
  EXPECT_THAT(errors[0].message,
              AllOf(ContainsRegex("[Ll]ine[^0-9]{0,3}3"),
                    ContainsRegex("[Cc]olumn[^0-9]{0,3}[0-9]+")))
      << DiagnosticsToString(result);
}

TEST(RuleSetTest, MalformedYamlNamesLineAndColumn) {
  const LoadResult result = RuleSet::Parse(
      "private:\n"
      "  - method: GET\n"
      "    path: /a: b: c\n",
      "accept.yaml");
  EXPECT_EQ(result.rule_set, nullptr);
  const std::vector<Diagnostic> errors = Errors(result);
  ASSERT_FALSE(errors.empty());
  EXPECT_THAT(errors[0].message,
              AllOf(ContainsRegex("[Ll]ine[^0-9]{0,3}3"),
                    ContainsRegex("[Cc]olumn[^0-9]{0,3}[0-9]+")))
      << DiagnosticsToString(result);
}

TEST(RuleSetTest, UnterminatedQuotedYamlScalarIsAnError) {
  // js-yaml (Snyk) rejects this file; a lenient parser would load the path
  // as "/a ".
  const LoadResult result =
      RuleSet::Parse("private:\n  - path: \"/a\n", "accept.yaml");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_THAT(Errors(result), Not(IsEmpty()));
}

TEST(RuleSetTest, EmptyFileIsAnError) {
  for (absl::string_view text : {"", "   \n", "# only a comment\n"}) {
    SCOPED_TRACE(absl::StrCat("text: '", text, "'"));
    const LoadResult result = RuleSet::Parse(text, "accept.json");
    EXPECT_EQ(result.rule_set, nullptr);
    EXPECT_THAT(Errors(result), Not(IsEmpty()));
  }
}

TEST(RuleSetTest, RuleThatIsNotAnObject) {
  const LoadResult result = RuleSet::Parse(
      R"({"private": [42, {"path": "/ok"}, "GET /x"], "public": [null]})",
      "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_TRUE(HasErrorAt(result, "private", 0)) << DiagnosticsToString(result);
  EXPECT_FALSE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "public", 0)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, ListThatIsNotAnArray) {
  const LoadResult result = RuleSet::Parse(
      R"({"private": {"path": "/a"}, "public": []})", "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  const std::vector<Diagnostic> errors = Errors(result);
  ASSERT_FALSE(errors.empty());
  EXPECT_EQ(errors[0].list, "private") << DiagnosticsToString(result);
  EXPECT_EQ(errors[0].index, -1) << DiagnosticsToString(result);

  const LoadResult string_list =
      RuleSet::Parse(R"({"public": "POST /webhook"})", "accept.json");
  EXPECT_EQ(string_list.rule_set, nullptr);
  EXPECT_TRUE(HasErrorAt(string_list, "public", -1))
      << DiagnosticsToString(string_list);
}

TEST(RuleSetTest, InvalidMethod) {
  const LoadResult result = RuleSet::Parse(R"({"private": [
    {"method": "GET", "path": "/a"},
    {"method": "FROB", "path": "/b"},
    {"method": 42, "path": "/c"}
  ]})",
                                           "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_FALSE(HasErrorAt(result, "private", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, NonStringPathIsAnError) {
  const LoadResult result = RuleSet::Parse(R"({"private": [
    {"path": "/ok"},
    {"path": 42},
    {"path": ["/a"]}
  ]})",
                                           "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_FALSE(HasErrorAt(result, "private", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, MissingPathMatchesOnlyTheRootAndIsWarned) {
  // Snyk turns a missing path into "/" (filtersAsync.ts), so the file loads
  // there; we load it the same way but say so, since it is likely a mistake.
  const LoadResult result = RuleSet::Parse(
      R"({"private": [{"path": "/ok"}, {"method": "GET"}]})", "accept.json");
  ASSERT_NE(result.rule_set, nullptr) << DiagnosticsToString(result);
  bool warned = false;
  for (const Diagnostic& d : result.rule_set->warnings()) {
    warned |= d.severity == Severity::kWarning && d.list == "private" &&
              d.index == 1 && absl::StrContains(d.message, "path");
  }
  EXPECT_TRUE(warned) << DiagnosticsToString(result);
  const std::vector<HeaderField> headers;
  EXPECT_EQ(
      result.rule_set
          ->Evaluate(RuleList::kPrivate, RequestView{"GET", "/", headers, ""})
          .rule->index,
      1);
}

TEST(RuleSetTest, InvalidPathRegexGroup) {
  const LoadResult result = RuleSet::Parse(R"json({"private": [
    {"path": "/ok/:id(\\d+)"},
    {"path": "/items/([z-a]+)"},
    {"path": "/:a(x)/:b(\\1)"}
  ]})json",
                                           "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_FALSE(HasErrorAt(result, "private", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  // A back-reference: RE2 cannot run it, so it is a load error.
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, InvalidBodyRegex) {
  const LoadResult result = RuleSet::Parse(R"json({"public": [
    {"method": "POST", "path": "/a", "valid": [{"path": "x", "regex": "^ok$"}]},
    {"method": "POST", "path": "/b", "valid": [{"path": "x", "regex": "(unclosed"}]},
    {"method": "POST", "path": "/c", "valid": [{"path": "x", "regex": "(?<=a)b"}]}
  ]})json",
                                           "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_FALSE(HasErrorAt(result, "public", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "public", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "public", 2)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, ValidEntryOfUnknownShape) {
  const LoadResult result = RuleSet::Parse(R"({"private": [
    {"path": "/a", "valid": [{"queryParam": "q", "values": ["x"]}]},
    {"path": "/b", "valid": [{"foo": "bar"}]},
    {"path": "/c", "valid": ["q=x"]}
  ]})",
                                           "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_FALSE(HasErrorAt(result, "private", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
}

TEST(RuleSetTest, EveryProblemIsReportedAndFromTextNamesThemAll) {
  constexpr absl::string_view kBroken = R"json({
    "private": [
      {"path": "/ok"},
      {"method": "FROB", "path": "/a"},
      {"path": "/b", "valid": [{"path": "x", "regex": "(unclosed"}]}
    ],
    "public": [
      7,
      {"method": "POST", "path": "/items/([z-a]+)"}
    ]
  })json";
  const LoadResult result = RuleSet::Parse(kBroken, "accept.json");
  EXPECT_EQ(result.rule_set, nullptr);
  EXPECT_TRUE(HasErrorAt(result, "private", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "private", 2)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "public", 0)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrorAt(result, "public", 1)) << DiagnosticsToString(result);
  EXPECT_TRUE(HasErrors(result.diagnostics));

  const absl::StatusOr<std::shared_ptr<const RuleSet>> status =
      RuleSet::FromText(kBroken, "accept.json");
  EXPECT_THAT(status,
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("accept.json"), HasSubstr("private[1]"),
                             HasSubstr("private[2]"), HasSubstr("public[0]"),
                             HasSubstr("public[1]"))));
}

TEST(RuleSetTest, FromFileReportsAMissingFile) {
  const absl::StatusOr<std::shared_ptr<const RuleSet>> missing =
      RuleSet::FromFile(::testing::TempDir() + "/no-such-accept.json");
  EXPECT_FALSE(missing.ok());

  const absl::StatusOr<std::shared_ptr<const RuleSet>> github =
      RuleSet::FromFile(
          ::broker::testing::FixturePath("accept-templates/github-com.json"));
  ASSERT_THAT(github, IsOk());
  EXPECT_EQ((*github)->rules(kPrivate).size(), 320u);
}

// --- Hostile input
// ---------------------------------------------------------------

TEST(RuleSetTest, OneMebibyteUrlIsDecidedQuicklyWithoutCrashing) {
  const std::string github_text =
      ::broker::testing::ReadFixture("accept-templates/github-com.json");
  ASSERT_FALSE(github_text.empty());
  auto github = Load(github_text);
  auto any = Load(R"({"private": [{"method": "any", "path": "/*"}]})");
  ASSERT_NE(github, nullptr);
  ASSERT_NE(any, nullptr);

  constexpr size_t kMiB = 1 << 20;
  std::string segments = "/repos/acme/app/contents";
  while (segments.size() < kMiB) segments += "/a";
  std::vector<std::string> urls = {
      "/" + std::string(kMiB, 'a'),
      segments + "/package.json",
      segments + "/%2e%2e/package.json",
      "/repos/acme/app/contents/package.json?ref=" + std::string(kMiB, 'x'),
      "/" + std::string(kMiB, '/'),
  };
  std::string encoded = "/snykgit/";
  while (encoded.size() < kMiB) encoded += "%252e";
  urls.push_back(encoded);

  const auto start = std::chrono::steady_clock::now();
  for (const std::string& url : urls) {
    const Decision a = Evaluate(*github, kPrivate, "GET", url);
    const Decision b = Evaluate(*any, kPrivate, "GET", url);
    EXPECT_EQ(a.allowed(), a.cause == BlockCause::kNone);
    EXPECT_EQ(b.allowed(), b.cause == BlockCause::kNone);
  }
  const Decision traversal =
      Evaluate(*any, kPrivate, "GET", segments + "/%2e%2e/x");
  EXPECT_FALSE(traversal.allowed());

  auto query = Load(R"({"private": [{"path": "/files", "valid": [
    {"queryParam": "file_path", "values": ["**/package.json", "**/*req*.txt"]}
  ]}]})");
  ASSERT_NE(query, nullptr);
  std::string many = "/files?file_path=a/package.json";
  while (many.size() < kMiB) many += "&file_path=a/package.json";
  const Decision repeated = Evaluate(*query, kPrivate, "GET", many);
  EXPECT_FALSE(repeated.allowed());
  EXPECT_EQ(repeated.cause, BlockCause::kRepeatedQueryParameter);
  std::string deep = "/files?file_path=";
  while (deep.size() < kMiB) deep += "a/";
  EXPECT_TRUE(
      Evaluate(*query, kPrivate, "GET", deep + "package.json").allowed());
  EXPECT_FALSE(
      Evaluate(*query, kPrivate, "GET", deep + "package.jsonx").allowed());
  std::string stars = "/files?file_path=";
  while (stars.size() < kMiB) stars += "req";
  EXPECT_FALSE(Evaluate(*query, kPrivate, "GET", stars + ".tx").allowed());
  EXPECT_TRUE(Evaluate(*query, kPrivate, "GET", stars + ".txt").allowed());
  const auto elapsed = std::chrono::steady_clock::now() - start;
  // Linear-time matching: a few MiB in well under this bound even in a
  // sanitizer build.
  EXPECT_LT(
      std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(),
      20000);
}

TEST(RuleSetTest, InvalidUtf8InUrlAndBody) {
  auto rules = Load(R"json({
    "private": [{"path": "/files/:name"}, {"method": "any", "path": "/*"}],
    "public": [{"method": "POST", "path": "/hook", "valid": [
      {"path": "name", "value": "package.json"},
      {"path": "name", "regex": "json$"}]}]
  })json");
  ASSERT_NE(rules, nullptr);
  // Every byte of a path is one character for the pattern.
  EXPECT_EQ(MatchGet(*rules, "/files/\xff\xfe"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files/\xc3\x28/x"), 1);
  EXPECT_EQ(MatchGet(*rules, "/files/%ff%fe"), 0);
  EXPECT_EQ(MatchGet(*rules, "/files/a?q=\xff"), 0);

  for (absl::string_view body :
       {absl::string_view("{\"name\": \"\xff\xfe\"}"),
        absl::string_view("{\"name\": \"package.json\xc3\"}"),
        absl::string_view("\xff\xfe\xfd")}) {
    const Decision decision =
        Evaluate(*rules, kPublic, "POST", "/hook", {}, body);
    EXPECT_FALSE(decision.allowed());
  }
  EXPECT_EQ(Match(*rules, kPublic, "POST", "/hook", {},
                  R"({"name": "package.json"})"),
            0);
}

TEST(RuleSetTest, OddRequestTargetsAreBlockedWithoutCrashing) {
  auto rules = Load(R"({"private": [{"method": "any", "path": "/*"}]})");
  ASSERT_NE(rules, nullptr);
  for (absl::string_view url :
       {"", "?", "#", "?#", "*", "a", "a/b", "http://evil.example/x",
        "https://evil.example/x", "//evil.example/x", "\\\\evil.example\\x",
        "#/a", "?/a"}) {
    SCOPED_TRACE(absl::StrCat("url: '", url, "'"));
    const Decision decision = Evaluate(*rules, kPrivate, "GET", url);
    EXPECT_FALSE(decision.allowed());
    EXPECT_FALSE(decision.reason.empty());
  }
  EXPECT_EQ(Match(*rules, kPrivate, "", "/a"), 0);  // "any" takes any method
}

TEST(RuleSetTest, DeeplyNestedOrHugeBodyDoesNotCrash) {
  auto rules = Load(R"({"public": [{"method": "POST", "path": "/webhook",
    "valid": [{"path": "commits.*.added.*", "value": "package.json"},
              {"path": "a.a.a.a.a.a", "regex": "x"}]}]})");
  ASSERT_NE(rules, nullptr);
  constexpr size_t kDepth = 200000;
  const std::vector<std::string> bodies = {
      std::string(kDepth, '[') + std::string(kDepth, ']'),
      std::string(kDepth, '['),
      [&] {
        std::string nested;
        for (size_t i = 0; i < kDepth / 10; ++i) nested += "{\"a\":";
        nested += "\"x\"";
        nested += std::string(kDepth / 10, '}');
        return nested;
      }(),
      [&] {
        std::string commits = "{\"commits\":[";
        for (int i = 0; i < 50000; ++i) {
          commits += i == 0 ? "" : ",";
          commits += "{\"added\":[\"README.md\",\"src/x.js\"]}";
        }
        return commits + "]}";
      }(),
  };
  for (const std::string& body : bodies) {
    const Decision decision =
        Evaluate(*rules, kPublic, "POST", "/webhook", {}, body);
    EXPECT_FALSE(decision.allowed());
  }
  std::string deep_match;
  for (int i = 0; i < 6; ++i) deep_match += "{\"a\":";
  deep_match += "\"x\"" + std::string(6, '}');
  EXPECT_EQ(Match(*rules, kPublic, "POST", "/webhook", {}, deep_match), 0);
}

// --- Identity of a loaded file
// --------------------------------------------------

TEST(RuleSetTest, DigestIsSha256OfTheBytes) {
  auto rules = Load(R"({"private":[{"path":"/a"}]})");
  ASSERT_NE(rules, nullptr);
  EXPECT_THAT(rules->digest(), MatchesRegex("[0-9a-f]{64}"));
  EXPECT_EQ(rules->digest(),
            "68dc75fd7a61b4362e8bfc2805eabb4d7136b2fb2a64872fd430fac9cebc09df");

  auto same = Load(R"({"private":[{"path":"/a"}]})");
  auto newline = Load("{\"private\":[{\"path\":\"/a\"}]}\n");
  auto other = Load(R"({"private":[{"path":"/b"}]})");
  ASSERT_NE(same, nullptr);
  ASSERT_NE(newline, nullptr);
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(same->digest(), rules->digest());
  EXPECT_NE(newline->digest(), rules->digest());
  EXPECT_EQ(newline->digest(),
            "d02a32966b36db7402095f5a05a89442ffb28e925e2fe4cd8f64b456a2f437b5");
  EXPECT_NE(other->digest(), rules->digest());
}

TEST(RuleSetTest, SourceRoundTripsTheRules) {
  auto rules = Load(kJsonRules);
  ASSERT_NE(rules, nullptr);
  EXPECT_EQ(rules->source(), nlohmann::json::parse(kJsonRules));
  EXPECT_EQ(rules->rules(kPrivate)[2].source,
            nlohmann::json::parse(kJsonRules)["private"][2]);
  EXPECT_EQ(rules->rules(kPublic)[0].source,
            nlohmann::json::parse(kJsonRules)["public"][0]);

  // Loading the served source again gives the same rules.
  auto again = Load(rules->source().dump());
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->source(), rules->source());
  EXPECT_EQ(again->rules(kPrivate).size(), rules->rules(kPrivate).size());
}

// Found by rule_loader_fuzz
// (fuzz/regressions/rule_loader-json-number-overflow.json).
TEST(RuleSetTest, NumberTooLargeIsALoadError) {
  for (
      absl::string_view text :
      {R"({"private": [1e999]})",
       R"({"public": [{"path": "/w", "valid": [{"path": "a", "value": -1e999}]}]})"}) {
    const LoadResult result = RuleSet::Parse(text, "accept.json");
    EXPECT_EQ(result.rule_set, nullptr) << text;
    ASSERT_FALSE(result.diagnostics.empty()) << text;
    EXPECT_THAT(result.diagnostics.front().message,
                ::testing::HasSubstr("number overflow"));
  }
}

}  // namespace
}  // namespace broker::filters
