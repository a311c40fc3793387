// broker-ha-agent: the sidecar beside the tunnel workers that asks the
// dispatcher where each of them goes (HA mode). main() reads the
// environment, builds the typed config, runs until SIGTERM/SIGINT.

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/ha-agent/config.h"
#include "services/ha-agent/ha_agent.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock
  // detection on; the binaries turn it off, the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::cout
        << "broker-ha-agent: tells tunnel workers which broker server to "
           "use (HA mode),\n"
           "asking the broker dispatcher for each of them.\n"
           "Environment:\n"
           "  BROKER_TOKEN          broker token (required; never logged, "
           "only hashed)\n"
           "  BROKER_HA_MODE_ENABLED  true|yes turns HA mode on (default "
           "false); off, workers\n"
           "                        are sent to BROKER_SERVER_URL without a "
           "server id\n"
           "  BROKER_DISPATCHER_BASE_URL  the dispatcher's base URL (first "
           "choice)\n"
           "  API_BASE_URL          the dispatcher's base URL (second "
           "choice); then\n"
           "                        BROKER_SERVER_URL with //broker. or "
           "//broker2. -> //api.,\n"
           "                        then https://api.snyk.io\n"
           "  DISPATCHER_URL_PREFIX path prefix of the allocation call "
           "(default /hidden/broker)\n"
           "  BROKER_SERVER_URL     http(s)://host:port of the tunnel "
           "endpoint (required with\n"
           "                        HA off); with HA on, the tunnel URL is "
           "the dispatcher's\n"
           "                        tunnel_url, else the template below, "
           "else this URL with\n"
           "                        ?server_id=<id> (for a routing ingress)\n"
           "  BROKER_SERVER_URL_TEMPLATE  tunnel URL of a server id, e.g. "
           "https://broker-server-{server_id}.broker-server:7342\n"
           "  BROKER_SERVER_HTTP_URL  the server's HTTP base, for the "
           "preflight GET /healthcheck\n"
           "                        (default: BROKER_SERVER_URL when it has "
           "no port; else skipped)\n"
           "  BROKER_HA_AGENT_ADDRESS  address of the gRPC listener (default "
           "127.0.0.1: a sidecar)\n"
           "  BROKER_HA_AGENT_PORT  port of the gRPC listener (default 7343; "
           "0 = any free port,\n"
           "                        printed in the \"broker-ha-agent "
           "listening\" line)\n"
           "  BROKER_HA_AGENT_HTTP_PORT  HTTP port (same address) for "
           "/healthcheck and /metrics\n"
           "                        (Prometheus text, with the gRPC "
           "server's RPC metrics);\n"
           "                        unset: no HTTP listener; 0 = any free "
           "port, printed as\n"
           "                        http_port in the listening line\n"
           "  BROKER_CLIENT_URL     this client's external URL (preflight "
           "check only)\n"
           "  ACCEPT                accept rules file (preflight check only)\n"
           "  BROKER_CLIENT_LOCATION  deployment_location sent to the "
           "dispatcher (default\n"
           "                        snyk-broker-client)\n"
           "  CA_CERT               extra CA bundle for the dispatcher and "
           "the server\n"
           "  BROKER_DISPATCHER_TIMEOUT_MS  deadline of one dispatcher call "
           "(default 5000)\n"
           "  BROKER_HA_AGENT_BACKOFF_MAX_MS  longest wait between calls to "
           "an unreachable\n"
           "                        dispatcher (default 10000; a refused "
           "client polls every\n"
           "                        250-500 ms)\n"
           "  BROKER_HA_AGENT_FORGET_AFTER_MS  how long a worker whose Watch "
           "ended is remembered\n"
           "                        (default 30000)\n"
           "  BROKER_HA_AGENT_UNREACHABLE_AFTER_MS  a worker without a tunnel "
           "this long is moved\n"
           "                        to another server (default 30000)\n"
           "  BROKER_HA_AGENT_MOVE_TIMEOUT_MS  how long a move waits for the "
           "dispatcher to stop\n"
           "                        answering the server being left "
           "(default 60000)\n"
           "  LOG_LEVEL             debug|info|warn|error (default info)\n";
    return 0;
  }
  broker::common::EnvReader env = broker::common::EnvReader::FromEnviron();
  auto fail = [](const absl::Status& status) {
    std::cerr << "broker-ha-agent: " << status.message() << "\n";
    return 2;
  };
  absl::Status logging = broker::common::InitLogging(
      env.Optional("LOG_LEVEL", "info"), "broker-ha-agent");
  if (!logging.ok()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("LOG_LEVEL: ", logging.message())));
  }

  broker::ha::HaAgentConfig config;
  auto token = env.Required("BROKER_TOKEN");
  if (!token.ok()) return fail(token.status());
  config.token = *token;
  // As in every binary here: true/yes or false/no, in any case (Snyk's
  // values); anything else stops start-up rather than quietly running
  // without HA.
  auto ha_mode = env.Bool("BROKER_HA_MODE_ENABLED", false);
  if (!ha_mode.ok()) return fail(ha_mode.status());
  config.ha_enabled = *ha_mode;
  config.server_url = env.Optional("BROKER_SERVER_URL", "");
  if (!config.server_url.empty()) {
    auto url = env.HttpUrl("BROKER_SERVER_URL");
    if (!url.ok()) return fail(url.status());
  }
  config.server_url_template = env.Optional("BROKER_SERVER_URL_TEMPLATE", "");
  if (!config.server_url_template.empty()) {
    auto url = broker::common::ParseHttpUrl(absl::StrReplaceAll(
        config.server_url_template, {{"{server_id}", "0"}}));
    if (!url.ok()) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "BROKER_SERVER_URL_TEMPLATE: ", url.status().message())));
    }
  }
  config.server_http_url = env.Optional("BROKER_SERVER_HTTP_URL", "");
  if (!config.server_http_url.empty()) {
    auto url = env.HttpUrl("BROKER_SERVER_HTTP_URL");
    if (!url.ok()) return fail(url.status());
  }
  config.dispatcher = broker::ha::ResolveDispatcherBase(
      env.Optional("BROKER_DISPATCHER_BASE_URL", ""),
      env.Optional("API_BASE_URL", ""), config.server_url);
  config.dispatcher_url_prefix =
      env.Optional("DISPATCHER_URL_PREFIX", "/hidden/broker");
  config.client_url = env.Optional("BROKER_CLIENT_URL", "");
  config.accept_path = env.Optional("ACCEPT", "");
  config.deployment_location =
      env.Optional("BROKER_CLIENT_LOCATION", "snyk-broker-client");
  config.ca_file = env.Optional("CA_CERT", "");
  config.address = env.Optional("BROKER_HA_AGENT_ADDRESS", "127.0.0.1");
  auto port = env.Port("BROKER_HA_AGENT_PORT", 7343,
                       broker::common::PortZero::kAllowed);
  if (!port.ok()) return fail(port.status());
  config.port = *port;
  if (!env.Optional("BROKER_HA_AGENT_HTTP_PORT", "").empty()) {
    auto http_port = env.Port("BROKER_HA_AGENT_HTTP_PORT", 0,
                              broker::common::PortZero::kAllowed);
    if (!http_port.ok()) return fail(http_port.status());
    config.http_port = *http_port;
  }
  struct Timing {
    const char* name;
    absl::Duration* field;
  };
  for (const Timing& t : {
           Timing{"BROKER_DISPATCHER_TIMEOUT_MS", &config.dispatcher_timeout},
           Timing{"BROKER_HA_AGENT_BACKOFF_MAX_MS", &config.backoff_max},
           Timing{"BROKER_HA_AGENT_FORGET_AFTER_MS", &config.forget_after},
           Timing{"BROKER_HA_AGENT_UNREACHABLE_AFTER_MS",
                  &config.unreachable_after},
           Timing{"BROKER_HA_AGENT_MOVE_TIMEOUT_MS", &config.move_timeout},
       }) {
    auto value = env.DurationMs(t.name, *t.field);
    if (!value.ok()) return fail(value.status());
    if (*value <= absl::ZeroDuration()) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat(t.name, ": must be more than 0")));
    }
    *t.field = *value;
  }
  if (config.backoff_max < config.backoff_initial) {
    return fail(absl::InvalidArgumentError(
        "BROKER_HA_AGENT_BACKOFF_MAX_MS: must be at least 100"));
  }
  auto agent = broker::ha::HaAgent::Create(std::move(config));
  if (!agent.ok()) return fail(agent.status());
  auto bound = (*agent)->Start();
  if (!bound.ok()) return fail(bound.status());
  broker::common::WriteStdoutLine(
      absl::StrCat("{\"msg\":\"broker-ha-agent listening\",\"port\":", *bound,
                   ",\"http_port\":", (*agent)->http_port(), "}"));
  broker::common::WaitForTerminationSignal();
  (*agent)->Shutdown(absl::Now() + absl::Seconds(5));
  broker::common::FlushLogs();
  return 0;
}
