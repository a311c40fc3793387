// broker-tunnel: the worker inside the private network. main() reads the
// environment, builds the typed config, runs until SIGTERM/SIGINT.

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/tunnel/broker_tunnel.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

#include <csignal>
#include <iostream>

extern char** environ;

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock
  // detection on: a lock-graph update on every nested lock, a few percent
  // of the data path's CPU. The binaries turn it off; the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::cout
        << "broker-tunnel: the tunnel worker inside the private network.\n"
           "Environment:\n"
           "  BROKER_TOKEN          broker token (required; never logged)\n"
           "  BROKER_SERVER_URL     http(s)://host:port of the server's tunnel "
           "endpoint (required)\n"
           "  ACCEPT                accept rules file (required)\n"
           "  PORT                  local HTTP port for /healthcheck, "
           "/systemcheck,\n"
           "                        /filters (default 8000)\n"
           "  BROKER_CLIENT_URL     this client's external URL\n"
           "  CA_CERT               extra CA bundle for origins and server\n"
           "  BROKER_TUNNEL_CLIENT_CERT, BROKER_TUNNEL_CLIENT_KEY  client "
           "certificate and key\n"
           "                        (PEM, both or neither) presented to a "
           "server that\n"
           "                        requires mutual TLS; needs an https "
           "BROKER_SERVER_URL\n"
           "  BROKER_TUNNEL_LANES   idle lanes kept at the server at least "
           "(default 1;\n"
           "                        the pool grows to the peak of requests in "
           "flight)\n"
           "  BROKER_REQUEST_TIMEOUT_MS  deadline of a relayed request "
           "(default 600000)\n"
           "  BROKER_HEALTHCHECK_PATH  path of the health check (default "
           "/healthcheck)\n"
           "  BROKER_SYSTEMCHECK_PATH  path of the system check (default "
           "/systemcheck)\n"
           "  BROKER_CLIENT_VALIDATION_URL  what GET /systemcheck calls\n"
           "  BROKER_CLIENT_VALIDATION_METHOD  its method (default GET)\n"
           "  BROKER_CLIENT_VALIDATION_TIMEOUT_MS  its deadline (default "
           "5000)\n"
           "  BROKER_CLIENT_VALIDATION_AUTHORIZATION_HEADER[_POOL]  "
           "Authorization\n"
           "                        value(s) to validate (pool: comma "
           "separated)\n"
           "  BROKER_CLIENT_VALIDATION_BASIC_AUTH[_POOL]  user:pass to "
           "validate\n"
           "                        (used when no header is set)\n"
           "  BROKER_HA_MODE_ENABLED  true: HA mode, the server comes from "
           "broker-ha-agent\n"
           "  BROKER_HA_AGENT_ADDR  host:port of the agent (default "
           "127.0.0.1:7343 in HA mode)\n"
           "  BROKER_TUNNEL_EGRESS_PORT  gRPC port where broker-webhook hands "
           "over webhooks\n"
           "                        (0: any free port; unset: no webhook "
           "egress)\n"
           "  BROKER_TUNNEL_EGRESS_CERT, BROKER_TUNNEL_EGRESS_KEY  TLS on the "
           "egress port\n"
           "                        (PEM, both or neither; broker-webhook "
           "then needs\n"
           "                        BROKER_TUNNEL_EGRESS_CA)\n"
           "  BROKER_METRICS_ENABLED  true: Prometheus text on GET /metrics "
           "and gRPC\n"
           "                        interceptors; false: /metrics is 404 "
           "(default true)\n"
           "  LOG_LEVEL             debug|info|warn|error (default info)\n"
           "  any other variable    available to ${VAR} in accept rules\n";
    return 0;
  }
  broker::common::EnvReader env = broker::common::EnvReader::FromEnviron();
  broker::tunnel::TunnelConfig config;
  auto fail = [](const absl::Status& status) {
    std::cerr << "broker-tunnel: " << status.message() << "\n";
    return 2;
  };
  auto token = env.Required("BROKER_TOKEN");
  if (!token.ok()) return fail(token.status());
  config.token = *token;
  auto server = env.Required("BROKER_SERVER_URL");
  if (!server.ok()) return fail(server.status());
  config.server_url = *server;
  auto accept = env.Required("ACCEPT");
  if (!accept.ok()) return fail(accept.status());
  config.accept_path = *accept;
  auto port = env.Port("PORT", 8000, broker::common::PortZero::kAllowed);
  if (!port.ok()) return fail(port.status());
  config.http_port = *port;
  if (!env.Optional("BROKER_TUNNEL_EGRESS_PORT", "").empty()) {
    auto egress = env.Port("BROKER_TUNNEL_EGRESS_PORT", 0,
                           broker::common::PortZero::kAllowed);
    if (!egress.ok()) return fail(egress.status());
    config.egress_port = *egress;
  }
  config.client_url = env.Optional("BROKER_CLIENT_URL", "");
  auto ha = env.Bool("BROKER_HA_MODE_ENABLED", false);
  if (!ha.ok()) return fail(ha.status());
  config.ha_agent_address = env.Optional("BROKER_HA_AGENT_ADDR", "");
  if (*ha && config.ha_agent_address.empty()) {
    config.ha_agent_address = "127.0.0.1:7343";
  }
  config.ca_file = env.Optional("CA_CERT", "");
  config.tunnel_client_cert_file =
      env.Optional("BROKER_TUNNEL_CLIENT_CERT", "");
  config.tunnel_client_key_file = env.Optional("BROKER_TUNNEL_CLIENT_KEY", "");
  config.egress_cert_file = env.Optional("BROKER_TUNNEL_EGRESS_CERT", "");
  config.egress_key_file = env.Optional("BROKER_TUNNEL_EGRESS_KEY", "");
  if (!absl::SimpleAtoi(env.Optional("BROKER_TUNNEL_LANES", "1"),
                        &config.lanes)) {
    return fail(absl::InvalidArgumentError(
        "BROKER_TUNNEL_LANES must be a whole number"));
  }
  auto timeout = env.DurationMs("BROKER_REQUEST_TIMEOUT_MS", absl::Minutes(10));
  if (!timeout.ok()) return fail(timeout.status());
  config.request_timeout = *timeout;
  config.variables = broker::filters::Variables::FromEnviron(environ);
  auto metrics_enabled = env.Bool("BROKER_METRICS_ENABLED", true);
  if (!metrics_enabled.ok()) return fail(metrics_enabled.status());
  config.metrics_enabled = *metrics_enabled;
  config.healthcheck_path =
      env.Optional("BROKER_HEALTHCHECK_PATH", "/healthcheck");
  config.systemcheck_path =
      env.Optional("BROKER_SYSTEMCHECK_PATH", "/systemcheck");
  broker::tunnel::SystemCheckConfig& check = config.systemcheck;
  // `$NAME` references are expanded as Snyk's config does.
  check.url =
      broker::tunnel::ExpandEnvValue(
          env.Optional("BROKER_CLIENT_VALIDATION_URL", ""), config.variables)
          .front();
  check.method = absl::AsciiStrToUpper(
      env.Optional("BROKER_CLIENT_VALIDATION_METHOD", "GET"));
  auto check_timeout =
      env.DurationMs("BROKER_CLIENT_VALIDATION_TIMEOUT_MS", absl::Seconds(5));
  if (!check_timeout.ok()) return fail(check_timeout.status());
  check.timeout = *check_timeout;
  broker::tunnel::ValidationCredentialSettings credentials;
  credentials.authorization_header =
      env.Optional("BROKER_CLIENT_VALIDATION_AUTHORIZATION_HEADER", "");
  credentials.authorization_header_pool =
      env.Optional("BROKER_CLIENT_VALIDATION_AUTHORIZATION_HEADER_POOL", "");
  credentials.basic_auth =
      env.Optional("BROKER_CLIENT_VALIDATION_BASIC_AUTH", "");
  credentials.basic_auth_pool =
      env.Optional("BROKER_CLIENT_VALIDATION_BASIC_AUTH_POOL", "");
  check.credentials = broker::tunnel::ResolveValidationCredentials(
      credentials, config.variables);
  absl::Status logging = broker::common::InitLogging(
      env.Optional("LOG_LEVEL", "info"), "broker-tunnel");
  if (!logging.ok()) return fail(logging);

  auto tunnel = broker::tunnel::BrokerTunnel::Create(std::move(config));
  if (!tunnel.ok()) return fail(tunnel.status());
  auto bound = (*tunnel)->Start();
  if (!bound.ok()) return fail(bound.status());
  broker::common::WriteStdoutLine(absl::StrCat(
      "{\"msg\":\"broker-tunnel listening\",\"port\":", bound->http,
      ",\"egress_port\":", bound->egress, "}"));
  broker::common::WaitForTerminationSignal();
  (*tunnel)->Shutdown(absl::Now() + absl::Seconds(30));
  return 0;
}
