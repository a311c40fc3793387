#pragma once

#include "absl/strings/string_view.h"

#include <optional>
#include <string>

namespace broker::filters {

// The three parts of a request target.
struct SplitUrl {
  absl::string_view path;   // before the first "?"
  absl::string_view query;  // after the first "?", without the fragment
};

// Drops "#fragment" and splits at the first "?".
SplitUrl SplitRequestTarget(absl::string_view url);

// True when Node's path.posix.normalize(path) would differ from `path`:
// an empty segment ("//"), or a "." or ".." segment.
bool NormalizationWouldChange(absl::string_view path);

// 0-15 for a hex digit, -1 otherwise.
int HexDigitValue(char c);

// Percent-decodes once; invalid escapes are kept as they are.
std::string PercentDecode(absl::string_view text);

// Finds a path traversal hidden from a plain normalisation check: each
// segment is percent-decoded until it stops changing (so "%252e" counts),
// split on "/" and "\", and stripped of ";parameters"; a piece that is "." or
// ".." is traversal. Returns a description of the offending segment, or
// nullopt when the path is clean.
std::optional<std::string> FindPathTraversal(absl::string_view path);

}  // namespace broker::filters
