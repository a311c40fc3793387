// libFuzzer target: the dispatcher's REST API (paths, queries, bodies) as
// broker-dispatcher answers it, over one in-memory store for the whole
// input so that sequences of calls reach the stateful answers (caps,
// existing allocations, leases freed and expired).
//
// The input is a series of requests separated by NUL bytes; each is
// "METHOD TARGET\nBODY". A request's first byte (if it is a digit) first
// advances the store's clock by that many tens of seconds, so leases and
// servers expire. Besides crashes and sanitizer reports, a broken invariant
// aborts:
//   - every answer has a status the API documents, and a Content-Type
//     exactly when it has a body;
//   - JSON:API answers parse as JSON, and errors carry
//     {"errors":[{"status","code"}]} with the HTTP status as a string;
//   - no token holds more than max_clients_per_token live leases (checked
//     through the lookup route after every allocation).
//
// Seeds: fuzz/corpus/dispatcher_api/. Run with scripts/fuzz.sh.

#include "common/clock.h"
#include "common/http/message.h"
#include "services/dispatcher/api.h"
#include "services/dispatcher/in_memory_store.h"
#include "services/dispatcher/store.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

namespace broker::dispatcher {
namespace {

void Require(bool condition, const char* what, const ApiResponse& response) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s (status %d, body %s)\n", what,
                 response.status, response.body.c_str());
    std::abort();
  }
}

void CheckAnswer(const ApiResponse& response) {
  static const std::set<int> kStatuses = {200, 201, 204, 400, 404,
                                          405, 409, 413, 503};
  Require(kStatuses.count(response.status) == 1, "undocumented status",
          response);
  const auto type = common::http::FindHeader(response.headers, "content-type");
  Require(type.has_value() == !response.body.empty(),
          "Content-Type without a body or a body without one", response);
  if (!type.has_value() || !absl::StrContains(*type, "json")) return;
  const nlohmann::json body =
      nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  Require(!body.is_discarded(), "a JSON answer that is not JSON", response);
  if (response.status >= 400) {
    Require(body.contains("errors") && body["errors"].is_array() &&
                !body["errors"].empty() &&
                body["errors"][0].value("status", "") ==
                    absl::StrCat(response.status) &&
                body["errors"][0].contains("code"),
            "an error answer without errors[0].status/code", response);
  }
}

// The live leases of `hash`, through the lookup route.
std::int64_t LiveClients(Api& api, absl::string_view hash) {
  const ApiResponse lookup = api.Handle(
      {"GET", absl::StrCat("/internal/tokens/", hash, "/brokerservers"), ""});
  CheckAnswer(lookup);
  if (lookup.status != 200) return 0;
  const nlohmann::json body = nlohmann::json::parse(lookup.body);
  std::int64_t clients = 0;
  for (const auto& server : body.value("data", nlohmann::json::array())) {
    clients += server["attributes"].value("clients", std::int64_t{0});
  }
  return clients;
}

}  // namespace
}  // namespace broker::dispatcher

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using broker::dispatcher::Api;
  using broker::dispatcher::ApiResponse;
  constexpr int kCap = 4;
  broker::common::ManualClock clock(absl::FromUnixSeconds(1700000000));
  broker::dispatcher::StoreOptions options;
  options.max_clients_per_token = kCap;
  broker::dispatcher::InMemoryStore store(options, clock);
  Api api(store, {}, clock);

  const absl::string_view input(reinterpret_cast<const char*>(data), size);
  int requests = 0;
  for (absl::string_view request : absl::StrSplit(input, '\0')) {
    if (++requests > 64) break;  // long inputs explore depth, not length
    if (!request.empty() && request[0] >= '0' && request[0] <= '9') {
      clock.Advance(absl::Seconds(10 * (request[0] - '0')));
      request.remove_prefix(1);
    }
    const std::vector<absl::string_view> head_body =
        absl::StrSplit(request, absl::MaxSplits('\n', 1));
    const std::vector<absl::string_view> method_target =
        absl::StrSplit(head_body[0], absl::MaxSplits(' ', 1));
    const std::string method(method_target[0]);
    const std::string target(method_target.size() > 1 ? method_target[1] : "/");
    const std::string body(head_body.size() > 1 ? head_body[1] : "");
    const ApiResponse response = api.Handle({method, target, body});
    broker::dispatcher::CheckAnswer(response);

    // After an allocation, the token it named holds at most the cap.
    constexpr absl::string_view kAllocation = "/hidden/broker";
    if (response.status == 201 && absl::StartsWith(target, kAllocation)) {
      const std::vector<absl::string_view> segments =
          absl::StrSplit(target, '/');
      if (segments.size() >= 4 &&
          broker::dispatcher::IsTokenHash(segments[3])) {
        broker::dispatcher::Require(
            broker::dispatcher::LiveClients(api, segments[3]) <= kCap,
            "a token holds more clients than the cap", response);
      }
    }
  }
  return 0;
}
