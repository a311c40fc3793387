#include "services/ha-agent/config.h"

#include "common/env_config.h"
#include "common/http/message.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace broker::ha {
namespace {

std::string StripTrailingSlashes(absl::string_view url) {
  while (absl::EndsWith(url, "/")) url.remove_suffix(1);
  return std::string(url);
}

}  // namespace

absl::string_view DispatcherBaseSourceName(DispatcherBaseSource source) {
  switch (source) {
    case DispatcherBaseSource::kDispatcherBaseUrl:
      return "BROKER_DISPATCHER_BASE_URL";
    case DispatcherBaseSource::kApiBaseUrl:
      return "API_BASE_URL";
    case DispatcherBaseSource::kServerUrl:
      return "BROKER_SERVER_URL";
    case DispatcherBaseSource::kDefault:
      break;
  }
  return "default";
}

DispatcherBase ResolveDispatcherBase(absl::string_view dispatcher_base_url,
                                     absl::string_view api_base_url,
                                     absl::string_view server_url) {
  if (!dispatcher_base_url.empty()) {
    return {StripTrailingSlashes(dispatcher_base_url),
            DispatcherBaseSource::kDispatcherBaseUrl};
  }
  if (!api_base_url.empty()) {
    return {StripTrailingSlashes(api_base_url),
            DispatcherBaseSource::kApiBaseUrl};
  }
  for (absl::string_view broker : {"//broker.", "//broker2."}) {
    if (absl::StrContains(server_url, broker)) {
      return {StripTrailingSlashes(
                  absl::StrReplaceAll(server_url, {{broker, "//api."}})),
              DispatcherBaseSource::kServerUrl};
    }
  }
  return {std::string(kDefaultDispatcherBaseUrl),
          DispatcherBaseSource::kDefault};
}

std::string ResolveTunnelUrl(absl::string_view server_id,
                             absl::string_view dispatcher_tunnel_url,
                             absl::string_view url_template,
                             absl::string_view server_url) {
  if (!dispatcher_tunnel_url.empty()) return std::string(dispatcher_tunnel_url);
  if (!url_template.empty()) {
    return absl::StrReplaceAll(url_template, {{"{server_id}", server_id}});
  }
  if (server_url.empty()) return "";
  const size_t fragment = server_url.find('#');
  const absl::string_view base = server_url.substr(0, fragment);
  std::string url(base);
  if (!absl::StrContains(url, '?')) {
    url.push_back('?');
  } else if (!absl::EndsWith(url, "?") && !absl::EndsWith(url, "&")) {
    url.push_back('&');
  }
  absl::StrAppend(&url, "server_id=", common::http::PercentEncode(server_id));
  if (fragment != absl::string_view::npos) {
    absl::StrAppend(&url, server_url.substr(fragment));
  }
  return url;
}

absl::Status Validate(const HaAgentConfig& config) {
  if (config.token.empty()) {
    return absl::InvalidArgumentError("BROKER_TOKEN: required but empty");
  }
  if (config.ha_enabled) {
    auto base = common::ParseHttpUrl(config.dispatcher.url);
    if (!base.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(DispatcherBaseSourceName(config.dispatcher.source), ": ",
                       base.status().message()));
    }
  }
  if (!config.dispatcher_url_prefix.empty() &&
      !absl::StartsWith(config.dispatcher_url_prefix, "/")) {
    return absl::InvalidArgumentError(
        "DISPATCHER_URL_PREFIX: must start with '/' (default /hidden/broker)");
  }
  if (!config.server_url_template.empty() &&
      !absl::StrContains(config.server_url_template, "{server_id}")) {
    return absl::InvalidArgumentError(
        "BROKER_SERVER_URL_TEMPLATE: must contain {server_id}");
  }
  if (!config.ha_enabled && config.server_url.empty()) {
    return absl::InvalidArgumentError(
        "BROKER_SERVER_URL: required when BROKER_HA_MODE_ENABLED is off");
  }
  if (config.port < 0 || config.port > 65535) {
    return absl::InvalidArgumentError("BROKER_HA_AGENT_PORT: out of range");
  }
  if (config.refused_poll_min > config.refused_poll_max ||
      config.backoff_initial <= absl::ZeroDuration() ||
      config.backoff_initial > config.backoff_max) {
    return absl::InvalidArgumentError("retry timings are inconsistent");
  }
  return absl::OkStatus();
}

}  // namespace broker::ha
