#include "filters/blocked.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace broker::filters {

std::string BlockedReason(BlockedFlow flow, const Decision& decision) {
  const bool http = flow == BlockedFlow::kHttp;
  switch (decision.cause) {
    case BlockCause::kPathTraversal:
    case BlockCause::kRepeatedQueryParameter:
      return http ? absl::StrCat("Request blocked: ", decision.reason)
                  : absl::StrCat("[Websocket Flow][Blocked Request] ",
                                 decision.reason);
    case BlockCause::kNone:
    case BlockCause::kNoMatchingRule:
    case BlockCause::kNotNormalized:
      break;
  }
  return std::string(http ? kHttpFlowNoMatchReason : kTunnelFlowNoMatchReason);
}

std::string BlockedBody(absl::string_view reason, absl::string_view url) {
  nlohmann::ordered_json body = {{"code", "FILTER_BLOCKED"},
                                 {"message", "blocked"},
                                 {"reason", std::string(reason)},
                                 {"url", std::string(url)}};
  return body.dump(-1, ' ', false,
                   nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace broker::filters
