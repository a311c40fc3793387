#pragma once

#include <string>
#include <vector>

namespace broker::filters {

enum class Severity { kWarning, kError };

// One finding about a rule file. `list` is "private", "public" or empty for
// the file as a whole; `index` is the 0-based rule index, or -1.
struct Diagnostic {
  Severity severity = Severity::kError;
  std::string list;
  int index = -1;
  std::string message;

  // "private[3]: message", or "message" for file-level findings.
  std::string ToString() const;
};

bool HasErrors(const std::vector<Diagnostic>& diagnostics);

}  // namespace broker::filters
