#pragma once

// The agent's side of the dispatcher's REST API (reference 1.3): the one
// call the Snyk client makes, built and read exactly as Snyk does, so the
// agent works against Snyk's dispatcher and ours alike.
//
//   POST {base}{prefix}/{sha256_hex(token)}/connections/{client_id}
//        ?version=2022-12-01%7Eexperimental
//   Content-type: application/vnd.api+json
//   snyk-request-id: <uuid>
//   user-agent: Snyk Broker Client <version>
//   x-broker-origin-ua: not-provided
//   {"data":{"attributes":{"deployment_location":"snyk-broker-client",
//                          "broker_token_first_char":"<c>"}}}
//
// The `~` of the version goes out as `%7E`, as Snyk's `new URL()` sends it
// (both spellings mean the same to a dispatcher that decodes its query).

#include "common/http/client.h"
#include "common/http/message.h"

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <memory>
#include <string>

namespace broker::ha {

inline constexpr absl::string_view kAllocationApiVersion =
    "2022-12-01~experimental";

// A successful allocation.
struct Allocation {
  std::string server_id;   // data.attributes.server_id, as text
  std::string tunnel_url;  // data.attributes.tunnel_url, "" when absent
};

struct AllocationCall {
  std::string base_url;  // no trailing '/'
  std::string prefix = "/hidden/broker";
  std::string token;  // hashed into the path; only its first char is sent
  std::string client_id;
  std::string deployment_location = "snyk-broker-client";
  std::string version = "0.1.0";
  std::string request_id;  // snyk-request-id (a UUID)
};

struct AllocationHttpRequest {
  std::string url;
  common::http::Headers headers;
  std::string body;
};

// The exact request for `call` (pure).
AllocationHttpRequest BuildAllocationRequest(const AllocationCall& call);

// Reads the dispatcher's answer as Snyk does: an allocation iff the body
// is JSON with `data.attributes`, whatever the status code, with
// `server_id` a string (a number is accepted and written in decimal).
// Otherwise:
//   ResourceExhausted  refused: status 409 or 429, or a JSON:API error
//                      with code TOO_MANY_CLIENTS (the token already has
//                      its maximum of clients);
//   Unavailable        anything else (an HTML 404, 503 NO_BROKER_SERVERS,
//                      attributes without a server_id, garbage).
// Messages are one line with the status and the JSON:API error (or a
// snippet of the body), safe to log.
[[nodiscard]] absl::StatusOr<Allocation> ParseAllocationResponse(
    int status, absl::string_view body);

// The seam between the agent and the dispatcher (STYLE 5.2).
class DispatcherClient {
 public:
  using Done = absl::AnyInvocable<void(absl::StatusOr<Allocation>) &&>;
  virtual ~DispatcherClient() = default;
  // Asks for (or refreshes) the server of `client_id`. `done` runs once, on
  // another thread, never inside Allocate(): with the allocation, or with
  // ResourceExhausted (refused) or Unavailable (unreachable, timed out,
  // nonsense). Thread-safe.
  virtual void Allocate(const std::string& client_id, Done done) = 0;
};

struct DispatcherClientOptions {
  std::string base_url;
  std::string prefix = "/hidden/broker";
  std::string token;
  std::string deployment_location = "snyk-broker-client";
  std::string version = "0.1.0";
  absl::Duration timeout = absl::Seconds(5);  // per call
};

// Over the project's HTTP client; `client` must outlive it.
std::unique_ptr<DispatcherClient> MakeDefaultDispatcherClient(
    common::http::Client& client, DispatcherClientOptions options);

}  // namespace broker::ha
