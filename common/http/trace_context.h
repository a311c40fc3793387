#pragma once

// W3C Trace Context (https://www.w3.org/TR/trace-context/): the
// `traceparent` header that ties one platform request, or one webhook, to
// every hop it takes (platform -> broker-server -> tunnel -> broker-tunnel
// -> origin, and SCM -> broker-webhook -> broker-tunnel -> broker-server ->
// platform). Each broker hop is a span of its own: it keeps the caller's
// trace id, passes on a new parent id, and starts a trace when the caller
// sent none (or an invalid one). Nothing is exported; the ids are for logs
// and for the tracing the platform and the origins do.
//
//   std::string trace_id = http::ContinueTrace(headers);  // before sending
//
// Thread-safe (the ids come from a thread-safe random source).

#include "common/http/message.h"

#include "absl/strings/string_view.h"

#include <optional>
#include <string>

namespace broker::common::http {

inline constexpr absl::string_view kTraceparentHeader = "traceparent";

struct TraceParent {
  std::string trace_id;   // 32 lower-case hex digits, not all zero
  std::string parent_id;  // 16 lower-case hex digits, not all zero
  std::string flags;      // 2 hex digits ("01": sampled)

  // "00-<trace_id>-<parent_id>-<flags>".
  std::string ToHeader() const;
};

// The header value parsed as the specification says: version 00 exactly,
// a later version's first four fields (a receiver must accept those), no
// version ff, no all-zero id, lower-case hex only.
std::optional<TraceParent> ParseTraceParent(absl::string_view value);

// A new trace: random trace and parent ids, not sampled.
TraceParent NewTrace();

// The same trace seen from the next hop: a new parent id.
TraceParent ChildOf(const TraceParent& parent);

// Replaces the `traceparent` in `headers` by this hop's child of it (or by
// a new trace when it is missing or invalid; an invalid one's `tracestate`
// goes too, as the specification asks), and returns the trace id.
std::string ContinueTrace(Headers& headers);

}  // namespace broker::common::http
