// broker-webhook: the HTTP ingress for the SCM's webhooks inside the
// private network. main() reads the environment, builds the typed config,
// runs until SIGTERM/SIGINT.

#include "common/env_config.h"
#include "common/logging.h"
#include "common/signals.h"
#include "services/webhook/webhook_config.h"
#include "services/webhook/webhook_server.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, which leaves Mutex deadlock
  // detection on; the binaries turn it off, the tests keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  broker::common::BlockTerminationSignals();
  if (argc > 1 && std::string(argv[1]) == "--help") {
    std::cout << broker::webhook::kWebhookHelp;
    return 0;
  }
  auto fail = [](const absl::Status& status) {
    std::cerr << "broker-webhook: " << status.message() << "\n";
    return 2;
  };
  absl::StatusOr<broker::webhook::WebhookConfig> config =
      broker::webhook::WebhookConfigFromEnv(
          broker::common::EnvReader::FromEnviron());
  if (!config.ok()) return fail(config.status());
  absl::Status logging =
      broker::common::InitLogging(config->log_level, "broker-webhook");
  if (!logging.ok()) return fail(logging);

  auto server = broker::webhook::WebhookServer::Create(*std::move(config));
  if (!server.ok()) return fail(server.status());
  auto port = (*server)->Start();
  if (!port.ok()) return fail(port.status());
  broker::common::WriteStdoutLine(absl::StrCat(
      "{\"msg\":\"broker-webhook listening\",\"port\":", *port, "}"));
  broker::common::WaitForTerminationSignal();
  (*server)->Shutdown(absl::Now() + absl::Seconds(10));
  broker::common::FlushLogs();
  return 0;
}
