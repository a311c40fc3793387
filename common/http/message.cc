#include "common/http/message.h"

#include "absl/strings/match.h"

namespace broker::common::http {

std::optional<absl::string_view> FindHeader(const Headers& headers,
                                            absl::string_view name) {
  for (const Header& header : headers) {
    if (absl::EqualsIgnoreCase(header.name, name)) return header.value;
  }
  return std::nullopt;
}

}  // namespace broker::common::http
