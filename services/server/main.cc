// broker-server: the platform-side server. main() reads the environment,
// builds the typed config, runs until SIGTERM/SIGINT, then drains.

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/server/broker_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

#include <iostream>
#include <string>

extern char** environ;

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock
  // detection on: a lock-graph update on every nested lock, a few percent
  // of the data path's CPU. The binaries turn it off; the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::cout
        << "broker-server: the platform-side broker server.\n"
           "Environment:\n"
           "  PORT                  platform HTTP ingress (default 7341)\n"
           "  BROKER_TUNNEL_PORT    gRPC tunnel endpoint for workers "
           "(default 7342)\n"
           "  ACCEPT                accept rules file (required): its public "
           "rules filter platform requests, its private rules filter webhooks "
           "(You => Snyk) and name their origin, the platform; ${VAR} in "
           "origins and auth comes from the environment\n"
           "  HTTPS_CERT, HTTPS_KEY TLS on both listeners when set (PEM "
           "files)\n"
           "  BROKER_TUNNEL_CLIENT_CA  CA bundle (PEM) for mutual TLS on the "
           "tunnel endpoint: workers must present a certificate it verifies "
           "(needs HTTPS_CERT/KEY; the platform ingress is unaffected)\n"
           "  BROKER_REQUEST_TIMEOUT_MS  deadline of a relayed request "
           "(default 600000)\n"
           "  BROKER_MAX_BODY_BYTES body limit of a platform request "
           "(default 2 GiB; over -> 413)\n"
           "  BROKER_MAX_CLIENTS_PER_TOKEN  connected workers a token may "
           "have (default 4; 0: no limit)\n"
           "  BROKER_TUNNEL_KEEPALIVE_MS  how often the server pings each "
           "worker connection; unanswered for 1 s, it is dropped "
           "(default 300)\n"
           "  BROKER_TUNNEL_ADMIT_PER_SECOND  workers admitted per second at "
           "most, in bursts of as many; past it a worker is told to retry "
           "(default 1000; 0: no cap)\n"
           "  BROKER_METRICS_ENABLED  true: Prometheus text on GET /metrics "
           "and gRPC interceptors on the tunnel endpoint; false: /metrics is "
           "404 (default true)\n"
           "HA mode (registration with broker-dispatcher):\n"
           "  DISPATCHER_URL        dispatcher base URL; unset: no "
           "registration\n"
           "  DISPATCHER_VERSION    API version query (default "
           "2022-12-02~experimental)\n"
           "  HOSTNAME              server id = text after its last '-'; "
           "also the host of the default URLs (default 127.0.0.1)\n"
           "  BROKER_SERVER_ADVERTISE_HOST host of the default URLs below "
           "(default HOSTNAME)\n"
           "  BROKER_SERVER_ADVERTISE_URL  tunnel URL workers dial (default "
           "http[s]://HOSTNAME:<tunnel port>)\n"
           "  BROKER_SERVER_INTERNAL_URL   HTTP URL other servers forward "
           "to (default http[s]://HOSTNAME:<port>)\n"
           "  BROKER_DISPATCHER_REFRESH_MS  re-registration and client "
           "pings; keep it well under\n"
           "                        the dispatcher's "
           "BROKER_DISPATCHER_SERVER_TTL_MS (default 10000)\n"
           "  BROKER_DRAIN_WAIT_MS  on SIGTERM, how long workers get to move "
           "(default 10000)\n"
           "  CA_CERT               extra trust toward the platform "
           "(webhooks) and an https dispatcher\n"
           "  LOG_LEVEL             debug|info|warn|error (default info)\n";
    return 0;
  }
  broker::common::EnvReader env = broker::common::EnvReader::FromEnviron();
  auto fail = [](const absl::Status& status) {
    std::cerr << "broker-server: " << status.message() << "\n";
    return 2;
  };
  broker::server::ServerConfig config;
  auto port = env.Port("PORT", 7341, broker::common::PortZero::kAllowed);
  if (!port.ok()) return fail(port.status());
  config.http_port = *port;
  auto tunnel_port =
      env.Port("BROKER_TUNNEL_PORT", 7342, broker::common::PortZero::kAllowed);
  if (!tunnel_port.ok()) return fail(tunnel_port.status());
  config.tunnel_port = *tunnel_port;
  auto accept = env.Required("ACCEPT");
  if (!accept.ok()) return fail(accept.status());
  config.accept_path = *accept;
  config.tls_cert_file = env.Optional("HTTPS_CERT", "");
  config.tls_key_file = env.Optional("HTTPS_KEY", "");
  config.tunnel_client_ca_file = env.Optional("BROKER_TUNNEL_CLIENT_CA", "");
  auto timeout = env.DurationMs("BROKER_REQUEST_TIMEOUT_MS", absl::Minutes(10));
  if (!timeout.ok()) return fail(timeout.status());
  config.request_timeout = *timeout;
  const std::string max_body = env.Optional("BROKER_MAX_BODY_BYTES", "");
  if (!max_body.empty() &&
      (!absl::SimpleAtoi(max_body, &config.max_body_bytes) ||
       config.max_body_bytes == 0)) {
    return fail(absl::InvalidArgumentError(
        "BROKER_MAX_BODY_BYTES: must be a whole number of bytes above 0"));
  }
  auto max_clients = env.Integer("BROKER_MAX_CLIENTS_PER_TOKEN", 4, 0, 1000);
  if (!max_clients.ok()) return fail(max_clients.status());
  config.max_clients_per_token = static_cast<int>(*max_clients);
  auto keepalive =
      env.DurationMs("BROKER_TUNNEL_KEEPALIVE_MS", absl::Milliseconds(300));
  if (!keepalive.ok()) return fail(keepalive.status());
  if (*keepalive < absl::Milliseconds(100)) {
    return fail(absl::InvalidArgumentError(
        "BROKER_TUNNEL_KEEPALIVE_MS: must be at least 100"));
  }
  config.tunnel_keepalive = *keepalive;
  auto admit_rate =
      env.Integer("BROKER_TUNNEL_ADMIT_PER_SECOND", 1000, 0, 1000000);
  if (!admit_rate.ok()) return fail(admit_rate.status());
  config.admit_per_second = static_cast<int>(*admit_rate);
  config.dispatcher.url =
      std::string(absl::StripSuffix(env.Optional("DISPATCHER_URL", ""), "/"));
  if (!config.dispatcher.url.empty()) {
    auto url = env.HttpUrl("DISPATCHER_URL");
    if (!url.ok()) return fail(url.status());
  }
  const std::string hostname = env.Optional("HOSTNAME", "");
  config.advertise_host =
      env.Optional("BROKER_SERVER_ADVERTISE_HOST",
                   hostname.empty() ? "127.0.0.1" : hostname);
  config.dispatcher.server_id = broker::server::ServerIdFromHostname(hostname);
  config.dispatcher.health_check_link =
      absl::StrCat("http://", config.advertise_host, "/healthcheck");
  config.dispatcher.version =
      env.Optional("DISPATCHER_VERSION", "2022-12-02~experimental");
  config.dispatcher.tunnel_url =
      env.Optional("BROKER_SERVER_ADVERTISE_URL", "");
  config.dispatcher.internal_url =
      env.Optional("BROKER_SERVER_INTERNAL_URL", "");
  config.ca_file = env.Optional("CA_CERT", "");
  config.dispatcher.ca_file = config.ca_file;
  config.variables = broker::filters::Variables::FromEnviron(environ);
  auto refresh =
      env.DurationMs("BROKER_DISPATCHER_REFRESH_MS", config.dispatcher.refresh);
  if (!refresh.ok()) return fail(refresh.status());
  if (*refresh < absl::Milliseconds(100)) {
    return fail(absl::InvalidArgumentError(
        "BROKER_DISPATCHER_REFRESH_MS: must be at least 100"));
  }
  config.dispatcher.refresh = *refresh;
  auto drain_wait = env.DurationMs("BROKER_DRAIN_WAIT_MS", absl::Seconds(10));
  if (!drain_wait.ok()) return fail(drain_wait.status());
  config.drain_wait = *drain_wait;
  auto metrics_enabled = env.Bool("BROKER_METRICS_ENABLED", true);
  if (!metrics_enabled.ok()) return fail(metrics_enabled.status());
  config.metrics_enabled = *metrics_enabled;
  absl::Status logging = broker::common::InitLogging(
      env.Optional("LOG_LEVEL", "info"), "broker-server");
  if (!logging.ok()) return fail(logging);

  auto server = broker::server::BrokerServer::Create(std::move(config));
  if (!server.ok()) return fail(server.status());
  auto ports = (*server)->Start();
  if (!ports.ok()) return fail(ports.status());
  broker::common::WriteStdoutLine(absl::StrCat(
      "{\"msg\":\"broker-server listening\",\"port\":", ports->http,
      ",\"tunnel_port\":", ports->tunnel, "}"));
  broker::common::WaitForTerminationSignal();
  (*server)->Shutdown(absl::Now() + absl::Seconds(30));
  return 0;
}
