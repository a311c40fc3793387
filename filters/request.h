#pragma once

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

#include <string>

namespace broker::filters {

// One header line as received. Names may be in any case; a name that appears
// twice is two entries (the rules treat a checked header sent twice as
// missing, because Node would have joined or dropped one of the values).
struct HeaderField {
  std::string name;
  std::string value;
};

// A request as the accept rules see it. Nothing is copied: the views must
// outlive the call to RuleSet::Evaluate.
struct RequestView {
  absl::string_view method;  // any case
  // The request target relative to the origin: "/path?query#fragment", with
  // the path still percent-encoded exactly as it arrived.
  absl::string_view url;
  absl::Span<const HeaderField> headers;
  // Only read by rules with body checks. Not JSON -> those checks fail.
  absl::string_view body;
};

}  // namespace broker::filters
