#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "re2/re2.h"

#include <memory>
#include <string>
#include <vector>

namespace broker::filters {

// An accept-rule path compiled with path-to-regexp 1.x semantics (the version
// Snyk Broker uses): case-insensitive, anchored at both ends, an optional
// trailing "/", ":name" = one segment, ":name?" optional, ":name*"/":name+"
// repeated, "*" = anything including "/", "(regex)" groups. The pattern is
// matched against the raw, still percent-encoded path, so "%2F" is not "/".
//
// The regular expression runs on RE2 (linear time, no backtracking), in
// Latin-1 mode so that every byte of a hostile URL is one character.
class PathPattern {
 public:
  // One piece of the parsed pattern, kept for `lint`.
  struct Token {
    bool is_literal = true;
    std::string text;             // the literal text, or the parameter name
    bool optional = false;        // "?" or "*" modifier
    bool repeat = false;          // "+" or "*" modifier
    bool asterisk = false;        // a bare "*"
    bool custom_pattern = false;  // ":name(regex)" or "(regex)"
  };

  // `path` gets a leading "/" when it has none, as Snyk does.
  [[nodiscard]] static absl::StatusOr<PathPattern> Compile(
      absl::string_view path_text);

  // An empty pattern matches nothing.
  PathPattern() = default;
  PathPattern(PathPattern&&) = default;
  PathPattern& operator=(PathPattern&&) = default;

  bool Matches(absl::string_view path) const;

  const std::string& path() const { return path_; }
  // The RE2 source, without the case-insensitivity flag.
  const std::string& regex() const { return regex_; }
  const std::vector<Token>& tokens() const { return tokens_; }

 private:
  std::string path_;
  std::string regex_;
  std::vector<Token> tokens_;
  std::unique_ptr<RE2> re_;
};

// RE2 options shared by every path pattern (Latin-1, case-insensitive).
RE2::Options PathPatternOptions();

}  // namespace broker::filters
