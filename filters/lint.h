#pragma once

#include "filters/diagnostic.h"
#include "filters/rule_set.h"

#include "absl/strings/string_view.h"

#include <string>
#include <vector>

namespace broker::filters {

// Everything `broker-filter lint` reports about a rule file: load errors,
// compatibility warnings, and rules that allow more than their authors
// probably meant (each with a safer form).
std::vector<Diagnostic> Lint(absl::string_view text,
                             absl::string_view source_name);

// Only the risk warnings for an already loaded set.
std::vector<Diagnostic> RiskWarnings(const RuleSet& rule_set);

}  // namespace broker::filters
