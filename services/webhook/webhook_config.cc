#include "services/webhook/webhook_config.h"

#include "common/logging.h"
#include "common/status.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#include <limits>
#include <string>
#include <vector>

#include <arpa/inet.h>

namespace broker::webhook {

const char kWebhookHelp[] =
    "broker-webhook: takes the webhooks the SCM posts to BROKER_CLIENT_URL "
    "and pushes\n"
    "each event through any healthy tunnel worker (broker-tunnel), retrying "
    "on another.\n"
    "Environment:\n"
    "  BROKER_TUNNEL_EGRESS_TARGET  the workers' egress endpoints "
    "(required): a list\n"
    "                        ip:port,ip:port (or ipv4:/ipv6: targets), or "
    "one DNS name\n"
    "                        resolving to every worker (host:port or "
    "dns:///host:port,\n"
    "                        e.g. a Kubernetes headless Service)\n"
    "  BROKER_TUNNEL_EGRESS_CA  CA bundle (PEM): TLS toward the egress "
    "endpoints,\n"
    "                        whose certificates it verifies (unset: "
    "plaintext)\n"
    "  ACCEPT                accept rules file (required): its public rules "
    "filter events\n"
    "  PORT                  HTTP port (default 8001; 0 = any free port)\n"
    "  HTTPS_CERT, HTTPS_KEY  serve HTTPS with this PEM certificate and key\n"
    "  BROKER_WEBHOOK_TIMEOUT_MS  every event is answered within this "
    "(default 30000)\n"
    "  BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS  with no usable worker, how long "
    "an event waits\n"
    "                        for one before 503 or the API fallback "
    "(default 2000)\n"
    "  BROKER_WEBHOOK_MAX_BODY_BYTES  larger bodies get 413 (default "
    "33554432)\n"
    "  BROKER_WEBHOOK_RETRY_BUFFER_BYTES  bodies up to this size are kept "
    "to retry\n"
    "                        on another worker (default 1048576)\n"
    "  BROKER_WEBHOOK_API_FALLBACK  true: with no usable tunnel, post "
    "/webhook/* events\n"
    "                        to API_BASE_URL directly (default false)\n"
    "  API_BASE_URL          where the fallback posts (default "
    "https://api.snyk.io)\n"
    "  BROKER_TOKEN          broker token, sent masked as x-snyk-broker by "
    "the fallback\n"
    "                        (required with the fallback; never logged)\n"
    "  CA_CERT               extra CA bundle trusted toward API_BASE_URL\n"
    "  BROKER_HEALTHCHECK_PATH  path of the health check (default "
    "/healthcheck)\n"
    "  LOG_LEVEL             debug|info|warn|error (default info)\n";

namespace {

constexpr absl::string_view kTargetVariable = "BROKER_TUNNEL_EGRESS_TARGET";

absl::Status TargetError(absl::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat(kTargetVariable, ": ", reason));
}

enum class HostKind { kIpv4, kIpv6, kName };

struct HostPort {
  std::string host;  // IPv6 with its brackets
  HostKind kind = HostKind::kName;
};

bool IsHostNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
         c == '.' || c == '_';
}

absl::StatusOr<HostPort> ParseHostPort(absl::string_view entry) {
  HostPort out;
  absl::string_view host;
  absl::string_view port;
  if (absl::StartsWith(entry, "[")) {
    const size_t close = entry.find(']');
    if (close == absl::string_view::npos || close + 1 >= entry.size() ||
        entry[close + 1] != ':') {
      return TargetError(absl::StrCat("\"", entry, "\" is not [ipv6]:port"));
    }
    host = entry.substr(1, close - 1);
    port = entry.substr(close + 2);
    in6_addr address{};
    if (inet_pton(AF_INET6, std::string(host).c_str(), &address) != 1) {
      return TargetError(
          absl::StrCat("\"", entry, "\" has no valid IPv6 address"));
    }
    out.kind = HostKind::kIpv6;
    out.host = absl::StrCat("[", host, "]");
  } else {
    const size_t colon = entry.rfind(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return TargetError(absl::StrCat("\"", entry, "\" is not host:port"));
    }
    host = entry.substr(0, colon);
    port = entry.substr(colon + 1);
    in_addr address{};
    if (inet_pton(AF_INET, std::string(host).c_str(), &address) == 1) {
      out.kind = HostKind::kIpv4;
    } else {
      for (char c : host) {
        if (!IsHostNameChar(c)) {
          return TargetError(
              absl::StrCat("\"", entry, "\" has no valid host name"));
        }
      }
      out.kind = HostKind::kName;
    }
    out.host = std::string(host);
  }
  int number = 0;
  if (!absl::SimpleAtoi(port, &number) || number < 1 || number > 65535) {
    return TargetError(absl::StrCat("\"", entry, "\" has no valid port"));
  }
  absl::StrAppend(&out.host, ":", number);
  return out;
}

absl::Status PositiveDuration(const common::EnvReader& env,
                              absl::string_view name, absl::Duration& field) {
  BROKER_ASSIGN_OR_RETURN(const absl::Duration value,
                          env.DurationMs(name, field));
  if (value <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": must be more than 0"));
  }
  field = value;
  return absl::OkStatus();
}

absl::Status Bytes(const common::EnvReader& env, absl::string_view name,
                   std::uint64_t& field) {
  BROKER_ASSIGN_OR_RETURN(
      const std::int64_t value,
      env.Integer(name, static_cast<std::int64_t>(field), 0,
                  std::numeric_limits<std::int64_t>::max()));
  field = static_cast<std::uint64_t>(value);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> NormalizeEgressTarget(absl::string_view target) {
  target = absl::StripAsciiWhitespace(target);
  if (target.empty()) return TargetError("required but not set");
  for (absl::string_view scheme :
       {"dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:"}) {
    if (absl::StartsWith(target, scheme)) {
      if (target.size() == scheme.size()) {
        return TargetError(absl::StrCat("\"", target, "\" names no address"));
      }
      return std::string(target);
    }
  }
  std::vector<HostPort> entries;
  for (absl::string_view part : absl::StrSplit(target, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    BROKER_ASSIGN_OR_RETURN(HostPort entry, ParseHostPort(part));
    entries.push_back(std::move(entry));
  }
  if (entries.empty()) return TargetError("names no address");
  if (entries.size() == 1 && entries[0].kind == HostKind::kName) {
    return absl::StrCat("dns:///", entries[0].host);
  }
  std::vector<std::string> hosts;
  for (const HostPort& entry : entries) {
    if (entry.kind != entries[0].kind || entry.kind == HostKind::kName) {
      return TargetError(
          "a list must hold IP addresses of one family; for host names use "
          "one DNS name that resolves to every worker (e.g. a headless "
          "Service)");
    }
    hosts.push_back(entry.host);
  }
  return absl::StrCat(entries[0].kind == HostKind::kIpv4 ? "ipv4:" : "ipv6:",
                      absl::StrJoin(hosts, ","));
}

absl::StatusOr<WebhookConfig> WebhookConfigFromEnv(
    const common::EnvReader& env) {
  WebhookConfig config;
  config.log_level = env.Optional("LOG_LEVEL", "info");
  if (absl::StatusOr<common::LogLevel> level =
          common::ParseLogLevel(config.log_level);
      !level.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("LOG_LEVEL: ", level.status().message()));
  }
  BROKER_ASSIGN_OR_RETURN(const std::string target,
                          env.Required(kTargetVariable));
  BROKER_ASSIGN_OR_RETURN(config.egress_target, NormalizeEgressTarget(target));
  config.egress_ca_file = env.Optional("BROKER_TUNNEL_EGRESS_CA", "");
  BROKER_ASSIGN_OR_RETURN(config.accept_path, env.Required("ACCEPT"));
  BROKER_ASSIGN_OR_RETURN(config.port, env.Port("PORT", kDefaultWebhookPort,
                                                common::PortZero::kAllowed));
  config.tls_cert_file = env.Optional("HTTPS_CERT", "");
  config.tls_key_file = env.Optional("HTTPS_KEY", "");
  config.healthcheck_path =
      env.Optional("BROKER_HEALTHCHECK_PATH", config.healthcheck_path);
  BROKER_RETURN_IF_ERROR(
      PositiveDuration(env, "BROKER_WEBHOOK_TIMEOUT_MS", config.timeout));
  BROKER_ASSIGN_OR_RETURN(config.no_tunnel_wait,
                          env.DurationMs("BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS",
                                         config.no_tunnel_wait));
  BROKER_RETURN_IF_ERROR(
      Bytes(env, "BROKER_WEBHOOK_MAX_BODY_BYTES", config.max_body_bytes));
  BROKER_RETURN_IF_ERROR(Bytes(env, "BROKER_WEBHOOK_RETRY_BUFFER_BYTES",
                               config.retry_buffer_bytes));
  BROKER_ASSIGN_OR_RETURN(config.api_fallback,
                          env.Bool("BROKER_WEBHOOK_API_FALLBACK", false));
  config.api_base_url = env.Optional("API_BASE_URL", config.api_base_url);
  while (absl::EndsWith(config.api_base_url, "/"))
    config.api_base_url.pop_back();
  if (config.api_fallback) {
    absl::StatusOr<std::string> token = env.Required("BROKER_TOKEN");
    if (!token.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(token.status().message(),
                       " (BROKER_WEBHOOK_API_FALLBACK=true needs it)"));
    }
    config.token = *std::move(token);
  } else {
    config.token = env.Optional("BROKER_TOKEN", "");
  }
  config.ca_file = env.Optional("CA_CERT", "");
  BROKER_RETURN_IF_ERROR(Validate(config));
  return config;
}

absl::Status Validate(const WebhookConfig& config) {
  if (config.egress_target.empty()) {
    return TargetError("required but not set");
  }
  if (config.accept_path.empty()) {
    return absl::InvalidArgumentError(
        "ACCEPT: required (the client's accept rules; the public ones filter "
        "webhooks)");
  }
  if (config.port < 0 || config.port > 65535) {
    return absl::InvalidArgumentError("PORT: must be 0..65535");
  }
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        config.tls_cert_file.empty()
            ? "HTTPS_CERT: must be set together with HTTPS_KEY"
            : "HTTPS_KEY: must be set together with HTTPS_CERT");
  }
  if (!absl::StartsWith(config.healthcheck_path, "/")) {
    return absl::InvalidArgumentError(
        "BROKER_HEALTHCHECK_PATH: must start with \"/\"");
  }
  if (config.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "BROKER_WEBHOOK_TIMEOUT_MS: must be more than 0");
  }
  if (config.no_tunnel_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS: must not be negative");
  }
  if (config.max_body_bytes == 0) {
    return absl::InvalidArgumentError(
        "BROKER_WEBHOOK_MAX_BODY_BYTES: must be more than 0");
  }
  if (config.retry_buffer_bytes > config.max_body_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("BROKER_WEBHOOK_RETRY_BUFFER_BYTES: must not exceed "
                     "BROKER_WEBHOOK_MAX_BODY_BYTES (",
                     config.max_body_bytes, ")"));
  }
  if (config.api_fallback) {
    absl::StatusOr<common::Url> url = common::ParseHttpUrl(config.api_base_url);
    if (!url.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("API_BASE_URL: ", url.status().message()));
    }
    if (config.token.empty()) {
      return absl::InvalidArgumentError(
          "BROKER_TOKEN: required with BROKER_WEBHOOK_API_FALLBACK=true");
    }
  }
  if (config.retry_backoff_initial <= absl::ZeroDuration() ||
      config.retry_backoff_max < config.retry_backoff_initial) {
    return absl::InvalidArgumentError(
        "retry backoff: initial must be > 0 and <= max");
  }
  if (config.io_threads < 1) {
    return absl::InvalidArgumentError("io_threads: must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace broker::webhook
