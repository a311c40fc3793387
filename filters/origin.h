#pragma once

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace broker::filters {

struct Rule;

// The variables that `${NAME}` in origins and auth fields refer to. Built
// once by main() from the environment; libraries never read the environment.
class Variables {
 public:
  Variables() = default;
  explicit Variables(absl::flat_hash_map<std::string, std::string> values)
      : values_(std::move(values)) {}

  // From a NULL-terminated `environ`-style array of "NAME=value".
  static Variables FromEnviron(const char* const* environ);

  const std::string* Find(absl::string_view name) const;
  const absl::flat_hash_map<std::string, std::string>& values() const {
    return values_;
  }

 private:
  absl::flat_hash_map<std::string, std::string> values_;
};

// A string with `${NAME}` placeholders, parsed once at load.
class Template {
 public:
  explicit Template(absl::string_view text);

  const std::string& text() const { return text_; }
  // Names of the variables used, in order of appearance.
  std::vector<std::string> VariableNames() const;

 private:
  friend class OriginResolver;
  struct Piece {
    bool is_variable = false;
    std::string text;  // literal text or variable name
  };
  std::string text_;
  std::vector<Piece> pieces_;
};

// Where a matched request goes: the full URL (userinfo removed) and the
// Authorization header the rule or the origin's userinfo asks for.
struct ForwardTarget {
  std::string url;
  std::optional<std::string> authorization;
};

// Expands origins and auth templates the way Snyk Broker does: `${NAME}`
// from the variables ("" when unset); when `NAME_POOL` is set (a comma
// separated list) each expansion takes the next value round-robin; an origin
// without a scheme gets "https://"; `auth` becomes Basic/Bearer/Token/raw;
// otherwise userinfo in the origin becomes `Basic base64(user:pass)` or
// `token <t>` and is removed from the URL.
//
// Thread-safe: pools rotate with atomic counters.
class OriginResolver {
 public:
  explicit OriginResolver(Variables variables);

  // `request_url` is appended verbatim to the expanded origin. Fails for a
  // rule without an origin.
  [[nodiscard]] absl::StatusOr<ForwardTarget> Resolve(
      const Rule& rule, absl::string_view request_url) const;

  std::string Expand(const Template& text) const;

  const Variables& variables() const { return variables_; }

 private:
  struct Pool {
    std::vector<std::string> values;
    mutable std::atomic<std::uint64_t> next{0};
  };

  Variables variables_;
  absl::flat_hash_map<std::string, std::unique_ptr<Pool>> pools_;
};

}  // namespace broker::filters
