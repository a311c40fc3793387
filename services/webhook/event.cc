#include "services/webhook/event.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

#include <utility>

namespace broker::webhook {
namespace {

namespace http = common::http;

bool IsHopByHop(absl::string_view name) {
  for (absl::string_view hop :
       {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "te", "trailer", "upgrade", "content-length"}) {
    if (absl::EqualsIgnoreCase(name, hop)) return true;
  }
  return false;
}

constexpr std::size_t kMaxRequestIdBytes = 128;

bool UsableId(absl::string_view value) {
  if (value.empty() || value.size() > kMaxRequestIdBytes) return false;
  for (char c : value) {
    if (c <= 0x20 || c >= 0x7F) return false;
  }
  return true;
}

}  // namespace

bool PassedOn(absl::string_view name) {
  return !IsHopByHop(name) && !absl::EqualsIgnoreCase(name, "host");
}

bool PassedBack(absl::string_view name) { return !IsHopByHop(name); }

std::string RequestIdOf(const http::Headers& headers,
                        absl::string_view fallback) {
  for (absl::string_view name :
       {"x-github-delivery", "x-gitlab-event-uuid", "snyk-request-id"}) {
    std::optional<absl::string_view> value = http::FindHeader(headers, name);
    if (value && UsableId(*value)) return std::string(*value);
  }
  return std::string(fallback);
}

void AddRequestId(http::Headers& headers, absl::string_view request_id) {
  if (request_id.empty() || http::FindHeader(headers, "snyk-request-id")) {
    return;
  }
  headers.push_back({"snyk-request-id", std::string(request_id)});
}

void RespondError(http::Exchange& exchange, int status,
                  absl::string_view failure, absl::string_view code,
                  absl::string_view message, absl::string_view request_id,
                  int retry_after_seconds) {
  http::Headers headers = {{"content-type", "application/json; charset=utf-8"}};
  if (!failure.empty()) {
    headers.push_back({"x-broker-failure", std::string(failure)});
  }
  if (retry_after_seconds > 0) {
    headers.push_back({"retry-after", absl::StrCat(retry_after_seconds)});
  }
  AddRequestId(headers, request_id);
  exchange.RespondSimple(
      status, std::move(headers),
      nlohmann::json{{"ok", false},
                     {"code", std::string(code)},
                     {"message", std::string(message)}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

absl::string_view PathOf(absl::string_view url) {
  return url.substr(0, url.find_first_of("?#"));
}

}  // namespace broker::webhook
