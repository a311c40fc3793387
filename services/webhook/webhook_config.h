#pragma once

// broker-webhook's typed configuration (STYLE 5.10): main() builds it from
// the environment through WebhookConfigFromEnv(), the library only sees the
// struct. The variables are listed in kWebhookHelp (printed by --help) and
// in docs/webhook.md.

#include "common/env_config.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include <cstdint>
#include <string>

namespace broker::webhook {

// The default HTTP port: the tunnel worker serves 8000 (Snyk's images), so
// a webhook service beside it in one pod or on one host takes the next.
inline constexpr int kDefaultWebhookPort = 8001;

struct WebhookConfig {
  // HTTP ingress (the SCM posts to BROKER_CLIENT_URL, which points here).
  std::string address = "0.0.0.0";
  int port = kDefaultWebhookPort;  // PORT; 0 = any free port
  std::string tls_cert_file;       // HTTPS_CERT (with HTTPS_KEY: HTTPS)
  std::string tls_key_file;        // HTTPS_KEY
  std::string accept_path;         // ACCEPT: its public rules filter events
  std::string healthcheck_path = "/healthcheck";  // BROKER_HEALTHCHECK_PATH

  // The gRPC target naming every tunnel worker's egress endpoint, in the
  // form gRPC takes ("ipv4:10.0.0.1:7344,10.0.0.2:7344",
  // "dns:///broker-tunnel-egress:7344"); see NormalizeEgressTarget.
  std::string egress_target;  // BROKER_TUNNEL_EGRESS_TARGET
  // BROKER_TUNNEL_EGRESS_CA: a PEM bundle; set, the channel to the egress
  // endpoints speaks TLS and trusts only it (the workers then serve
  // BROKER_TUNNEL_EGRESS_CERT); unset: plaintext.
  std::string egress_ca_file;

  // Every event is answered within this (BROKER_WEBHOOK_TIMEOUT_MS).
  absl::Duration timeout = absl::Seconds(30);
  // Request bodies over this are refused with 413
  // (BROKER_WEBHOOK_MAX_BODY_BYTES). GitHub caps payloads at 25 MB.
  std::uint64_t max_body_bytes = std::uint64_t{32} * 1024 * 1024;
  // A body up to this size is kept while it is sent, so that a failed
  // attempt can be sent again to another worker
  // (BROKER_WEBHOOK_RETRY_BUFFER_BYTES). Bodies read whole for body rules
  // are always kept.
  std::uint64_t retry_buffer_bytes = std::uint64_t{1} * 1024 * 1024;
  // Backoff between attempts while no worker takes the event: the first
  // retry goes at once (to the next worker), later ones wait
  // retry_backoff_initial, doubling up to retry_backoff_max.
  absl::Duration retry_backoff_initial = absl::Milliseconds(10);
  absl::Duration retry_backoff_max = absl::Milliseconds(250);
  // While no worker is usable (the channel in TRANSIENT_FAILURE), an
  // event keeps trying this long from its arrival before it gets 503 or
  // goes to the API fallback (BROKER_WEBHOOK_NO_TUNNEL_WAIT_MS; 0: at
  // once). A worker's tunnel reconnecting takes about a second.
  absl::Duration no_tunnel_wait = absl::Seconds(2);
  // Retry-After (seconds) on a 503 "no tunnel" answer.
  int retry_after_seconds = 5;

  // With no usable tunnel, post /webhook/* events straight to the API
  // (BROKER_WEBHOOK_API_FALLBACK), as Snyk's client does.
  bool api_fallback = false;
  std::string api_base_url = "https://api.snyk.io";  // API_BASE_URL
  std::string token;    // BROKER_TOKEN (only sent masked, as x-snyk-broker)
  std::string ca_file;  // CA_CERT: extra trust toward the API
  // Only for tests of the failure path; never set from the environment.
  bool insecure_skip_verify = false;

  std::string log_level = "info";  // LOG_LEVEL
  std::string version = "0.1.0";   // in /healthcheck
  int io_threads = 2;
};

// Turns BROKER_TUNNEL_EGRESS_TARGET into a gRPC target:
// - a target with a resolver scheme ("dns:", "ipv4:", "ipv6:", "unix:") is
//   taken as it is;
// - a comma-separated list of IP:port ("10.0.0.1:7344,10.0.0.2:7344", or
//   "[::1]:7344,...") becomes "ipv4:..." / "ipv6:..." (gRPC's sockaddr
//   resolvers take such lists; one family per list);
// - a single host:port with a host name becomes "dns:///host:port" (every
//   address it resolves to is a worker: a Kubernetes headless Service).
// A list of host names is refused (gRPC 1.51 has no public resolver for
// it): use one DNS name that resolves to all workers.
[[nodiscard]] absl::StatusOr<std::string> NormalizeEgressTarget(
    absl::string_view target);

// Reads every variable of kWebhookHelp from `env` and validates the
// result; the error names the variable ("PORT: ...").
[[nodiscard]] absl::StatusOr<WebhookConfig> WebhookConfigFromEnv(
    const common::EnvReader& env);

// The checks WebhookConfigFromEnv makes, for configs built in code.
[[nodiscard]] absl::Status Validate(const WebhookConfig& config);

// What --help prints.
extern const char kWebhookHelp[];

}  // namespace broker::webhook
