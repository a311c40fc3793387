// filter_latency: per-operation latency percentiles of the accept-rule
// engine, checked against the targets (Google Benchmark, in filter_bench,
// only reports means):
//   - RuleSet::Evaluate p99 <= 10,000 ns on Snyk's GitHub template;
//   - loading that template (RuleSet::FromText) <= 50 ms;
//   - the encoded-traversal check adds <= 1,000 ns to the evaluation p99.
//
// Every operation is timed on its own with std::chrono::steady_clock; the
// samples are sorted and read at the median, p99 and p99.9 (nearest rank).
// Always exits 0 (unless the template cannot be loaded); a missed target is
// printed as FAIL.

#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"
#include "filters/url_checks.h"

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace broker::filters {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kTemplatePath[] = BROKER_GITHUB_TEMPLATE;
constexpr int kWarmUp = 20'000;
constexpr int kEvaluations = 200'000;
constexpr int kLoads = 50;
constexpr int64_t kEvaluateTargetNs = 10'000;
constexpr int64_t kLoadTargetNs = 50'000'000;
constexpr int64_t kTraversalTargetNs = 1'000;

// A 60-character path that a rule allows (private[19]): the path the
// traversal check runs on for a typical request.
constexpr char kCleanPath[] =
    "/repos/acme-corp/payments-api/contents/services/package.json";

// Keeps results alive so that the timed calls are not optimised away.
volatile uintptr_t g_sink = 0;

int64_t Nanos(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from)
      .count();
}

struct Percentiles {
  size_t samples = 0;
  int64_t median = 0;
  int64_t p99 = 0;
  int64_t p999 = 0;
  int64_t max = 0;
};

// Nearest-rank percentile of sorted samples.
int64_t At(const std::vector<int64_t>& sorted, double fraction) {
  size_t rank = static_cast<size_t>(
      std::ceil(fraction * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

Percentiles Summarize(std::vector<int64_t> samples) {
  std::sort(samples.begin(), samples.end());
  Percentiles p;
  p.samples = samples.size();
  p.median = At(samples, 0.5);
  p.p99 = At(samples, 0.99);
  p.p999 = At(samples, 0.999);
  p.max = samples.back();
  return p;
}

// Times `op` kEvaluations times, one sample per call, after kWarmUp calls.
template <typename Op>
std::vector<int64_t> TimeEach(Op op) {
  for (int i = 0; i < kWarmUp; ++i) op();
  std::vector<int64_t> samples(kEvaluations);
  for (int i = 0; i < kEvaluations; ++i) {
    const Clock::time_point start = Clock::now();
    op();
    const Clock::time_point end = Clock::now();
    samples[static_cast<size_t>(i)] = Nanos(start, end);
  }
  return samples;
}

std::vector<int64_t> TimeEvaluate(const RuleSet& rules,
                                  const RequestView& request) {
  return TimeEach([&] {
    Decision decision = rules.Evaluate(RuleList::kPrivate, request);
    g_sink = g_sink + reinterpret_cast<uintptr_t>(decision.rule) +
             decision.reason.size();
  });
}

// Distinct request targets shaped like a scanner's traffic (manifest
// reads, trees, refs, pulls, commits, and some that no rule allows), with
// random owners, repositories and names, so that the lazily built DFA sees
// more than one input.
std::vector<std::string> MixedUrls(size_t count) {
  std::mt19937 random(42);
  auto name = [&random](size_t min_length, size_t max_length) {
    static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789-";
    std::uniform_int_distribution<size_t> length(min_length, max_length);
    std::uniform_int_distribution<size_t> pick(0, sizeof(kChars) - 3);
    std::string out(length(random), 'x');
    for (char& c : out) c = kChars[pick(random)];
    return out;
  };
  auto hex = [&random] {
    std::uniform_int_distribution<int> digit(0, 15);
    std::string out(40, '0');
    for (char& c : out) c = "0123456789abcdef"[digit(random)];
    return out;
  };
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_int_distribution<int> number(1, 99999);
  std::vector<std::string> urls;
  urls.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const std::string repo =
        absl::StrCat("/repos/", name(2, 16), "/", name(2, 24));
    switch (kind(random)) {
      case 0:
        urls.push_back(absl::StrCat(repo, "/contents/", name(1, 10), "/",
                                    name(1, 10), "/package.json"));
        break;
      case 1:
        urls.push_back(absl::StrCat(repo, "/contents/requirements/",
                                    name(1, 12), ".txt?ref=", hex()));
        break;
      case 2:
        urls.push_back(
            absl::StrCat(repo, "/git/trees/", hex(), "?recursive=1"));
        break;
      case 3:
        urls.push_back(absl::StrCat(repo, "/git/refs/heads/", name(1, 20)));
        break;
      case 4:
        urls.push_back(absl::StrCat(repo, "/pulls/", number(random), "/files"));
        break;
      case 5:
        urls.push_back(absl::StrCat(repo, "/commits?sha=", hex()));
        break;
      case 6:
        urls.push_back(
            absl::StrCat("/user/repos?per_page=100&page=", number(random)));
        break;
      case 7:
        urls.push_back(absl::StrCat(repo));
        break;
      case 8:
        urls.push_back(absl::StrCat(repo, "/secrets/", name(1, 20)));
        break;
      default:
        urls.push_back(absl::StrCat(repo, "/contents/", name(1, 10), "%2F",
                                    name(1, 10), "%2Fpom.xml"));
        break;
    }
  }
  return urls;
}

std::vector<int64_t> TimeTraversalCheck(absl::string_view path) {
  return TimeEach([path] {
    std::optional<std::string> found = FindPathTraversal(path);
    g_sink = g_sink + (found ? found->size() : 1);
  });
}

std::string ReadFile(const char* path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view view(line);
    if (absl::ConsumePrefix(&view, "model name")) {
      size_t colon = view.find(':');
      if (colon != absl::string_view::npos) {
        return std::string(absl::StripAsciiWhitespace(view.substr(colon + 1)));
      }
    }
  }
  return "unknown";
}

constexpr char kRowFormat[] = "%-44s %9s %11s %11s %11s %13s  %s\n";

void PrintRow(const std::string& scenario, const Percentiles& p,
              int64_t target_ns, const std::string& target_text,
              bool* all_pass) {
  const bool pass = p.p99 <= target_ns;
  *all_pass = *all_pass && pass;
  absl::PrintF(kRowFormat, scenario, absl::StrCat(p.samples),
               absl::StrCat(p.median), absl::StrCat(p.p99),
               absl::StrCat(p.p999), target_text, pass ? "PASS" : "FAIL");
}

struct Scenario {
  const char* name;
  const char* url;
  int expected_index;  // -1: blocked
};

int Main() {
  absl::PrintF("machine: nproc=%d, cpu=%s\n",
               static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)), CpuModel());
#if defined(NDEBUG) && defined(__OPTIMIZE__)
  absl::PrintF("build: optimized, NDEBUG\n");
#else
  absl::PrintF(
      "build: NOT an optimized NDEBUG build; numbers are pessimistic\n");
#endif
  // What one steady_clock::now() pair costs; included in every sample.
  const Percentiles timer = Summarize(TimeEach([] {}));
  absl::PrintF("timer overhead (empty op): median %d ns, p99 %d ns\n",
               timer.median, timer.p99);

  const std::string text = ReadFile(kTemplatePath);
  absl::StatusOr<std::shared_ptr<const RuleSet>> loaded =
      RuleSet::FromText(text, kTemplatePath);
  if (!loaded.ok()) {
    absl::FPrintF(stderr, "filter_latency: %s\n", loaded.status().ToString());
    return 1;
  }
  const RuleSet& rules = **loaded;
  absl::PrintF("template: %s (%d private rules, %d bytes)\n", kTemplatePath,
               rules.rules(RuleList::kPrivate).size(), text.size());
  absl::PrintF("evaluations: %d per scenario after %d warm-up; loads: %d\n\n",
               kEvaluations, kWarmUp, kLoads);

  absl::PrintF(kRowFormat, "scenario", "samples", "median ns", "p99 ns",
               "p99.9 ns", "target p99", "result");
  bool all_pass = true;

  const Scenario scenarios[] = {
      {"evaluate late match (private[308])",
       "/repos/acme/app/git/trees/abc123?recursive=1", 308},
      {"evaluate blocked (no rule)", "/repos/acme/app/secrets/x", -1},
      {"evaluate early match (private[3])", "/user/repos?per_page=100", 3},
  };
  std::optional<Percentiles> late_match;
  for (const Scenario& scenario : scenarios) {
    const RequestView request{"GET", scenario.url, {}, {}};
    const Decision check = rules.Evaluate(RuleList::kPrivate, request);
    const int got = check.allowed() ? check.rule->index : -1;
    if (got != scenario.expected_index) {
      absl::PrintF("%-44s FAIL: expected rule %d, got %d (%s)\n", scenario.name,
                   scenario.expected_index, got, check.reason);
      all_pass = false;
      continue;
    }
    Percentiles p = Summarize(TimeEvaluate(rules, request));
    if (scenario.expected_index == 308) late_match = p;
    PrintRow(scenario.name, p, kEvaluateTargetNs, "<= 10000 ns", &all_pass);
  }

  {
    // Mixed traffic: kEvaluations calls cycling through 10,000 distinct
    // targets, each timed on its own.
    const std::vector<std::string> urls = MixedUrls(10'000);
    size_t next = 0;
    size_t allowed = 0;
    for (const std::string& url : urls) {
      allowed +=
          rules.Evaluate(RuleList::kPrivate, {"GET", url, {}, {}}).allowed();
    }
    Percentiles p = Summarize(TimeEach([&] {
      const std::string& url = urls[next++ % urls.size()];
      Decision decision =
          rules.Evaluate(RuleList::kPrivate, {"GET", url, {}, {}});
      g_sink = g_sink + reinterpret_cast<uintptr_t>(decision.rule);
    }));
    PrintRow(absl::StrCat("evaluate mixed (", urls.size(), " urls, ",
                          allowed * 100 / urls.size(), "% allowed)"),
             p, kEvaluateTargetNs, "<= 10000 ns", &all_pass);
  }

  // Loading: kLoads parses of the same text. The first evaluation on each
  // fresh set is timed too: RE2 builds its DFA lazily, so that call pays for
  // the states it creates (information only, it has no target of its own).
  std::vector<int64_t> loads;
  std::vector<int64_t> first_evaluations;
  const RequestView late_request{"GET", scenarios[0].url, {}, {}};
  for (int i = 0; i < kLoads; ++i) {
    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::shared_ptr<const RuleSet>> again =
        RuleSet::FromText(text, kTemplatePath);
    const Clock::time_point end = Clock::now();
    loads.push_back(Nanos(start, end));
    if (!again.ok()) continue;
    const Clock::time_point eval_start = Clock::now();
    Decision decision = (*again)->Evaluate(RuleList::kPrivate, late_request);
    const Clock::time_point eval_end = Clock::now();
    g_sink = g_sink + reinterpret_cast<uintptr_t>(decision.rule);
    first_evaluations.push_back(Nanos(eval_start, eval_end));
  }
  PrintRow("load github-com.json (RuleSet::FromText)",
           Summarize(std::move(loads)), kLoadTargetNs, "<= 50 ms", &all_pass);
  if (!first_evaluations.empty()) {
    const Percentiles cold = Summarize(std::move(first_evaluations));
    absl::PrintF(kRowFormat, "late match, 1st call after load (cold DFA)",
                 absl::StrCat(cold.samples), absl::StrCat(cold.median),
                 absl::StrCat(cold.p99), absl::StrCat(cold.p999), "(info)",
                 "-");
  }

  // The traversal check. The engine has no switch to turn it off, so its
  // share is measured by timing FindPathTraversal alone on the same paths:
  // its p99 bounds what it adds to the evaluation p99.
  absl::PrintF("\ntraversal check (FindPathTraversal alone):\n");
  const Percentiles late_path =
      Summarize(TimeTraversalCheck("/repos/acme/app/git/trees/abc123"));
  PrintRow("  on the late-match path", late_path, kTraversalTargetNs,
           "<= 1000 ns", &all_pass);
  const Percentiles clean = Summarize(TimeTraversalCheck(kCleanPath));
  PrintRow("  on a clean 60-char path", clean, kTraversalTargetNs, "<= 1000 ns",
           &all_pass);
  const Percentiles encoded =
      Summarize(TimeTraversalCheck("/repos/acme/app/contents/%2e%2e%2f.env"));
  PrintRow("  on /repos/acme/app/contents/%2e%2e%2f.env", encoded,
           kTraversalTargetNs, "<= 1000 ns", &all_pass);
  {
    const RequestView request{"GET", kCleanPath, {}, {}};
    PrintRow("evaluate clean 60-char path (private[19])",
             Summarize(TimeEvaluate(rules, request)), kEvaluateTargetNs,
             "<= 10000 ns", &all_pass);
  }
  if (late_match) {
    const int64_t without = late_match->p99 - late_path.median;
    const bool pass = late_path.p99 <= kTraversalTargetNs;
    absl::PrintF(
        "late match: evaluate p99 with the check %d ns; FindPathTraversal "
        "alone median %d ns, p99 %d ns -> evaluate p99 without the check ~%d "
        "ns; the check adds <= %d ns to the p99 (target <= 1000 ns): %s\n",
        late_match->p99, late_path.median, late_path.p99, without,
        late_path.p99, pass ? "PASS" : "FAIL");
  }

  absl::PrintF("\noverall: %s\n",
               all_pass ? "PASS (all targets met)"
                        : "FAIL (at least one target missed, see above)");
  return 0;
}

}  // namespace
}  // namespace broker::filters

int main() { return broker::filters::Main(); }
