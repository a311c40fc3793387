// libFuzzer target: hostile requests against Snyk's GitHub template.
//
// The template (tests/fixtures/accept-templates/github-com.json; the
// directory is compiled in as BROKER_ACCEPT_TEMPLATES_DIR) is loaded once,
// with gitlab.json, whose rules check query parameters. Each input is split
// like an HTTP/1 request head:
//
//   METHOD SP URL LF
//   Name: value LF        (zero or more header lines)
//   LF
//   body                  (the rest, verbatim)
//
// A first line without a space is all URL (method GET); missing parts are
// empty; a trailing CR on a line is dropped. The request is evaluated
// against both lists, and the pieces also go to Glob::Compile/Matches (each
// header value as a pattern), ParseQueryString, PercentDecode,
// NormalizationWouldChange and FindPathTraversal.
//
// Besides crashes and sanitizer reports, a broken invariant aborts; the
// important ones are security properties:
//   - an allowed request has a normalised path without encoded traversal;
//   - the allowing rule's own pattern matches the path and its method the
//     request's (the RE2::Set agrees with the rule);
//   - a request blocked for "no matching rule" is not matched by any rule
//     without checks (the RE2::Set missed nothing).
//
// Seeds: fuzz/corpus/matcher/. Run with scripts/fuzz.sh.

#include "filters/glob.h"
#include "filters/query_string.h"
#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"
#include "filters/url_checks.h"

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace broker::filters {
namespace {

// Globs are compiled per input: cap their size so that a long header value
// does not turn each run into a regex compilation benchmark.
constexpr size_t kMaxGlobPattern = 4096;
constexpr size_t kMaxHeaders = 16;
// Matching every rule's own RE2 against the path is the oracle for the
// RE2::Set; skip it for very long paths, where it would dominate the run.
constexpr size_t kMaxCrossCheckedPath = 64 * 1024;

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

// Snyk's GitHub template, and its GitLab one for the query-parameter checks
// (the GitHub template has none). Loaded once, kept for the process's life.
const std::vector<std::shared_ptr<const RuleSet>>& RuleSets() {
  static const auto* const sets = [] {
    auto* loaded_sets = new std::vector<std::shared_ptr<const RuleSet>>;
    for (const char* name : {"github-com.json", "gitlab.json"}) {
      const std::string path =
          std::string(BROKER_ACCEPT_TEMPLATES_DIR) + "/" + name;
      absl::StatusOr<std::shared_ptr<const RuleSet>> loaded =
          RuleSet::FromFile(path);
      if (!loaded.ok()) {
        std::fprintf(stderr, "matcher_fuzz: %s\n",
                     loaded.status().ToString().c_str());
        std::abort();
      }
      loaded_sets->push_back(*std::move(loaded));
    }
    return loaded_sets;
  }();
  return *sets;
}

// The next line of `*rest` (without LF and a trailing CR); advances `*rest`.
absl::string_view NextLine(absl::string_view* rest) {
  size_t end = rest->find('\n');
  absl::string_view line = rest->substr(0, end);
  rest->remove_prefix(end == absl::string_view::npos ? rest->size() : end + 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

struct Pieces {
  absl::string_view method = "GET";
  absl::string_view url;
  std::vector<HeaderField> headers;
  absl::string_view body;
};

Pieces Split(absl::string_view input) {
  Pieces pieces;
  absl::string_view rest = input;
  absl::string_view first = NextLine(&rest);
  size_t space = first.find(' ');
  if (space == absl::string_view::npos) {
    pieces.url = first;
  } else {
    pieces.method = first.substr(0, space);
    pieces.url = first.substr(space + 1);
  }
  while (!rest.empty()) {
    absl::string_view line = NextLine(&rest);
    if (line.empty()) break;
    size_t colon = line.find(':');
    absl::string_view name = line.substr(0, colon);
    absl::string_view value =
        colon == absl::string_view::npos ? "" : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    pieces.headers.push_back({std::string(name), std::string(value)});
  }
  pieces.body = rest;
  return pieces;
}

bool MethodMatches(const Rule& rule, absl::string_view method) {
  return rule.AnyMethod() || absl::EqualsIgnoreCase(rule.method, method);
}

void CheckDecision(const RuleSet& rules, RuleList list,
                   const RequestView& request, const Decision& decision) {
  const absl::string_view path = SplitRequestTarget(request.url).path;
  Require(decision.allowed() == (decision.cause == BlockCause::kNone),
          "allowed() agrees with cause");
  const auto all = rules.rules(list);
  const bool cross_check = path.size() <= kMaxCrossCheckedPath;
  switch (decision.cause) {
    case BlockCause::kNone: {
      const Rule& rule = *decision.rule;
      Require(rule.list == list, "the rule belongs to the list");
      Require(rule.index >= 0 && static_cast<size_t>(rule.index) < all.size(),
              "the rule index is in range");
      Require(&all[static_cast<size_t>(rule.index)] == &rule,
              "the rule is at its index");
      Require(!NormalizationWouldChange(path), "an allowed path is normalised");
      Require(!FindPathTraversal(path).has_value(),
              "an allowed path has no encoded traversal");
      Require(MethodMatches(rule, request.method),
              "the allowing rule's method matches");
      Require(rule.path.Matches(path),
              "the allowing rule's own pattern matches the path");
      // No earlier rule without checks matches: first match wins.
      for (size_t i = 0; cross_check && i < static_cast<size_t>(rule.index);
           ++i) {
        const Rule& earlier = all[i];
        if (!earlier.HasValidity() && earlier.header_checks.empty() &&
            MethodMatches(earlier, request.method)) {
          Require(!earlier.path.Matches(path),
                  "no earlier unconditional rule matches");
        }
      }
      break;
    }
    case BlockCause::kNoMatchingRule:
      if (!cross_check) break;
      for (const Rule& rule : all) {
        if (!rule.HasValidity() && rule.header_checks.empty() &&
            MethodMatches(rule, request.method)) {
          Require(!rule.path.Matches(path),
                  "a blocked path matches no unconditional rule");
        }
      }
      break;
    case BlockCause::kNotNormalized:
      Require(NormalizationWouldChange(path), "kNotNormalized is justified");
      break;
    case BlockCause::kPathTraversal:
      Require(FindPathTraversal(path).has_value(),
              "kPathTraversal is justified");
      break;
    case BlockCause::kRepeatedQueryParameter:
      break;
  }
  Require(!decision.reason.empty(), "every decision has a reason");
}

void ExerciseHelpers(const Pieces& pieces) {
  const SplitUrl url = SplitRequestTarget(pieces.url);
  (void)NormalizationWouldChange(url.path);
  (void)FindPathTraversal(url.path);
  (void)FindPathTraversal(pieces.body);
  const std::string decoded = PercentDecode(pieces.url);
  Require(decoded.size() <= pieces.url.size(), "decoding never grows");

  for (absl::string_view query : {url.query, pieces.body}) {
    QueryParams params = ParseQueryString(query);
    for (const auto& [name, value] : params) {
      Require(value.count >= 1, "every parsed parameter was sent");
    }
  }

  size_t globs = 0;
  for (const HeaderField& header : pieces.headers) {
    if (++globs > kMaxHeaders) break;
    if (header.value.size() > kMaxGlobPattern) continue;
    absl::StatusOr<Glob> glob = Glob::Compile(header.value);
    if (!glob.ok()) continue;
    (void)glob->Matches(header.name);
    (void)glob->Matches(pieces.url);
    (void)glob->Matches(decoded);
    (void)glob->Matches(pieces.body);
    (void)Glob::HasMagic(header.value);
  }
}

}  // namespace
}  // namespace broker::filters

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  (void)broker::filters::RuleSets();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace broker::filters;  // NOLINT(build/namespaces)
  const Pieces pieces =
      Split(absl::string_view(reinterpret_cast<const char*>(data), size));
  const RequestView request{pieces.method, pieces.url, pieces.headers,
                            pieces.body};
  for (const auto& rules : RuleSets()) {
    for (RuleList list : {RuleList::kPrivate, RuleList::kPublic}) {
      CheckDecision(*rules, list, request, rules->Evaluate(list, request));
    }
  }
  ExerciseHelpers(pieces);
  return 0;
}
