#pragma once

// The agent's start-up checks (reference 4.3), reported to every worker in
// its Assignment so the worker's /systemcheck can show them. A failed
// check is logged at warn and shown; it never stops anything.
//
//   dispatcher-reachable       GET {dispatcher}/healthcheck answers (any
//                              HTTP status: the point is DNS, TCP, TLS);
//                              skipped with HA mode off
//   broker-server-healthcheck  GET {server http base}/healthcheck is 2xx;
//                              skipped when the base is not known
//   accept-rules               ACCEPT parses as a rule file
//   broker-client-url          BROKER_CLIENT_URL is an absolute http(s) URL

#include "common/http/client.h"

#include "broker/ha/v1/ha_agent.pb.h"

#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <string>

namespace broker::ha {

inline constexpr absl::string_view kCheckDispatcher = "dispatcher-reachable";
inline constexpr absl::string_view kCheckServer = "broker-server-healthcheck";
inline constexpr absl::string_view kCheckRules = "accept-rules";
inline constexpr absl::string_view kCheckClientUrl = "broker-client-url";

// What the server check calls: `url`, or nothing and why.
struct HealthTarget {
  std::string url;  // "" = skipped
  std::string skip_reason;
};

// The broker server's /healthcheck: from BROKER_SERVER_HTTP_URL when set,
// else from BROKER_SERVER_URL when it has no explicit port (an ingress in
// front of both the platform API and the tunnel, as Snyk's
// https://broker.snyk.io); a URL with a port is a tunnel endpoint (gRPC),
// whose HTTP side is elsewhere.
HealthTarget ServerHealthTarget(absl::string_view server_http_url,
                                absl::string_view server_url);

// A check's result, ready to send.
v1::PreflightCheck MakeCheck(absl::string_view name,
                             v1::PreflightCheck::Result result,
                             absl::string_view detail);
v1::PreflightCheck PendingCheck(absl::string_view name);

// Reads and compiles the rule file (blocking disk I/O: call it off gRPC
// threads). Skipped when `accept_path` is empty.
v1::PreflightCheck CheckAcceptRules(const std::string& accept_path);

// Pure.
v1::PreflightCheck CheckClientUrl(absl::string_view client_url);

// GET `url`; `done` runs once on a client io thread. With
// `any_status_passes`, any HTTP answer passes (a reachability check),
// otherwise only 2xx.
void RunHttpCheck(common::http::Client& client, absl::string_view name,
                  const std::string& url, absl::Duration timeout,
                  bool any_status_passes,
                  absl::AnyInvocable<void(v1::PreflightCheck) &&> done);

// One line of printable ASCII, at most `max` bytes: safe in logs and in
// proto strings (which must be UTF-8).
std::string OneLine(absl::string_view text, size_t max = 300);

}  // namespace broker::ha
