#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "re2/re2.h"

#include <memory>
#include <string>
#include <vector>

namespace broker::filters {

// A glob with minimatch 3 semantics and `dot: true`, as Snyk Broker applies
// to query parameter values: the value is split on "/", "*" and "?" stay
// within one segment, "**" spans segments, "[...]" classes, "{a,b}" and
// "{1..3}" braces, a leading "!" negates, "#..." matches nothing, an empty
// pattern matches only the empty string. "." and ".." segments are never
// matched by a wildcard, which keeps traversal out of checked values.
//
// Matching is O(segments x pattern parts): no exponential backtracking on
// hostile values.
class Glob {
 public:
  [[nodiscard]] static absl::StatusOr<Glob> Compile(
      absl::string_view pattern_text);

  bool Matches(absl::string_view value) const;

  const std::string& pattern() const { return pattern_; }

  // True when the pattern has any glob magic ("*", "?", "[", "{", "!").
  static bool HasMagic(absl::string_view pattern);

  // One "/"-separated piece of the pattern.
  struct Part {
    bool globstar = false;             // "**"
    std::string literal;               // used when regex is null
    std::shared_ptr<const RE2> regex;  // a segment with magic
    bool non_empty = false;            // magic never matches ""
    bool no_dot_segment = false;       // a leading wildcard skips . and ..
  };
  using Alternative = std::vector<Part>;

 private:
  static bool MatchAlternative(const Alternative& pattern,
                               const std::vector<absl::string_view>& file);

  std::string pattern_;
  bool negate_ = false;
  bool never_ = false;       // a "#comment" pattern
  bool empty_only_ = false;  // the empty pattern
  std::vector<Alternative> alternatives_;
};

// Splits on runs of "/" as minimatch does ("a//b/" -> "a", "b", "").
std::vector<absl::string_view> SplitOnSlashRuns(absl::string_view s);

}  // namespace broker::filters
