#include "filters/diagnostic.h"

#include "absl/strings/str_cat.h"

#include <algorithm>

namespace broker::filters {

std::string Diagnostic::ToString() const {
  if (list.empty()) return message;
  if (index < 0) return absl::StrCat(list, ": ", message);
  return absl::StrCat(list, "[", index, "]: ", message);
}

bool HasErrors(const std::vector<Diagnostic>& diagnostics) {
  return std::any_of(
      diagnostics.begin(), diagnostics.end(),
      [](const Diagnostic& d) { return d.severity == Severity::kError; });
}

}  // namespace broker::filters
