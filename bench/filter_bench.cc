// Google Benchmark timings of the accept-rule engine on Snyk's GitHub
// template (tests/fixtures/accept-templates/github-com.json, 320 private
// rules). These are means; bench/filter_latency.cc reports the percentiles
// the targets are stated in (evaluation p99 <= 10 us, load <= 50 ms).
//
// Run with bench/run_filter_bench.sh (Release build).

#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"
#include "filters/url_checks.h"

#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace broker::filters {
namespace {

constexpr char kTemplatePath[] = BROKER_GITHUB_TEMPLATE;

// Matches private[308] (GET /repos/:name/:repo/git/trees/:ref), late in the
// list of 320.
constexpr char kLateMatchUrl[] = "/repos/acme/app/git/trees/abc123?recursive=1";
constexpr int kLateMatchIndex = 308;
// Matches private[3] (GET /user/repos).
constexpr char kEarlyMatchUrl[] = "/user/repos?per_page=100";
constexpr int kEarlyMatchIndex = 3;
// No rule allows it.
constexpr char kBlockedUrl[] = "/repos/acme/app/secrets/x";
// A typical 60-character path (allowed by private[19]) and an encoded
// traversal that Snyk would have forwarded.
constexpr char kCleanPath[] =
    "/repos/acme-corp/payments-api/contents/services/package.json";
constexpr char kTraversalPath[] = "/repos/acme/app/contents/%2e%2e%2f.env";

const std::string& TemplateText() {
  static const std::string* const text = [] {
    std::ifstream in(kTemplatePath, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", kTemplatePath);
      std::exit(1);
    }
    std::ostringstream out;
    out << in.rdbuf();
    return new std::string(out.str());
  }();
  return *text;
}

const RuleSet& GithubRules() {
  static const std::shared_ptr<const RuleSet>* const rules = [] {
    absl::StatusOr<std::shared_ptr<const RuleSet>> loaded =
        RuleSet::FromText(TemplateText(), kTemplatePath);
    if (!loaded.ok()) {
      std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
      std::exit(1);
    }
    return new std::shared_ptr<const RuleSet>(*std::move(loaded));
  }();
  return **rules;
}

// Times Evaluate(kPrivate, GET url) after checking once that the decision is
// the expected one (`expected_index` -1: blocked).
void RunEvaluate(benchmark::State& state, const char* url, int expected_index) {
  const RuleSet& rules = GithubRules();
  const RequestView request{"GET", url, {}, {}};
  const Decision first = rules.Evaluate(RuleList::kPrivate, request);
  const int got = first.allowed() ? first.rule->index : -1;
  if (got != expected_index) {
    const std::string message = "expected rule " +
                                std::to_string(expected_index) + ", got " +
                                std::to_string(got) + ": " + first.reason;
    state.SkipWithError(message.c_str());
    return;
  }
  for (auto _ : state) {
    Decision decision = rules.Evaluate(RuleList::kPrivate, request);
    benchmark::DoNotOptimize(decision);
  }
  state.SetLabel(first.reason);
}

void BM_LoadGithubTemplate(benchmark::State& state) {
  const std::string& text = TemplateText();
  for (auto _ : state) {
    absl::StatusOr<std::shared_ptr<const RuleSet>> rules =
        RuleSet::FromText(text, kTemplatePath);
    if (!rules.ok()) {
      state.SkipWithError(rules.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(rules);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(text.size()));
}
BENCHMARK(BM_LoadGithubTemplate)->Unit(benchmark::kMillisecond);

void BM_EvaluateLateMatch(benchmark::State& state) {
  RunEvaluate(state, kLateMatchUrl, kLateMatchIndex);
}
BENCHMARK(BM_EvaluateLateMatch);

void BM_EvaluateBlocked(benchmark::State& state) {
  RunEvaluate(state, kBlockedUrl, -1);
}
BENCHMARK(BM_EvaluateBlocked);

void BM_EvaluateEarlyMatch(benchmark::State& state) {
  RunEvaluate(state, kEarlyMatchUrl, kEarlyMatchIndex);
}
BENCHMARK(BM_EvaluateEarlyMatch);

// The whole evaluation of the clean 60-character path (which includes the
// traversal check), for comparison with the check alone below.
void BM_EvaluateCleanPath(benchmark::State& state) {
  RunEvaluate(state, kCleanPath, 19);
}
BENCHMARK(BM_EvaluateCleanPath);

// An encoded traversal is refused before any rule is looked at.
void BM_EvaluateTraversalBlocked(benchmark::State& state) {
  RunEvaluate(state, kTraversalPath, -1);
}
BENCHMARK(BM_EvaluateTraversalBlocked);

// FindPathTraversal alone: what the traversal check adds to every
// evaluation.
void BM_EvaluateTraversalCheckOnly(benchmark::State& state, const char* path,
                                   bool expect_traversal) {
  if (FindPathTraversal(path).has_value() != expect_traversal) {
    state.SkipWithError("unexpected FindPathTraversal result");
    return;
  }
  for (auto _ : state) {
    std::optional<std::string> found = FindPathTraversal(path);
    benchmark::DoNotOptimize(found);
  }
}
BENCHMARK_CAPTURE(BM_EvaluateTraversalCheckOnly, clean_60_chars, kCleanPath,
                  false);
BENCHMARK_CAPTURE(BM_EvaluateTraversalCheckOnly, encoded_traversal,
                  kTraversalPath, true);

}  // namespace
}  // namespace broker::filters

BENCHMARK_MAIN();
