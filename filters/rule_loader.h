#pragma once

// Internal to filters/: turns rule-file text into compiled rules. Use
// RuleSet::Parse from outside.

#include "filters/diagnostic.h"
#include "filters/rule.h"

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

#include <optional>
#include <vector>

namespace broker::filters::internal {

// JSON when the text starts with "{" or "[", YAML otherwise (YAML is how
// Snyk loads the file). Errors name the line and column.
[[nodiscard]] absl::StatusOr<nlohmann::json> ParseDocument(
    absl::string_view text);

// Validates and compiles one rule; every problem is appended to
// `diagnostics` with the rule's list and index. nullopt when it has errors.
std::optional<Rule> CompileRule(const nlohmann::json& raw, RuleList list,
                                int index,
                                std::vector<Diagnostic>* diagnostics);

}  // namespace broker::filters::internal
