#pragma once

#include "filters/diagnostic.h"
#include "filters/request.h"
#include "filters/rule.h"

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "re2/set.h"

#include <memory>
#include <string>
#include <vector>

namespace broker::filters {

// Why a request was blocked.
enum class BlockCause {
  kNone,                    // allowed
  kNoMatchingRule,          // no rule of the list allows it
  kNotNormalized,           // the path has "//", "." or ".." segments
  kPathTraversal,           // a decoded segment is "." or ".." (issue 8)
  kRepeatedQueryParameter,  // a checked query parameter was sent twice
};

// The outcome of evaluating one request against one list.
struct Decision {
  const Rule* rule = nullptr;  // the first rule that allows it; owned by the
                               // RuleSet, so keep the RuleSet alive
  BlockCause cause = BlockCause::kNoMatchingRule;
  std::string reason;  // one line for logs and the CLI

  bool allowed() const { return rule != nullptr; }
};

// Result of parsing a rule file: the rules when there is no error, and every
// finding (errors and warnings) with its list and index.
class RuleSet;
struct LoadResult {
  std::shared_ptr<const RuleSet> rule_set;  // null when errors is not empty
  std::vector<Diagnostic> diagnostics;
};

// A compiled accept.json: `{"private": [...], "public": [...]}` in JSON or
// YAML. Immutable and thread-safe once built; share it as
// shared_ptr<const RuleSet> and swap whole sets on reload (RuleSetHolder).
class RuleSet {
 public:
  // Parses and compiles. All problems are reported, not only the first.
  static LoadResult Parse(absl::string_view text,
                          absl::string_view source_name);

  // As Parse, but an error becomes an InvalidArgument status naming every
  // problem ("accept.json: private[3]: ...").
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<const RuleSet>> FromText(
      absl::string_view text, absl::string_view source_name);
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<const RuleSet>> FromFile(
      const std::string& path);

  // First rule of `list` that allows `request`, in file order.
  Decision Evaluate(RuleList list, const RequestView& request) const;

  // Whether Evaluate() could read the body of a `method` request to `url`:
  // some rule of `list` with body or body-regex checks matches the method
  // and the path. Callers that stream bodies buffer one only then. Cheap:
  // false at once when the list has no body checks, else one path match.
  bool NeedsBody(RuleList list, absl::string_view method,
                 absl::string_view url) const;

  absl::Span<const Rule> rules(RuleList list) const {
    return list == RuleList::kPrivate ? private_.rules : public_.rules;
  }
  // Non-fatal findings of the load (unknown fields, ...).
  const std::vector<Diagnostic>& warnings() const { return warnings_; }
  // The file as loaded, for GET /filters.
  const nlohmann::json& source() const { return source_; }
  // Hex SHA-256 of the file's bytes: tells two clients' rules apart.
  const std::string& digest() const { return digest_; }

  RuleSet(const RuleSet&) = delete;
  RuleSet& operator=(const RuleSet&) = delete;
  ~RuleSet();

 private:
  // The rules of one list plus one RE2::Set over their paths, so that a
  // request is matched against every path in a single pass.
  struct CompiledList {
    std::vector<Rule> rules;
    std::unique_ptr<RE2::Set> paths;  // index i = rules[i]
    bool has_body_checks = false;     // some rule inspects the body
  };

  RuleSet() = default;  // NOLINT(bugprone-exception-escape): only allocation
  static Decision EvaluateList(RuleList which, const CompiledList& list,
                               const RequestView& request);
  // Indexes of the rules whose path matches, in file order.
  static std::vector<int> MatchingPaths(const CompiledList& list,
                                        absl::string_view path);

  CompiledList private_;
  CompiledList public_;
  std::vector<Diagnostic> warnings_;
  nlohmann::json source_;
  std::string digest_;
};

}  // namespace broker::filters
