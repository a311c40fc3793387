#pragma once

// broker-ha-agent's typed configuration (STYLE 5.10: main() reads the
// environment, the library only sees this) and the pure rules that turn
// Snyk's variables into it: the HA flag, the dispatcher's base URL and the
// tunnel URL of a server id. See main.cc --help for the variables.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <string>

namespace broker::ha {

// Where the dispatcher's base URL came from (for the start-up log).
enum class DispatcherBaseSource {
  kDispatcherBaseUrl,  // BROKER_DISPATCHER_BASE_URL
  kApiBaseUrl,         // API_BASE_URL
  kServerUrl,          // derived from BROKER_SERVER_URL
  kDefault,            // https://api.snyk.io
};
absl::string_view DispatcherBaseSourceName(DispatcherBaseSource source);

struct DispatcherBase {
  std::string url;  // no trailing '/'
  DispatcherBaseSource source = DispatcherBaseSource::kDefault;
};

inline constexpr absl::string_view kDefaultDispatcherBaseUrl =
    "https://api.snyk.io";

// The dispatcher's base URL from the variables' values ("" = unset):
// BROKER_DISPATCHER_BASE_URL, then API_BASE_URL, then BROKER_SERVER_URL
// with "//broker." or "//broker2." turned into "//api.", then
// https://api.snyk.io.
//
// Our order, on purpose: the issue puts BROKER_DISPATCHER_BASE_URL first,
// where Snyk's client (reference 1.1) reads API_BASE_URL first; the two
// only differ when both are set, and then the more specific name wins.
// Also unlike Snyk, a BROKER_SERVER_URL without "//broker." is not used
// as it is (Snyk then calls the broker server itself and backs off for
// hours): the default applies.
DispatcherBase ResolveDispatcherBase(absl::string_view dispatcher_base_url,
                                     absl::string_view api_base_url,
                                     absl::string_view server_url);

// Where a worker placed on `server_id` dials, in this order: the
// dispatcher's `tunnel_url` attribute when it gave one; `url_template`
// (BROKER_SERVER_URL_TEMPLATE) with every "{server_id}" replaced; else
// `server_url` (BROKER_SERVER_URL) with the query parameter
// `server_id=<id>` added, for a routing ingress (reference 1.5). "" when
// none of them is set.
std::string ResolveTunnelUrl(absl::string_view server_id,
                             absl::string_view dispatcher_tunnel_url,
                             absl::string_view url_template,
                             absl::string_view server_url);

// Everything broker-ha-agent needs, typed.
struct HaAgentConfig {
  std::string token;          // BROKER_TOKEN: never logged, only hashed
  bool ha_enabled = false;    // BROKER_HA_MODE_ENABLED
  DispatcherBase dispatcher;  // see ResolveDispatcherBase
  std::string dispatcher_url_prefix =
      "/hidden/broker";             // DISPATCHER_URL_PREFIX
  std::string server_url;           // BROKER_SERVER_URL
  std::string server_url_template;  // BROKER_SERVER_URL_TEMPLATE
  // BROKER_SERVER_HTTP_URL: the broker server's HTTP base, for the
  // preflight GET /healthcheck. "" derives it from BROKER_SERVER_URL when
  // that URL has no explicit port (an ingress, as https://broker.snyk.io,
  // serves both); a URL with a port is the tunnel's gRPC port, so the
  // check is skipped.
  std::string server_http_url;
  std::string client_url;   // BROKER_CLIENT_URL (preflight only)
  std::string accept_path;  // ACCEPT (preflight only)
  std::string deployment_location =
      "snyk-broker-client";  // BROKER_CLIENT_LOCATION
  std::string ca_file;  // CA_CERT: extra trust for the dispatcher and server

  std::string address = "127.0.0.1";  // BROKER_HA_AGENT_ADDRESS
  int port = 7343;                    // BROKER_HA_AGENT_PORT; 0 = any free
  // BROKER_HA_AGENT_HTTP_PORT: an HTTP listener (same address) for
  // /healthcheck and /metrics; -1 (unset) = none, 0 = any free port.
  int http_port = -1;

  std::string version = "0.1.0";  // in the dispatcher call's user-agent

  // Timing. The defaults fit production; tests shorten some.
  // One dispatcher call, connect and answer.
  absl::Duration dispatcher_timeout = absl::Seconds(5);
  // While refused: poll every poll_min..poll_max (uniform), so a freed slot
  // is taken within about a second.
  absl::Duration refused_poll_min = absl::Milliseconds(250);
  absl::Duration refused_poll_max = absl::Milliseconds(500);
  // While unreachable (or answering nonsense): jittered exponential backoff.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(10);
  // After a Watch ends, how long the worker's client id and assignment are
  // kept for it to come back (BROKER_HA_AGENT_FORGET_AFTER_MS).
  absl::Duration forget_after = absl::Seconds(30);
  // A worker reporting CONNECTING/DISCONNECTED this long without CONNECTED
  // is moved, as if it reported UNREACHABLE
  // (BROKER_HA_AGENT_UNREACHABLE_AFTER_MS).
  absl::Duration unreachable_after = absl::Seconds(30);
  // While moving a worker, the dispatcher may still hand out the server it
  // leaves (it has not deregistered yet): ask again, with backoff, for this
  // long, then keep it there.
  absl::Duration move_timeout = absl::Seconds(60);
  // Each preflight HTTP check.
  absl::Duration preflight_timeout = absl::Seconds(3);
  int io_threads = 1;
};

[[nodiscard]] absl::Status Validate(const HaAgentConfig& config);

}  // namespace broker::ha
