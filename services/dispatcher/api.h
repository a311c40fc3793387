#pragma once

// The dispatcher's REST API as a plain function of a buffered request
// (STYLE 5.8), so every route is tested without sockets. Snyk-compatible
// where Snyk defines the call (reference/snyk-broker-behaviour.md 1.3, 1.8);
// JSON:API bodies (application/vnd.api+json) everywhere except
// /healthcheck, which answers like the other services. A `version` query
// parameter is accepted and ignored.
//
//   POST   /hidden/broker[s]/{hash}/connections/{client_id}
//            -> 201 {"data":{"attributes":{"server_id":"0",...}}}
//               409 TOO_MANY_CLIENTS, 503 NO_BROKER_SERVERS
//   POST   /internal/brokerservers/{server_id}          -> 201 new, 200 again
//   DELETE /internal/brokerservers/{server_id}          -> 204
//   POST   /internal/brokerservers/{server_id}/connections/{hash}
//            ?broker_client_id=..&request_type=client-connected|client-pinged
//            -> 204, 409 TOO_MANY_CLIENTS
//   DELETE /internal/brokerservers/{server_id}/connections/{hash}
//            ?broker_client_id=..                       -> 204
//   GET    /internal/tokens/{hash}/brokerservers        -> 200 list
//   GET    /healthcheck, GET /                          -> 200 / 503
//   GET    /metrics                                     -> Prometheus text
//
// Errors are {"errors":[{"status","code","title","detail"}]}: 400 for bad
// input, 404 unknown route, 405 wrong method (with Allow), 503 when the
// store is unreachable (STORE_UNAVAILABLE; logged once when it starts,
// then at most every 30 s while it lasts, and once when it ends).
//
// Thread-safety: Handle() may be called from any thread, concurrently. It
// blocks on the store: call it off the I/O threads.

#include "common/clock.h"
#include "common/http/message.h"
#include "common/metrics.h"
#include "services/dispatcher/store.h"

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#include <cstdint>
#include <map>
#include <string>

namespace broker::dispatcher {

inline constexpr absl::string_view kJsonApiContentType =
    "application/vnd.api+json";

struct ApiRequest {
  std::string method;
  std::string target;  // "/path?query", as received
  std::string body;    // whole (the server limits its size)
};

struct ApiResponse {
  int status = 200;
  common::http::Headers headers;  // Content-Type included when there is a body
  std::string body;
};

// A JSON:API error answer.
ApiResponse ErrorResponse(int status, absl::string_view code,
                          absl::string_view title, absl::string_view detail);

// 64 lowercase hex characters: sha256_hex(token), as the Snyk client sends.
bool IsTokenHash(absl::string_view text);
// A client or server id: 1..253 of [A-Za-z0-9._~-] (URL-unreserved, so ids
// travel in paths and Redis keys without escaping).
bool IsValidId(absl::string_view text);

// The query string's parameters, percent-decoded; InvalidArgument for a
// bad %-escape. A repeated name keeps its first value.
[[nodiscard]] absl::StatusOr<std::map<std::string, std::string>> ParseQuery(
    absl::string_view query);

// The allocation body: {"data":{"attributes":{"deployment_location":..,
// "broker_token_first_char":..}}}. Lenient: an empty body, or missing
// members, are fine; only a body that is not JSON, or not an object, is
// InvalidArgument.
struct AllocationRequest {
  std::string deployment_location;
  std::string broker_token_first_char;
};
[[nodiscard]] absl::StatusOr<AllocationRequest> ParseAllocationBody(
    absl::string_view body);

// A server's registration body: data.attributes.{health_check_link,
// tunnel_url, internal_url}, each optional but a string when given.
[[nodiscard]] absl::StatusOr<ServerRegistration> ParseRegistrationBody(
    absl::string_view server_id, absl::string_view body);

struct ApiOptions {
  std::string version = "0.1.0";
};

class Api {
 public:
  // `store` and `clock` must outlive the Api.
  Api(Store& store, ApiOptions options, common::Clock& clock);

  ApiResponse Handle(const ApiRequest& request) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  ApiResponse Route(const ApiRequest& request);
  ApiResponse Healthcheck(const ApiRequest& request);
  ApiResponse Allocate(absl::string_view hash, absl::string_view client_id,
                       const ApiRequest& request);
  ApiResponse Register(absl::string_view server_id, const ApiRequest& request);
  ApiResponse Deregister(absl::string_view server_id);
  ApiResponse ClientEvent(absl::string_view server_id, absl::string_view hash,
                          const std::map<std::string, std::string>& query,
                          const ApiRequest& request);
  ApiResponse Lookup(absl::string_view hash);
  ApiResponse Metrics();

  // The answer for a store error, with the rate-limited log of outages.
  ApiResponse StoreError(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);
  // Notes that the store answered (ends a logged outage).
  void StoreOk() ABSL_LOCKS_EXCLUDED(mu_);

  Store& store_;
  const ApiOptions options_;
  common::Clock& clock_;

  // GET /metrics: what the dispatcher decided, and its answers.
  common::metrics::Registry metrics_;
  common::metrics::Family<common::metrics::Counter>& requests_;
  common::metrics::Family<common::metrics::Counter>& allocations_;
  common::metrics::Family<common::metrics::Counter>& client_events_;
  common::metrics::Family<common::metrics::Counter>& server_events_;
  // Read from the store at each scrape; the last known values stay while
  // the store is down (store_up 0).
  common::metrics::Gauge& live_servers_;
  common::metrics::Gauge& live_leases_;
  common::metrics::Gauge& store_up_;

  absl::Mutex mu_;
  bool store_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_outage_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::int64_t failures_since_log_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace broker::dispatcher
