#pragma once

#include "filters/rule_set.h"

#include "absl/strings/string_view.h"

#include <string>

namespace broker::filters {

// Where a request was blocked, which decides the wording Snyk clients expect.
enum class BlockedFlow {
  kHttp,    // on an HTTP ingress (server public rules, webhook public rules)
  kTunnel,  // on the far side of the tunnel (tunnel or server private rules)
};

// The status of every blocked answer.
inline constexpr int kBlockedStatus = 401;

// Snyk Broker's exact reasons for "no rule matched".
inline constexpr absl::string_view kHttpFlowNoMatchReason =
    "Request does not match any accept rule, blocking HTTP request";
inline constexpr absl::string_view kTunnelFlowNoMatchReason =
    "[Websocket Flow][Blocked Request] Does not match any accept rule";

// The `reason` of a blocked answer: Snyk's wording when no rule matched (a
// path that is not normalised included, as in Snyk), and that wording's
// prefix plus our cause for what we block on purpose (traversal, repeated
// query parameters).
std::string BlockedReason(BlockedFlow flow, const Decision& decision);

// {"code":"FILTER_BLOCKED","message":"blocked","reason":...,"url":...}
std::string BlockedBody(absl::string_view reason, absl::string_view url);

}  // namespace broker::filters
