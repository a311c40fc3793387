#pragma once

#include "absl/status/statusor.h"

#include <string>

namespace broker::common {

// The whole file (certificates, keys, CA bundles; never bodies). NotFound
// names the path when it cannot be opened.
[[nodiscard]] absl::StatusOr<std::string> ReadFileToString(
    const std::string& path);

}  // namespace broker::common
