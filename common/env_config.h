#pragma once

// Typed reads of environment variables, for main() only (STYLE 5.10):
// main() builds one EnvReader from the process environment, turns it into
// its typed config struct, and stops with the first error, whose message
// always starts with the variable's name ("PORT: ..."). Library code takes
// the typed config and never reads the environment.
//
// Conventions, the same for every helper:
// - An unset variable gives the default (or an error for Required and
//   HttpUrl).
// - A variable set to the empty string counts as unset, except in Bool,
//   where "" is false, and Required, where it is an error. Kubernetes
//   manifests often render optional values as "".
// - Numbers and booleans are read after trimming ASCII whitespace.
// - Every error is InvalidArgument. Values are quoted in messages (escaped,
//   truncated) except for Required ones, which may be secrets.
//
// Thread-safety: an EnvReader is immutable after construction; its const
// methods may be called from any thread.

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <cstdint>
#include <string>
#include <utility>

namespace broker::common {

// An absolute http(s) URL split into parts; see EnvReader::HttpUrl.
struct Url {
  std::string scheme;  // "http" or "https", lower case
  std::string host;    // lower case; IPv6 literals keep their brackets
  int port = 0;        // as given, else 80 (http) or 443 (https)
  std::string path;    // as given from the first '/', "" when absent

  friend bool operator==(const Url& a, const Url& b) {
    return a.scheme == b.scheme && a.host == b.host && a.port == b.port &&
           a.path == b.path;
  }
  friend bool operator!=(const Url& a, const Url& b) { return !(a == b); }
};

// Parses "http(s)://host[:port][/path]". No user info, query or fragment.
// Errors do not name a variable; EnvReader::HttpUrl adds it.
[[nodiscard]] absl::StatusOr<Url> ParseHttpUrl(absl::string_view text);

// Whether Port() accepts 0 ("any free port", for tests and sidecars).
enum class PortZero { kRejected, kAllowed };

class EnvReader {
 public:
  using Map = absl::flat_hash_map<std::string, std::string>;

  // A snapshot of the process environment (`environ`). For main() only.
  static EnvReader FromEnviron();
  // A fixed set of variables, for tests.
  explicit EnvReader(Map vars) : vars_(std::move(vars)) {}

  // The value; an error if unset or empty. The message never contains the
  // value (tokens come through here).
  [[nodiscard]] absl::StatusOr<std::string> Required(
      absl::string_view name) const;

  // The value, or `default_value` if unset or empty.
  std::string Optional(absl::string_view name,
                       absl::string_view default_value) const;

  // A TCP port 1..65535 (0 too with PortZero::kAllowed), or `default_value`
  // if unset or empty.
  [[nodiscard]] absl::StatusOr<int> Port(
      absl::string_view name, int default_value,
      PortZero zero = PortZero::kRejected) const;

  // true for "true"/"yes", false for "false"/"no"/"" (any case);
  // `default_value` if unset; anything else is an error.
  [[nodiscard]] absl::StatusOr<bool> Bool(absl::string_view name,
                                          bool default_value) const;

  // A whole number in [min_value, max_value], or `default_value` if unset
  // or empty.
  [[nodiscard]] absl::StatusOr<std::int64_t> Integer(
      absl::string_view name, std::int64_t default_value,
      std::int64_t min_value, std::int64_t max_value) const;

  // A whole, non-negative number of milliseconds ("30000"), or
  // `default_value` if unset or empty.
  [[nodiscard]] absl::StatusOr<absl::Duration> DurationMs(
      absl::string_view name, absl::Duration default_value) const;

  // A required http(s) URL (see ParseHttpUrl).
  [[nodiscard]] absl::StatusOr<Url> HttpUrl(absl::string_view name) const;

 private:
  // The value, or nullptr if unset.
  const std::string* Find(absl::string_view name) const;

  Map vars_;
};

}  // namespace broker::common
