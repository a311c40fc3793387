// Property: a request reaches an origin only through a rule that allows it.
// Requests are generated from every rule of every Snyk template (parameters
// and wildcards filled in at random, methods varied), some of them made
// hostile (traversal, encoded traversal, doubled slashes, dot segments).
// For each decision:
//   - an allowed request names a rule of the list evaluated, whose method
//     and path pattern match it; a private rule names its origin;
//   - an allowed path, decoded again and again by this test's own decoder,
//     has no "." or ".." segment: no traversal reaches an origin;
//   - a request made hostile is never allowed.
// And the generator must really reach the allowing paths: most unmodified
// requests are allowed (else the test would prove nothing).

#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"
#include "filters/url_checks.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace broker::filters {
namespace {

constexpr int kRequestsPerList = 4000;

// This test's own percent-decoder, applied until the text stops changing
// (so %252e%252e counts as ".."), independent of filters/url_checks.
std::string DecodeFully(std::string text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    c = absl::ascii_tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (int round = 0; round < 8; ++round) {
    std::string out;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 &&
          hex(text[i + 2]) >= 0) {
        out.push_back(
            static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
        i += 2;
      } else {
        out.push_back(text[i]);
      }
    }
    if (out == text) break;
    text = std::move(out);
  }
  return text;
}

bool HasDotSegment(absl::string_view path) {
  const std::string decoded = DecodeFully(std::string(path));
  for (absl::string_view segment :
       absl::StrSplit(decoded, absl::ByAnyChar("/\\"))) {
    if (segment == "." || segment == "..") return true;
  }
  return false;
}

class Generator {
 public:
  explicit Generator(std::uint32_t seed) : random_(seed) {}

  int Pick(int n) {
    return static_cast<int>(random_() % static_cast<unsigned>(n));
  }
  bool Chance(int percent) { return Pick(100) < percent; }

  std::string Segment() {
    static constexpr absl::string_view kChars =
        "abcdefghijklmnopqrstuvwxyz0123456789-_.";
    std::string s;
    const int n = 1 + Pick(8);
    for (int i = 0; i < n; ++i) s.push_back(kChars[Pick(kChars.size() - 1)]);
    if (s == "." || s == "..") s = "x";
    return s;
  }

  // Random text for a glob-like literal: each "*" filled in.
  std::string FillStars(absl::string_view literal) {
    std::string out;
    for (char c : literal) {
      if (c == '*') {
        out += Segment();
      } else {
        out.push_back(c);
      }
    }
    return out;
  }

  // A path the pattern is meant to match, built from the pattern's text
  // segment by segment (":name" with its "?", "+" or "*" modifier and any
  // literal after it, a bare "*"), independently of how filters/ compiles
  // it.
  std::string PathFor(const PathPattern& pattern) {
    std::string path;
    for (absl::string_view segment : absl::StrSplit(pattern.path(), '/')) {
      if (segment.empty()) continue;
      if (segment == "*") {
        const int count = 1 + Pick(3);
        for (int i = 0; i < count; ++i) absl::StrAppend(&path, "/", Segment());
        continue;
      }
      if (segment.front() != ':') {
        absl::StrAppend(&path, "/", FillStars(segment));
        continue;
      }
      size_t end = 1;
      while (end < segment.size() &&
             (absl::ascii_isalnum(segment[end]) || segment[end] == '_')) {
        ++end;
      }
      const char modifier = end < segment.size() ? segment[end] : '\0';
      const bool has_modifier =
          modifier == '?' || modifier == '*' || modifier == '+';
      const absl::string_view rest =
          segment.substr(end + (has_modifier ? 1 : 0));
      const bool skip =
          (modifier == '?' || modifier == '*') && rest.empty() && Chance(30);
      if (!skip) {
        const int count = modifier == '*' || modifier == '+' ? 1 + Pick(3) : 1;
        for (int i = 0; i < count; ++i) absl::StrAppend(&path, "/", Segment());
      }
      path += FillStars(rest);
    }
    if (absl::EndsWith(pattern.path(), "/")) path += "/";
    return path.empty() ? "/" : path;
  }

  // `path` with one hostile change that must never be allowed.
  std::string Hostile(const std::string& path) {
    std::vector<size_t> slashes;
    for (size_t i = 0; i < path.size(); ++i) {
      if (path[i] == '/') slashes.push_back(i);
    }
    const size_t at =
        slashes[static_cast<size_t>(Pick(static_cast<int>(slashes.size())))];
    static constexpr absl::string_view kInserts[] = {
        "/..",         "/.",       "/%2e%2e",    "/%2E%2e",  "/.%2e",
        "/%252e%252e", "/..%2f..", "/%2e%2e%5c", "/x/../..",
    };
    std::string out = path;
    out.insert(at, std::string(kInserts[Pick(std::size(kInserts))]));
    return out;
  }

  std::string Method(const Rule& rule) {
    static constexpr absl::string_view kMethods[] = {"GET", "POST", "PUT",
                                                     "DELETE", "PATCH"};
    if (!rule.AnyMethod() && !Chance(10)) return rule.method;
    return std::string(kMethods[Pick(std::size(kMethods))]);
  }

 private:
  std::mt19937 random_;
};

std::vector<std::string> Templates() {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(
           std::string(BROKER_TEST_FIXTURES_DIR) + "/accept-templates")) {
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(AllowProperty, OnlyAnAllowingRuleLetsARequestThroughInEveryTemplate) {
  const std::vector<std::string> files = Templates();
  ASSERT_GE(files.size(), 10U);
  int eligible = 0;  // plain, the rule's method, a rule without checks
  int eligible_allowed = 0;
  int hostile = 0;
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    auto loaded = RuleSet::FromFile(file);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const RuleSet& rules = **loaded;
    Generator generate(
        static_cast<std::uint32_t>(std::hash<std::string>()(file)));
    for (RuleList list : {RuleList::kPrivate, RuleList::kPublic}) {
      const auto all = rules.rules(list);
      if (all.empty()) continue;
      for (int n = 0; n < kRequestsPerList; ++n) {
        const Rule& source = all[static_cast<size_t>(
            generate.Pick(static_cast<int>(all.size())))];
        const bool make_hostile = generate.Chance(30);
        std::string path = generate.PathFor(source.path);
        if (make_hostile) path = generate.Hostile(path);
        std::string url = path;
        if (generate.Chance(30))
          absl::StrAppend(&url, "?ref=", generate.Segment());
        const std::string method = generate.Method(source);
        const RequestView request{method, url, {}, ""};
        const Decision decision = rules.Evaluate(list, request);
        if (make_hostile) ++hostile;
        const bool is_eligible = !make_hostile && method == source.method &&
                                 !source.HasValidity() &&
                                 source.header_checks.empty();
        if (is_eligible) ++eligible;
        if (!decision.allowed()) continue;
        if (is_eligible) ++eligible_allowed;

        ASSERT_TRUE(!make_hostile)
            << method << " " << url << " allowed by " << decision.rule->Label();
        const Rule& rule = *decision.rule;
        ASSERT_EQ(rule.list, list);
        ASSERT_EQ(&all[static_cast<size_t>(rule.index)], &rule);
        ASSERT_TRUE(rule.AnyMethod() ||
                    absl::EqualsIgnoreCase(rule.method, method))
            << method << " " << url << " allowed by " << rule.Label();
        const absl::string_view allowed_path = SplitRequestTarget(url).path;
        ASSERT_TRUE(rule.path.Matches(allowed_path))
            << url << " allowed by " << rule.Label();
        ASSERT_FALSE(HasDotSegment(allowed_path))
            << url << " allowed by " << rule.Label();
        if (list == RuleList::kPrivate) {
          ASSERT_TRUE(rule.origin.has_value()) << rule.Label();
        }
      }
    }
  }
  EXPECT_GT(hostile, 10000);
  // Requests built for a rule without checks, with its method, must get
  // through (all do today; an earlier rule with checks could block a few),
  // or the generator misses the allow paths.
  EXPECT_GT(eligible_allowed, eligible * 9 / 10)
      << eligible_allowed << " of " << eligible << " allowed";
  std::cout << eligible_allowed << " of " << eligible
            << " requests built for a rule allowed, " << hostile
            << " hostile ones all blocked\n";
}

}  // namespace
}  // namespace broker::filters
