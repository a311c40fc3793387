#include "services/ha-agent/preflight.h"

#include "common/env_config.h"
#include "common/http/buffered_call.h"
#include "filters/rule_set.h"

#include "absl/strings/str_cat.h"

#include <utility>

namespace broker::ha {

namespace http = common::http;

std::string OneLine(absl::string_view text, size_t max) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80) {
      out.push_back('?');
    } else {
      out.push_back(u < 0x20 || u == 0x7F ? ' ' : c);
    }
  }
  return out;
}

HealthTarget ServerHealthTarget(absl::string_view server_http_url,
                                absl::string_view server_url) {
  absl::string_view base = server_http_url;
  if (base.empty()) {
    if (server_url.empty()) {
      return {"", "BROKER_SERVER_URL is not set"};
    }
    const absl::string_view without_query =
        server_url.substr(0, server_url.find_first_of("?#"));
    const size_t scheme_end = without_query.find("://");
    if (scheme_end == absl::string_view::npos) {
      return {"", "BROKER_SERVER_URL is not an absolute URL"};
    }
    const absl::string_view rest = without_query.substr(scheme_end + 3);
    const absl::string_view authority = rest.substr(0, rest.find('/'));
    const size_t bracket = authority.rfind(']');
    const size_t colon = authority.rfind(':');
    const bool has_port =
        colon != absl::string_view::npos &&
        (bracket == absl::string_view::npos || colon > bracket);
    if (has_port) {
      return {"",
              "BROKER_SERVER_URL names a tunnel port; set "
              "BROKER_SERVER_HTTP_URL to check the server's /healthcheck"};
    }
    base = without_query;
  }
  std::string url(base);
  while (!url.empty() && url.back() == '/') url.pop_back();
  return {absl::StrCat(url, "/healthcheck"), ""};
}

v1::PreflightCheck MakeCheck(absl::string_view name,
                             v1::PreflightCheck::Result result,
                             absl::string_view detail) {
  v1::PreflightCheck check;
  check.set_name(std::string(name));
  check.set_result(result);
  check.set_ok(result == v1::PreflightCheck::PASSED ||
               result == v1::PreflightCheck::SKIPPED);
  check.set_detail(OneLine(detail));
  return check;
}

v1::PreflightCheck PendingCheck(absl::string_view name) {
  return MakeCheck(name, v1::PreflightCheck::PENDING, "running");
}

v1::PreflightCheck CheckAcceptRules(const std::string& accept_path) {
  if (accept_path.empty()) {
    return MakeCheck(kCheckRules, v1::PreflightCheck::SKIPPED,
                     "ACCEPT is not set");
  }
  auto rules = filters::RuleSet::FromFile(accept_path);
  if (!rules.ok()) {
    return MakeCheck(kCheckRules, v1::PreflightCheck::FAILED,
                     rules.status().message());
  }
  return MakeCheck(kCheckRules, v1::PreflightCheck::PASSED,
                   absl::StrCat(accept_path, " is a valid rule file"));
}

v1::PreflightCheck CheckClientUrl(absl::string_view client_url) {
  if (client_url.empty()) {
    return MakeCheck(kCheckClientUrl, v1::PreflightCheck::SKIPPED,
                     "BROKER_CLIENT_URL is not set (webhooks need it)");
  }
  auto url = common::ParseHttpUrl(client_url);
  if (!url.ok()) {
    return MakeCheck(
        kCheckClientUrl, v1::PreflightCheck::FAILED,
        absl::StrCat("BROKER_CLIENT_URL: ", url.status().message()));
  }
  if (url->host == "localhost" || url->host == "127.0.0.1" ||
      url->host == "[::1]") {
    return MakeCheck(
        kCheckClientUrl, v1::PreflightCheck::PASSED,
        absl::StrCat("BROKER_CLIENT_URL is ", url->scheme, "://", url->host,
                     ":", url->port,
                     ", a loopback address: the SCM cannot send webhooks to "
                     "it from elsewhere"));
  }
  return MakeCheck(
      kCheckClientUrl, v1::PreflightCheck::PASSED,
      absl::StrCat("BROKER_CLIENT_URL is an absolute ", url->scheme, " URL"));
}

void RunHttpCheck(common::http::Client& client, absl::string_view name,
                  const std::string& url, absl::Duration timeout,
                  bool any_status_passes,
                  absl::AnyInvocable<void(v1::PreflightCheck) &&> done) {
  http::BufferedRequest request;
  request.method = "GET";
  request.url = url;
  request.headers = {{"user-agent", "broker-ha-agent preflight"}};
  request.deadline = absl::Now() + timeout;
  http::SendBuffered(
      client, std::move(request),
      [name = std::string(name), url, any_status_passes,
       done = std::move(done)](
          absl::StatusOr<http::BufferedResponse> response) mutable {
        if (!response.ok()) {
          std::move(done)(MakeCheck(
              name, v1::PreflightCheck::FAILED,
              absl::StrCat("GET ", url, ": ", response.status().message())));
          return;
        }
        const bool passed = any_status_passes ||
                            (response->status >= 200 && response->status < 300);
        std::move(done)(MakeCheck(
            name,
            passed ? v1::PreflightCheck::PASSED : v1::PreflightCheck::FAILED,
            absl::StrCat("GET ", url, ": HTTP ", response->status)));
      });
}

}  // namespace broker::ha
