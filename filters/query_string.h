#pragma once

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

#include <string>

namespace broker::filters {

// A query parameter as the `qs` package would see it: "+" is a space,
// percent escapes are decoded (kept raw when malformed), "a[b]=" and "a[]="
// make `a` structured instead of a string.
struct QueryValue {
  std::string value;        // the first value
  int count = 0;            // how many times the name was sent
  bool structured = false;  // sent with brackets: not a plain string
};

using QueryParams = absl::flat_hash_map<std::string, QueryValue>;

QueryParams ParseQueryString(absl::string_view query);

}  // namespace broker::filters
