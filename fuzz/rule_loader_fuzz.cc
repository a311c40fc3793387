// libFuzzer target: arbitrary bytes as an accept.json (JSON or YAML).
//
// The bytes go to RuleSet::Parse; when they load, a few fixed requests are
// evaluated against both lists, and filters::Lint runs on the same bytes.
// Besides crashes and sanitizer reports, a broken invariant aborts:
//   - Parse returns a rule set exactly when it reports no error;
//   - an allowed decision names a rule of the list evaluated, at its index;
//   - Lint reports an error exactly when Parse does.
//
// Seeds: fuzz/corpus/rule_loader/. Run with scripts/fuzz.sh.

#include "filters/diagnostic.h"
#include "filters/lint.h"
#include "filters/request.h"
#include "filters/rule.h"
#include "filters/rule_set.h"

#include "absl/strings/string_view.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace broker::filters {
namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

struct FixedRequest {
  const char* method;
  const char* url;
  std::vector<HeaderField> headers;
  const char* body;
};

const std::vector<FixedRequest>& Requests() {
  static const std::vector<FixedRequest>* const requests =
      new std::vector<FixedRequest>{
          {"GET", "/", {}, ""},
          {"GET", "/user", {}, ""},
          {"get", "/repos/acme/app/contents/src/package.json?ref=main", {}, ""},
          {"GET",
           "/repos/acme/app/commits/main",
           {{"Accept", "application/vnd.github.v4.sha"}},
           ""},
          {"POST",
           "/webhook/github",
           {{"X-GitHub-Event", "push"}},
           R"({"commits":[{"added":["package.json"],"modified":[]}],)"
           R"("pull_request":{"state":"open"}})"},
          {"GET",
           "/api/v4/projects/1/repository/files?file_path=a/b.txt&x=1",
           {},
           ""},
          {"GET", "/files?file_path=a&file_path=b", {}, ""},
          {"DELETE", "/repos/acme/app/contents/%2e%2e%2f.env", {}, "{}"},
          {"PUT", "/a//b/./c", {}, "not json"},
      };
  return *requests;
}

void CheckDecision(const RuleSet& rules, RuleList list,
                   const Decision& decision) {
  Require(decision.allowed() == (decision.cause == BlockCause::kNone),
          "allowed() agrees with cause");
  if (!decision.allowed()) return;
  Require(decision.rule->list == list, "the rule belongs to the list");
  const auto all = rules.rules(list);
  Require(decision.rule->index >= 0 &&
              static_cast<size_t>(decision.rule->index) < all.size(),
          "the rule index is in range");
  Require(&all[static_cast<size_t>(decision.rule->index)] == decision.rule,
          "the rule is at its index");
}

}  // namespace
}  // namespace broker::filters

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace broker::filters;  // NOLINT(build/namespaces)
  const absl::string_view text(reinterpret_cast<const char*>(data), size);

  LoadResult result = RuleSet::Parse(text, "fuzz.json");
  const bool parse_errors = HasErrors(result.diagnostics);
  Require((result.rule_set != nullptr) == !parse_errors,
          "a rule set is returned exactly when there is no error");
  if (result.rule_set != nullptr) {
    const RuleSet& rules = *result.rule_set;
    for (const auto& fixed : Requests()) {
      const RequestView request{fixed.method, fixed.url, fixed.headers,
                                fixed.body};
      for (RuleList list : {RuleList::kPrivate, RuleList::kPublic}) {
        CheckDecision(rules, list, rules.Evaluate(list, request));
      }
    }
  }

  std::vector<Diagnostic> lint = Lint(text, "fuzz.json");
  Require(HasErrors(lint) == parse_errors,
          "lint reports an error exactly when Parse does");
  return 0;
}
