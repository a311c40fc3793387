#pragma once

// One webhook event as broker-webhook passes it on, and the helpers every
// path of it shares: which headers travel, the event's request id, and the
// JSON error answers (docs/webhook.md, "Answers").

#include "common/http/message.h"
#include "common/http/server.h"

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <string>

namespace broker::webhook {

struct Event {
  std::string delivery_id;  // a uuid of ours, the same on every attempt
  std::string request_id;   // the SCM's id of the event (RequestIdOf)
  std::string method;
  std::string url;                // path?query, as the SCM sent it
  common::http::Headers headers;  // as received, minus PassedOn() ones,
                                  // with this hop's traceparent
  std::string trace_id;           // for logs
  absl::Time received;
  // Every answer goes out before it; attempts and the fallback end there.
  absl::Time deadline;
  // A /webhook/* event: the API fallback may take it (Snyk's rule).
  bool fallback_allowed = false;
};

// Call metadata of every Egress.Deliver attempt (egress.proto).
inline constexpr char kDeliveryIdMetadata[] = "x-broker-delivery-id";
inline constexpr char kDeliveryAttemptMetadata[] = "x-broker-delivery-attempt";

// Whether a request header is passed on: every one but the hop-by-hop and
// framing headers (each hop sets its own) and Host.
bool PassedOn(absl::string_view name);
// Whether a response header reaches the SCM: every one but the hop-by-hop
// and framing headers.
bool PassedBack(absl::string_view name);

// The event's own id: the first usable value of x-github-delivery,
// x-gitlab-event-uuid, snyk-request-id (at most 128 visible ASCII
// characters), else `fallback` (the delivery id).
std::string RequestIdOf(const common::http::Headers& headers,
                        absl::string_view fallback);

// Adds snyk-request-id: <request_id> unless `headers` has one.
void AddRequestId(common::http::Headers& headers, absl::string_view request_id);

// A JSON error answer {"ok":false,"code":...,"message":...} with
// `x-broker-failure: <failure>` (when not empty), snyk-request-id and,
// when > 0, Retry-After. Ignored if an answer already started.
void RespondError(common::http::Exchange& exchange, int status,
                  absl::string_view failure, absl::string_view code,
                  absl::string_view message, absl::string_view request_id,
                  int retry_after_seconds = 0);

// The path of a url, for logs (a query may carry secrets).
absl::string_view PathOf(absl::string_view url);

}  // namespace broker::webhook
