#pragma once

#include "filters/glob.h"
#include "filters/origin.h"
#include "filters/path_pattern.h"

#include "nlohmann/json.hpp"

#include <optional>
#include <string>
#include <vector>

namespace broker::filters {

enum class RuleList { kPrivate, kPublic };

// "private" or "public".
const char* RuleListName(RuleList list);

// `auth` of a rule: turned into an Authorization header after a match.
struct AuthSpec {
  enum class Scheme { kBasic, kBearer, kToken, kRaw };
  Scheme scheme = Scheme::kBasic;
  std::optional<Template> username;
  std::optional<Template> password;
  std::optional<Template> token;
};

// A `valid` entry that inspects the JSON body: `path` (dot separated, "*"
// walks every element of an array or object) compared with `value`
// (equality; a string value with "*" or "?" is a glob), or tested with
// `regex`.
struct BodyCheck {
  std::vector<std::string> path;
  std::optional<nlohmann::json> value;
  std::optional<Glob> value_glob;    // set when value is a glob string
  std::shared_ptr<const RE2> regex;  // set for regex checks
};

// A `valid` entry on a query parameter: passes when the (decoded) value of
// `name`, "" when absent, matches any of the globs.
struct QueryCheck {
  std::string name;
  std::vector<Glob> values;
};

// A `valid` entry on a header: the header must be present exactly once and
// equal one of `values` exactly.
struct HeaderCheck {
  std::string name;  // lower case
  std::vector<std::string> values;
};

// One compiled accept rule. Immutable after load.
// NOLINTNEXTLINE(bugprone-exception-escape): members only allocate.
struct Rule {
  RuleList list = RuleList::kPrivate;
  int index = 0;
  std::string method;  // upper case, or "ANY"
  PathPattern path;
  std::optional<Template> origin;
  std::optional<AuthSpec> auth;
  std::vector<BodyCheck> body_checks;
  std::vector<BodyCheck> body_regex_checks;
  std::vector<QueryCheck> query_checks;
  std::vector<HeaderCheck> header_checks;
  nlohmann::json source;  // the rule as written, for GET /filters and lint

  bool AnyMethod() const { return method == "ANY"; }
  bool HasValidity() const {
    return !body_checks.empty() || !body_regex_checks.empty() ||
           !query_checks.empty();
  }
  // "private[12]"
  std::string Label() const;
};

}  // namespace broker::filters
