#pragma once

// IsOkAndHolds(m): an OK absl::StatusOr whose value matches `m`
// (tests/testing/status_matchers.h has IsOk and StatusIs only; gmock's
// Optional() does not apply to StatusOr in GoogleTest 1.12).

#include "gmock/gmock.h"

namespace broker::testing {

MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

}  // namespace broker::testing
